//! JSON message and command bodies, through what the crate makes public.
//!
//! The validators themselves (`parse_message` in `src/api/publish.rs`, the command parsing in
//! `src/api/ws_session.rs`) are private; fuzz/README.md names the functions to expose. Until
//! then this target covers the public code every accepted body goes through:
//!
//! Input: `now_ms` (8 bytes LE), then a JSON object. A publish body
//! (`topic`/`payload`/`ttl`/`metadata`, also each item of a bulk `messages` array) whose
//! topic passes `valid_topic_name` and whose fields are what the README allows is built into
//! a `Message` with `Message::build`; the delivery JSON must parse, carry the payload and
//! metadata byte for byte and the topic, ID and timestamp as given, and the prebuilt
//! WebSocket frame must be a correct text frame that `FrameDecoder` reads back. Every string
//! field (the command fields `type`, `since`, `message_id`, `client_id`, `topic`, and the
//! `topics` list) goes through `valid_topic_name`, `MessageId::parse` and `Cursor::parse`.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pulsar_relay::text::rfc3339;
use pulsar_relay::topic::{valid_topic_name, Cursor, Draft, Message, MessageId};
use pulsar_relay::ws::frame::{FrameDecoder, Incoming};
use serde_json::value::RawValue;

mod client_frame;

type Fields<'a> = BTreeMap<String, &'a RawValue>;

fuzz_target!(|data: &[u8]| {
    let Some((now, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let now_ms = u64::from_le_bytes(*now);
    let Ok(fields) = serde_json::from_slice::<Fields<'_>>(body) else {
        return;
    };
    publish(&fields, now_ms, 0);
    if let Some(items) = fields
        .get("messages")
        .and_then(|raw| serde_json::from_str::<Vec<Fields<'_>>>(raw.get()).ok())
    {
        for (seq, item) in items.iter().enumerate() {
            publish(item, now_ms, seq as u64 + 1);
        }
    }
    for value in fields.values() {
        if let Ok(text) = serde_json::from_str::<String>(value.get()) {
            check_string(&text);
        }
    }
    if let Some(topics) = fields
        .get("topics")
        .and_then(|raw| serde_json::from_str::<Vec<String>>(raw.get()).ok())
    {
        topics.iter().for_each(|t| check_string(t));
    }
});

/// Builds the message a publish body asks for, if the README's rules accept it.
fn publish(fields: &Fields<'_>, now_ms: u64, seq: u64) {
    let Some(topic) = fields
        .get("topic")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    else {
        return;
    };
    let Some(payload) = fields.get("payload") else {
        return;
    };
    if !valid_topic_name(&topic) {
        return;
    }
    let metadata = match fields.get("metadata").map(|raw| raw.get()) {
        None | Some("null") => None,
        Some(text) => match serde_json::from_str::<BTreeMap<String, String>>(text) {
            Ok(_) => Some(text),
            Err(_) => return,
        },
    };
    let ttl_ms = match fields.get("ttl").map(|raw| raw.get()) {
        None | Some("null") => None,
        Some(text) => match serde_json::from_str::<u64>(text) {
            Ok(secs @ 1..) => Some(secs.saturating_mul(1000)),
            _ => return,
        },
    };
    let draft = Draft {
        topic: &topic,
        payload: payload.get().as_bytes(),
        metadata: metadata.map(str::as_bytes),
        ttl_ms,
    };
    let id = MessageId::new(now_ms, seq);
    let msg = Message::build(id, Arc::from(topic.as_str()), now_ms, &draft);

    assert_eq!(msg.id, id);
    assert_eq!(&*msg.topic, topic);
    assert_eq!(msg.payload(), draft.payload);
    assert_eq!(msg.metadata(), draft.metadata);
    assert_eq!(
        msg.expires_at_ms,
        ttl_ms.map(|ttl| now_ms.saturating_add(ttl))
    );
    assert_eq!(msg.is_expired(now_ms), msg.expires_at_ms == Some(now_ms));
    if let Some(at) = msg.expires_at_ms {
        assert!(msg.is_expired(at));
    }

    // The delivery object, relayed byte for byte.
    let json = msg.json();
    let delivered: Fields<'_> = serde_json::from_slice(json).unwrap_or_else(|e| {
        panic!(
            "delivery JSON does not parse ({e}): {}",
            String::from_utf8_lossy(json)
        )
    });
    let keys: Vec<&str> = delivered.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "message_id",
            "metadata",
            "payload",
            "timestamp",
            "topic",
            "type"
        ]
    );
    let string = |key: &str| serde_json::from_str::<String>(delivered[key].get()).unwrap();
    assert_eq!(string("type"), "message");
    assert_eq!(string("message_id"), id.to_string());
    assert_eq!(string("topic"), topic);
    assert_eq!(string("timestamp"), rfc3339(now_ms));
    assert_eq!(delivered["payload"].get(), payload.get());
    assert_eq!(delivered["metadata"].get(), metadata.unwrap_or("null"));

    // The prebuilt frame: one final unmasked text frame around exactly that JSON.
    let frame = msg.ws_frame();
    assert_eq!(frame[0], 0x81);
    let (declared, header_len) = match frame[1] {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => (
            usize::try_from(u64::from_be_bytes(frame[2..10].try_into().unwrap())).unwrap(),
            10,
        ),
        n => (usize::from(n), 2),
    };
    assert_eq!(declared, json.len(), "frame header length");
    assert_eq!(&frame[header_len..], json);
    let client = client_frame::masked(frame, [0x12, 0x34, 0x56, 0x78]);
    assert_eq!(
        FrameDecoder::new(json.len()).decode(&client),
        Ok(Some((Incoming::Text(json.to_vec()), client.len())))
    );
}

/// Topic-name, message-ID and cursor rules on one string.
fn check_string(text: &str) {
    if valid_topic_name(text) {
        // The delivery JSON embeds topic names unescaped on the strength of this rule.
        assert_eq!(serde_json::to_string(text).unwrap(), format!("\"{text}\""));
        assert!((1..=255).contains(&text.len()));
    }
    let id = MessageId::parse(text);
    if let Some(id) = id {
        assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
        assert_eq!(
            id.seq == 0,
            text.split_once('-')
                .is_none_or(|(_, seq)| seq.bytes().all(|b| b == b'0'))
        );
    }
    match Cursor::parse(text) {
        Some(Cursor::Earliest) => assert!(matches!(text, "earliest" | "0")),
        Some(Cursor::Live) => assert!(matches!(text, "latest" | "$")),
        Some(Cursor::After(after)) => assert_eq!(Some(after), id),
        None => assert_eq!(id, None),
    }
}
