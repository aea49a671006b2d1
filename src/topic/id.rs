//! Message IDs and read cursors.
//!
//! An ID is `<unix_ms>-<seq>`, the Valkey stream-ID format, so one ID names a message in
//! both tiers and a cursor taken from either tier works against the other. IDs are assigned
//! only by a topic's owner shard; this module just orders, parses and prints them.

use std::fmt;

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

    /// The next ID after `self` at wall-clock time `now_ms`. If the clock went back (or did
    /// not move), the sequence part carries the order, so IDs never repeat or go backwards.
    pub fn next(self, now_ms: u64) -> MessageId {
        if now_ms > self.ms {
            MessageId { ms: now_ms, seq: 0 }
        } else {
            MessageId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
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
    fn next_moves_with_the_clock_and_never_backwards() {
        let id = MessageId::new(1000, 5);
        assert_eq!(id.next(1001), MessageId::new(1001, 0));
        assert_eq!(id.next(1000), MessageId::new(1000, 6));
        assert_eq!(id.next(10), MessageId::new(1000, 6), "clock went back");
    }

    #[test]
    fn parse_and_display_round_trip() {
        let id = MessageId::parse("1731000000123-7").unwrap();
        assert_eq!(id, MessageId::new(1731000000123, 7));
        assert_eq!(id.to_string(), "1731000000123-7");
        assert_eq!(MessageId::parse("42"), Some(MessageId::new(42, 0)));
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
