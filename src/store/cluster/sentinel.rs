//! Data-loss sentinels on a Valkey Cluster: one key per primary, so that a primary that
//! comes back empty (restarted without its files, flushed, or failed over to an empty
//! replica) is noticed whichever slots it serves, as the standalone link notices its server.
//!
//! A primary's sentinel is `<prefix>:{relay}:epoch`, `<prefix>:{relay.1}:epoch`, … : the
//! first of these whose hash slot the primary serves (the `{relay}` one where it does, so a
//! standalone layout carries over). Each shard remembers every sentinel it has seen and its
//! value; when it (re)connects to a primary it checks the remembered sentinels of the slots
//! that primary serves, creating the primary's own if missing. A remembered key that is
//! gone or changed is data loss: logged as `DATA LOSS` and counted. A sentinel whose slot
//! migrated moved with it (`MIGRATE` moves keys), so it is checked on its new primary; one
//! whose slot is elsewhere by now is answered with a redirection and skipped, not counted.
//! Checked on (re)connect only: nothing per command.
//!
//! This module knows sentinel keys and the slot map; connections are the node's, and the
//! handshake commands the link's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use super::node::Node;
use super::slots::{key_slot, SlotMap};
use crate::store::link::{LinkError, Replies};
use crate::tls::Stream;

/// How many candidate keys are tried for a primary before giving up on a sentinel for it:
/// a primary serving a single slot needs about 16384 on average.
const CANDIDATES: u32 = 1 << 18;

pub(super) struct Sentinels {
    prefix: String,
    /// Every sentinel key seen, and its value then.
    seen: RefCell<HashMap<String, Vec<u8>>>,
}

impl Sentinels {
    pub fn new(prefix: &str) -> Sentinels {
        Sentinels {
            prefix: prefix.to_string(),
            seen: RefCell::new(HashMap::new()),
        }
    }

    /// The sentinel keys to check on a fresh connection to the primary at `addr`: the
    /// remembered ones in its slots, and its own.
    pub fn keys_on(&self, map: &SlotMap, addr: &str) -> Vec<String> {
        let serves = |key: &str| map.owner(key_slot(key.as_bytes())) == Some(addr);
        let mut keys: Vec<String> = self
            .seen
            .borrow()
            .keys()
            .filter(|k| serves(k))
            .cloned()
            .collect();
        if let Some(own) = self.own_key(&serves) {
            if !keys.contains(&own) {
                keys.push(own);
            }
        }
        keys.sort();
        keys
    }

    /// The first candidate key that `serves` (the primary's own sentinel).
    fn own_key(&self, serves: &dyn Fn(&str) -> bool) -> Option<String> {
        let mut key = format!("{}:{{relay}}:epoch", self.prefix);
        if serves(&key) {
            return Some(key);
        }
        for n in 1..CANDIDATES {
            key.clear();
            let _ = write!(key, "{}:{{relay.{n}}}:epoch", self.prefix);
            if serves(&key) {
                return Some(key);
            }
        }
        None
    }

    /// Checks `keys` over a connection to `node` that was just opened: a remembered key
    /// gone or changed is reported as data loss; every key found is remembered.
    pub async fn check(
        &self,
        node: &Node,
        stream: &mut Stream,
        buf: &mut Replies,
        keys: Vec<String>,
    ) -> Result<(), LinkError> {
        for key in keys {
            let Some(found) = node.dialer().sentinel(stream, buf, &key).await? else {
                continue;
            };
            let lost = self.seen.borrow().get(&key).is_some_and(|v| found.lost(v));
            if lost {
                node.dialer().lost_data(&key);
            }
            if let Some(value) = found.value() {
                self.seen.borrow_mut().insert(key, value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, port: i64) -> redis::Value {
        redis::Value::Array(vec![
            redis::Value::Int(start),
            redis::Value::Int(end),
            redis::Value::Array(vec![bulk("h"), redis::Value::Int(port)]),
        ])
    }

    #[test]
    fn every_primary_gets_a_sentinel_in_its_own_slots() {
        // `{relay}` hashes to slot 1341 (see `slots`): the first primary keeps that key.
        let map = SlotMap::from_cluster_slots(
            &redis::Value::Array(vec![
                range(0, 5460, 1),
                range(5461, 10922, 2),
                range(10923, 16382, 3),
                range(16383, 16383, 4),
            ]),
            "h",
        )
        .unwrap();
        let sentinels = Sentinels::new("pulsar");
        assert_eq!(sentinels.keys_on(&map, "h:1"), ["pulsar:{relay}:epoch"]);
        for addr in ["h:2", "h:3", "h:4"] {
            let keys = sentinels.keys_on(&map, addr);
            assert_eq!(keys.len(), 1, "{addr}: {keys:?}");
            assert!(keys[0].starts_with("pulsar:{relay."), "{keys:?}");
            assert_eq!(map.owner(key_slot(keys[0].as_bytes())), Some(addr));
        }
        assert!(sentinels.keys_on(&map, "h:9").is_empty(), "serves no slot");

        // Remembered keys are checked where their slots are now, besides the own one.
        let migrated = sentinels.keys_on(&map, "h:2").remove(0);
        sentinels
            .seen
            .borrow_mut()
            .insert(migrated.clone(), b"v".to_vec());
        let mut moved = map.clone();
        moved.assign(key_slot(migrated.as_bytes()), "h:3");
        let on_3 = sentinels.keys_on(&moved, "h:3");
        assert!(on_3.contains(&migrated) && on_3.len() == 2, "{on_3:?}");
        assert!(!sentinels.keys_on(&moved, "h:2").contains(&migrated));
    }
}
