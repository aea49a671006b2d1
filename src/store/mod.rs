//! The persistence seam: what the relay keeps beyond the hot tier, and where.
//!
//! With `storage.backend: memory` there is nothing beyond the hot tier and every method
//! here is a no-op or an empty answer. With `valkey`, each shard owns one [`link::Link`]
//! and writes through it only for the topics it owns (the owner is the only writer of a
//! topic's stream); any shard may read any stream for history.
//!
//! Key layout (the `{topic}` hash tag keeps a topic's keys in one Valkey Cluster slot):
//! - `<prefix>:{<topic>}:s` — the topic's stream. Entry ID = message ID; fields `p`
//!   (payload JSON), `t` (timestamp ms), optional `m` (metadata JSON) and `l` (TTL ms).
//!   Written with `XADD … MAXLEN ~ <storage.max_messages_per_topic> <id> …`, and trimmed
//!   to `storage.persistent_tier_retention` with `XTRIM … MINID ~` at most every 10 s per
//!   topic (while the topic is in memory; its owner tracks when).
//! - `<prefix>:{<topic>}:c` — hash of durable consumer positions: consumer key → last
//!   acknowledged message ID.
//! - `<prefix>:{<topic>}:t` — the topic's record (Topics API): fields `topic_id`,
//!   `topic_name` (bare name), `owner_id`, `created_at` (ms) and, when set,
//!   `description`. Deleting a topic deletes all three keys.
//!
//! A topic the owner dropped from memory lives on in these keys: [`Store::load_topic`]
//! reads its positions, record and last ID back before anything depends on them, and
//! record listings ([`Store::records`]) read the records from here.
//! - `<prefix>:{relay}:epoch` — sentinel that reveals a Valkey that lost its data.
//! - `<prefix>:idem:{<subject>}:<endpoint>:<key>` — the first answer to a publish with an
//!   `Idempotency-Key` (see `shard::idempotency::Recorded`), expiring with the window.

pub mod accounts;
pub mod link;
pub mod resp;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::config::{AckMode, Backend, Config};
use crate::metrics::ShardMetrics;
use crate::rt::now_ms;
use crate::shard::idempotency::Scope;
use crate::topic::message::Draft;
use crate::topic::{
    by_age, display_name, owner_of, HistoryRange, Message, MessageId, Stored, TopicRecord,
};
use link::{Link, LinkError, Reply};

/// Why the persistent tier could not take or give something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// `storage.max_pending_writes` writes are already waiting for Valkey.
    BacklogFull,
    /// After a start, the owner is still reading its topics' last IDs from Valkey.
    Recovering,
    Unavailable(String),
    Rejected(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::BacklogFull => f.write_str("too many writes are waiting for Valkey"),
            StoreError::Recovering => {
                f.write_str("the relay is still recovering its topics from Valkey")
            }
            StoreError::Unavailable(e) => write!(f, "Valkey is unavailable: {e}"),
            StoreError::Rejected(e) => write!(f, "Valkey refused the write: {e}"),
        }
    }
}

impl From<LinkError> for StoreError {
    fn from(e: LinkError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Resolves once Valkey confirmed one write.
pub struct Ticket(Reply);

impl Ticket {
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0.take().await? {
            Value::ServerError(e) => {
                let text = resp::server_error(&Value::ServerError(e)).unwrap_or_default();
                // Our IDs are explicit: a retried XADD that Valkey already applied is
                // refused as "equal or smaller than the top item", which means done.
                if text.contains("equal or smaller") {
                    Ok(())
                } else {
                    Err(StoreError::Rejected(text))
                }
            }
            _ => Ok(()),
        }
    }
}

/// What a shard finds in Valkey when it starts.
#[derive(Default)]
pub struct Recovery {
    /// The highest last ID of the shard's streams: new IDs continue above it.
    pub last_id: MessageId,
    /// The topics with durable consumers, with their state (the others are loaded when an
    /// operation needs them).
    pub consumed: Vec<(String, Stored)>,
}

struct Valkey {
    link: Rc<Link>,
    prefix: String,
    max_pending: usize,
    max_len: u64,
    retention_ms: u64,
    /// Stream writes not yet answered, oldest first. The link answers in order and IDs
    /// of one shard only grow, so the front tells how far writes are confirmed.
    unconfirmed: RefCell<VecDeque<(MessageId, Reply)>>,
    confirmed: Cell<MessageId>,
}

/// Stream entries read per XRANGE round trip during a replay.
const HISTORY_PAGE: usize = 1000;
/// Keys asked for per SCAN round trip.
const SCAN_COUNT: usize = 1000;

/// Writes a topic record unless the topic has one: a publish re-creating a topic the owner
/// had dropped from memory must not overwrite the record it had.
const CREATE_RECORD_IF_ABSENT: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then \
     redis.call('HSET', KEYS[1], unpack(ARGV)) return 1 end return 0";

pub struct Store {
    valkey: Option<Valkey>,
    persisted_acks: bool,
}

impl Store {
    pub fn memory() -> Store {
        Store {
            valkey: None,
            persisted_acks: false,
        }
    }

    /// The store for one shard; for Valkey also the link driver, to be spawned.
    pub fn for_shard(
        config: &Config,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
    ) -> (Store, Option<Rc<Link>>) {
        if config.storage.backend == Backend::Memory {
            return (Store::memory(), None);
        }
        let link = Link::new(config.valkey.clone(), shard, Rc::clone(metrics));
        let store = Store {
            valkey: Some(Valkey {
                link: Rc::clone(&link),
                prefix: config.valkey.key_prefix.clone(),
                max_pending: config.storage.max_pending_writes,
                max_len: config.storage.max_messages_per_topic,
                retention_ms: config.storage.persistent_tier_retention.as_millis() as u64,
                unconfirmed: RefCell::new(VecDeque::new()),
                confirmed: Cell::new(MessageId::ZERO),
            }),
            persisted_acks: config.ack_mode() == AckMode::Persisted,
        };
        (store, Some(link))
    }

    pub fn is_persistent(&self) -> bool {
        self.valkey.is_some()
    }

    /// Whether `n` more writes fit in the backlog. Checked before a publish is accepted, so
    /// that a refused publish changes nothing.
    pub fn admit(&self, n: usize) -> Result<(), StoreError> {
        match &self.valkey {
            Some(v) if v.link.pending_writes() + n > v.max_pending => Err(StoreError::BacklogFull),
            _ => Ok(()),
        }
    }

    /// Queues the message's stream write (and, when `trim` says it is due, the stream's
    /// trim by age); with persisted acks, the ticket to wait for.
    pub fn append(&self, msg: &Message, trim: bool) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let key = v.stream_key(&msg.topic);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(v.max_len)
            .arg(msg.id.to_string())
            .arg("p")
            .arg(msg.payload())
            .arg("t")
            .arg(msg.timestamp_ms);
        if let Some(meta) = msg.metadata() {
            cmd.arg("m").arg(meta);
        }
        if let Some(at) = msg.expires_at_ms {
            cmd.arg("l").arg(at.saturating_sub(msg.timestamp_ms));
        }
        let reply = v.link.write(&cmd, true)?;
        v.unconfirmed
            .borrow_mut()
            .push_back((msg.id, Rc::clone(&reply)));
        if trim {
            v.trim_by_time(&key);
        }
        self.persisted_acks.then_some(Ticket(reply))
    }

    /// The newest of this shard's message IDs up to which Valkey has answered every
    /// write; `None` without a persistent tier (everything in memory is all there is).
    pub fn durable_upto(&self) -> Option<MessageId> {
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

    /// Queues `SET <idempotency key> <value> PX <window>`, written by the key's owner
    /// shard; with persisted acks, the ticket to wait for.
    pub fn put_idempotent(&self, scope: &Scope, value: &[u8], window: Duration) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let cmd = redis::cmd("SET")
            .arg(v.idempotency_key(scope))
            .arg(value)
            .arg("PX")
            .arg(window.as_millis() as u64)
            .clone();
        v.link.write(&cmd, self.persisted_acks).map(Ticket)
    }

    /// The answer recorded in Valkey for an idempotency key, if any (always `None` without
    /// a persistent tier). Any shard may read it.
    pub async fn idempotent(&self, scope: &Scope) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(None);
        };
        let cmd = redis::cmd("GET").arg(v.idempotency_key(scope)).clone();
        match v.link.read(&cmd).await? {
            Value::BulkString(value) => Ok(Some(value)),
            Value::Nil => Ok(None),
            other => Err(StoreError::Unavailable(
                resp::server_error(&other).unwrap_or_else(|| "unexpected GET reply".into()),
            )),
        }
    }

    /// Messages of `topic` in `range` from the stream, oldest first, expired ones skipped,
    /// at most `limit`; the flag says whether the range held more. Expired entries do not
    /// count against `limit`: pages are read until `limit` live messages are found or the
    /// range ends, so a run of expired entries cannot stall a reader.
    pub async fn history(
        &self,
        topic: &Arc<str>,
        range: &HistoryRange,
        limit: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
        self.read_range(topic, range, limit, Direction::Forward)
            .await
    }

    /// Like [`Store::history`], newest first (a descending history page).
    pub async fn history_newest_first(
        &self,
        topic: &Arc<str>,
        range: &HistoryRange,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let (messages, _) = self
            .read_range(topic, range, limit, Direction::Backward)
            .await?;
        Ok(messages)
    }

    /// Reads `range` page by page (`XRANGE` forward, `XREVRANGE` backward), each page
    /// starting exclusively after the last entry of the one before.
    async fn read_range(
        &self,
        topic: &Arc<str>,
        range: &HistoryRange,
        limit: usize,
        direction: Direction,
    ) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
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
        let mut messages = Vec::new();
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
            for entry in &entries {
                let Some(msg) = entry_to_message(topic, entry) else {
                    // Not one of ours (no payload): step over it.
                    last = entry_id(entry).or(last);
                    continue;
                };
                last = Some(msg.id);
                if msg.is_expired(now) {
                    continue;
                }
                if messages.len() == limit {
                    return Ok((messages, true));
                }
                messages.push(msg);
            }
            if entries.len() < page || last == page_start {
                return Ok((messages, false));
            }
        }
    }

    /// Queues the write of a topic's record; with persisted acks, the ticket to wait for.
    /// With `if_absent`, the record is written only if the topic has none in Valkey (the
    /// owner made it for a topic it had not loaded).
    pub fn save_topic(&self, topic: &str, record: &TopicRecord, if_absent: bool) -> Option<Ticket> {
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
            .arg(display_name(topic))
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
        let cmd = redis::cmd("DEL")
            .arg(v.record_key(topic))
            .arg(v.stream_key(topic))
            .arg(v.positions_key(topic))
            .clone();
        v.link.write(&cmd, self.persisted_acks).map(Ticket)
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

    /// What a shard needs before it takes publishes: the highest last ID of its streams,
    /// and the state of its topics with durable consumers (for acks that name no topic).
    pub async fn recover(&self, shard: usize, shards: usize) -> Result<Recovery, StoreError> {
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
                if owner_of(&topic, shards) != shard {
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
    pub async fn load_topic(&self, topic: &str) -> Result<Stored, StoreError> {
        match &self.valkey {
            Some(v) => v.load(topic).await,
            None => Ok(Stored::default()),
        }
    }

    /// The records of this shard's topics (owned by `owner_id`, or any with `None`): the
    /// oldest `limit`, oldest first (see [`by_age`]). Empty without a persistent tier.
    pub async fn records(
        &self,
        shard: usize,
        shards: usize,
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
                .filter(|(topic, _)| owner_of(topic, shards) == shard)
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

    /// How many of this shard's topics have a record (0 without a persistent tier).
    pub async fn count_records(&self, shard: usize, shards: usize) -> Result<usize, StoreError> {
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
                .filter(|(topic, _)| owner_of(topic, shards) == shard)
                .count();
            if next == "0" {
                return Ok(count);
            }
            cursor = next;
        }
    }

    /// `Err` with the reason while the persistent tier cannot take writes.
    pub fn health(&self) -> Result<(), String> {
        match &self.valkey {
            Some(v) if !v.link.is_up() => Err(format!(
                "Valkey is unreachable ({} writes waiting)",
                v.link.pending_writes()
            )),
            _ => Ok(()),
        }
    }

    pub fn link_up(&self) -> bool {
        self.valkey.as_ref().is_some_and(|v| v.link.is_up())
    }

    pub fn pending_writes(&self) -> usize {
        self.valkey.as_ref().map_or(0, |v| v.link.pending_writes())
    }
}

impl Valkey {
    fn stream_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:s", self.prefix)
    }

    fn positions_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:c", self.prefix)
    }

    fn idempotency_key(&self, scope: &Scope) -> String {
        format!(
            "{}:idem:{{{}}}:{}:{}",
            self.prefix,
            scope.subject,
            scope.endpoint.name(),
            scope.key
        )
    }

    fn record_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:t", self.prefix)
    }

    /// The topic and kind of one of our topic keys.
    fn key_of(&self, key: &[u8]) -> Option<(String, KeyKind)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let (topic, suffix) = rest.rsplit_once("}:")?;
        let kind = match suffix {
            "s" => KeyKind::Stream,
            "c" => KeyKind::Positions,
            "t" => KeyKind::Record,
            _ => return None,
        };
        crate::topic::valid_topic_key(topic).then(|| (topic.to_string(), kind))
    }

    /// One SCAN step: the next cursor and the keys matching `pattern`.
    async fn scan(
        &self,
        cursor: &str,
        pattern: &str,
    ) -> Result<(String, Vec<Vec<u8>>), StoreError> {
        let scan = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .clone();
        let Value::Array(mut parts) = self.link.read(&scan).await? else {
            return Err(StoreError::Unavailable("unexpected SCAN reply".into()));
        };
        let keys = match parts.pop() {
            Some(Value::Array(keys)) if parts.len() == 1 => keys,
            _ => return Err(StoreError::Unavailable("unexpected SCAN reply".into())),
        };
        let next = String::from_utf8_lossy(resp::bytes(&parts[0]).unwrap_or(b"0")).into_owned();
        let keys = keys
            .iter()
            .filter_map(resp::bytes)
            .map(<[u8]>::to_vec)
            .collect();
        Ok((next, keys))
    }

    fn trim_by_time(&self, key: &str) {
        let min_id = now_ms().saturating_sub(self.retention_ms);
        let cmd = redis::cmd("XTRIM")
            .arg(key)
            .arg("MINID")
            .arg("~")
            .arg(min_id)
            .clone();
        self.link.write(&cmd, false);
    }

    async fn load(&self, topic: &str) -> Result<Stored, StoreError> {
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
        Ok(Stored {
            last_id: last_generated_id(&info),
            first_id: stream_field(&info, b"first-entry").and_then(entry_id),
            positions,
            record,
        })
    }
}

/// Which of a topic's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Stream,
    Positions,
    Record,
}

/// A field of an `XINFO STREAM` reply; `None` without a stream (only positions or a
/// record: nothing was ever kept for the topic's messages).
fn stream_field<'a>(info: &'a Value, name: &[u8]) -> Option<&'a Value> {
    let Value::Array(fields) = info else {
        return None;
    };
    fields
        .chunks(2)
        .find(|kv| resp::bytes(&kv[0]) == Some(name))
        .and_then(|kv| kv.get(1))
}

/// The `last-generated-id` of an `XINFO STREAM` reply; `ZERO` without a stream.
fn last_generated_id(info: &Value) -> MessageId {
    stream_field(info, b"last-generated-id")
        .and_then(resp::bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(MessageId::parse)
        .unwrap_or(MessageId::ZERO)
}

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
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

fn entry_id(entry: &Value) -> Option<MessageId> {
    let Value::Array(parts) = entry else {
        return None;
    };
    MessageId::parse(std::str::from_utf8(resp::bytes(parts.first()?)?).ok()?)
}

/// Rebuilds a message from a stream entry `[id, [field, value, …]]`.
fn entry_to_message(topic: &Arc<str>, entry: &Value) -> Option<Arc<Message>> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = MessageId::parse(std::str::from_utf8(resp::bytes(parts.first()?)?).ok()?)?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let (mut payload, mut metadata, mut timestamp, mut ttl) = (None, None, id.ms, None);
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
            b"t" => timestamp = number().unwrap_or(id.ms),
            b"l" => ttl = number(),
            _ => {}
        }
    }
    let draft = Draft {
        topic,
        payload: payload?,
        metadata,
        ttl_ms: ttl,
    };
    Some(Arc::new(Message::build(
        id,
        Arc::clone(topic),
        timestamp,
        &draft,
    )))
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
    fn stream_entries_become_the_same_delivery() {
        let topic: Arc<str> = Arc::from("jobs");
        let msg = entry_to_message(
            &topic,
            &entry(
                "1000-2",
                &[
                    ("p", r#"{"a": 1.50}"#),
                    ("t", "999"),
                    ("m", r#"{"k":"v"}"#),
                    ("l", "5000"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(msg.id, MessageId::new(1000, 2));
        assert_eq!(msg.payload(), br#"{"a": 1.50}"#);
        assert_eq!(msg.metadata(), Some(&br#"{"k":"v"}"#[..]));
        assert_eq!(msg.timestamp_ms, 999);
        assert_eq!(msg.expires_at_ms, Some(5999));
        let direct = Message::build(
            MessageId::new(1000, 2),
            Arc::clone(&topic),
            999,
            &Draft {
                topic: "jobs",
                payload: br#"{"a": 1.50}"#,
                metadata: Some(br#"{"k":"v"}"#),
                ttl_ms: Some(5000),
            },
        );
        assert_eq!(msg.ws_frame(), direct.ws_frame());
    }

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
    fn entries_without_payload_are_skipped() {
        let topic: Arc<str> = Arc::from("jobs");
        assert!(entry_to_message(&topic, &entry("1-0", &[("t", "1")])).is_none());
    }

    #[test]
    fn keys_map_back_to_topics() {
        let (store, _) = Store::for_shard(
            &Config {
                storage: crate::config::StorageConfig {
                    backend: Backend::Valkey,
                    ..Default::default()
                },
                ..Default::default()
            },
            0,
            &Rc::new(ShardMetrics::default()),
        );
        let v = store.valkey.as_ref().unwrap();
        assert_eq!(v.stream_key("a.b"), "pulsar:{a.b}:s");
        let key = |k: &[u8]| v.key_of(k);
        assert_eq!(
            key(b"pulsar:{a.b}:s"),
            Some(("a.b".into(), KeyKind::Stream))
        );
        assert_eq!(
            key(b"pulsar:{a.b}:c"),
            Some(("a.b".into(), KeyKind::Positions))
        );
        assert_eq!(
            key(b"pulsar:{u/a.b}:t"),
            Some(("u/a.b".into(), KeyKind::Record))
        );
        assert_eq!(v.record_key("u/a.b"), "pulsar:{u/a.b}:t");
        assert_eq!(key(b"pulsar:{relay}:epoch"), None);
        assert_eq!(key(b"other:{a}:s"), None);
    }
}
