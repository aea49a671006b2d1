//! Assigning message IDs, and read cursors.
//!
//! An ID is `<unix_ms>-<seq>`, the Valkey stream-ID format (`store::MessageId`), so one ID
//! names a message in both tiers and a cursor taken from either tier works against the
//! other. IDs are assigned only by a topic's owner shard, by its [`IdClock`].

pub use crate::store::MessageId;

/// Assigns the IDs of every topic one shard owns.
///
/// One clock per shard makes IDs unique across the shard's topics, and the sequence part
/// `k * shards + shard` keeps shards apart, so a message ID alone names one message
/// relay-wide (an ack needs no topic). Per topic, IDs still strictly increase.
#[derive(Clone, Debug)]
pub struct IdClock {
    shard: u64,
    shards: u64,
    ms: u64,
    k: u64,
}

impl IdClock {
    pub fn new(shard: usize, shards: usize) -> Self {
        IdClock {
            shard: shard as u64,
            shards: shards.max(1) as u64,
            ms: 0,
            k: 0,
        }
    }

    /// The next ID at wall-clock time `now_ms`; if the clock went back (or did not move),
    /// the sequence part carries the order.
    pub fn next(&mut self, now_ms: u64) -> MessageId {
        if now_ms > self.ms {
            self.ms = now_ms;
            self.k = 0;
        } else {
            self.k += 1;
        }
        MessageId {
            ms: self.ms,
            seq: self.k * self.shards + self.shard,
        }
    }

    /// Makes every later ID greater than `id` (IDs found in storage after a restart).
    pub fn advance_past(&mut self, id: MessageId) {
        let k = id.seq / self.shards;
        if (id.ms, k) > (self.ms, self.k) {
            self.ms = id.ms;
            self.k = k;
        }
    }
}

/// Where a reader starts in a topic. Every variant is exclusive of the message it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Only messages published after the subscription is registered.
    Live,
    /// Everything still retained.
    Earliest,
    /// Messages strictly after this ID.
    After(MessageId),
}

impl Cursor {
    /// Parses a `since` value: `earliest`, `latest` (same as no cursor) or an ID.
    pub fn parse(text: &str) -> Option<Cursor> {
        match text {
            "earliest" | "0" => Some(Cursor::Earliest),
            "latest" | "$" => Some(Cursor::Live),
            _ => MessageId::parse(text).map(Cursor::After),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_ids_are_unique_across_shards_and_increase() {
        let mut a = IdClock::new(0, 2);
        let mut b = IdClock::new(1, 2);
        let ids: Vec<MessageId> = vec![a.next(10), a.next(10), b.next(10), b.next(10), a.next(9)];
        assert_eq!(ids[0], MessageId::new(10, 0));
        assert_eq!(ids[1], MessageId::new(10, 2));
        assert_eq!(ids[2], MessageId::new(10, 1));
        assert_eq!(ids[3], MessageId::new(10, 3));
        assert_eq!(ids[4], MessageId::new(10, 4), "clock went back");
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn clock_continues_past_stored_ids() {
        let mut c = IdClock::new(1, 2);
        c.advance_past(MessageId::new(50, 6));
        let next = c.next(40);
        assert!(next > MessageId::new(50, 6), "{next}");
        assert_eq!(next.seq % 2, 1, "keeps its shard's residue");
        c.advance_past(MessageId::new(1, 0));
        assert!(c.next(40) > next, "an older stored ID changes nothing");
    }

    #[test]
    fn cursor_parse() {
        assert_eq!(Cursor::parse("earliest"), Some(Cursor::Earliest));
        assert_eq!(Cursor::parse("latest"), Some(Cursor::Live));
        assert_eq!(
            Cursor::parse("5-1"),
            Some(Cursor::After(MessageId::new(5, 1)))
        );
        assert_eq!(Cursor::parse("nope"), None);
    }
}
