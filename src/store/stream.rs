//! A topic's stream, `<prefix>:{<topic>}:s`: entry IDs, entries, their writes and trims,
//! and range reads.
//!
//! An entry ID is `<unix_ms>-<seq>`, Valkey's stream-ID format, and it is also the
//! message's ID: one ID names a message in both tiers, so a cursor taken from either works
//! against the other. IDs are assigned by a topic's owner (`topic::IdClock`); this module
//! orders, parses and prints them, and knows an entry's fields. Building a message from an
//! entry is `topic`'s: reads hand each entry to the caller's builder.

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use redis::Value;

use super::{confirmed_within, resp, Store, StoreError, Ticket, Valkey};
use crate::rt::now_ms;
use crate::text::{decimal_len, push_decimal};

/// A stream entry ID, which is also the ID of the message it holds. Ordering is the
/// delivery order within a topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    pub ms: u64,
    pub seq: u64,
}

impl MessageId {
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        MessageId { ms, seq }
    }

    /// Length of the `ms-seq` text.
    pub fn text_len(self) -> usize {
        decimal_len(self.ms) + 1 + decimal_len(self.seq)
    }

    /// Appends the `ms-seq` text without an intermediate string (hot path: every message's
    /// frame carries its ID).
    pub fn push_text(self, out: &mut Vec<u8>) {
        push_decimal(out, self.ms);
        out.push(b'-');
        push_decimal(out, self.seq);
    }

    /// Parses `ms-seq` (both parts plain decimal); a bare `ms` means `ms-0`, as in Valkey.
    pub fn parse(text: &str) -> Option<MessageId> {
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Some(MessageId {
            ms: parse_decimal(ms)?,
            seq: parse_decimal(seq)?,
        })
    }
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of a topic's stream: a message as the persistent tier keeps it, borrowed from
/// the message (writes) or from Valkey's reply (reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEntry<'a> {
    pub id: MessageId,
    /// Raw JSON text of the payload, as the producer sent it.
    pub payload: &'a [u8],
    /// Raw JSON text of the metadata object, if any.
    pub metadata: Option<&'a [u8]>,
    pub timestamp_ms: u64,
    pub ttl_ms: Option<u64>,
}

impl StreamEntry<'_> {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.ttl_ms
            .is_some_and(|ttl| self.timestamp_ms.saturating_add(ttl) <= now_ms)
    }
}

/// A span of a topic's stream: from an exclusive start (`None`: the oldest entry) up to
/// `until`, inclusive or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRange {
    pub after: Option<MessageId>,
    pub until: MessageId,
    pub until_inclusive: bool,
}

/// Stream entries read per XRANGE round trip during a replay.
const HISTORY_PAGE: usize = 1000;

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

impl Store {
    /// Queues the write of `entry` to `topic`'s stream (and, when `trim` says it is due,
    /// the stream's trim by age); with persisted acks, the ticket to wait for.
    pub fn append(&self, topic: &str, entry: &StreamEntry<'_>, trim: bool) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let key = v.stream_key(topic);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(v.max_len)
            .arg(entry.id.to_string())
            .arg("p")
            .arg(entry.payload)
            .arg("t")
            .arg(entry.timestamp_ms);
        if let Some(meta) = entry.metadata {
            cmd.arg("m").arg(meta);
        }
        if let Some(ttl) = entry.ttl_ms {
            cmd.arg("l").arg(ttl);
        }
        let reply = v.link.write(&cmd, true)?;
        v.unconfirmed
            .borrow_mut()
            .push_back((entry.id, Rc::clone(&reply)));
        if trim {
            v.trim_by_time(&key);
        }
        self.persisted_acks.then_some(Ticket(reply))
    }

    /// The newest of this shard's message IDs up to which Valkey has answered every
    /// write; `None` when every message in memory may be evicted: without a persistent tier
    /// (everything in memory is all there is), and in cluster mode (rings hold only what
    /// was heard from Valkey, so it is all there already).
    pub fn durable_upto(&self) -> Option<MessageId> {
        if self.is_announced() {
            return None;
        }
        let v = self.valkey.as_ref()?;
        let mut unconfirmed = v.unconfirmed.borrow_mut();
        while let Some((id, reply)) = unconfirmed.front() {
            if !reply.is_done() {
                break;
            }
            v.confirmed.set(*id);
            unconfirmed.pop_front();
        }
        Some(v.confirmed.get())
    }

    /// The live entries of `topic` in `range`, oldest first, each made into a `T` by
    /// `build`, at most `limit`; the flag says whether the range held more. Expired
    /// entries do not count against `limit`: pages are read until `limit` live entries are
    /// found or the range ends, so a run of expired entries cannot stall a reader.
    pub async fn history<T>(
        &self,
        topic: &str,
        range: &StreamRange,
        limit: usize,
        build: impl Fn(StreamEntry<'_>) -> T,
    ) -> Result<(Vec<T>, bool), StoreError> {
        self.read_range(topic, range, limit, Direction::Forward, build)
            .await
    }

    /// Like [`Store::history`], newest first (a descending history page).
    pub async fn history_newest_first<T>(
        &self,
        topic: &str,
        range: &StreamRange,
        limit: usize,
        build: impl Fn(StreamEntry<'_>) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let (entries, _) = self
            .read_range(topic, range, limit, Direction::Backward, build)
            .await?;
        Ok(entries)
    }

    /// Reads `range` page by page (`XRANGE` forward, `XREVRANGE` backward), each page
    /// starting exclusively after the last entry of the one before.
    async fn read_range<T>(
        &self,
        topic: &str,
        range: &StreamRange,
        limit: usize,
        direction: Direction,
        build: impl Fn(StreamEntry<'_>) -> T,
    ) -> Result<(Vec<T>, bool), StoreError> {
        let Some(v) = &self.valkey else {
            return Ok((Vec::new(), false));
        };
        let exclusive = |id: MessageId| format!("({id}");
        let low = range.after.map_or_else(|| "-".to_string(), exclusive);
        let high = if range.until_inclusive {
            range.until.to_string()
        } else {
            exclusive(range.until)
        };
        let page = (limit + 1).max(HISTORY_PAGE);
        // The last entry read: where the next page starts.
        let mut last: Option<MessageId> = None;
        let mut found = Vec::new();
        let now = now_ms();
        loop {
            let cmd = match direction {
                Direction::Forward => redis::cmd("XRANGE")
                    .arg(v.stream_key(topic))
                    .arg(last.map_or_else(|| low.clone(), exclusive))
                    .arg(&high)
                    .arg("COUNT")
                    .arg(page)
                    .clone(),
                Direction::Backward => redis::cmd("XREVRANGE")
                    .arg(v.stream_key(topic))
                    .arg(last.map_or_else(|| high.clone(), exclusive))
                    .arg(&low)
                    .arg("COUNT")
                    .arg(page)
                    .clone(),
            };
            let entries = match v.link.read(&cmd).await? {
                Value::Array(entries) => entries,
                other => {
                    return Err(StoreError::Unavailable(
                        resp::server_error(&other)
                            .unwrap_or_else(|| "unexpected XRANGE reply".into()),
                    ))
                }
            };
            let page_start = last;
            for raw in &entries {
                let Some(entry) = parse_entry(raw) else {
                    // Not one of ours (no payload): step over it.
                    last = entry_id(raw).or(last);
                    continue;
                };
                last = Some(entry.id);
                if entry.is_expired(now) {
                    continue;
                }
                if found.len() == limit {
                    return Ok((found, true));
                }
                found.push(build(entry));
            }
            if entries.len() < page || last == page_start {
                return Ok((found, false));
            }
        }
    }

    /// Whether `topic`'s stream holds `id` and (with replicated acks) the primary's
    /// replicas confirmed it, for a publish answered `REPLICATION_TIMEOUT` whose
    /// Idempotency-Key is retried. `WAIT` counts what a connection wrote, and this shard's
    /// connection may not have written the message (or is newer than that write), so a
    /// marker write in the topic's slot (`<prefix>:{<topic>}:r`, the ID, expiring after
    /// `window`) goes first: its pipeline's `WAIT` covers everything the primary had by
    /// then. `Ok(false)`: the stream does not hold it (lost in a failover).
    pub async fn replicated(
        &self,
        topic: &str,
        id: MessageId,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(false);
        };
        let marker = redis::cmd("SET")
            .arg(v.marker_key(topic))
            .arg(id.to_string())
            .arg("PX")
            .arg(window.as_millis() as u64)
            .clone();
        let tickets = v
            .link
            .write(&marker, true)
            .map(Ticket)
            .into_iter()
            .collect();
        let limit = self.ack_timeout.unwrap_or_default();
        confirmed_within(tickets, limit).await?;
        self.contains(topic, id).await
    }

    /// Whether `topic`'s stream holds `id` (false without a persistent tier).
    pub async fn contains(&self, topic: &str, id: MessageId) -> Result<bool, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(false);
        };
        let id = id.to_string();
        let cmd = redis::cmd("XRANGE")
            .arg(v.stream_key(topic))
            .arg(&id)
            .arg(&id)
            .clone();
        match v.link.read(&cmd).await? {
            Value::Array(entries) => Ok(!entries.is_empty()),
            other => Err(StoreError::Unavailable(
                resp::server_error(&other).unwrap_or_else(|| "unexpected XRANGE reply".into()),
            )),
        }
    }
}

impl Valkey {
    pub(super) fn trim_by_time(&self, key: &str) {
        let min_id = now_ms().saturating_sub(self.retention_ms);
        let cmd = redis::cmd("XTRIM")
            .arg(key)
            .arg("MINID")
            .arg("~")
            .arg(min_id)
            .clone();
        self.link.write(&cmd, false);
    }
}

/// A field of an `XINFO STREAM` reply; `None` without a stream (only positions or a
/// record: nothing was ever kept for the topic's messages).
pub(super) fn stream_field<'a>(info: &'a Value, name: &[u8]) -> Option<&'a Value> {
    let Value::Array(fields) = info else {
        return None;
    };
    fields
        .chunks(2)
        .find(|kv| resp::bytes(&kv[0]) == Some(name))
        .and_then(|kv| kv.get(1))
}

/// The `last-generated-id` of an `XINFO STREAM` reply; `ZERO` without a stream.
pub(super) fn last_generated_id(info: &Value) -> MessageId {
    stream_field(info, b"last-generated-id")
        .and_then(resp::bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(MessageId::parse)
        .unwrap_or(MessageId::ZERO)
}

/// The ID of a stream entry `[id, [field, value, …]]`.
pub(super) fn entry_id(entry: &Value) -> Option<MessageId> {
    let Value::Array(parts) = entry else {
        return None;
    };
    MessageId::parse(std::str::from_utf8(resp::bytes(parts.first()?)?).ok()?)
}

/// Reads a stream entry `[id, [field, value, …]]`; `None` for an entry without a payload
/// (not one of ours).
fn parse_entry(entry: &Value) -> Option<StreamEntry<'_>> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = entry_id(entry)?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let (mut payload, mut metadata, mut timestamp_ms, mut ttl_ms) = (None, None, id.ms, None);
    for kv in fields.chunks(2) {
        let (Some(name), Some(value)) = (resp::bytes(&kv[0]), kv.get(1).and_then(resp::bytes))
        else {
            continue;
        };
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        match name {
            b"p" => payload = Some(value),
            b"m" => metadata = Some(value),
            b"t" => timestamp_ms = number().unwrap_or(id.ms),
            b"l" => ttl_ms = number(),
            _ => {}
        }
    }
    Some(StreamEntry {
        id,
        payload: payload?,
        metadata,
        timestamp_ms,
        ttl_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| {
                        [
                            Value::BulkString(k.as_bytes().to_vec()),
                            Value::BulkString(v.as_bytes().to_vec()),
                        ]
                    })
                    .collect(),
            ),
        ])
    }

    #[test]
    fn entries_keep_their_fields() {
        let raw = entry(
            "1000-2",
            &[
                ("p", r#"{"a": 1.50}"#),
                ("t", "999"),
                ("m", r#"{"k":"v"}"#),
                ("l", "5000"),
            ],
        );
        let read = parse_entry(&raw).unwrap();
        assert_eq!(
            read,
            StreamEntry {
                id: MessageId::new(1000, 2),
                payload: br#"{"a": 1.50}"#,
                metadata: Some(br#"{"k":"v"}"#),
                timestamp_ms: 999,
                ttl_ms: Some(5000),
            }
        );
        assert!(!read.is_expired(5998));
        assert!(read.is_expired(5999));
        let raw = entry("7-0", &[("p", "1")]);
        let bare = parse_entry(&raw).unwrap();
        assert_eq!((bare.timestamp_ms, bare.ttl_ms), (7, None), "the ID's time");
    }

    #[test]
    fn entries_without_payload_are_skipped() {
        assert!(parse_entry(&entry("1-0", &[("t", "1")])).is_none());
        assert_eq!(
            entry_id(&entry("1-0", &[("t", "1")])),
            Some(MessageId::new(1, 0))
        );
    }

    #[test]
    fn parse_and_display_round_trip() {
        let id = MessageId::parse("1731000000123-7").unwrap();
        assert_eq!(id, MessageId::new(1731000000123, 7));
        assert_eq!(id.to_string(), "1731000000123-7");
        assert_eq!(MessageId::parse("42"), Some(MessageId::new(42, 0)));
    }

    #[test]
    fn pushed_text_matches_display() {
        for id in [
            MessageId::new(0, 0),
            MessageId::new(9, 10),
            MessageId::new(1_795_775_969_418, 3),
            MessageId::new(u64::MAX, u64::MAX),
        ] {
            let mut out = Vec::new();
            id.push_text(&mut out);
            assert_eq!(out, id.to_string().as_bytes());
            assert_eq!(id.text_len(), out.len());
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "+1-2",
            " 1-2",
            "99999999999999999999999-0",
        ] {
            assert_eq!(MessageId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ordering_is_numeric_not_textual() {
        assert!(MessageId::parse("9-0").unwrap() < MessageId::parse("10-0").unwrap());
        assert!(MessageId::parse("10-2").unwrap() < MessageId::parse("10-10").unwrap());
    }
}
