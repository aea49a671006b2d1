//! The request fields several endpoints share, each validated in one place: topic lists,
//! topic keys (namespaces) and the token's claim over them, client IDs, cursors, message
//! IDs and JSON object bodies.
//!
//! Owns the rules and their error codes; which endpoint reads which field, and from where
//! (query, body, WebSocket frame), is the endpoint's business.

use std::sync::Arc;

use super::error::ApiError;
use super::shard::Shard;
use crate::auth::Principal;
use crate::config::TopicNamespace;
use crate::http::Request;
use crate::topic::{valid_namespace, valid_topic_name, Cursor, MessageId};

/// Validates a list of topic names (deduplicated, order kept) for a subscribe or a poll.
pub(super) fn parse_topics<'a>(
    names: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Result<Vec<Arc<str>>, ApiError> {
    let mut topics: Vec<Arc<str>> = Vec::new();
    for name in names {
        if !valid_topic_name(name) {
            return Err(ApiError::invalid(
                "INVALID_TOPIC",
                format!("{name:?} is not a valid topic name (1-255 characters of ASCII letters, digits and _ - . :)"),
            ));
        }
        if !topics.iter().any(|t| &**t == name) {
            topics.push(Arc::from(name));
        }
    }
    if topics.is_empty() {
        return Err(ApiError::invalid(
            "MISSING_FIELD",
            "at least one topic is required",
        ));
    }
    if topics.len() > max {
        return Err(ApiError::invalid(
            "TOO_MANY_TOPICS",
            format!("at most {max} topics per request"),
        ));
    }
    Ok(topics)
}

/// The topic a bare, already validated `name` means for `principal`: the name itself, or
/// with `server.topic_namespace: per_user` that name in the principal's own namespace. Every
/// handler that takes a topic name from a request goes through here.
pub(super) fn topic_key(
    shard: &Shard,
    principal: &Principal,
    name: &str,
) -> Result<Arc<str>, ApiError> {
    match shard.config.server.topic_namespace {
        TopicNamespace::Global => Ok(Arc::from(name)),
        TopicNamespace::PerUser if valid_namespace(&principal.subject) => {
            Ok(crate::topic::topic_key(Some(&principal.subject), name))
        }
        TopicNamespace::PerUser => Err(ApiError::new(
            403,
            "INVALID_SUBJECT",
            "with per-user topic namespaces a token subject must be 1-200 printable ASCII \
             characters without braces, quotes or backslashes",
        )),
    }
}

/// The body as a JSON object, for the management endpoints (unknown fields are the
/// caller's business to ignore).
pub(super) fn json_object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::invalid(
            "INVALID_BODY",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::invalid(
            "INVALID_JSON",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// The `topics` query parameter of a read (poll, SSE): required, validated, covered by
/// the token's claim, and scoped to the topic keys it means for `principal`.
pub(super) fn query_topics(
    shard: &Shard,
    principal: &Principal,
    req: &Request,
) -> Result<Vec<Arc<str>>, ApiError> {
    let param = req
        .query_param("topics")
        .ok_or_else(|| ApiError::invalid("MISSING_FIELD", "`topics` is required"))?;
    let topics = parse_topics(
        param.split(',').map(str::trim),
        shard.config.limits.max_topics_per_request,
    )?;
    permit_topics(principal, &topics)?;
    scope_topics(shard, principal, topics)
}

/// Validated names (claim already checked) as the topic keys they mean for `principal`.
pub(super) fn scope_topics(
    shard: &Shard,
    principal: &Principal,
    names: Vec<Arc<str>>,
) -> Result<Vec<Arc<str>>, ApiError> {
    if shard.config.server.topic_namespace == TopicNamespace::Global {
        return Ok(names);
    }
    names
        .iter()
        .map(|name| topic_key(shard, principal, name))
        .collect()
}

/// Every topic must be covered by the token's `topics` claim; nothing happens otherwise.
pub(super) fn permit_topics(principal: &Principal, topics: &[Arc<str>]) -> Result<(), ApiError> {
    match topics.iter().find(|t| !principal.may_use(t)) {
        Some(denied) => Err(ApiError::topic_forbidden(denied)),
        None => Ok(()),
    }
}

/// Client IDs share the topic alphabet, at most 128 characters.
pub(super) fn parse_client_id(id: &str) -> Result<&str, ApiError> {
    if id.len() <= 128 && valid_topic_name(id) {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            "INVALID_CLIENT_ID",
            "`client_id` must be 1-128 characters of ASCII letters, digits and _ - . :",
        ))
    }
}

/// A `since` value: where a reader starts (`None`: live).
pub(super) fn parse_cursor(since: Option<&str>) -> Result<Cursor, ApiError> {
    match since {
        None => Ok(Cursor::Live),
        Some(text) => Cursor::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "INVALID_CURSOR",
                "`since` must be a message ID (ms-seq), `earliest` or `latest`",
            )
        }),
    }
}

/// A message ID as a client sends it (`ms-seq`).
pub(super) fn parse_message_id(text: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(text).ok_or_else(|| {
        ApiError::invalid(
            "INVALID_MESSAGE_ID",
            format!("{text:?} is not a message ID (ms-seq)"),
        )
    })
}
