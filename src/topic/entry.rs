//! One topic's entry in its owner's [`super::TopicTable`]: its ID extent, ring, interested
//! shards, durable consumer positions and record; what the entry costs the hot-tier
//! budget; and which of it may be dropped.
//!
//! Only the table touches an entry. An entry exists while something needs it (retained
//! messages, subscribers, positions, a record); this module says what "needs" means, the
//! table decides when to look.

use std::collections::HashMap;
use std::sync::Arc;

use super::budget;
use super::id::MessageId;
use super::record::TopicRecord;
use super::ring::Ring;
use super::{ConsumerKey, ShardSet};
use crate::store::StreamRange;

pub(super) struct Topic {
    pub name: Arc<str>,
    pub last_id: MessageId,
    pub ring: Ring,
    pub interested: ShardSet,
    /// Last acknowledged message per durable consumer of this topic.
    pub positions: HashMap<ConsumerKey, MessageId>,
    /// The table's use count at the topic's last publish, subscribe, ack or record use:
    /// what "cold" means to eviction (a count, not a time, so that no two topics tie).
    pub last_used: u64,
    /// When the topic's stream was last trimmed by age (persistent tier).
    pub trimmed_ms: u64,
    /// Messages older than the ring's oldest may exist (evicted, or from before the entry
    /// was made): only then is the persistent tier worth asking.
    pub has_older: bool,
    /// What the Topics API shows; `None` until the topic is created or first published
    /// to (subscribers alone do not make one).
    pub record: Option<TopicRecord>,
    /// The record was created or changed through the Topics API and exists nowhere else
    /// (no persistent tier): the entry must stay.
    pub kept: bool,
    /// Positions, record and stream extent are known. Always so without a persistent tier;
    /// with one, an entry made by a publish or a live subscription (or made again after it
    /// was dropped) does not know them until they are loaded.
    pub loaded: bool,
    /// What the entry (besides its ring) is counted for in the shard's budget.
    pub charged: usize,
}

/// How far eviction goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// Retained messages of cold topics, and the entries this leaves with nothing to keep.
    Messages,
    /// Also durable consumer positions of topics without subscribers or retained messages:
    /// only when messages alone cannot bring the shard under budget.
    Positions,
}

/// What an entry costs besides its name, positions and record (the table counts its own
/// slots): its allocation, and the name's reference counts.
const ENTRY: usize =
    std::mem::size_of::<Topic>() + budget::ALLOCATION + 2 * std::mem::size_of::<usize>();

impl Topic {
    /// A new entry; with a persistent tier it is not loaded and may have older messages
    /// there.
    pub fn new(name: Arc<str>, persistent: bool, used: u64) -> Topic {
        let mut topic = Topic {
            name,
            last_id: MessageId::ZERO,
            ring: Ring::default(),
            interested: ShardSet::default(),
            positions: HashMap::new(),
            last_used: used,
            trimmed_ms: 0,
            has_older: persistent,
            record: None,
            kept: false,
            loaded: !persistent,
            charged: 0,
        };
        topic.charged = topic.overhead();
        topic
    }

    /// The bytes the entry holds besides its ring's.
    fn overhead(&self) -> usize {
        let record = self.record.as_ref().map_or(0, |r| {
            budget::text(&r.topic_id)
                + budget::text(&r.owner_id)
                + r.description.as_deref().map_or(0, budget::text)
        });
        ENTRY
            + budget::text(&self.name)
            + budget::map(&self.positions, |key| budget::text(key))
            + record
    }

    /// Counts the entry again after its positions or record changed; returns the charge
    /// before and after, for the table's total.
    pub fn recharge(&mut self) -> (usize, usize) {
        let before = self.charged;
        self.charged = self.overhead();
        (before, self.charged)
    }

    /// Everything this entry holds, ring included.
    pub fn bytes(&self) -> usize {
        self.charged + self.ring.bytes()
    }

    /// Nothing at all depends on the entry: it can go at once.
    pub fn is_idle(&self) -> bool {
        self.ring.is_empty()
            && self.interested.is_empty()
            && self.positions.is_empty()
            && self.record.is_none()
    }

    /// Once its ring is empty, eviction at `level` may drop the entry: no subscriber, no
    /// record that must stay, and (below [`Level::Positions`]) no durable consumer.
    fn droppable_at(&self, level: Level) -> bool {
        self.interested.is_empty()
            && !self.kept
            && (level == Level::Positions || self.positions.is_empty())
    }

    /// Eviction at `level` may drop the entry now.
    pub fn goes_at(&self, level: Level) -> bool {
        self.ring.is_empty() && self.droppable_at(level)
    }

    /// About how many bytes eviction at `level` would free here (an upper bound: messages
    /// the persistent tier has not confirmed stay).
    pub fn freeable(&self, level: Level) -> usize {
        let entry = if self.droppable_at(level) {
            self.charged
        } else {
            0
        };
        match level {
            Level::Messages => self.ring.bytes() + entry,
            Level::Positions if self.ring.is_empty() && !self.positions.is_empty() => entry,
            Level::Positions => 0,
        }
    }

    /// Drops the oldest messages the shard may drop (see [`evictable`]) until `need`
    /// bytes are freed; returns the bytes freed.
    pub fn evict_messages(&mut self, durable: Option<MessageId>, need: usize) -> usize {
        let mut freed = 0;
        while freed < need && evictable(&self.ring, durable) {
            freed += self.ring.pop_oldest();
            self.has_older = true;
        }
        freed
    }

    /// The span of the stream older than the ring that a reader starting after `after`
    /// still needs (`None` when the ring covers it, or there is no persistent tier).
    pub fn older_than_ring(
        &self,
        persistent: bool,
        after: Option<MessageId>,
    ) -> Option<StreamRange> {
        if !persistent || !self.has_older {
            return None;
        }
        let (until, until_inclusive) = self.ring_boundary();
        after.is_none_or(|s| s < until).then_some(StreamRange {
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
pub(super) fn evictable(ring: &Ring, durable: Option<MessageId>) -> bool {
    match (ring.oldest_id(), durable) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(oldest), Some(upto)) => oldest <= upto,
    }
}
