//! Message IDs and read cursors.
//!
//! An ID is `<unix_ms>-<seq>`, the Valkey stream-ID format, so one ID names a message in
//! both tiers and a cursor taken from either tier works against the other. IDs are assigned
//! only by a topic's owner shard; this module just orders, parses and prints them.

use std::fmt;

use crate::text::{decimal_len, push_decimal};

/// A stream ID. Ordering is the delivery order within a topic.
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
