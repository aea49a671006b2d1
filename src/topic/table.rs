//! The topics one shard owns: their entries, the ID clock they share, the byte budget
//! they live within, and every operation their owner runs on them.
//!
//! Touched only by the owning shard's executor (see `owner`); never does I/O.

use std::collections::HashMap;
use std::sync::Arc;

use super::budget;
use super::entry::{evictable, Level, Topic};
use super::{Cursor, Draft, IdClock, Message, MessageId, ShardSet, TopicRecord};
use crate::store::{by_age, StoredTopic, StreamRange};

/// `span` cut to what lies strictly before `cursor`; `None` when nothing can.
fn below(span: StreamRange, cursor: Option<MessageId>) -> Option<StreamRange> {
    match cursor {
        Some(MessageId::ZERO) => None,
        Some(c) if c <= span.until => Some(StreamRange {
            until: c,
            until_inclusive: false,
            ..span
        }),
        _ => Some(span),
    }
}

/// How often a topic's stream is trimmed by age, at most (on a publish; the owner tracks
/// when it last was, the store does it).
pub const STREAM_TRIM_INTERVAL_MS: u64 = 10_000;

/// The answer of [`TopicTable::locate`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Located {
    pub held: Vec<Arc<str>>,
    pub maybe: Vec<Arc<str>>,
}

/// Limits of what one shard holds for its topics.
#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    pub messages_per_topic: usize,
    /// The hot-tier budget: retained messages and the topics' own entries.
    pub max_bytes: usize,
    /// Without a persistent tier: most records created or changed through the Topics API
    /// (they are never evicted, so they have a bound of their own).
    pub max_kept_records: usize,
}

/// One topic's traffic as the owner sees it, for `GET /api/v1/stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLoad {
    pub topic: Arc<str>,
    /// Retained messages published within the window asked for.
    pub recent: usize,
    pub retained: usize,
    /// Some shard has subscribers (sessions or parked polls) for it.
    pub subscribed: bool,
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
    pub history: Option<StreamRange>,
}

/// What [`TopicTable::publish`] did.
pub struct Published {
    pub msg: Arc<Message>,
    /// The shards with subscribers for the topic.
    pub interested: ShardSet,
    /// The topic has no record yet: the publisher's should be made
    /// ([`TopicTable::ensure_record`]); known here without a second lookup per message.
    pub unrecorded: bool,
    /// The topic's stream is due for trimming by age.
    pub trim_due: bool,
}

/// Why a record was not created or changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The topic has this record already.
    Exists(TopicRecord),
    /// As many records as [`TopicLimits::max_kept_records`] are kept already.
    Full,
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
    pub stream: Option<StreamRange>,
}

/// The topics one shard owns.
///
/// An entry exists only while something needs it: retained messages, subscribers (of any
/// shard, parked polls included), durable consumer positions, or a record. One that nothing
/// needs any more is dropped when that happens; one that only cold state keeps (a record or
/// positions with no subscriber and nothing retained) is dropped, coldest first, when the
/// shard is over its byte budget, which counts entries as well as messages. IDs come from
/// the shard's clock, not the entry, so a topic that comes back continues above every ID
/// it had.
pub struct TopicTable {
    /// Boxed, so that the map's slots (free ones included) stay small.
    topics: HashMap<Arc<str>, Box<Topic>>,
    clock: IdClock,
    /// The persistent tier's confirmed watermark at the last publish.
    durable: Option<MessageId>,
    /// Everything counted in the budget: the entries (see [`Topic::bytes`]) and `slots`.
    bytes: usize,
    /// Bytes of the map's slots, free ones too: a map grows by doubling and shrinks only
    /// when told to.
    slots: usize,
    /// The most entries the map had room for since it last shrank: its allocation (what
    /// it reports as capacity drops as removals leave tombstones).
    room: usize,
    limits: TopicLimits,
    /// A persistent tier holds what the rings evicted, and every topic's positions and
    /// record: entries can be dropped and loaded again.
    persistent: bool,
    /// Entries with [`Topic::kept`] set.
    kept: usize,
    /// Entries dropped so far (for metrics).
    dropped: u64,
    /// After an eviction that could not get under budget: the byte count at which to try
    /// again (0: at once).
    retry_at: usize,
    /// Counts uses of topics: see `Topic::last_used`.
    uses: u64,
}

impl TopicTable {
    pub fn new(limits: TopicLimits, persistent: bool, clock: IdClock) -> Self {
        TopicTable {
            topics: HashMap::new(),
            clock,
            durable: None,
            bytes: 0,
            slots: 0,
            room: 0,
            limits,
            persistent,
            kept: 0,
            dropped: 0,
            retry_at: 0,
            uses: 0,
        }
    }

    /// Makes every later ID greater than `id` (a stream's last ID found at start-up).
    pub fn advance_clock(&mut self, id: MessageId) {
        self.clock.advance_past(id);
    }

    /// Takes in a topic's state read from the persistent tier (at start-up, or before an
    /// operation that depends on it): new IDs continue after its last ID, durable consumers
    /// resume from their positions, and the stored record replaces one a publish made in
    /// the meantime (which was written only where none existed). An entry already loaded
    /// is left as it is: it knows better.
    pub fn load(&mut self, name: &str, stored: StoredTopic) {
        self.clock.advance_past(stored.last_id);
        let topic = self.entry(name);
        if topic.loaded {
            return;
        }
        topic.last_id = topic.last_id.max(stored.last_id);
        topic.has_older = match (stored.first_id, topic.ring.oldest_id()) {
            (Some(first), Some(oldest)) => first < oldest,
            (first, None) => first.is_some(),
            (None, Some(_)) => false,
        };
        for (consumer, position) in stored.positions {
            topic.positions.entry(consumer).or_insert(position);
        }
        if stored.record.is_some() {
            topic.record = stored.record;
        }
        topic.loaded = true;
        let (before, after) = topic.recharge();
        self.bytes = self.bytes + after - before;
        self.enforce_budget();
    }

    /// Cluster mode: takes in a loaded topic's positions and record as Valkey has them now
    /// (another node may have changed them), keeping its ring and last ID.
    pub fn refresh(&mut self, name: &str, stored: StoredTopic) {
        let Some(topic) = self.topics.get_mut(name).filter(|t| t.loaded) else {
            return self.load(name, stored);
        };
        for (consumer, position) in stored.positions {
            topic.positions.insert(consumer, position);
        }
        topic.record = stored.record;
        let (before, after) = topic.recharge();
        self.bytes = self.bytes + after - before;
        self.enforce_budget();
    }

    /// Cluster mode: drops `name`'s entry unless a shard has subscribers for it (what a
    /// node does not listen to goes stale); whether it is gone.
    pub fn forget_unwatched(&mut self, name: &str) -> bool {
        match self.topics.get(name) {
            Some(topic) if !topic.interested.is_empty() => false,
            Some(_) => {
                self.remove(name);
                true
            }
            None => true,
        }
    }

    /// Whether `name`'s positions and record are known here (true without a persistent
    /// tier); otherwise an operation depending on them must [`TopicTable::load`] it first.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.topics.get(name).is_some_and(|t| t.loaded)
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The entry of `name`, made (and counted) if there is none, marked as used now.
    fn entry(&mut self, name: &str) -> &mut Topic {
        self.entry_named(name, || Arc::from(name))
    }

    /// [`TopicTable::entry`], naming a new entry with `named()` (a message's topic name,
    /// so that the entry and its messages share one allocation).
    fn entry_named(&mut self, name: &str, named: impl FnOnce() -> Arc<str>) -> &mut Topic {
        self.uses += 1;
        let used = self.uses;
        if !self.topics.contains_key(name) {
            let topic = Box::new(Topic::new(named(), self.persistent, used));
            self.bytes += topic.bytes();
            self.topics.insert(Arc::clone(&topic.name), topic);
            self.count_slots(self.room.max(self.topics.capacity()));
        }
        let topic = self.topics.get_mut(name).expect("inserted above");
        topic.last_used = used;
        topic
    }

    /// Counts the map's slots for room for `room` entries.
    fn count_slots(&mut self, room: usize) {
        self.room = room;
        let slots = budget::map_slots::<Arc<str>, Box<Topic>>(room);
        self.bytes = self.bytes + slots - self.slots;
        self.slots = slots;
    }

    /// Gives back map slots when at most a quarter of them are used.
    fn shrink_if_sparse(&mut self, floor: usize) {
        let len = self.topics.len();
        if self.room > 4 * len.max(floor) {
            self.topics.shrink_to(2 * len);
            self.count_slots(self.topics.capacity());
        }
    }

    /// Drops `name`'s entry if nothing needs it any more.
    pub fn forget_if_idle(&mut self, name: &str) {
        if self.topics.get(name).is_some_and(|t| t.is_idle()) {
            self.remove(name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(topic) = self.topics.remove(name) {
            self.bytes -= topic.bytes();
            self.kept -= usize::from(topic.kept);
            self.dropped += 1;
        }
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
        let id = self.clock.next(now_ms);
        let name = match self.topics.get_key_value(draft.topic) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(draft.topic),
        };
        let mut msg = Message::build(id, name, now_ms, draft);
        msg.accepted_at = Some(std::time::Instant::now());
        self.insert(Arc::new(msg), now_ms, durable)
    }

    /// Cluster mode: appends a message whose ID its stream assigned (heard from Valkey)
    /// to its topic, if the topic is loaded and the message is newer than its last ID;
    /// otherwise `None` (the caller knows a topic that is not loaded is not listened to).
    pub fn append(&mut self, msg: Message, now_ms: u64) -> Option<Published> {
        let topic = self.topics.get(&*msg.topic)?;
        if !topic.loaded || msg.id <= topic.last_id {
            return None;
        }
        let mut msg = msg;
        msg.accepted_at = Some(std::time::Instant::now());
        // Everything heard is in Valkey already: the ring may drop any of it.
        Some(self.insert(Arc::new(msg), now_ms, None))
    }

    /// Cluster mode: everything up to `id` was read from `name`'s stream (entries that
    /// expired were not delivered), so later messages continue after it.
    pub fn advance(&mut self, name: &str, id: MessageId) {
        if let Some(topic) = self.topics.get_mut(name).filter(|t| t.loaded) {
            topic.last_id = topic.last_id.max(id);
        }
    }

    /// The topics whose state is loaded here (cluster mode: those this node listens to).
    pub fn loaded_topics(&self) -> Vec<Arc<str>> {
        self.topics
            .values()
            .filter(|t| t.loaded)
            .map(|t| Arc::clone(&t.name))
            .collect()
    }

    /// The last ID of a loaded topic (`None` when it is not loaded here).
    pub fn last_id(&self, name: &str) -> Option<MessageId> {
        self.loaded(name).map(|(_, id)| id)
    }

    /// A loaded topic's name as the table holds it (for its messages to share) and its
    /// last ID.
    pub fn loaded(&self, name: &str) -> Option<(Arc<str>, MessageId)> {
        self.topics
            .get(name)
            .filter(|t| t.loaded)
            .map(|t| (Arc::clone(&t.name), t.last_id))
    }

    fn insert(&mut self, msg: Arc<Message>, now_ms: u64, durable: Option<MessageId>) -> Published {
        self.durable = durable;
        let per_topic = self.limits.messages_per_topic;
        let persistent = self.persistent;
        let topic = self.entry_named(&msg.topic, || Arc::clone(&msg.topic));
        topic.last_id = msg.id;
        let added = topic.ring.push(Arc::clone(&msg));
        let mut freed = 0;
        while topic.ring.len() > per_topic && evictable(&topic.ring, durable) {
            freed += topic.ring.pop_oldest();
            topic.has_older = true;
        }
        let trim_due =
            persistent && now_ms.saturating_sub(topic.trimmed_ms) >= STREAM_TRIM_INTERVAL_MS;
        if trim_due {
            topic.trimmed_ms = now_ms;
        }
        let interested = topic.interested;
        let unrecorded = topic.record.is_none();
        self.bytes = self.bytes + added - freed;
        self.enforce_budget();
        Published {
            msg,
            interested,
            unrecorded,
            trim_due,
        }
    }

    /// Takes the persistent tier's newest confirmed watermark and evicts what it allows,
    /// if the shard is over budget: messages that were not confirmed when they were
    /// published could not go then (the shard calls this on its tick, so a burst that
    /// ended is brought under budget without waiting for the next publish).
    pub fn confirmed(&mut self, durable: Option<MessageId>) {
        self.durable = durable;
        self.retry_at = 0;
        self.enforce_budget();
    }

    fn enforce_budget(&mut self) {
        if self.bytes > self.limits.max_bytes && self.bytes >= self.retry_at {
            self.evict_to_budget();
            // What could not go (messages not confirmed yet, entries in use) would make
            // every later call scan all topics in vain: wait until the excess doubled (or
            // the tick), so a burst costs a few scans, not one per message.
            let target = self.limits.max_bytes / 10 * 9;
            self.retry_at = match self.bytes.checked_sub(target) {
                Some(excess) if excess > 0 => self.bytes + excess.max(self.limits.max_bytes / 10),
                _ => 0,
            };
        }
    }

    /// Frees memory until the shard is under 90% of its byte budget, least recently used
    /// topics first: first their retained messages (dropping the entries this leaves with
    /// nothing to keep), then, if that is not enough, the positions of durable consumers of
    /// topics with no subscriber and nothing retained. Batched so the scan amortizes; the
    /// coldest are found by selection, not by sorting every topic.
    fn evict_to_budget(&mut self) {
        let target = self.limits.max_bytes / 10 * 9;
        for level in [Level::Messages, Level::Positions] {
            if self.bytes <= target {
                return;
            }
            let mut costs: Vec<(u64, usize)> = self
                .topics
                .values()
                .filter_map(|t| {
                    let freeable = t.freeable(level);
                    (freeable > 0).then_some((t.last_used, freeable))
                })
                .collect();
            let cutoff = budget::cutoff(&mut costs, self.bytes - target).unwrap_or(u64::MAX);
            drop(costs);
            // Colder than the cutoff all goes; at the cutoff only as much as needed.
            let durable = self.durable;
            let (mut freed, mut kept, mut dropped) = (0, 0, 0);
            let mut at_cutoff = Vec::new();
            self.topics.retain(|name, t| {
                if t.last_used > cutoff || t.freeable(level) == 0 {
                    return true;
                }
                if t.last_used == cutoff {
                    at_cutoff.push(Arc::clone(name));
                    return true;
                }
                freed += t.evict_messages(durable, usize::MAX);
                if !t.goes_at(level) {
                    return true;
                }
                freed += t.bytes();
                kept += usize::from(t.kept);
                dropped += 1;
                false
            });
            self.bytes -= freed;
            self.kept -= kept;
            self.dropped += dropped;
            for name in at_cutoff {
                if self.bytes <= target {
                    break;
                }
                let need = self.bytes - target;
                let Some(topic) = self.topics.get_mut(&name) else {
                    continue;
                };
                self.bytes -= topic.evict_messages(durable, need);
                if topic.goes_at(level) {
                    self.remove(&name);
                }
            }
            // Dropped entries leave their slots behind; on a small budget they matter.
            self.shrink_if_sparse(0);
        }
    }

    /// Registers `shard` as interested in `topic` and returns the snapshot after the
    /// subscriber's starting point. With a consumer key and a live cursor, the consumer's
    /// stored position is the starting point; a consumer seen for the first time starts at
    /// the current head so that what it is sent from now on is redelivered until acked.
    /// The second value is a consumer position this call created (to be persisted).
    ///
    /// With a consumer, or a cursor other than [`Cursor::Live`], the topic must be loaded.
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
        let topic = self.entry(name);
        debug_assert!(topic.loaded || (consumer.is_none() && *cursor == Cursor::Live));
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
        if created.is_some() {
            let (before, after) = topic.recharge();
            self.bytes = self.bytes + after - before;
            self.enforce_budget();
        }
        (snapshot, created)
    }

    /// `shard` no longer has subscribers for `name`; the entry goes if nothing else needs
    /// it (a subscription or poll on a new name leaves nothing behind).
    pub fn drop_interest(&mut self, name: &str, shard: usize) {
        if let Some(topic) = self.topics.get_mut(name) {
            topic.interested.remove(shard);
            if topic.is_idle() {
                self.remove(name);
            }
        }
    }

    /// Where `id` may be, among `candidates` (all of this shard's topics the consumer
    /// reads, when `None`): the topics whose ring holds it, and the topics that may hold it
    /// beyond their ring (after the consumer's position, up to the topic's last ID, older
    /// than the ring, or anywhere in a topic not loaded; only the persistent tier can
    /// tell).
    pub fn locate(
        &self,
        consumer: &str,
        id: MessageId,
        candidates: Option<&[Box<str>]>,
    ) -> Located {
        let topics: Vec<&Topic> = match candidates {
            Some(list) => list
                .iter()
                .filter_map(|n| self.topics.get(&**n))
                .map(|t| &**t)
                .collect(),
            None => self
                .topics
                .values()
                .filter(|t| t.positions.contains_key(consumer))
                .map(|t| &**t)
                .collect(),
        };
        let mut found = Located::default();
        for t in topics {
            if t.ring.contains(id) {
                found.held.push(Arc::clone(&t.name));
            } else if self.persistent
                && t.has_older
                && (!t.loaded || id <= t.last_id)
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
    /// a message with an ID that high; otherwise whether the position moved. The topic
    /// must be loaded.
    pub fn ack(&mut self, consumer: &str, topic: &str, id: MessageId) -> Option<bool> {
        let t = self.topics.get_mut(topic)?;
        debug_assert!(t.loaded);
        if id > t.last_id || id == MessageId::ZERO {
            return None;
        }
        self.uses += 1;
        t.last_used = self.uses;
        let moved = match t.positions.get_mut(consumer) {
            Some(position) => {
                let moved = id > *position;
                if moved {
                    *position = id;
                }
                moved
            }
            None => {
                t.positions.insert(consumer.into(), id);
                let (before, after) = t.recharge();
                self.bytes = self.bytes + after - before;
                self.enforce_budget();
                true
            }
        };
        Some(moved)
    }

    /// The record of `name`, if it has one (the topic must be loaded to know).
    pub fn record(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)?.record.as_ref()
    }

    /// Gives `name` the record `make` builds if it has none yet (a publish creating its
    /// topic); returns the new record, and whether the persistent tier may hold an older
    /// one (the topic was not loaded: the record must then be written only where none is).
    pub fn ensure_record(
        &mut self,
        name: &str,
        make: impl FnOnce() -> TopicRecord,
    ) -> Option<(TopicRecord, bool)> {
        let topic = self.topics.get_mut(name)?;
        if topic.record.is_some() {
            return None;
        }
        let record = make();
        topic.record = Some(record.clone());
        let may_exist = !topic.loaded;
        let (before, after) = topic.recharge();
        self.bytes = self.bytes + after - before;
        self.enforce_budget();
        Some((record, may_exist))
    }

    /// Creates the record of `name` (loaded). Without a persistent tier it is kept for
    /// good, within [`TopicLimits::max_kept_records`].
    pub fn create_record(
        &mut self,
        name: &str,
        record: TopicRecord,
    ) -> Result<TopicRecord, Refusal> {
        if let Some(existing) = self.record(name) {
            return Err(Refusal::Exists(existing.clone()));
        }
        let keep = !self.persistent;
        if keep && self.kept >= self.limits.max_kept_records {
            return Err(Refusal::Full);
        }
        let topic = self.entry(name);
        debug_assert!(topic.loaded);
        topic.record = Some(record.clone());
        topic.kept = keep;
        let (before, after) = topic.recharge();
        self.bytes = self.bytes + after - before;
        self.kept += usize::from(keep);
        self.enforce_budget();
        Ok(record)
    }

    /// Sets the description of `name`'s record and returns the record (`None`: it has
    /// none). Without a persistent tier the record is kept for good from then on, within
    /// [`TopicLimits::max_kept_records`].
    pub fn describe(
        &mut self,
        name: &str,
        description: String,
    ) -> Option<Result<TopicRecord, Refusal>> {
        let limit_reached = self.kept >= self.limits.max_kept_records;
        let topic = self.topics.get_mut(name)?;
        let record = topic.record.as_mut()?;
        let keep = !self.persistent && !topic.kept;
        if keep && limit_reached {
            return Some(Err(Refusal::Full));
        }
        record.description = Some(description);
        let record = record.clone();
        topic.kept |= keep;
        self.uses += 1;
        topic.last_used = self.uses;
        let (before, after) = topic.recharge();
        self.bytes = self.bytes + after - before;
        self.kept += usize::from(keep);
        self.enforce_budget();
        Some(Ok(record))
    }

    /// Deletes the topic: its record, its retained messages and its consumer positions.
    /// Subscribers stay registered (the entry survives while there are any) and IDs keep
    /// growing: the shard's clock is not reset. False when `name` has no record.
    pub fn delete(&mut self, name: &str) -> bool {
        if self.topics.get(name).is_none_or(|t| t.record.is_none()) {
            return false;
        }
        self.clear(name);
        true
    }

    /// Cluster mode: `name` was deleted on another node; what this one holds of it goes
    /// (its subscribers stay, and get what is published to it from now on).
    pub fn deleted_elsewhere(&mut self, name: &str) {
        if self.topics.contains_key(name) {
            self.clear(name);
        }
    }

    /// Drops a topic's messages, positions and record (the entry stays while needed).
    fn clear(&mut self, name: &str) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        topic.record = None;
        let mut freed = topic.ring.clear();
        self.kept -= usize::from(std::mem::take(&mut topic.kept));
        topic.has_older = false;
        topic.positions = HashMap::new();
        let (before, after) = topic.recharge();
        freed += before - after;
        self.bytes -= freed;
        self.forget_if_idle(name);
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
    /// the exclusive `cursor`; `None` when the topic has no record. The topic must be
    /// loaded.
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
        debug_assert!(topic.loaded);
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

    /// Gives back table space after many entries were dropped (a map never shrinks by
    /// itself); cheap when there is nothing to do, so the shard calls it on every tick
    /// (eviction also does, for small tables).
    pub fn compact(&mut self) {
        self.shrink_if_sparse(1024);
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Bytes held: retained messages and the entries themselves.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The `n` topics with the most messages published since `since_ms` (then the most
    /// retained), among those with such messages or with subscribers. Reads every entry
    /// but, of each ring, only its recent messages.
    pub fn busiest(&self, since_ms: u64, n: usize) -> Vec<TopicLoad> {
        let mut loads: Vec<TopicLoad> = self
            .topics
            .values()
            .map(|t| TopicLoad {
                topic: Arc::clone(&t.name),
                recent: t.ring.count_since(since_ms),
                retained: t.ring.len(),
                subscribed: !t.interested.is_empty(),
            })
            .filter(|l| l.recent > 0 || l.subscribed)
            .collect();
        loads.sort_unstable_by(|a, b| {
            (b.recent, b.retained, &a.topic).cmp(&(a.recent, a.retained, &b.topic))
        });
        loads.truncate(n);
        loads
    }

    /// The bytes counted afresh, entry by entry (tests check the running total by it).
    #[cfg(test)]
    fn recount(&self) -> usize {
        let slots = budget::map_slots::<Arc<str>, Box<Topic>>(self.room);
        slots + self.topics.values().map(|t| t.bytes()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
