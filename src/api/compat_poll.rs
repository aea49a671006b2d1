//! The original Python relay's long-poll endpoints: `POST /messages/poll` with its catch-up
//! semantics, and `GET /messages/poll/stats`.
//!
//! This module owns only the request shape and the choice of each topic's cursor.
//! Subscribing, parking and the reply are `poll`'s, so catch-up and waiting share one set of
//! subscriptions and the seam between them is gap-free (the original could miss a message
//! published in between). It keeps no state between requests: cursors are message IDs that
//! the client holds.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::conn::Conn;
use super::error::ApiError;
use super::fields::{parse_topics, permit_topics, topic_key};
use super::poll::{Collected, DEFAULT_TIMEOUT_SECS};
use super::shard::Shard;
use crate::auth::Principal;
use crate::http::Response;
use crate::topic::{Cursor, MessageId};

/// The most messages the catch-up reads per topic, and the combined count from which the
/// original reports `has_more`.
const CATCH_UP_LIMIT: usize = 100;
/// The original's bound on `timeout` (seconds).
const MAX_TIMEOUT_SECS: u64 = 60;

#[derive(Deserialize)]
struct RawPoll<'a> {
    #[serde(borrow, default)]
    topics: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    timeout: Option<&'a RawValue>,
}

/// A present field, even `null` (which plain `Option` would fold into "absent").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A validated poll request (public for the fuzz targets).
#[derive(Debug)]
pub struct PollRequest {
    /// Bare names, deduplicated, in request order.
    pub topics: Vec<std::sync::Arc<str>>,
    /// Cursor per bare name; empty when `since` was absent, `null` or `{}`. Bounded by the
    /// body size limit.
    pub since: HashMap<String, String>,
    pub timeout_secs: u64,
}

impl PollRequest {
    /// Validates a `POST /messages/poll` body: at most `max_topics` topics, a timeout of 1
    /// to 60 seconds shortened to `max_timeout`.
    pub fn parse(body: &[u8], max_topics: usize, max_timeout: u64) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::invalid("INVALID_JSON", "the body is not valid UTF-8"))?;
        let raw: RawPoll<'_> = serde_json::from_str(text).map_err(|e| {
            ApiError::invalid(
                "INVALID_JSON",
                format!("body must be a JSON object with a `topics` array: {e}"),
            )
        })?;
        // serde's derived structs also accept arrays; the body must be an object.
        if !text.trim_start().starts_with('{') {
            return Err(ApiError::invalid(
                "INVALID_JSON",
                "body must be a JSON object with a `topics` array",
            ));
        }
        let names: Vec<String> = match raw.topics {
            None => return Err(ApiError::invalid("MISSING_FIELD", "`topics` is required")),
            Some(list) => serde_json::from_str(list.get()).map_err(|_| {
                ApiError::invalid("INVALID_TOPIC", "`topics` must be an array of topic names")
            })?,
        };
        let topics = parse_topics(names.iter().map(String::as_str), max_topics)?;
        let since = match raw.since {
            None => HashMap::new(),
            Some(map) => serde_json::from_str(map.get()).map_err(|_| {
                ApiError::invalid(
                    "INVALID_CURSOR",
                    "`since` must be null or an object mapping topic names to message IDs \
                     (strings)",
                )
            })?,
        };
        Ok(PollRequest {
            topics,
            since,
            timeout_secs: parse_timeout(raw.timeout, max_timeout)?,
        })
    }

    /// Where each topic starts. Without cursors (`since` absent, `null` or `{}`) only new
    /// messages count. With any cursor, the original's catch-up: each topic after its
    /// cursor, and a topic without a usable one (missing, empty, or not a message ID, such
    /// as the original memory backend's `msg_…` IDs) from its oldest retained message.
    fn cursor(&self, name: &str) -> Cursor {
        if self.since.is_empty() {
            return Cursor::Live;
        }
        match self.since.get(name).and_then(|id| MessageId::parse(id)) {
            Some(id) => Cursor::After(id),
            None => Cursor::Earliest,
        }
    }
}

/// `timeout`: whole seconds from 1 to 60 as the original accepts them, shortened to `max`
/// (`delivery.max_poll_timeout`) rather than refused, since the Python client sends
/// whatever its caller asked for up to 60. Lax like the original's validation (pydantic):
/// integral floats (`5.0`) and numeric strings (`"5"`) are accepted too.
fn parse_timeout(raw: Option<&RawValue>, max: u64) -> Result<u64, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_TIMEOUT_SECS.min(max));
    };
    let number = match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => text.trim().parse::<f64>().ok(),
        Err(_) => serde_json::from_str::<f64>(raw.get()).ok(),
    };
    match number {
        Some(n) if n.fract() == 0.0 && (1.0..=MAX_TIMEOUT_SECS as f64).contains(&n) => {
            Ok((n as u64).min(max))
        }
        _ => Err(ApiError::invalid(
            "INVALID_TIMEOUT",
            format!("`timeout` must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"),
        )),
    }
}

/// `POST /messages/poll`: answers at once with the catch-up when it finds anything,
/// otherwise with what arrives before the timeout (an empty list when nothing does).
pub async fn poll(
    conn: &mut Conn,
    principal: &Principal,
    body: &[u8],
) -> Result<Response, ApiError> {
    let shard = Rc::clone(&conn.shard);
    let max_timeout = shard
        .config
        .delivery
        .max_poll_timeout
        .as_secs()
        .clamp(1, MAX_TIMEOUT_SECS);
    let req = PollRequest::parse(
        body,
        shard.config.limits.max_topics_per_request,
        max_timeout,
    )?;
    permit_topics(principal, &req.topics)?;
    let mut cursors = Vec::with_capacity(req.topics.len());
    for name in &req.topics {
        cursors.push((topic_key(&shard, principal, name)?, req.cursor(name)));
    }

    let mut collected = Collected::new(conn, CATCH_UP_LIMIT * cursors.len());
    let each = cursors.iter().map(|(topic, cursor)| (topic, cursor));
    collected.subscribe(each, None, CATCH_UP_LIMIT).await?;
    collected.wait(conn, req.timeout_secs).await;
    let more = !req.since.is_empty() && collected.len() >= CATCH_UP_LIMIT;
    Ok(collected.into_response(more))
}

/// `GET /messages/poll/stats`: relay-wide counts from the shards' metrics. Unlike the
/// original, no per-topic map: it would show other accounts' topic names.
pub async fn stats(shard: &Rc<Shard>) -> Response {
    let shards = shard.scrape_all().await;
    let waiters: u64 = shards.iter().map(|s| s.gauges.polls_waiting).sum();
    let topics: u64 = shards.iter().map(|s| s.gauges.subscribed_topics).sum();
    Response::json(
        200,
        format!(r#"{{"active_waiters":{waiters},"subscribed_topics":{topics}}}"#).into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn timeout_is_lax_like_the_original() {
        assert_eq!(parse_timeout(None, 60).unwrap(), 30);
        assert_eq!(parse_timeout(None, 10).unwrap(), 10);
        for (text, secs) in [("5", 5), ("5.0", 5), (r#""5""#, 5), ("60", 60), ("1", 1)] {
            assert_eq!(parse_timeout(Some(&raw(text)), 60).unwrap(), secs, "{text}");
        }
        for bad in [
            "0", "61", "5.5", "-1", r#""5.5""#, r#""x""#, "null", "true", "[5]", "1e400",
        ] {
            let err = parse_timeout(Some(&raw(bad)), 60).unwrap_err();
            assert_eq!((err.status, err.code), (422, "INVALID_TIMEOUT"), "{bad}");
        }
        assert_eq!(
            parse_timeout(Some(&raw("20")), 10).unwrap(),
            10,
            "shortened to the configured max"
        );
    }

    #[test]
    fn cursors_follow_the_original_catch_up() {
        let parse = |body: &str| PollRequest::parse(body.as_bytes(), 20, 60).unwrap();
        let req = parse(r#"{"topics":["a","b"]}"#);
        assert_eq!(req.cursor("a"), Cursor::Live);
        let req = parse(r#"{"topics":["a","b"],"since":{}}"#);
        assert_eq!(req.cursor("a"), Cursor::Live, "an empty map is no catch-up");
        let req =
            parse(r#"{"topics":["a","b","c","d"],"since":{"a":"5-1","c":"","d":"msg_0123abcd"}}"#);
        assert_eq!(req.cursor("a"), Cursor::After(MessageId::new(5, 1)));
        for oldest in ["b", "c", "d"] {
            assert_eq!(req.cursor(oldest), Cursor::Earliest, "{oldest}");
        }
    }

    #[test]
    fn malformed_requests_are_rejected_with_their_code() {
        for (body, code) in [
            ("", "INVALID_JSON"),
            ("{", "INVALID_JSON"),
            (r#"[["a"]]"#, "INVALID_JSON"),
            ("{}", "MISSING_FIELD"),
            (r#"{"topics":[]}"#, "MISSING_FIELD"),
            (r#"{"topics":"a"}"#, "INVALID_TOPIC"),
            (r#"{"topics":["a b"]}"#, "INVALID_TOPIC"),
            (r#"{"topics":["a"],"since":{"a":5}}"#, "INVALID_CURSOR"),
            (r#"{"topics":["a"],"since":["a"]}"#, "INVALID_CURSOR"),
            (r#"{"topics":["a"],"timeout":0}"#, "INVALID_TIMEOUT"),
        ] {
            let err = PollRequest::parse(body.as_bytes(), 20, 60)
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!((err.status, err.code), (422, code), "{body}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({ "topics": many }).to_string();
        let err = PollRequest::parse(body.as_bytes(), 20, 60).err().unwrap();
        assert_eq!(err.code, "TOO_MANY_TOPICS");
    }

    #[test]
    fn duplicate_topics_collapse_and_since_keys_are_not_validated() {
        let body = r#"{"topics":["a","b","a"],"since":{"not a topic!":"1-0"},"other":1}"#;
        let req = PollRequest::parse(body.as_bytes(), 20, 60).unwrap();
        assert_eq!(req.topics.len(), 2);
        assert_eq!(req.cursor("a"), Cursor::Earliest);
    }
}
