//! Request-body validators of the API, called directly: the publish message validator
//! (`api::publish::validate_message`, also used for each bulk item), the original relay's
//! long-poll body (`api::compat_poll::PollRequest::parse`) and WebSocket client frames
//! (`api::ws_command::parse`).
//!
//! Input: a selector byte (modulo 3: publish, poll, WebSocket frame), a limits byte, then
//! the body. The
//! oracle: a body either gets a 422 with one of the codes the README lists for that
//! endpoint, or is accepted, and then everything it accepted satisfies the documented
//! rules, re-checked here independently (topic names, JSON of payload and metadata, TTL
//! range, topic count and uniqueness, timeout range; a frame's `type`, topic lists and
//! nesting depth).
#![no_main]

use std::collections::{BTreeMap, HashSet};

use libfuzzer_sys::fuzz_target;
use pulsar_relay::api::compat_poll::PollRequest;
use pulsar_relay::api::publish::{validate_message, MAX_TTL_SECS};
use pulsar_relay::api::ws_command::{self, Command};
use pulsar_relay::topic::valid_topic_name;
use serde_json::value::RawValue;

/// The original relay's timeout range, before `delivery.max_poll_timeout` shortens it.
const MAX_POLL_TIMEOUT_SECS: u64 = 60;

fuzz_target!(|data: &[u8]| {
    let Some((&[selector, limits], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    match selector % 3 {
        0 => publish(body, usize::from(limits % 70)),
        1 => poll(
            body,
            usize::from(limits % 8) + 1,
            u64::from(limits / 8 % 70) + 1,
        ),
        _ => frame(body, usize::from(limits % 70)),
    }
});

fn frame(text: &[u8], max_depth: usize) {
    // Text frames reach the parser only after the frame decoder checked their UTF-8.
    if std::str::from_utf8(text).is_err() {
        return;
    }
    match ws_command::parse(text, max_depth) {
        Err(e) => {
            assert_eq!(e.status, 422, "{e:?}");
            assert!(
                [
                    "INVALID_JSON",
                    "JSON_TOO_DEEP",
                    "MISSING_TYPE",
                    "UNKNOWN_MESSAGE_TYPE",
                    "INVALID_FRAME"
                ]
                .contains(&e.code),
                "{e:?}"
            );
        }
        Ok(command) => {
            let value: serde_json::Value =
                serde_json::from_slice(text).expect("an accepted frame is JSON");
            assert!(
                depth(&value) <= max_depth,
                "an accepted frame nests too deep"
            );
            let object: BTreeMap<String, &RawValue> =
                serde_json::from_slice(text).expect("an accepted frame is a JSON object");
            let kind: String = serde_json::from_str(object["type"].get()).unwrap();
            let topics =
                || -> Vec<String> { serde_json::from_str(object["topics"].get()).unwrap() };
            match command {
                Command::Subscribe(cmd) => {
                    assert_eq!(kind, "subscribe");
                    assert_eq!(cmd.topics, topics());
                }
                Command::Unsubscribe(cmd) => {
                    assert_eq!(kind, "unsubscribe");
                    assert_eq!(cmd.topics, topics());
                }
                Command::Ack(cmd) => {
                    assert_eq!(kind, "ack");
                    let id: String = serde_json::from_str(object["message_id"].get()).unwrap();
                    assert_eq!(cmd.message_id, id);
                }
                Command::Auth(_) => assert_eq!(kind, "auth"),
                Command::Ping => assert_eq!(kind, "ping"),
            }
        }
    }
}

/// Nesting of arrays and objects (a scalar is 0).
fn depth(value: &serde_json::Value) -> usize {
    use serde_json::Value::{Array, Object};
    match value {
        Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn publish(body: &[u8], max_depth: usize) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    match validate_message(body, text, max_depth) {
        Err(e) => {
            assert_eq!(e.status, 422, "{e:?}");
            assert!(
                [
                    "INVALID_JSON",
                    "INVALID_MESSAGE",
                    "MISSING_FIELD",
                    "INVALID_TOPIC",
                    "JSON_TOO_DEEP",
                    "INVALID_TTL",
                    "INVALID_METADATA",
                ]
                .contains(&e.code),
                "{e:?}"
            );
        }
        Ok(msg) => {
            assert!(valid_topic_name(&msg.topic), "{msg:?}");
            assert!(
                serde_json::from_str::<&RawValue>(msg.payload).is_ok(),
                "payload is JSON: {msg:?}"
            );
            assert!(within(body, msg.payload), "payload is a slice of the body");
            if let Some(metadata) = msg.metadata {
                assert!(within(body, metadata));
                assert!(
                    serde_json::from_str::<BTreeMap<String, String>>(metadata).is_ok(),
                    "metadata is an object of strings: {metadata}"
                );
            }
            if let Some(ttl) = msg.ttl_ms {
                assert!((1000..=MAX_TTL_SECS * 1000).contains(&ttl), "{ttl}");
                assert_eq!(ttl % 1000, 0, "whole seconds");
            }
            // The accepted body is a JSON object naming that topic and that payload.
            let object: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).expect("an accepted body is a JSON object");
            let topic: String = serde_json::from_str(object["topic"].get()).unwrap();
            assert_eq!(topic, msg.topic);
            assert_eq!(object["payload"].get(), msg.payload);
        }
    }
}

fn poll(body: &[u8], max_topics: usize, max_timeout: u64) {
    match PollRequest::parse(body, max_topics, max_timeout) {
        Err(e) => {
            assert_eq!(e.status, 422, "{e:?}");
            assert!(
                [
                    "INVALID_JSON",
                    "MISSING_FIELD",
                    "INVALID_TOPIC",
                    "TOO_MANY_TOPICS",
                    "INVALID_CURSOR",
                    "INVALID_TIMEOUT",
                ]
                .contains(&e.code),
                "{e:?}"
            );
        }
        Ok(req) => {
            assert!(
                !req.topics.is_empty() && req.topics.len() <= max_topics,
                "{req:?}"
            );
            assert!(req.topics.iter().all(|t| valid_topic_name(t)), "{req:?}");
            let distinct: HashSet<&str> = req.topics.iter().map(|t| &**t).collect();
            assert_eq!(distinct.len(), req.topics.len(), "duplicates collapsed");
            assert!(
                (1..=MAX_POLL_TIMEOUT_SECS.min(max_timeout)).contains(&req.timeout_secs),
                "{req:?}"
            );
            let object: BTreeMap<String, &RawValue> =
                serde_json::from_slice(body).expect("an accepted body is a JSON object");
            assert!(object.contains_key("topics"));
        }
    }
}

/// Whether `part` points into `body`.
fn within(body: &[u8], part: &str) -> bool {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= end
}
