//! Valkey Cluster hash slots: which of the 16384 slots a key lives in, which command
//! arguments are keys, and the slot map read from `CLUSTER SLOTS`.
//!
//! Pure functions and data: no sockets and no routing decisions (those are the router's).

use redis::Value;

use crate::store::resp;

pub const SLOTS: usize = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Valkey hashes keys with.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: the CRC16 of its hash tag (the text between the first `{` and the
/// first `}` after it, when that is not empty), else of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) & (SLOTS as u16 - 1)
}

/// The key a command acts on, for routing: the commands the store sends, by name. `None`
/// for commands without a key (`PING`, `SCAN`, `CLUSTER …`), which any node answers.
/// Multi-key commands (`DEL` of a topic's keys, `EVAL`) name keys of one hash tag only,
/// so their first key's slot is every key's slot.
pub fn command_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        redis::Arg::Cursor => &b""[..],
    });
    let name = args.next()?;
    let index = if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        // EVAL script numkeys key …
        2
    } else if name.eq_ignore_ascii_case(b"XINFO") {
        // XINFO STREAM key
        1
    } else if [
        &b"PING"[..],
        b"SCAN",
        b"CLUSTER",
        b"ASKING",
        b"WAIT",
        b"INFO",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
    {
        return None;
    } else {
        0
    };
    args.nth(index)
}

/// The primary serving each slot, as `host:port`; `None` for a slot no node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    /// Index into `primaries` per slot; `u16::MAX` for none.
    owner: Vec<u16>,
    primaries: Vec<String>,
}

const NO_OWNER: u16 = u16::MAX;

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![NO_OWNER; SLOTS],
            primaries: Vec::new(),
        }
    }
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replica…], …]`.
    /// A primary announced with an empty or `?` host is the node we asked (`asked_host`).
    pub fn from_cluster_slots(reply: &Value, asked_host: &str) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else {
            return Err(resp::server_error(reply)
                .unwrap_or_else(|| "CLUSTER SLOTS did not answer a list".into()));
        };
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err("a CLUSTER SLOTS range is not a list".into());
            };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            let (Some(start), Some(end)) = (int(parts.first()), int(parts.get(1))) else {
                return Err("a CLUSTER SLOTS range has no bounds".into());
            };
            let Some(Value::Array(primary)) = parts.get(2) else {
                return Err("a CLUSTER SLOTS range has no primary".into());
            };
            let host = primary
                .first()
                .and_then(resp::bytes)
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .filter(|h| !h.is_empty() && h != "?")
                .unwrap_or_else(|| asked_host.to_string());
            let Some(port) = int(primary.get(1)) else {
                return Err("a CLUSTER SLOTS primary has no port".into());
            };
            if !(0..SLOTS as i64).contains(&start) || !(start..SLOTS as i64).contains(&end) {
                return Err(format!(
                    "CLUSTER SLOTS range {start}-{end} is out of bounds"
                ));
            }
            let node = map.primary_index(&format!("{host}:{port}"));
            for slot in start..=end {
                map.owner[slot as usize] = node;
            }
        }
        Ok(map)
    }

    fn primary_index(&mut self, addr: &str) -> u16 {
        match self.primaries.iter().position(|p| p == addr) {
            Some(i) => i as u16,
            None => {
                self.primaries.push(addr.to_string());
                (self.primaries.len() - 1) as u16
            }
        }
    }

    /// The primary serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        match self.owner[slot as usize] {
            NO_OWNER => None,
            i => Some(&self.primaries[i as usize]),
        }
    }

    /// The index (in [`SlotMap::addresses`]) of the primary serving `slot`, if any.
    pub fn owner_index(&self, slot: u16) -> Option<usize> {
        match self.owner[slot as usize] {
            NO_OWNER => None,
            i => Some(i as usize),
        }
    }

    /// Every primary address the map has named, by index (some may serve no slot any more
    /// after [`SlotMap::assign`]).
    pub fn addresses(&self) -> &[String] {
        &self.primaries
    }

    /// Records that `addr` serves `slot` (a `MOVED` answer says so before the next refresh).
    pub fn assign(&mut self, slot: u16, addr: &str) {
        let node = self.primary_index(addr);
        self.owner[slot as usize] = node;
    }

    /// Whether every slot has a primary.
    pub fn is_complete(&self) -> bool {
        self.owner.iter().all(|&o| o != NO_OWNER)
    }

    /// The primaries that serve at least one slot, ordered by the lowest slot each serves:
    /// an order that survives a failover (the promoted replica takes the same slots).
    pub fn primaries(&self) -> Vec<&str> {
        let mut seen = vec![false; self.primaries.len()];
        let mut ordered = Vec::new();
        for &o in &self.owner {
            if o != NO_OWNER && !seen[o as usize] {
                seen[o as usize] = true;
                ordered.push(self.primaries[o as usize].as_str());
            }
        }
        ordered
    }

    /// The slots whose primary differs between `self` and `newer`.
    pub fn changes(&self, newer: &SlotMap) -> Vec<u16> {
        (0..SLOTS as u16)
            .filter(|&s| self.owner(s) != newer.owner(s))
            .collect()
    }
}

/// A `MOVED <slot> <host:port>` or `ASK <slot> <host:port>` error, as (is-ask, slot,
/// address); `None` for any other reply.
pub fn redirection(value: &Value) -> Option<(bool, u16, String)> {
    let Value::ServerError(e) = value else {
        return None;
    };
    let ask = match e.code() {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let mut parts = e.details()?.split_whitespace();
    let slot = parts
        .next()?
        .parse::<u16>()
        .ok()
        .filter(|&s| (s as usize) < SLOTS)?;
    let addr = parts.next()?.to_string();
    Some((ask, slot, addr))
}

/// Whether an error reply means "the cluster cannot serve this slot right now, try again"
/// (`TRYAGAIN` during a multi-key migration, `CLUSTERDOWN` and `MASTERDOWN` during a
/// failover, `LOADING` after a restart).
pub fn is_transient(value: &Value) -> bool {
    matches!(value, Value::ServerError(e)
        if matches!(e.code(), "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_match_cluster_keyslot() {
        // Each answer read from `CLUSTER KEYSLOT <key>` on valkey-server 9.1.
        for (key, slot) in [
            ("foo", 12182),
            ("123456789", 12739),
            ("pulsar:{relay}:epoch", 1341),
            ("pulsar:{accounts}:users", 14365),
            ("pulsar:idem:{alice}:single:k", 749),
            ("{}a", 10875),
            ("a{}{b}", 15033),
            ("{a", 10276),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn a_topics_keys_share_its_slot() {
        let slot = key_slot(b"pulsar:{jobs.eu}:s");
        assert_eq!(key_slot(b"pulsar:{jobs.eu}:c"), slot);
        assert_eq!(key_slot(b"pulsar:{jobs.eu}:t"), slot);
        assert_eq!(key_slot(b"jobs.eu"), slot);
        assert_ne!(key_slot(b"pulsar:{jobs.us}:s"), slot);
    }

    #[test]
    fn command_keys_are_found_by_command() {
        let key = |cmd: &redis::Cmd| command_key(cmd).map(<[u8]>::to_vec);
        assert_eq!(
            key(redis::cmd("XADD").arg("k1").arg("1-0").arg("p").arg("x")),
            Some(b"k1".to_vec())
        );
        assert_eq!(
            key(redis::cmd("EVAL").arg("return 1").arg(1).arg("k2").arg("a")),
            Some(b"k2".to_vec())
        );
        assert_eq!(
            key(redis::cmd("XINFO").arg("STREAM").arg("k3")),
            Some(b"k3".to_vec())
        );
        assert_eq!(
            key(redis::cmd("del").arg("k4").arg("k5")),
            Some(b"k4".to_vec())
        );
        assert_eq!(key(&redis::cmd("PING")), None);
        assert_eq!(key(redis::cmd("SCAN").arg(0)), None);
        assert_eq!(key(redis::cmd("CLUSTER").arg("SLOTS")), None);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            Value::Array(vec![bulk(host), Value::Int(port + 1), bulk("replica")]),
        ])
    }

    #[test]
    fn slot_maps_come_from_cluster_slots() {
        let reply = Value::Array(vec![
            range(5461, 10922, "127.0.0.1", 7001),
            range(0, 5460, "", 7000),
            range(10923, 16383, "127.0.0.1", 7002),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "10.0.0.9").unwrap();
        assert!(map.is_complete());
        assert_eq!(map.owner(0), Some("10.0.0.9:7000"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:7002"));
        assert_eq!(
            map.primaries(),
            ["10.0.0.9:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        let mut moved = map.clone();
        moved.assign(100, "127.0.0.1:7002");
        assert_eq!(map.changes(&moved), [100]);
        assert_eq!(moved.owner(100), Some("127.0.0.1:7002"));
        assert_eq!(moved.owner_index(100), Some(2));
        assert_eq!(moved.addresses()[2], "127.0.0.1:7002");

        let partial = Value::Array(vec![range(0, 99, "h", 1)]);
        let partial = SlotMap::from_cluster_slots(&partial, "h").unwrap();
        assert!(!partial.is_complete());
        assert_eq!(partial.owner(100), None);

        let bad = Value::Array(vec![range(10, 16384, "h", 1)]);
        assert!(SlotMap::from_cluster_slots(&bad, "h").is_err());
        assert!(SlotMap::from_cluster_slots(&Value::Int(1), "h").is_err());
    }

    #[test]
    fn redirections_are_parsed() {
        let parse = |text: &[u8]| redis::parse_redis_value(text).unwrap();
        assert_eq!(
            redirection(&parse(b"-MOVED 3999 127.0.0.1:6381\r\n")),
            Some((false, 3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirection(&parse(b"-ASK 12 10.1.1.1:7000\r\n")),
            Some((true, 12, "10.1.1.1:7000".into()))
        );
        assert_eq!(redirection(&parse(b"-MOVED 99999 h:1\r\n")), None);
        assert_eq!(redirection(&parse(b"-ERR nope\r\n")), None);
        assert!(is_transient(&parse(b"-TRYAGAIN Multiple keys\r\n")));
        assert!(is_transient(&parse(
            b"-CLUSTERDOWN The cluster is down\r\n"
        )));
        assert!(!is_transient(&parse(b"-ERR wrong\r\n")));
    }
}
