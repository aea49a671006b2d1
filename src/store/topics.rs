//! A topic's other keys: its durable consumer positions (`<prefix>:{<topic>}:c`) and its
//! record (`<prefix>:{<topic>}:t`); reading a topic's state back, what a shard finds at
//! start-up, and record listings.
//!
//! Which topics a shard owns is the caller's rule: scans take a predicate over the topic
//! keys they find (the part between the braces), so this module never decides ownership.

use std::sync::Arc;

use redis::Value;

use super::stream::{entry_id, last_generated_id, stream_field};
use super::{resp, KeyKind, MessageId, Store, StoreError, Ticket, Valkey};
use crate::config::ValkeyMode;

/// A topic's record, as the Topics API shows it and this tier keeps it: its ID, owner,
/// creation time and description. The rules for making and changing one are `topic`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// A UUID4, fixed when the record is created.
    pub topic_id: String,
    /// The token subject that created the topic (explicitly or by publishing first).
    pub owner_id: String,
    pub created_at_ms: u64,
    pub description: Option<String>,
}

/// The order of topic listings: by creation time, then by key.
pub fn by_age(a: (&Arc<str>, &TopicRecord), b: (&Arc<str>, &TopicRecord)) -> std::cmp::Ordering {
    (a.1.created_at_ms, a.0).cmp(&(b.1.created_at_ms, b.0))
}

/// A topic's state as this tier holds it.
#[derive(Debug, Default)]
pub struct StoredTopic {
    /// The stream's last ID (`ZERO` without a stream).
    pub last_id: MessageId,
    /// The stream's oldest entry, if it has any.
    pub first_id: Option<MessageId>,
    /// Durable consumer positions: consumer key → last acknowledged ID.
    pub positions: Vec<(Box<str>, MessageId)>,
    pub record: Option<TopicRecord>,
}

/// What a shard finds in Valkey when it starts.
#[derive(Default)]
pub struct Recovery {
    /// The highest last ID of the shard's streams: new IDs continue above it.
    pub last_id: MessageId,
    /// The topics with durable consumers, with their state (the others are loaded when an
    /// operation needs them).
    pub consumed: Vec<(String, StoredTopic)>,
}

/// Keys asked for per SCAN round trip.
const SCAN_COUNT: usize = 1000;

/// Writes a topic record unless the topic has one: a publish re-creating a topic the owner
/// had dropped from memory must not overwrite the record it had.
const CREATE_RECORD_IF_ABSENT: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then \
     redis.call('HSET', KEYS[1], unpack(ARGV)) return 1 end return 0";

/// Cluster mode's topic deletion: the keys, and the announcement that it was deleted
/// (`SPUBLISH` on a Valkey Cluster, like a publish's, see `announce`).
const DELETE_ANNOUNCED: &str = "redis.call('DEL', unpack(KEYS)) \
     redis.call('PUBLISH', ARGV[1], 'deleted') return 1";
const DELETE_ANNOUNCED_SHARDED: &str = "redis.call('DEL', unpack(KEYS)) \
     redis.call('SPUBLISH', ARGV[1], 'deleted') return 1";

impl Store {
    pub fn save_position(&self, topic: &str, consumer: &str, id: MessageId) {
        if let Some(v) = &self.valkey {
            let cmd = redis::cmd("HSET")
                .arg(v.positions_key(topic))
                .arg(consumer)
                .arg(id.to_string())
                .clone();
            v.link.write(&cmd, false);
        }
    }

    /// Queues the write of `topic`'s record (`name`: the bare name it shows); with
    /// persisted acks, the ticket to wait for. With `if_absent`, the record is written only
    /// if the topic has none in Valkey (the owner made it for a topic it had not loaded).
    pub fn save_topic(
        &self,
        topic: &str,
        name: &str,
        record: &TopicRecord,
        if_absent: bool,
    ) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let mut cmd = if if_absent {
            redis::cmd("EVAL")
                .arg(CREATE_RECORD_IF_ABSENT)
                .arg(1)
                .clone()
        } else {
            redis::cmd("HSET")
        };
        cmd.arg(v.record_key(topic))
            .arg("topic_id")
            .arg(&record.topic_id)
            .arg("topic_name")
            .arg(name)
            .arg("owner_id")
            .arg(&record.owner_id)
            .arg("created_at")
            .arg(record.created_at_ms);
        if let Some(description) = &record.description {
            cmd.arg("description").arg(description);
        }
        v.link.write(&cmd, self.persisted_acks).map(Ticket)
    }

    /// Queues the deletion of everything kept for `topic`: record, stream and positions.
    pub fn delete_topic(&self, topic: &str) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let keys = [
            v.record_key(topic),
            v.stream_key(topic),
            v.positions_key(topic),
            v.last_id_key(topic),
        ];
        let cmd = if self.is_announced() {
            // The other nodes drop what they hold of it, in the order of its messages.
            let script = match v.cfg.mode {
                ValkeyMode::Standalone => DELETE_ANNOUNCED,
                ValkeyMode::Cluster => DELETE_ANNOUNCED_SHARDED,
            };
            redis::cmd("EVAL")
                .arg(script)
                .arg(keys.len())
                .arg(&keys)
                .arg(self.channel(topic).unwrap_or_default())
                .clone()
        } else {
            redis::cmd("DEL").arg(&keys).clone()
        };
        v.link.write(&cmd, self.persisted_acks).map(Ticket)
    }

    /// What a shard needs before it takes publishes: the highest last ID of the streams of
    /// the topics `mine` accepts, and the state of those with durable consumers (for acks
    /// that name no topic).
    pub async fn recover(&self, mine: impl Fn(&str) -> bool) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let Some(v) = &self.valkey else {
            return Ok(recovery);
        };
        let pattern = format!("{}:{{*}}:[sc]", v.prefix);
        let mut cursor = "0".to_string();
        loop {
            let (next, keys) = v.scan(&cursor, &pattern).await?;
            let mut streams = Vec::new();
            for (topic, kind) in keys.iter().filter_map(|k| v.key_of(k)) {
                if !mine(&topic) {
                    continue;
                }
                if kind == KeyKind::Stream {
                    streams.push(
                        redis::cmd("XINFO")
                            .arg("STREAM")
                            .arg(v.stream_key(&topic))
                            .clone(),
                    );
                } else {
                    let stored = v.load(&topic).await?;
                    recovery.consumed.push((topic, stored));
                }
            }
            for info in v.link.read_all(&streams).await? {
                recovery.last_id = recovery.last_id.max(last_generated_id(&info));
            }
            if next == "0" {
                return Ok(recovery);
            }
            cursor = next;
        }
    }

    /// A topic's positions, record and last ID, read (in one round trip) over this shard's
    /// link, so after every write it queued for the topic.
    pub async fn load_topic(&self, topic: &str) -> Result<StoredTopic, StoreError> {
        match &self.valkey {
            Some(v) => v.load(topic).await,
            None => Ok(StoredTopic::default()),
        }
    }

    /// The records of the topics `mine` accepts (owned by `owner_id`, or any with `None`):
    /// the oldest `limit`, oldest first (see [`by_age`]). Empty without a persistent tier.
    pub async fn records(
        &self,
        mine: impl Fn(&str) -> bool,
        owner_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Arc<str>, TopicRecord)>, StoreError> {
        let mut found: Vec<(Arc<str>, TopicRecord)> = Vec::new();
        let Some(v) = &self.valkey else {
            return Ok(found);
        };
        let sort = |found: &mut Vec<(Arc<str>, TopicRecord)>| {
            found.sort_unstable_by(|a, b| by_age((&a.0, &a.1), (&b.0, &b.1)));
            found.truncate(limit);
        };
        let pattern = format!("{}:{{*}}:t", v.prefix);
        let mut cursor = "0".to_string();
        loop {
            let (next, keys) = v.scan(&cursor, &pattern).await?;
            let owned: Vec<String> = keys
                .iter()
                .filter_map(|k| v.key_of(k))
                .filter(|(topic, _)| mine(topic))
                .map(|(topic, _)| topic)
                .collect();
            let reads: Vec<redis::Cmd> = owned
                .iter()
                .map(|topic| redis::cmd("HGETALL").arg(v.record_key(topic)).clone())
                .collect();
            for (topic, reply) in owned.into_iter().zip(v.link.read_all(&reads).await?) {
                let Value::Array(fields) = reply else {
                    continue;
                };
                if let Some(record) = record_from_fields(&fields) {
                    if owner_id.is_none_or(|o| record.owner_id == o) {
                        found.push((Arc::from(topic), record));
                    }
                }
            }
            // Bounded while scanning: never more than twice what is asked for.
            if found.len() > limit.saturating_mul(2) {
                sort(&mut found);
            }
            if next == "0" {
                sort(&mut found);
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// How many of the topics `mine` accepts have a record (0 without a persistent tier).
    pub async fn count_records(&self, mine: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(0);
        };
        let pattern = format!("{}:{{*}}:t", v.prefix);
        let mut cursor = "0".to_string();
        let mut count = 0;
        loop {
            let (next, keys) = v.scan(&cursor, &pattern).await?;
            count += keys
                .iter()
                .filter_map(|k| v.key_of(k))
                .filter(|(topic, _)| mine(topic))
                .count();
            if next == "0" {
                return Ok(count);
            }
            cursor = next;
        }
    }
}

impl Valkey {
    /// One SCAN step: the next cursor and the keys matching `pattern`.
    async fn scan(
        &self,
        cursor: &str,
        pattern: &str,
    ) -> Result<(String, Vec<Vec<u8>>), StoreError> {
        self.link.scan(cursor, pattern, SCAN_COUNT).await
    }

    async fn load(&self, topic: &str) -> Result<StoredTopic, StoreError> {
        let reads = [
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(self.stream_key(topic))
                .clone(),
            redis::cmd("HGETALL").arg(self.positions_key(topic)).clone(),
            redis::cmd("HGETALL").arg(self.record_key(topic)).clone(),
        ];
        let replies = self.link.read_all(&reads).await?;
        let [info, positions, record] = <[Value; 3]>::try_from(replies)
            .map_err(|_| StoreError::Unavailable("missing replies".into()))?;
        let positions = match positions {
            Value::Array(fields) => fields
                .chunks(2)
                .filter_map(|kv| {
                    let consumer = std::str::from_utf8(resp::bytes(&kv[0])?).ok()?;
                    let id = MessageId::parse(std::str::from_utf8(resp::bytes(kv.get(1)?)?).ok()?)?;
                    Some((Box::from(consumer), id))
                })
                .collect(),
            _ => Vec::new(),
        };
        let record = match record {
            Value::Array(fields) => record_from_fields(&fields),
            _ => None,
        };
        Ok(StoredTopic {
            last_id: last_generated_id(&info),
            first_id: stream_field(&info, b"first-entry").and_then(entry_id),
            positions,
            record,
        })
    }
}

/// Rebuilds a record from its hash (`HGETALL` reply); `None` without an ID and owner.
fn record_from_fields(fields: &[Value]) -> Option<TopicRecord> {
    let (mut topic_id, mut owner_id, mut created_at_ms, mut description) = (None, None, 0, None);
    for kv in fields.chunks(2) {
        let (Some(name), Some(value)) = (resp::bytes(&kv[0]), kv.get(1).and_then(resp::bytes))
        else {
            continue;
        };
        let text = String::from_utf8_lossy(value).into_owned();
        match name {
            b"topic_id" => topic_id = Some(text),
            b"owner_id" => owner_id = Some(text),
            b"created_at" => created_at_ms = text.parse().unwrap_or(0),
            b"description" => description = Some(text),
            _ => {}
        }
    }
    Some(TopicRecord {
        topic_id: topic_id?,
        owner_id: owner_id?,
        created_at_ms,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_from_their_hash() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let fields: Vec<Value> = [
            ("topic_id", "6f1c"),
            ("topic_name", "jobs"),
            ("owner_id", "alice"),
            ("created_at", "1731000000123"),
            ("description", "d"),
        ]
        .iter()
        .flat_map(|(k, v)| [bulk(k), bulk(v)])
        .collect();
        let record = record_from_fields(&fields).unwrap();
        assert_eq!(record.topic_id, "6f1c");
        assert_eq!(record.owner_id, "alice");
        assert_eq!(record.created_at_ms, 1_731_000_000_123);
        assert_eq!(record.description.as_deref(), Some("d"));
        assert!(
            record_from_fields(&fields[2..]).is_none(),
            "no topic_id: not a record"
        );
    }

    #[test]
    fn listings_are_ordered_by_age_then_key() {
        let record = |at| TopicRecord {
            topic_id: String::new(),
            owner_id: String::new(),
            created_at_ms: at,
            description: None,
        };
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(by_age((&b, &record(1)), (&a, &record(2))).is_lt());
        assert!(by_age((&a, &record(2)), (&b, &record(2))).is_lt());
    }
}
