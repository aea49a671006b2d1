//! A published message and its one serialized form.
//!
//! The owner shard builds each message exactly once: the delivery JSON (DESIGN.md §2) wrapped
//! in a WebSocket text frame. Server frames are unmasked, so the same bytes go to every
//! WebSocket subscriber on every shard, and poll replies reuse the JSON part. The producer's
//! payload bytes are copied in verbatim, never re-encoded. Messages cross shards as
//! `Arc<Message>` and are immutable from then on.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::id::MessageId;
use crate::store::StreamEntry;
use crate::text::{push_rfc3339, RFC3339_LEN};
use crate::ws::frame::{encode_header, OpCode};

/// What a producer asked to publish, already validated by the API layer.
pub struct Draft<'a> {
    pub topic: &'a str,
    /// Raw JSON text of the payload, exactly as the producer sent it.
    pub payload: &'a [u8],
    /// Raw JSON text of the metadata object, if any.
    pub metadata: Option<&'a [u8]>,
    pub ttl_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Message {
    pub id: MessageId,
    pub topic: Arc<str>,
    pub timestamp_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// When the owner accepted it (live messages only; history read back from storage has
    /// none), for the delivery-latency histogram.
    pub accepted_at: Option<Instant>,
    frame: Box<[u8]>,
    json_start: usize,
    payload: Range<usize>,
    metadata: Option<Range<usize>>,
}

impl Message {
    pub fn build(id: MessageId, topic: Arc<str>, now_ms: u64, draft: &Draft<'_>) -> Message {
        let metadata_len = draft.metadata.map_or(4, <[u8]>::len);
        let name = super::display_name(&topic);
        // Topic names are restricted to characters that need no JSON escaping (API layer).
        let parts: [&[u8]; 6] = [
            br#"{"type":"message","message_id":""#,
            br#"","topic":""#,
            br#"","payload":"#,
            br#","timestamp":""#,
            br#"","metadata":"#,
            b"}",
        ];
        let json_len = parts.iter().map(|p| p.len()).sum::<usize>()
            + id.text_len()
            + name.len()
            + draft.payload.len()
            + RFC3339_LEN
            + metadata_len;

        let mut frame = Vec::with_capacity(json_len + 10);
        encode_header(OpCode::Text, json_len, &mut frame);
        let json_start = frame.len();
        frame.extend_from_slice(parts[0]);
        id.push_text(&mut frame);
        frame.extend_from_slice(parts[1]);
        frame.extend_from_slice(name.as_bytes());
        frame.extend_from_slice(parts[2]);
        let payload_start = frame.len();
        frame.extend_from_slice(draft.payload);
        let payload = payload_start..frame.len();
        frame.extend_from_slice(parts[3]);
        push_rfc3339(now_ms, &mut frame);
        frame.extend_from_slice(parts[4]);
        let metadata = match draft.metadata {
            Some(raw) => {
                let start = frame.len();
                frame.extend_from_slice(raw);
                Some(start..frame.len())
            }
            None => {
                frame.extend_from_slice(b"null");
                None
            }
        };
        frame.extend_from_slice(parts[5]);
        debug_assert_eq!(frame.len() - json_start, json_len);

        Message {
            id,
            topic,
            timestamp_ms: now_ms,
            expires_at_ms: draft.ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
            accepted_at: None,
            frame: frame.into_boxed_slice(),
            json_start,
            payload,
            metadata,
        }
    }

    /// A message read back from `topic`'s stream: the same frame as when it was published.
    pub fn from_entry(topic: &Arc<str>, entry: StreamEntry<'_>) -> Message {
        let draft = Draft {
            topic,
            payload: entry.payload,
            metadata: entry.metadata,
            ttl_ms: entry.ttl_ms,
        };
        Message::build(entry.id, Arc::clone(topic), entry.timestamp_ms, &draft)
    }

    /// The message as its stream keeps it.
    pub fn stream_entry(&self) -> StreamEntry<'_> {
        StreamEntry {
            id: self.id,
            payload: self.payload(),
            metadata: self.metadata(),
            timestamp_ms: self.timestamp_ms,
            ttl_ms: self
                .expires_at_ms
                .map(|at| at.saturating_sub(self.timestamp_ms)),
        }
    }

    /// The complete WebSocket text frame carrying [`Message::json`].
    pub fn ws_frame(&self) -> &[u8] {
        &self.frame
    }

    /// The delivery object as JSON.
    pub fn json(&self) -> &[u8] {
        &self.frame[self.json_start..]
    }

    /// The producer's payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.clone()]
    }

    /// The producer's metadata object bytes, if it sent one.
    pub fn metadata(&self) -> Option<&[u8]> {
        self.metadata.clone().map(|r| &self.frame[r])
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Bytes this message holds in memory, for the hot-tier budget.
    pub fn footprint(&self) -> usize {
        self.frame.len() + std::mem::size_of::<Message>() + 16
    }
}

/// A message on topic `t` published at `ms` (its ID is `ms-0`), for tests of the modules
/// that store and route messages.
#[cfg(test)]
pub(crate) fn test_message(ms: u64, ttl_ms: Option<u64>) -> Arc<Message> {
    let draft = Draft {
        topic: "t",
        payload: b"{}",
        metadata: None,
        ttl_ms,
    };
    Arc::new(Message::build(
        MessageId::new(ms, 0),
        Arc::from("t"),
        ms,
        &draft,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft<'a>(payload: &'a [u8], metadata: Option<&'a [u8]>) -> Draft<'a> {
        Draft {
            topic: "jobs",
            payload,
            metadata,
            ttl_ms: None,
        }
    }

    #[test]
    fn json_is_the_documented_delivery_object_with_verbatim_payload() {
        let payload = br#"{"b": 1.50, "a": [1e3]}"#;
        let msg = Message::build(
            MessageId::new(1_731_000_000_123, 4),
            Arc::from("jobs"),
            1_731_000_000_123,
            &draft(payload, Some(br#"{"k":"v"}"#)),
        );
        let text = std::str::from_utf8(msg.json()).unwrap();
        assert_eq!(
            text,
            r#"{"type":"message","message_id":"1731000000123-4","topic":"jobs","payload":{"b": 1.50, "a": [1e3]},"timestamp":"2024-11-07T17:20:00.123Z","metadata":{"k":"v"}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["metadata"]["k"], "v");
        assert_eq!(msg.payload(), payload);
        assert_eq!(msg.metadata(), Some(&br#"{"k":"v"}"#[..]));
    }

    #[test]
    fn frame_is_an_unmasked_text_frame_around_the_json() {
        let big = vec![b'1'; 70_000];
        for payload in [&b"1"[..], &[b'7'; 200][..], &big[..]] {
            let msg = Message::build(
                MessageId::new(1, 0),
                Arc::from("t"),
                0,
                &draft(payload, None),
            );
            let frame = msg.ws_frame();
            assert_eq!(frame[0], 0x81, "FIN + text");
            assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
            let len = match frame[1] {
                126 => u16::from_be_bytes([frame[2], frame[3]]) as usize,
                127 => u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                n => n as usize,
            };
            assert_eq!(len, msg.json().len());
            assert!(msg.json().ends_with(b",\"metadata\":null}"));
        }
    }

    #[test]
    fn a_message_read_back_from_its_stream_is_the_same_delivery() {
        let msg = Message::build(
            MessageId::new(1000, 2),
            Arc::from("jobs"),
            999,
            &Draft {
                topic: "jobs",
                payload: br#"{"a": 1.50}"#,
                metadata: Some(br#"{"k":"v"}"#),
                ttl_ms: Some(5000),
            },
        );
        let entry = msg.stream_entry();
        assert_eq!(entry.ttl_ms, Some(5000));
        let back = Message::from_entry(&msg.topic, entry);
        assert_eq!(back.ws_frame(), msg.ws_frame());
        assert_eq!(back.expires_at_ms, Some(5999));
        assert_eq!(back.metadata(), Some(&br#"{"k":"v"}"#[..]));
    }

    #[test]
    fn ttl_sets_expiry() {
        let mut d = draft(b"1", None);
        d.ttl_ms = Some(1500);
        let msg = Message::build(MessageId::new(1, 0), Arc::from("t"), 10_000, &d);
        assert!(!msg.is_expired(11_499));
        assert!(msg.is_expired(11_500));
    }
}
