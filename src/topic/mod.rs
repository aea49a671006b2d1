//! Topics: who owns them, their IDs, their hot-tier rings and consumer positions.
//!
//! Ownership is `owner_of(topic) = fnv1a64(topic) % shards`, a fixed hash so that every
//! shard (and every restart) agrees without coordination. A [`TopicTable`] holds the
//! topics one shard owns and is touched only by that shard's executor; everything another
//! shard wants from it arrives as a message through `shard::mesh`. The table never does
//! I/O: persistence is the caller's business through `store`.

pub mod id;
pub mod message;
pub mod record;
pub mod ring;
pub mod subscribers;

use std::collections::HashMap;
use std::sync::Arc;

pub use id::{Cursor, IdClock, MessageId};
pub use message::{Draft, Message};
pub use record::TopicRecord;
use ring::Ring;

/// The shard that owns `topic`. FNV-1a is stable across builds and platforms, unlike the
/// randomly seeded std hasher, and is cheap for the short names topics have.
pub fn owner_of(topic: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// Topic names: 1–255 bytes of ASCII letters, digits and `_ - . :`. The delivery JSON is
/// assembled without escaping on the strength of this rule.
pub fn valid_topic_name(topic: &str) -> bool {
    (1..=255).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Joins a namespace (a token subject, with `server.topic_namespace: per_user`) to a bare
/// topic name in a topic key; bare names never contain it.
pub const NAMESPACE_SEPARATOR: char = '/';

/// The key of topic `name` in `namespace` (`None`: the global namespace).
pub fn topic_key(namespace: Option<&str>, name: &str) -> Arc<str> {
    match namespace {
        None => Arc::from(name),
        Some(ns) => Arc::from(format!("{ns}{NAMESPACE_SEPARATOR}{name}")),
    }
}

/// The bare name a topic key shows on the wire: consumers in a namespace never see it.
pub fn display_name(key: &str) -> &str {
    key.rsplit(NAMESPACE_SEPARATOR).next().unwrap_or(key)
}

/// Namespaces are token subjects; these keep a key printable and its Valkey hash tag
/// (`{…}`) intact.
pub fn valid_namespace(ns: &str) -> bool {
    (1..=200).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'"' | b'\\'))
}

/// A topic key: a valid name, optionally behind a valid namespace.
pub fn valid_topic_key(key: &str) -> bool {
    match key.rsplit_once(NAMESPACE_SEPARATOR) {
        Some((ns, name)) => valid_namespace(ns) && valid_topic_name(name),
        None => valid_topic_name(key),
    }
}

/// A set of shard indexes (the shards with local subscribers for a topic).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ShardSet(u128);

impl ShardSet {
    pub const MAX_SHARDS: usize = 128;

    pub fn insert(&mut self, shard: usize) {
        self.0 |= 1 << shard;
    }

    pub fn remove(&mut self, shard: usize) {
        self.0 &= !(1 << shard);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..Self::MAX_SHARDS).filter(move |s| self.0 & (1 << s) != 0)
    }
}

/// Identifies a durable consumer: the token subject and the client-chosen `client_id`.
pub type ConsumerKey = Box<str>;

pub fn consumer_key(subject: &str, client_id: &str) -> ConsumerKey {
    format!("{subject}\u{0}{client_id}").into_boxed_str()
}

struct Topic {
    name: Arc<str>,
    last_id: MessageId,
    ring: Ring,
    interested: ShardSet,
    /// Last acknowledged message per durable consumer of this topic.
    positions: HashMap<ConsumerKey, MessageId>,
    last_publish_ms: u64,
    /// Messages older than the ring's oldest may exist (evicted, or from before a
    /// restart): only then is the persistent tier worth asking.
    has_older: bool,
    /// What the Topics API shows; `None` until the topic is created or first published
    /// to (subscribers alone do not make one).
    record: Option<TopicRecord>,
}

impl Topic {
    /// The span of the stream older than the ring that a reader starting after `after`
    /// still needs (`None` when the ring covers it, or there is no persistent tier).
    fn older_than_ring(&self, persistent: bool, after: Option<MessageId>) -> Option<HistoryRange> {
        if !persistent || !self.has_older {
            return None;
        }
        let (until, until_inclusive) = self.ring_boundary();
        after.is_none_or(|s| s < until).then_some(HistoryRange {
            after,
            until,
            until_inclusive,
        })
    }

    /// Where the ring starts: its oldest message (exclusive for a stream read), or, when
    /// the ring is empty, the topic's last ID (inclusive).
    fn ring_boundary(&self) -> (MessageId, bool) {
        match self.ring.oldest_id() {
            Some(oldest) => (oldest, false),
            None => (self.last_id, true),
        }
    }
}

/// Whether the ring's oldest message may go: it exists and is persisted (or there is no
/// persistent tier).
fn evictable(ring: &Ring, durable: Option<MessageId>) -> bool {
    match (ring.oldest_id(), durable) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(oldest), Some(upto)) => oldest <= upto,
    }
}

/// The order of topic listings: by creation time, then by key.
pub fn by_age(a: (&Arc<str>, &TopicRecord), b: (&Arc<str>, &TopicRecord)) -> std::cmp::Ordering {
    (a.1.created_at_ms, a.0).cmp(&(b.1.created_at_ms, b.0))
}

/// `span` cut to what lies strictly before `cursor`; `None` when nothing can.
fn below(span: HistoryRange, cursor: Option<MessageId>) -> Option<HistoryRange> {
    match cursor {
        Some(MessageId::ZERO) => None,
        Some(c) if c <= span.until => Some(HistoryRange {
            until: c,
            until_inclusive: false,
            ..span
        }),
        _ => Some(span),
    }
}

/// The answer of [`TopicTable::locate`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Located {
    pub held: Vec<Arc<str>>,
    pub maybe: Vec<Arc<str>>,
}

/// Limits of the hot tier on one shard.
#[derive(Clone, Copy, Debug)]
pub struct RingLimits {
    pub messages_per_topic: usize,
    pub max_bytes: usize,
}

/// What a subscriber gets when it registers with the owner: the retained messages after
/// its starting point, taken at the same instant the interest was registered, so that
/// snapshot plus live deliveries have no gap.
#[derive(Debug)]
pub struct Snapshot {
    pub backlog: Vec<Arc<Message>>,
    /// More retained messages than the requested limit.
    pub truncated: bool,
    /// Older messages the ring no longer holds but the persistent tier may: to be read
    /// (by the subscriber's shard) and delivered before `backlog`.
    pub history: Option<HistoryRange>,
}

/// A span of a topic's stream between a cursor and the start of the hot ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRange {
    /// Exclusive start; `None` = from the oldest entry.
    pub after: Option<MessageId>,
    pub until: MessageId,
    pub until_inclusive: bool,
}

/// What [`TopicTable::publish`] did.
pub struct Published {
    pub msg: Arc<Message>,
    /// The shards with subscribers for the topic.
    pub interested: ShardSet,
    /// The topic has no record yet: the publisher's should be made
    /// ([`TopicTable::ensure_record`]); known here without a second lookup per message.
    pub unrecorded: bool,
}

/// Which way a history page runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Oldest first; a cursor means "strictly newer than".
    Asc,
    /// Newest first; a cursor means "strictly older than".
    Desc,
}

/// One page of a topic's history as the owner can give it: the part its ring holds, and
/// the span of the stream the requesting shard must read to complete it.
#[derive(Debug)]
pub struct HistoryPage {
    /// In page order, at most the page size.
    pub ring: Vec<Arc<Message>>,
    /// Older than everything in the ring. With [`Order::Asc`] its messages come before
    /// `ring` (and the page is cut to size after them); with [`Order::Desc`] they fill
    /// what room `ring` left, newest first.
    pub stream: Option<HistoryRange>,
}

pub struct TopicTable {
    topics: HashMap<Arc<str>, Topic>,
    clock: IdClock,
    /// The persistent tier's confirmed watermark at the last publish.
    durable: Option<MessageId>,
    bytes: usize,
    limits: RingLimits,
    /// A persistent tier holds what the rings evicted.
    persistent: bool,
}

impl TopicTable {
    pub fn new(limits: RingLimits, persistent: bool, clock: IdClock) -> Self {
        TopicTable {
            topics: HashMap::new(),
            clock,
            durable: None,
            bytes: 0,
            limits,
            persistent,
        }
    }

    /// Reinstates a topic found in the persistent tier at start-up: new IDs continue after
    /// `last_id`, and durable consumers resume from their positions.
    pub fn restore(
        &mut self,
        name: &str,
        last_id: MessageId,
        positions: Vec<(ConsumerKey, MessageId)>,
    ) {
        self.clock.advance_past(last_id);
        let topic = self.topic_mut(name);
        topic.last_id = topic.last_id.max(last_id);
        topic.has_older |= last_id > MessageId::ZERO;
        topic.positions.extend(positions);
    }

    fn topic_mut(&mut self, name: &str) -> &mut Topic {
        if !self.topics.contains_key(name) {
            let name: Arc<str> = Arc::from(name);
            self.topics.insert(
                Arc::clone(&name),
                Topic {
                    name,
                    last_id: MessageId::ZERO,
                    ring: Ring::default(),
                    interested: ShardSet::default(),
                    positions: HashMap::new(),
                    last_publish_ms: 0,
                    has_older: false,
                    record: None,
                },
            );
        }
        self.topics.get_mut(name).expect("inserted above")
    }

    /// Assigns the next ID, appends to the ring and returns the message together with the
    /// shards that must receive it (and whether the topic still lacks its record).
    ///
    /// `durable` is how far the persistent tier has confirmed this shard's writes (`None`
    /// without one): a message newer than that is not evicted, since it would then be in
    /// neither tier and a replay would skip it.
    pub fn publish(
        &mut self,
        draft: &Draft<'_>,
        now_ms: u64,
        durable: Option<MessageId>,
    ) -> Published {
        self.durable = durable;
        let per_topic = self.limits.messages_per_topic;
        let id = self.clock.next(now_ms);
        let topic = self.topic_mut(draft.topic);
        topic.last_id = id;
        topic.last_publish_ms = now_ms;
        let mut msg = Message::build(id, Arc::clone(&topic.name), now_ms, draft);
        msg.accepted_at = Some(std::time::Instant::now());
        let msg = Arc::new(msg);
        let added = msg.footprint();
        topic.ring.push(Arc::clone(&msg));
        let mut freed = 0;
        while topic.ring.len() > per_topic && evictable(&topic.ring, durable) {
            freed += topic.ring.pop_oldest();
            topic.has_older = true;
        }
        let interested = topic.interested;
        let unrecorded = topic.record.is_none();
        self.bytes = self.bytes + added - freed;
        if self.bytes > self.limits.max_bytes {
            self.evict_to_budget();
        }
        Published {
            msg,
            interested,
            unrecorded,
        }
    }

    /// Frees ring space until the shard is under 90% of its byte budget, oldest messages of
    /// the least recently published topics first. Batched so the scan amortizes.
    fn evict_to_budget(&mut self) {
        let target = self.limits.max_bytes / 10 * 9;
        let mut by_age: Vec<(u64, Arc<str>)> = self
            .topics
            .values()
            .filter(|t| !t.ring.is_empty())
            .map(|t| (t.last_publish_ms, Arc::clone(&t.name)))
            .collect();
        by_age.sort_unstable();
        for (_, name) in by_age {
            let Some(topic) = self.topics.get_mut(&name) else {
                continue;
            };
            while self.bytes > target && evictable(&topic.ring, self.durable) {
                self.bytes -= topic.ring.pop_oldest();
                topic.has_older = true;
            }
            if self.bytes <= target {
                return;
            }
        }
    }

    /// Registers `shard` as interested in `topic` and returns the snapshot after the
    /// subscriber's starting point. With a consumer key and a live cursor, the consumer's
    /// stored position is the starting point; a consumer seen for the first time starts at
    /// the current head so that what it is sent from now on is redelivered until acked.
    /// The second value is a consumer position this call created (to be persisted).
    pub fn subscribe(
        &mut self,
        name: &str,
        shard: usize,
        cursor: &Cursor,
        consumer: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> (Snapshot, Option<MessageId>) {
        let persistent = self.persistent;
        let topic = self.topic_mut(name);
        topic.interested.insert(shard);
        let head = topic.last_id;
        let start = match cursor {
            Cursor::Live => Some(head),
            Cursor::Earliest => None,
            Cursor::After(id) => Some(*id),
        };
        let mut created = None;
        let start = match consumer {
            Some(key) => match topic.positions.get(key) {
                Some(position) if *cursor == Cursor::Live => Some(*position),
                Some(_) => start,
                None => {
                    let position = start.unwrap_or(MessageId::ZERO);
                    topic.positions.insert(key.into(), position);
                    created = Some(position);
                    start
                }
            },
            None => start,
        };
        let (backlog, truncated) = topic.ring.read_after(start, now_ms, limit);
        let history = topic.older_than_ring(persistent, start);
        let snapshot = Snapshot {
            backlog,
            truncated,
            history,
        };
        (snapshot, created)
    }

    pub fn drop_interest(&mut self, name: &str, shard: usize) {
        if let Some(topic) = self.topics.get_mut(name) {
            topic.interested.remove(shard);
        }
    }

    /// Where `id` may be, among `candidates` (all of this shard's topics the consumer
    /// reads, when `None`): the topics whose ring holds it, and the topics that may hold it
    /// beyond their ring (after the consumer's position, up to the topic's last ID, older
    /// than the ring; only the persistent tier can tell).
    pub fn locate(
        &self,
        consumer: &str,
        id: MessageId,
        candidates: Option<&[Box<str>]>,
    ) -> Located {
        let topics: Vec<&Topic> = match candidates {
            Some(list) => list.iter().filter_map(|n| self.topics.get(&**n)).collect(),
            None => self
                .topics
                .values()
                .filter(|t| t.positions.contains_key(consumer))
                .collect(),
        };
        let mut found = Located::default();
        for t in topics {
            if t.ring.contains(id) {
                found.held.push(Arc::clone(&t.name));
            } else if self.persistent
                && t.has_older
                && id <= t.last_id
                && t.ring.oldest_id().is_none_or(|oldest| id < oldest)
                && t.positions.get(consumer).is_none_or(|p| *p < id)
            {
                found.maybe.push(Arc::clone(&t.name));
            }
        }
        found
    }

    /// Advances a consumer's position in `topic` to `id`. Acks are cumulative: they
    /// acknowledge everything before `id` in that topic too. `None` if the topic never had
    /// a message with an ID that high; otherwise whether the position moved.
    pub fn ack(&mut self, consumer: &str, topic: &str, id: MessageId) -> Option<bool> {
        let topic = self.topics.get_mut(topic)?;
        if id > topic.last_id || id == MessageId::ZERO {
            return None;
        }
        let position = topic
            .positions
            .entry(consumer.into())
            .or_insert(MessageId::ZERO);
        let moved = id > *position;
        if moved {
            *position = id;
        }
        Some(moved)
    }

    /// The record of `name`, if it has one.
    pub fn record(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)?.record.as_ref()
    }

    /// Gives `name` the record `make` builds if it has none yet (a publish creating its
    /// topic); returns the new record.
    pub fn ensure_record(
        &mut self,
        name: &str,
        make: impl FnOnce() -> TopicRecord,
    ) -> Option<&TopicRecord> {
        let topic = self.topics.get_mut(name)?;
        if topic.record.is_some() {
            return None;
        }
        Some(topic.record.insert(make()))
    }

    /// Creates the record of `name`; `Err` with the existing one if it already has one.
    pub fn create_record(
        &mut self,
        name: &str,
        record: TopicRecord,
    ) -> Result<&TopicRecord, &TopicRecord> {
        let topic = self.topic_mut(name);
        match topic.record {
            Some(ref existing) => Err(existing),
            None => Ok(topic.record.insert(record)),
        }
    }

    /// The record of `name` for changing it.
    pub fn record_mut(&mut self, name: &str) -> Option<&mut TopicRecord> {
        self.topics.get_mut(name)?.record.as_mut()
    }

    /// Reinstates a record found in the persistent tier at start-up.
    pub fn restore_record(&mut self, name: &str, record: TopicRecord) {
        self.topic_mut(name).record = Some(record);
    }

    /// Deletes the topic: its record, its retained messages and its consumer positions.
    /// Subscribers stay registered (the entry survives while there are any) and IDs keep
    /// growing: the shard's clock is not reset. False when `name` has no record.
    pub fn delete(&mut self, name: &str) -> bool {
        let Some(topic) = self.topics.get_mut(name) else {
            return false;
        };
        if topic.record.take().is_none() {
            return false;
        }
        self.bytes -= topic.ring.bytes();
        topic.ring = Ring::default();
        topic.has_older = false;
        topic.positions = HashMap::new();
        if topic.interested.is_empty() {
            self.topics.remove(name);
        }
        true
    }

    /// Every topic of this shard that has a record, with it.
    pub fn records(&self) -> impl Iterator<Item = (&Arc<str>, &TopicRecord)> {
        self.topics
            .values()
            .filter_map(|t| t.record.as_ref().map(|r| (&t.name, r)))
    }

    /// The oldest `limit` records `owner_id` owns here, oldest first (see [`by_age`]).
    pub fn owned_by(&self, owner_id: Option<&str>, limit: usize) -> Vec<(Arc<str>, TopicRecord)> {
        let mut owned: Vec<(&Arc<str>, &TopicRecord)> = self
            .records()
            .filter(|(_, r)| owner_id.is_none_or(|o| *r.owner_id == *o))
            .collect();
        owned.sort_unstable_by(|a, b| by_age((a.0, a.1), (b.0, b.1)));
        owned
            .into_iter()
            .take(limit)
            .map(|(key, r)| (Arc::clone(key), r.clone()))
            .collect()
    }

    /// A page of at most `limit` live messages of `name` after (`Asc`) or before (`Desc`)
    /// the exclusive `cursor`; `None` when the topic has no record.
    pub fn history_page(
        &self,
        name: &str,
        order: Order,
        cursor: Option<MessageId>,
        limit: usize,
        now_ms: u64,
    ) -> Option<HistoryPage> {
        let topic = self.topics.get(name)?;
        topic.record.as_ref()?;
        Some(match order {
            Order::Asc => HistoryPage {
                ring: topic.ring.read_after(cursor, now_ms, limit).0,
                stream: topic.older_than_ring(self.persistent, cursor),
            },
            Order::Desc => {
                let ring = topic.ring.read_before(cursor, now_ms, limit);
                let stream = if ring.len() < limit {
                    topic
                        .older_than_ring(self.persistent, None)
                        .and_then(|span| below(span, cursor))
                } else {
                    None
                };
                HistoryPage { ring, stream }
            }
        })
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_show_their_bare_name() {
        let key = topic_key(Some("3f2a-uuid"), "jobs");
        assert_eq!(&*key, "3f2a-uuid/jobs");
        assert_eq!(display_name(&key), "jobs");
        assert_eq!(display_name("jobs"), "jobs");
        assert!(valid_topic_key(&key));
        assert!(valid_topic_key("jobs.a"));
        assert!(
            !valid_topic_key("a/b/"),
            "the bare part must be a valid name"
        );
        assert!(
            !valid_topic_key("{x}/jobs"),
            "braces would break the Valkey hash tag"
        );
        assert!(!valid_topic_key("/jobs"));
    }

    fn table(per_topic: usize, max_bytes: usize, persistent: bool) -> TopicTable {
        TopicTable::new(
            RingLimits {
                messages_per_topic: per_topic,
                max_bytes,
            },
            persistent,
            IdClock::new(0, 1),
        )
    }

    fn publish(t: &mut TopicTable, topic: &str, now: u64) -> Arc<Message> {
        let draft = Draft {
            topic,
            payload: b"{}",
            metadata: None,
            ttl_ms: None,
        };
        t.publish(&draft, now, None).msg
    }

    fn ids(snapshot: &Snapshot) -> Vec<MessageId> {
        snapshot.backlog.iter().map(|m| m.id).collect()
    }

    #[test]
    fn owner_hash_is_stable_and_spreads() {
        // Fixed values: changing the hash would move topics between shards on upgrade.
        assert_eq!(owner_of("jobs", 2), owner_of("jobs", 2));
        assert_eq!(owner_of("", 7), 0xcbf2_9ce4_8422_2325u64 as usize % 7);
        let on_zero = (0..100)
            .filter(|i| owner_of(&format!("t{i}"), 2) == 0)
            .count();
        assert!((30..=70).contains(&on_zero), "{on_zero} of 100 on shard 0");
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a.b-c_d:1"));
        assert!(valid_topic_name(&"x".repeat(255)));
        assert!(!valid_topic_name(&"x".repeat(256)));
        for bad in ["", "a b", "a/b", "é", "a\"b", "a{b}"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ids_increase_per_topic_even_within_one_millisecond() {
        let mut t = table(100, 1 << 20, false);
        let a = publish(&mut t, "x", 5).id;
        let b = publish(&mut t, "x", 5).id;
        let c = publish(&mut t, "x", 4).id;
        assert!(a < b && b < c, "{a} {b} {c}");
        let other = publish(&mut t, "y", 5).id;
        assert!(
            other > c,
            "one clock for all of the shard's topics: IDs are unique"
        );
    }

    #[test]
    fn interest_is_per_shard_and_reported_with_each_publish() {
        let mut t = table(100, 1 << 20, false);
        t.subscribe("x", 1, &Cursor::Live, None, 0, 10);
        let draft = Draft {
            topic: "x",
            payload: b"1",
            metadata: None,
            ttl_ms: None,
        };
        assert_eq!(
            t.publish(&draft, 1, None)
                .interested
                .iter()
                .collect::<Vec<_>>(),
            [1]
        );
        t.drop_interest("x", 1);
        assert!(t.publish(&draft, 2, None).interested.is_empty());
    }

    #[test]
    fn cursors_select_the_snapshot() {
        let mut t = table(100, 1 << 20, false);
        let m: Vec<_> = (1..=4).map(|i| publish(&mut t, "x", i).id).collect();
        let (live, _) = t.subscribe("x", 0, &Cursor::Live, None, 10, 100);
        assert!(live.backlog.is_empty());
        let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
        assert_eq!(ids(&all), m);
        let (after, _) = t.subscribe("x", 0, &Cursor::After(m[1]), None, 10, 100);
        assert_eq!(ids(&after), &m[2..]);
        assert!(after.history.is_none(), "memory backend has no history");
    }

    #[test]
    fn ring_is_bounded_by_count() {
        let mut t = table(3, 1 << 20, false);
        for i in 1..=5 {
            publish(&mut t, "x", i);
        }
        let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
        assert_eq!(all.backlog.len(), 3);
        assert_eq!(all.backlog[0].id, MessageId::new(3, 0));
    }

    #[test]
    fn unpersisted_messages_are_not_evicted() {
        let mut t = table(2, 1 << 20, true);
        let draft = Draft {
            topic: "x",
            payload: b"{}",
            metadata: None,
            ttl_ms: None,
        };
        let first = t.publish(&draft, 1, Some(MessageId::ZERO)).msg.id;
        for ms in 2..=4 {
            t.publish(&draft, ms, Some(MessageId::ZERO));
        }
        let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
        assert_eq!(
            all.backlog.len(),
            4,
            "nothing confirmed: the ring keeps all"
        );
        t.publish(&draft, 5, Some(first));
        let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
        assert_eq!(all.backlog.len(), 4, "only the confirmed one could go");
        assert!(all.backlog.iter().all(|m| m.id != first));
    }

    #[test]
    fn byte_budget_evicts_the_coldest_topic_first() {
        let size = {
            let mut probe = table(100, 1 << 20, false);
            publish(&mut probe, "cold", 1).footprint()
        };
        let mut t = table(100, size * 10, false);
        for i in 0..5 {
            publish(&mut t, "cold", i);
        }
        for i in 10..16 {
            publish(&mut t, "hot", i);
        }
        assert!(t.bytes() <= size * 10);
        let (cold, _) = t.subscribe("cold", 0, &Cursor::Earliest, None, 100, 100);
        let (hot, _) = t.subscribe("hot", 0, &Cursor::Earliest, None, 100, 100);
        assert_eq!(
            hot.backlog.len(),
            6,
            "the recently published topic keeps everything"
        );
        assert!(
            cold.backlog.len() < 5,
            "the cold topic paid for the overflow"
        );
    }

    #[test]
    fn a_new_consumer_starts_at_the_head_and_resumes_after_its_ack() {
        let mut t = table(100, 1 << 20, false);
        publish(&mut t, "x", 1);
        let (first, created) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 2, 100);
        assert!(first.backlog.is_empty());
        assert_eq!(created, Some(MessageId::new(1, 0)));
        let a = publish(&mut t, "x", 3).id;
        let b = publish(&mut t, "x", 4).id;
        // Not acknowledged yet: a reconnect gets both again.
        let (again, created) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 5, 100);
        assert_eq!(ids(&again), [a, b]);
        assert_eq!(created, None);
        assert_eq!(t.locate("c", a, None).held, [Arc::<str>::from("x")]);
        assert_eq!(
            t.locate("other", a, None),
            Located::default(),
            "not this consumer's topic"
        );
        assert_eq!(
            t.locate("c", MessageId::new(3, 7), None),
            Located::default(),
            "no such ID"
        );
        assert_eq!(t.ack("c", "x", a), Some(true));
        assert_eq!(t.ack("c", "x", a), Some(false), "idempotent");
        let (resumed, _) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 6, 100);
        assert_eq!(ids(&resumed), [b]);
        assert_eq!(
            t.ack("c", "x", MessageId::new(99, 0)),
            None,
            "beyond the topic's last ID"
        );
        assert_eq!(t.ack("c", "nope", a), None, "unknown topic");
    }

    fn record() -> TopicRecord {
        TopicRecord::new("alice", 1, None)
    }

    #[test]
    fn records_are_created_once_and_only_on_request() {
        let mut t = table(100, 1 << 20, false);
        t.subscribe("x", 0, &Cursor::Live, None, 0, 10);
        publish(&mut t, "x", 1);
        assert!(
            t.record("x").is_none(),
            "neither subscribers nor the table make one"
        );
        assert!(t.history_page("x", Order::Desc, None, 10, 2).is_none());
        let first = t.create_record("x", record()).unwrap().clone();
        assert_eq!(t.create_record("x", record()).unwrap_err(), &first);
        assert!(
            t.ensure_record("x", record).is_none(),
            "an existing record stays"
        );
        assert!(t.ensure_record("y", record).is_none(), "no such topic");
        publish(&mut t, "y", 3);
        assert!(t.ensure_record("y", record).is_some());
        assert_eq!(t.records().count(), 2);
    }

    #[test]
    fn owned_records_are_listed_oldest_first_and_bounded() {
        let mut t = table(100, 1 << 20, false);
        for (name, owner, at) in [("c", "alice", 3), ("a", "alice", 5), ("b", "bob", 1)] {
            t.create_record(name, TopicRecord::new(owner, at, None))
                .unwrap();
        }
        t.create_record("d", TopicRecord::new("alice", 3, None))
            .unwrap();
        let names = |limit| {
            t.owned_by(Some("alice"), limit)
                .into_iter()
                .map(|(key, _)| key.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(10), ["c", "d", "a"], "by time, then by name");
        assert_eq!(names(2), ["c", "d"]);
    }

    #[test]
    fn history_pages_run_both_ways_from_exclusive_cursors() {
        let mut t = table(100, 1 << 20, false);
        t.create_record("x", record()).unwrap();
        let m: Vec<_> = (1..=5).map(|i| publish(&mut t, "x", i).id).collect();
        let page = |order, cursor, limit| {
            let p = t.history_page("x", order, cursor, limit, 10).unwrap();
            assert!(
                p.stream.is_none(),
                "memory backend: the ring is all there is"
            );
            p.ring.iter().map(|m| m.id).collect::<Vec<_>>()
        };
        assert_eq!(page(Order::Desc, None, 2), [m[4], m[3]]);
        assert_eq!(page(Order::Desc, Some(m[3]), 2), [m[2], m[1]]);
        assert_eq!(page(Order::Asc, None, 2), [m[0], m[1]]);
        assert_eq!(page(Order::Asc, Some(m[1]), 10), &m[2..]);
        assert!(page(Order::Desc, Some(m[0]), 10).is_empty());
    }

    #[test]
    fn history_pages_name_the_stream_span_older_than_the_ring() {
        let mut t = table(2, 1 << 20, true);
        t.create_record("x", record()).unwrap();
        let m: Vec<_> = (1..=4)
            .map(|i| {
                let draft = Draft {
                    topic: "x",
                    payload: b"{}",
                    metadata: None,
                    ttl_ms: None,
                };
                t.publish(&draft, i, Some(MessageId::new(i, 0))).msg.id
            })
            .collect();
        // The ring holds m[2], m[3]; m[0], m[1] are only in the stream.
        let desc = t.history_page("x", Order::Desc, None, 3, 10).unwrap();
        assert_eq!(desc.ring.len(), 2);
        assert_eq!(
            desc.stream,
            Some(HistoryRange {
                after: None,
                until: m[2],
                until_inclusive: false
            })
        );
        let full = t.history_page("x", Order::Desc, None, 2, 10).unwrap();
        assert_eq!(full.stream, None, "the ring filled the page");
        let older = t.history_page("x", Order::Desc, Some(m[1]), 3, 10).unwrap();
        assert!(older.ring.is_empty());
        assert_eq!(older.stream.unwrap().until, m[1]);
        let asc = t.history_page("x", Order::Asc, Some(m[0]), 3, 10).unwrap();
        assert_eq!(asc.ring.len(), 2);
        assert_eq!(
            asc.stream,
            Some(HistoryRange {
                after: Some(m[0]),
                until: m[2],
                until_inclusive: false
            })
        );
        let in_ring = t.history_page("x", Order::Asc, Some(m[2]), 3, 10).unwrap();
        assert_eq!(in_ring.stream, None);
    }

    #[test]
    fn delete_drops_messages_and_positions_but_keeps_subscribers() {
        let mut t = table(100, 1 << 20, false);
        t.create_record("x", record()).unwrap();
        t.subscribe("x", 1, &Cursor::Live, Some("c"), 0, 10);
        let last = publish(&mut t, "x", 1).id;
        assert!(t.delete("x"));
        assert!(!t.delete("x"), "already gone");
        assert_eq!(t.bytes(), 0);
        assert!(t.record("x").is_none());
        let draft = Draft {
            topic: "x",
            payload: b"{}",
            metadata: None,
            ttl_ms: None,
        };
        let Published {
            msg, interested, ..
        } = t.publish(&draft, 1, None);
        assert!(msg.id > last, "IDs never go backwards");
        assert_eq!(interested.iter().collect::<Vec<_>>(), [1]);
        t.create_record("x", record()).unwrap();
        let page = t.history_page("x", Order::Asc, None, 10, 2).unwrap();
        assert_eq!(page.ring.len(), 1, "only what came after the delete");

        t.create_record("lonely", record()).unwrap();
        assert!(t.delete("lonely"));
        assert_eq!(t.len(), 1, "an entry nobody subscribes to goes entirely");
    }

    #[test]
    fn history_is_requested_only_when_the_ring_may_miss_messages() {
        let mut t = table(2, 1 << 20, true);
        let first = publish(&mut t, "x", 1).id;
        let (s, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 1, 10);
        assert_eq!(s.history, None, "nothing evicted yet");
        publish(&mut t, "x", 2);
        let third = publish(&mut t, "x", 3).id;
        let (s, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 3, 10);
        let oldest = s.backlog[0].id;
        assert_eq!(
            s.history,
            Some(HistoryRange {
                after: None,
                until: oldest,
                until_inclusive: false
            })
        );
        let (s, _) = t.subscribe("x", 0, &Cursor::After(first), None, 3, 10);
        assert!(s.history.is_some());
        let (s, _) = t.subscribe("x", 0, &Cursor::After(third), None, 3, 10);
        assert_eq!(s.history, None, "cursor inside the ring");

        let mut restarted = table(10, 1 << 20, true);
        restarted.restore("x", third, vec![(Box::from("c"), first)]);
        let (s, created) = restarted.subscribe("x", 0, &Cursor::Live, Some("c"), 4, 10);
        assert_eq!(created, None, "position came back from the store");
        assert_eq!(
            s.history,
            Some(HistoryRange {
                after: Some(first),
                until: third,
                until_inclusive: true
            })
        );
        assert!(
            publish(&mut restarted, "x", 1).id > third,
            "IDs continue after a restart"
        );
    }
}
