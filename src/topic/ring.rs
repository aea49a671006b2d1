//! The hot-tier ring of one topic: the most recent messages, oldest first.
//!
//! Owned by the topic's owner shard and touched by nothing else; other shards get
//! `Arc<Message>` copies of the pointers, never the ring. IDs in the ring are strictly
//! increasing, so cursor lookups are binary searches. Its byte count (for the hot-tier
//! budget) covers the messages and the ring's own slots, which shrink again as it drains.

use std::collections::VecDeque;
use std::sync::Arc;

use super::id::MessageId;
use super::message::Message;

#[derive(Default)]
pub struct Ring {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
}

/// Bytes of one ring slot.
const SLOT: usize = std::mem::size_of::<Arc<Message>>();

/// Below this many slots a ring is not worth shrinking.
const MIN_SHRINK: usize = 64;

impl Ring {
    /// Appends a message; the caller assigns strictly increasing IDs. Returns the bytes
    /// added (the message, and the slots if the ring grew).
    pub fn push(&mut self, msg: Arc<Message>) -> usize {
        debug_assert!(self.messages.back().is_none_or(|last| last.id < msg.id));
        let slots = self.messages.capacity();
        let mut added = msg.footprint();
        self.messages.push_back(msg);
        added += (self.messages.capacity() - slots) * SLOT;
        self.bytes += added;
        added
    }

    /// Drops the oldest message; returns the bytes freed (with the slots given back once
    /// the ring is a quarter full).
    pub fn pop_oldest(&mut self) -> usize {
        let Some(msg) = self.messages.pop_front() else {
            return 0;
        };
        let mut freed = msg.footprint();
        let slots = self.messages.capacity();
        if self.messages.is_empty() {
            self.messages = VecDeque::new();
        } else if slots >= MIN_SHRINK && self.messages.len() <= slots / 4 {
            self.messages.shrink_to(self.messages.len() * 2);
        }
        freed += (slots - self.messages.capacity()) * SLOT;
        self.bytes -= freed;
        freed
    }

    /// Drops every message; returns the bytes freed.
    pub fn clear(&mut self) -> usize {
        self.messages = VecDeque::new();
        std::mem::take(&mut self.bytes)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many retained messages were published at `since_ms` or later: newest first,
    /// so it reads only those.
    pub fn count_since(&self, since_ms: u64) -> usize {
        self.messages
            .iter()
            .rev()
            .take_while(|m| m.timestamp_ms >= since_ms)
            .count()
    }

    pub fn oldest_id(&self) -> Option<MessageId> {
        self.messages.front().map(|m| m.id)
    }

    pub fn contains(&self, id: MessageId) -> bool {
        self.messages.binary_search_by(|m| m.id.cmp(&id)).is_ok()
    }

    /// Messages strictly after `after` (all of them for `None`), oldest first, skipping
    /// expired ones, at most `limit`. The flag says whether more were left out.
    pub fn read_after(
        &self,
        after: Option<MessageId>,
        now_ms: u64,
        limit: usize,
    ) -> (Vec<Arc<Message>>, bool) {
        let start = match after {
            Some(id) => self.messages.partition_point(|m| m.id <= id),
            None => 0,
        };
        let mut out = Vec::with_capacity(limit.min(self.messages.len() - start));
        let mut live = self
            .messages
            .range(start..)
            .filter(|m| !m.is_expired(now_ms));
        for msg in live.by_ref() {
            if out.len() == limit {
                return (out, true);
            }
            out.push(Arc::clone(msg));
        }
        (out, false)
    }

    /// Messages strictly before `before` (all of them for `None`), newest first, skipping
    /// expired ones, at most `limit`.
    pub fn read_before(
        &self,
        before: Option<MessageId>,
        now_ms: u64,
        limit: usize,
    ) -> Vec<Arc<Message>> {
        let end = match before {
            Some(id) => self.messages.partition_point(|m| m.id < id),
            None => self.messages.len(),
        };
        self.messages
            .range(..end)
            .rev()
            .filter(|m| !m.is_expired(now_ms))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::message::test_message;

    fn msg(ms: u64, ttl_ms: Option<u64>) -> Arc<Message> {
        test_message(ms, ttl_ms)
    }

    #[test]
    fn read_after_is_exclusive_and_ordered() {
        let mut ring = Ring::default();
        for ms in 1..=5 {
            ring.push(msg(ms, None));
        }
        let ids = |v: Vec<Arc<Message>>| v.iter().map(|m| m.id.ms).collect::<Vec<_>>();
        assert_eq!(ids(ring.read_after(None, 0, 10).0), [1, 2, 3, 4, 5]);
        assert_eq!(
            ids(ring.read_after(Some(MessageId::new(2, 0)), 0, 10).0),
            [3, 4, 5]
        );
        // A cursor between IDs (e.g. from another topic's clock) still works.
        assert_eq!(
            ids(ring.read_after(Some(MessageId::new(2, 9)), 0, 10).0),
            [3, 4, 5]
        );
        let (page, more) = ring.read_after(None, 0, 2);
        assert_eq!(ids(page), [1, 2]);
        assert!(more);
        assert!(!ring.read_after(None, 0, 5).1);
    }

    #[test]
    fn read_before_is_exclusive_and_newest_first() {
        let mut ring = Ring::default();
        for ms in 1..=5 {
            ring.push(msg(ms, None));
        }
        let ids = |v: Vec<Arc<Message>>| v.iter().map(|m| m.id.ms).collect::<Vec<_>>();
        assert_eq!(ids(ring.read_before(None, 0, 3)), [5, 4, 3]);
        assert_eq!(
            ids(ring.read_before(Some(MessageId::new(3, 0)), 0, 10)),
            [2, 1]
        );
        assert_eq!(
            ids(ring.read_before(Some(MessageId::new(3, 1)), 0, 10)),
            [3, 2, 1]
        );
        assert!(ring
            .read_before(Some(MessageId::new(1, 0)), 0, 10)
            .is_empty());
    }

    #[test]
    fn expired_messages_are_not_read() {
        let mut ring = Ring::default();
        ring.push(msg(1, Some(10)));
        ring.push(msg(2, None));
        let (page, _) = ring.read_after(None, 100, 10);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id.ms, 2);
        assert_eq!(ring.read_before(None, 100, 10).len(), 1);
    }

    #[test]
    fn byte_accounting_follows_push_and_pop() {
        let mut ring = Ring::default();
        let m = msg(1, None);
        let size = m.footprint();
        let first = ring.push(m);
        assert!(first > size, "the first push allocates slots too");
        assert_eq!(ring.push(msg(2, None)), size, "room was left");
        assert_eq!(ring.bytes(), first + size);
        assert_eq!(ring.pop_oldest(), size);
        assert_eq!(ring.bytes(), first);
        assert_eq!(ring.oldest_id(), Some(MessageId::new(2, 0)));
        assert!(ring.contains(MessageId::new(2, 0)));
        assert!(!ring.contains(MessageId::new(1, 0)));
        assert_eq!(
            ring.pop_oldest(),
            first,
            "an empty ring gives its slots back"
        );
        assert_eq!(ring.bytes(), 0);
    }

    #[test]
    fn a_drained_ring_gives_back_its_slots() {
        let mut ring = Ring::default();
        let mut added = 0;
        for ms in 1..=1000 {
            added += ring.push(msg(ms, None));
        }
        assert_eq!(ring.bytes(), added);
        let mut freed = 0;
        while ring.len() > 10 {
            freed += ring.pop_oldest();
        }
        assert_eq!(ring.bytes(), added - freed);
        let kept: usize = (991..=1000).map(|ms| msg(ms, None).footprint()).sum();
        assert!(
            ring.bytes() < kept + MIN_SHRINK * SLOT,
            "{} bytes left for 10 messages",
            ring.bytes()
        );
        assert_eq!(ring.clear(), added - freed);
        assert_eq!(ring.bytes(), 0);
        assert!(ring.is_empty());
    }
}
