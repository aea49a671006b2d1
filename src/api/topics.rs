//! The Topics API of the original relay: `/api/v1/topics` (create, list), `/stats`,
//! `/{name}` (detail, update, delete) and `/{name}/messages` (history pages).
//!
//! Owns the wire shapes of these endpoints and their validation. Records and retained
//! messages belong to each topic's owner shard and are reached only through its handlers
//! (`Shard::on_topic`, or `Shard::on_every_shard` for questions every shard answers about
//! its own topics); history older than the owner's ring is read from the persistent tier
//! here, on the requesting shard, as subscriptions do. Must not touch a `TopicTable`.
//!
//! Which request reaches which handler, with which permission, is the route table's
//! (`routes`). Topic names in requests are bare names resolved through `super::topic_key`
//! (so `server.topic_namespace` applies); responses always show the bare name.

use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::fields::topic_key;
use super::shard::Shard;
use crate::auth::{AuthError, Permission, Principal};
use crate::config::TopicNamespace;
use crate::http::{Request, Response};
use crate::rt::mesh;
use crate::rt::now_ms;
use crate::store::by_age;
use crate::text::rfc3339;
use crate::topic::owner::apply::{Actor, RecordAnswer};
use crate::topic::record::MAX_DESCRIPTION_CHARS;
use crate::topic::{
    display_name, history, valid_topic_name, HistoryPage, Message, MessageId, Order, TopicRecord,
};

/// Most records `GET /api/v1/topics` returns (oldest first): each shard sends at most this
/// many, and the merged list is cut to it.
pub const MAX_LISTED_TOPICS: usize = 10_000;

const DEFAULT_PAGE: usize = 10;
/// Larger `limit`s are silently lowered to this, as the original relay does.
const MAX_PAGE: u64 = 100;

/// `TopicPublic` of the original relay.
#[derive(Serialize)]
struct TopicPublic<'a> {
    topic_id: &'a str,
    topic_name: &'a str,
    owner_id: &'a str,
    created_at: String,
    description: Option<&'a str>,
}

impl<'a> TopicPublic<'a> {
    fn of(key: &'a str, record: &'a TopicRecord) -> Self {
        TopicPublic {
            topic_id: &record.topic_id,
            topic_name: display_name(key),
            owner_id: &record.owner_id,
            created_at: iso8601(record.created_at_ms, "Z"),
            description: record.description.as_deref(),
        }
    }
}

fn record_response(status: u16, key: &str, record: &TopicRecord) -> Response {
    Response::json(
        status,
        serde_json::to_vec(&TopicPublic::of(key, record)).unwrap_or_default(),
    )
}

/// `unix_ms` as ISO 8601 UTC with microseconds and the given zone suffix: `Z` (how the
/// original relay's models print datetimes) or `+00:00` (Python's `isoformat()`, how its
/// stored messages come back).
fn iso8601(unix_ms: u64, zone: &str) -> String {
    let mut text = rfc3339(unix_ms);
    text.pop(); // the `Z`
    text.push_str("000");
    text.push_str(zone);
    text
}

fn unexpected() -> ApiError {
    ApiError::new(500, "INTERNAL", "unexpected reply from the topic owner")
}

/// Without a persistent tier, the topic's shard keeps as many created records as it may.
fn topic_limit(shard: &Shard) -> ApiError {
    let limit = shard.config.storage.max_topic_records_per_shard;
    ApiError::new(
        409,
        "TOPIC_LIMIT_REACHED",
        format!("the relay keeps at most {limit} created topics per shard (storage.max_topic_records_per_shard); delete topics to make room"),
    )
}

fn topic_not_found(name: &str) -> ApiError {
    ApiError::new(404, "TOPIC_NOT_FOUND", format!("Topic '{name}' not found"))
}

/// The key of a topic named in a path. A name that is not a valid topic name, or that the
/// token's `topics` claim does not cover, is reported like a missing topic: nothing is
/// revealed about topics the caller may not see.
fn addressed(shard: &Shard, principal: &Principal, name: &str) -> Result<Arc<str>, ApiError> {
    if !valid_topic_name(name) || !principal.may_use(name) {
        return Err(topic_not_found(name));
    }
    topic_key(shard, principal, name)
}

/// `key`'s record, as its owner has it.
async fn record_of(shard: &Rc<Shard>, key: &Arc<str>) -> Result<RecordAnswer, ApiError> {
    let topic = Arc::clone(key);
    Ok(shard.on_topic(key, move |s| s.topics.record(topic)).await?)
}

fn actor(principal: &Principal) -> Actor {
    Actor {
        subject: principal.subject.as_str().into(),
        admin: is_admin(principal),
    }
}

fn is_admin(principal: &Principal) -> bool {
    principal.require(Permission::Admin).is_ok()
}

/// Whether `principal` may change or delete topic `name` if it owns the record (an admin
/// may in any case). In `per_user` every name is the caller's own, so owning is enough, as
/// in the original relay. In `global` a name is shared by every token and its owner is
/// merely whoever created it first, explicitly or by publishing: any `write` token could
/// squat a name and then delete what others publish there. So a non-admin owner also needs
/// a `topics` claim that covers the name: the identity provider made it responsible for
/// that name.
fn may_manage(shard: &Shard, principal: &Principal, name: &str) -> bool {
    is_admin(principal)
        || match shard.config.server.topic_namespace {
            TopicNamespace::PerUser => true,
            TopicNamespace::Global => principal.scoped_to(name),
        }
}

/// The answer to a change or delete that `principal` may not make to any record of `key`:
/// only whether the topic exists is reported.
async fn refuse_change(
    shard: &Rc<Shard>,
    key: &Arc<str>,
    name: &str,
) -> Result<Response, ApiError> {
    match record_of(shard, key).await? {
        RecordAnswer::Missing => Err(topic_not_found(name)),
        RecordAnswer::Found(_) => Err(not_owner(name)),
        _ => Err(unexpected()),
    }
}

/// `description`: absent or `null` is `None`; otherwise a string of at most 500 characters.
fn description_field(fields: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match fields.get("description") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_DESCRIPTION_CHARS => {
            Ok(Some(text.clone()))
        }
        Some(_) => Err(ApiError::invalid(
            "INVALID_DESCRIPTION",
            format!("`description` must be a string of at most {MAX_DESCRIPTION_CHARS} characters, or null"),
        )),
    }
}

/// `POST /api/v1/topics`.
pub(super) async fn create(
    shard: &Rc<Shard>,
    principal: &Principal,
    body: &[u8],
) -> Result<Response, ApiError> {
    let fields = super::fields::json_object(body)?;
    let name = match fields.get("topic_name") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "MISSING_FIELD",
                "`topic_name` is required",
            ))
        }
        Some(Value::String(name)) if valid_topic_name(name) => name.as_str(),
        Some(_) => {
            return Err(ApiError::invalid(
                "INVALID_TOPIC",
                "`topic_name` must be 1-255 characters of ASCII letters, digits and _ - . :",
            ))
        }
    };
    let description = description_field(&fields)?;
    if !principal.may_use(name) {
        return Err(ApiError::topic_forbidden(name));
    }
    let key = topic_key(shard, principal, name)?;
    let record = TopicRecord::new(&principal.subject, now_ms(), description);
    let topic = Arc::clone(&key);
    let created = shard.on_topic(&key, move |s| s.topics.create_record(topic, record));
    match created.await? {
        RecordAnswer::Created(record) => Ok(record_response(201, &key, &record)),
        RecordAnswer::Exists(record) if record.owner_id == principal.subject => Err(ApiError::new(
            400,
            "TOPIC_EXISTS",
            format!(
                "Topic '{name}' already exists for owner {}",
                record.owner_id
            ),
        )),
        RecordAnswer::Exists(_) => Err(ApiError::new(
            409,
            "TOPIC_OWNED_BY_ANOTHER",
            format!("Topic '{name}' already exists and belongs to another owner"),
        )),
        RecordAnswer::Full => Err(topic_limit(shard)),
        _ => Err(unexpected()),
    }
}

/// `GET /api/v1/topics`: the caller's own topics (owner = its subject) that its token may
/// use, oldest first, at most [`MAX_LISTED_TOPICS`].
pub(super) async fn list(shard: &Rc<Shard>, principal: &Principal) -> Result<Response, ApiError> {
    let owned = gather(shard, Some(&principal.subject), |key| {
        principal.may_use(display_name(key))
    })
    .await?;
    let shown: Vec<TopicPublic<'_>> = owned
        .iter()
        .map(|(key, record)| TopicPublic::of(key, record))
        .collect();
    Ok(Response::json(
        200,
        serde_json::to_vec(&shown).unwrap_or_default(),
    ))
}

/// The records of every shard owned by `owner_id` (any owner with `None`) whose key passes
/// `keep`, oldest first, at most [`MAX_LISTED_TOPICS`]. Merged and cut shard by shard, so
/// never more than two shards' worth is held.
pub(super) async fn gather(
    shard: &Rc<Shard>,
    owner_id: Option<&str>,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(Arc<str>, TopicRecord)>, ApiError> {
    let mut owned: Vec<(Arc<str>, TopicRecord)> = Vec::new();
    for s in 0..shard.count() {
        let owner_id = owner_id.map(Box::from);
        let listed = mesh::on_shard(shard, s, move |s| {
            s.topics.records(owner_id, MAX_LISTED_TOPICS)
        });
        owned.extend(listed.await?);
        owned.retain(|(key, _)| keep(key));
        owned.sort_unstable_by(|a, b| by_age((&a.0, &a.1), (&b.0, &b.1)));
        owned.truncate(MAX_LISTED_TOPICS);
    }
    Ok(owned)
}

/// `GET /api/v1/topics/stats` (admin): records over all shards.
pub(super) async fn stats(shard: &Rc<Shard>) -> Result<Response, ApiError> {
    let mut total = 0;
    for count in shard
        .on_every_shard(|| |s: &Rc<Shard>| s.topics.count_records())
        .await
    {
        total += count?;
    }
    Ok(Response::json(
        200,
        format!(r#"{{"total_topics":{total}}}"#).into_bytes(),
    ))
}

/// `GET /api/v1/topics/{name}`.
pub(super) async fn detail(
    shard: &Rc<Shard>,
    principal: &Principal,
    name: &str,
) -> Result<Response, ApiError> {
    let key = addressed(shard, principal, name)?;
    match record_of(shard, &key).await? {
        // Other tokens' records name their owner (and its username in an auto-created
        // description): they are for tokens that may read the topic.
        RecordAnswer::Found(record)
            if record.owner_id != principal.subject
                && principal.require(Permission::Read).is_err() =>
        {
            Err(AuthError::Forbidden(Permission::Read).into())
        }
        RecordAnswer::Found(record) => Ok(record_response(200, &key, &record)),
        RecordAnswer::Missing => Err(topic_not_found(name)),
        _ => Err(unexpected()),
    }
}

fn not_owner(name: &str) -> ApiError {
    ApiError::new(
        403,
        "NOT_TOPIC_OWNER",
        format!(
            "only an admin, or the owner of topic '{name}' (with `server.topic_namespace: \
             global`: whose token's `topics` claim covers the name), may change it"
        ),
    )
}

/// `PUT /api/v1/topics/{name}`: `{"description": str | null}`, null leaving it unchanged.
pub(super) async fn update(
    shard: &Rc<Shard>,
    principal: &Principal,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let description = description_field(&super::fields::json_object(body)?)?;
    let key = addressed(shard, principal, name)?;
    if !may_manage(shard, principal, name) {
        return refuse_change(shard, &key, name).await;
    }
    let (topic, actor) = (Arc::clone(&key), actor(principal));
    let updated = shard.on_topic(&key, move |s| {
        s.topics.update_record(topic, description, actor)
    });
    match updated.await? {
        RecordAnswer::Found(record) => Ok(record_response(200, &key, &record)),
        RecordAnswer::Missing => Err(topic_not_found(name)),
        RecordAnswer::Forbidden => Err(not_owner(name)),
        RecordAnswer::Full => Err(topic_limit(shard)),
        _ => Err(unexpected()),
    }
}

/// `DELETE /api/v1/topics/{name}`: the record, the retained messages (ring and stream)
/// and the consumer positions.
pub(super) async fn delete(
    shard: &Rc<Shard>,
    principal: &Principal,
    name: &str,
) -> Result<Response, ApiError> {
    let key = addressed(shard, principal, name)?;
    if !may_manage(shard, principal, name) {
        return refuse_change(shard, &key, name).await;
    }
    let (topic, actor) = (Arc::clone(&key), actor(principal));
    let deleted = shard.on_topic(&key, move |s| s.topics.delete_record(topic, actor));
    match deleted.await? {
        RecordAnswer::Deleted => Ok(Response::empty(204)),
        RecordAnswer::Missing => Err(topic_not_found(name)),
        RecordAnswer::Forbidden => Err(not_owner(name)),
        _ => Err(unexpected()),
    }
}

/// The query of a history request. Parameter errors that the original relay reports only
/// once it found the topic (400s) are kept aside until the record was checked.
struct HistoryQuery {
    page: Result<(usize, Order, Option<MessageId>), ApiError>,
    cursor_text: Option<String>,
}

fn history_query(req: &Request) -> Result<HistoryQuery, ApiError> {
    let limit = match req.query_param("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => parse_limit(&text)?,
    };
    let order = match req.query_param("order").as_deref() {
        None | Some("desc") => Ok(Order::Desc),
        Some("asc") => Ok(Order::Asc),
        Some(_) => Err(ApiError::new(
            400,
            "INVALID_ORDER",
            "Order must be 'asc' or 'desc'",
        )),
    };
    let cursor_text = req.query_param("cursor").filter(|c| !c.is_empty());
    let cursor = match &cursor_text {
        None => Ok(None),
        Some(text) => MessageId::parse(text).map(Some).ok_or_else(|| {
            ApiError::new(
                400,
                "INVALID_CURSOR",
                "`cursor` must be a message ID (<ms>-<seq>), as given by `next_cursor`",
            )
        }),
    };
    let page = limit.and_then(|limit| Ok((limit, order?, cursor?)));
    Ok(HistoryQuery { page, cursor_text })
}

/// `limit`: not an integer is 422 (outer error); below 1 is 400 (inner); above 100 is
/// lowered to 100.
fn parse_limit(text: &str) -> Result<Result<usize, ApiError>, ApiError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "INVALID_LIMIT",
            "`limit` must be an integer",
        ));
    }
    if negative || digits.bytes().all(|b| b == b'0') {
        return Ok(Err(ApiError::new(
            400,
            "INVALID_LIMIT",
            "Limit must be at least 1",
        )));
    }
    let limit = digits.parse::<u64>().unwrap_or(u64::MAX).min(MAX_PAGE);
    Ok(Ok(limit as usize))
}

/// `GET /api/v1/topics/{name}/messages?limit&order&cursor`.
pub(super) async fn history(
    shard: &Rc<Shard>,
    principal: &Principal,
    name: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let query = history_query(req)?;
    let key = addressed(shard, principal, name)?;
    let (limit, order, cursor) = match query.page {
        Ok(page) => page,
        Err(e) => {
            // A missing topic is reported before bad parameters.
            return match record_of(shard, &key).await? {
                RecordAnswer::Missing => Err(topic_not_found(name)),
                _ => Err(e),
            };
        }
    };
    let topic = Arc::clone(&key);
    let page = shard.on_topic(&key, move |s| s.topics.history(topic, order, cursor, limit));
    let Some(page) = page.await? else {
        return Err(topic_not_found(name));
    };
    let messages = complete(shard, &key, order, limit, page).await?;
    Ok(Response::json(
        200,
        page_json(&messages, limit, order, query.cursor_text.as_deref()),
    ))
}

/// Joins the owner's ring part with the stream part older than the ring, read here.
async fn complete(
    shard: &Rc<Shard>,
    key: &Arc<str>,
    order: Order,
    limit: usize,
    page: HistoryPage,
) -> Result<Vec<Arc<Message>>, ApiError> {
    let Some(span) = page.stream else {
        return Ok(page.ring);
    };
    match order {
        Order::Asc => {
            let (mut messages, _) = history::read(&shard.store, key, &span, limit).await?;
            let room = limit.saturating_sub(messages.len());
            messages.extend(page.ring.into_iter().take(room));
            Ok(messages)
        }
        Order::Desc => {
            let mut messages = page.ring;
            let room = limit.saturating_sub(messages.len());
            if room > 0 {
                let older = history::read_newest_first(&shard.store, key, &span, room).await?;
                messages.extend(older);
            }
            Ok(messages)
        }
    }
}

/// The original relay's `PaginatedMessagesResponse`, items in its stored-message shape
/// (payload and metadata copied verbatim; metadata `{}` when there is none).
fn page_json(
    messages: &[Arc<Message>],
    limit: usize,
    order: Order,
    cursor: Option<&str>,
) -> Vec<u8> {
    let size: usize = messages.iter().map(|m| m.json().len() + 40).sum();
    let mut body = Vec::with_capacity(size + 160);
    body.extend_from_slice(b"{\"messages\":[");
    for (i, msg) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"message_id\":\"");
        msg.id.push_text(&mut body);
        body.extend_from_slice(b"\",\"topic\":\"");
        // Topic names need no JSON escaping (their alphabet is checked on the way in).
        body.extend_from_slice(display_name(&msg.topic).as_bytes());
        body.extend_from_slice(b"\",\"payload\":");
        body.extend_from_slice(msg.payload());
        body.extend_from_slice(b",\"timestamp\":\"");
        body.extend_from_slice(iso8601(msg.timestamp_ms, "+00:00").as_bytes());
        body.extend_from_slice(b"\",\"metadata\":");
        body.extend_from_slice(msg.metadata().unwrap_or(b"{}"));
        body.push(b'}');
    }
    let order = match order {
        Order::Asc => "asc",
        Order::Desc => "desc",
    };
    let text = |value: Option<&str>| {
        value.map_or_else(|| "null".to_string(), |v| Value::from(v).to_string())
    };
    let next_cursor = messages.last().map(|m| m.id.to_string());
    body.extend_from_slice(
        format!(
            r#"],"total":{},"limit":{limit},"order":"{order}","cursor":{},"next_cursor":{}}}"#,
            messages.len(),
            text(cursor),
            text(next_cursor.as_deref()),
        )
        .as_bytes(),
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated_like_the_original() {
        let ok = |t: &str| parse_limit(t).unwrap().unwrap();
        let status = |t: &str| match parse_limit(t) {
            Err(e) => e.status,
            Ok(Err(e)) => e.status,
            Ok(Ok(_)) => 200,
        };
        assert_eq!(ok("5"), 5);
        assert_eq!(ok("+7"), 7);
        assert_eq!(ok("150"), 100);
        assert_eq!(ok("99999999999999999999999"), 100);
        for bad in ["0", "-1", "-0", "-99999999999999999999"] {
            assert_eq!(status(bad), 400, "{bad}");
        }
        for bad in ["", "x", "1.5", "1e3", "--1", " 1"] {
            assert_eq!(status(bad), 422, "{bad}");
        }
    }

    #[test]
    fn datetimes_have_both_python_forms() {
        assert_eq!(
            iso8601(1_731_000_000_123, "Z"),
            "2024-11-07T17:20:00.123000Z"
        );
        assert_eq!(
            iso8601(1_731_000_000_123, "+00:00"),
            "2024-11-07T17:20:00.123000+00:00"
        );
    }
}
