//! Producer endpoints: `POST /api/v1/messages` and `POST /api/v1/messages/bulk`.
//!
//! The body is parsed once, borrowing from the request bytes: the payload and metadata are
//! located, validated and passed to the owner as byte ranges of the same buffer, so the
//! producer's JSON is never re-encoded (number formatting and key order survive) and never
//! copied before the owner writes it into the delivery frame.
//!
//! A request with an `Idempotency-Key` is resolved by `idempotency` once it is fully
//! validated: only a first request publishes, and its answer is recorded before it is sent.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::future;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::idempotency::{self, Begin};
use super::idempotency::{Endpoint, Unconfirmed};
use super::limits::too_deep;
use super::shard::Shard;
use super::shed;
use crate::auth::Principal;
use crate::config::TopicNamespace;
use crate::http::{Request, Response};
use crate::rt::conns::ConnCtl;
use crate::rt::mesh::{join_all, Answer};
use crate::rt::now_ms;
use crate::store::StoreError;
use crate::text::{push_rfc3339, RFC3339_LEN};
use crate::topic::owner::apply::{DraftSpan, PublishBatch, Publisher, Receipt};
use crate::topic::owner::PublishResult;
use crate::topic::{display_name, owner_of, valid_topic_name, MessageId};

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ttl: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawBulk<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
}

/// A present field, even `null` (which plain `Option` would fold into "absent").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Checks that a JSON value is an object of strings without building it.
struct StringMap;

/// Accepts any JSON string, and nothing else.
struct JsonString;

impl<'de> Deserialize<'de> for JsonString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only;
        impl Visitor<'_> for Only {
            type Value = JsonString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, _: &str) -> Result<JsonString, E> {
                Ok(JsonString)
            }
        }
        d.deserialize_str(Only)
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                while map.next_entry::<IgnoredAny, JsonString>()?.is_some() {}
                Ok(StringMap)
            }
        }
        d.deserialize_map(Entries)
    }
}

/// A validated message: ranges into the body, plus the topic when the producer spelled it
/// with JSON escapes (then it is appended to the body before sending).
struct Parsed {
    span: DraftSpan,
    escaped_topic: Option<String>,
}

impl Parsed {
    fn topic<'a>(&'a self, body: &'a [u8]) -> &'a str {
        match &self.escaped_topic {
            Some(name) => name,
            // Validated as a topic name (ASCII) when parsed.
            None => std::str::from_utf8(&body[self.span.topic.clone()]).unwrap_or_default(),
        }
    }

    /// The token's `topics` claim must allow the topic; the name becomes the topic's key
    /// (see `api::topic_key`).
    fn scoped(
        mut self,
        body: &[u8],
        shard: &Shard,
        principal: &Principal,
    ) -> Result<Parsed, ApiError> {
        let name = self.topic(body);
        if !principal.may_use(name) {
            return Err(ApiError::topic_forbidden(name));
        }
        if shard.config.server.topic_namespace != TopicNamespace::Global {
            self.escaped_topic =
                Some(super::fields::topic_key(shard, principal, name)?.to_string());
        }
        Ok(self)
    }
}

/// The longest `ttl` accepted, in seconds (a century).
pub const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// A publish body as the validator accepted it, borrowing from the body: what
/// `POST /api/v1/messages` (and each bulk item) publishes. Public for the fuzz targets.
#[derive(Debug)]
pub struct ValidMessage<'a> {
    pub topic: Cow<'a, str>,
    /// Raw JSON text of the payload, exactly as sent.
    pub payload: &'a str,
    /// Raw JSON text of the metadata object, if any.
    pub metadata: Option<&'a str>,
    pub ttl_ms: Option<u64>,
}

/// Validates one message object (`text`, a part of `body`) the way the publish endpoints
/// do, without publishing it.
pub fn validate_message<'a>(
    body: &'a [u8],
    text: &'a str,
    max_depth: usize,
) -> Result<ValidMessage<'a>, ApiError> {
    let parsed = parse_message(body, text, max_depth)?;
    let slice = |range: Range<usize>| std::str::from_utf8(&body[range]).unwrap_or_default();
    Ok(ValidMessage {
        topic: match parsed.escaped_topic {
            Some(name) => Cow::Owned(name),
            None => Cow::Borrowed(slice(parsed.span.topic)),
        },
        payload: slice(parsed.span.payload),
        metadata: parsed.span.metadata.map(slice),
        ttl_ms: parsed.span.ttl_ms,
    })
}

fn offset_in(body: &[u8], part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - body.as_ptr() as usize;
    start..start + part.len()
}

fn parse_message(body: &[u8], raw: &str, max_depth: usize) -> Result<Parsed, ApiError> {
    let msg: RawMessage<'_> = serde_json::from_str(raw).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof => {
            ApiError::invalid("INVALID_JSON", format!("the body is not valid JSON: {e}"))
        }
        _ => ApiError::invalid(
            "INVALID_MESSAGE",
            format!("message must be a JSON object: {e}"),
        ),
    })?;
    // serde's derived structs also accept arrays; a message must be an object.
    if !raw.trim_start().starts_with('{') {
        return Err(ApiError::invalid(
            "INVALID_MESSAGE",
            "message must be a JSON object",
        ));
    }

    let topic_raw = msg
        .topic
        .ok_or_else(|| ApiError::invalid("MISSING_FIELD", "`topic` is required"))?;
    // Borrow the name from the body when it has no escapes (the usual case).
    let topic: Cow<'_, str> = match serde_json::from_str::<&str>(topic_raw.get()) {
        Ok(name) => Cow::Borrowed(name),
        Err(_) => Cow::Owned(
            serde_json::from_str::<String>(topic_raw.get())
                .map_err(|_| ApiError::invalid("INVALID_TOPIC", "`topic` must be a string"))?,
        ),
    };
    if !valid_topic_name(&topic) {
        return Err(ApiError::invalid(
            "INVALID_TOPIC",
            "`topic` must be 1-255 characters of ASCII letters, digits and _ - . :",
        ));
    }
    let payload = msg
        .payload
        .ok_or_else(|| ApiError::invalid("MISSING_FIELD", "`payload` is required"))?;
    if too_deep(payload.get().as_bytes(), max_depth)
        || msg
            .metadata
            .is_some_and(|m| too_deep(m.get().as_bytes(), max_depth))
    {
        return Err(ApiError::invalid(
            "JSON_TOO_DEEP",
            format!("`payload` and `metadata` may nest at most {max_depth} levels"),
        ));
    }

    let ttl_ms = match msg.ttl.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) => match serde_json::from_str::<u64>(text) {
            Ok(secs) if (1..=MAX_TTL_SECS).contains(&secs) => Some(secs * 1000),
            _ => {
                return Err(ApiError::invalid(
                    "INVALID_TTL",
                    "`ttl` must be a whole number of seconds greater than 0",
                ))
            }
        },
    };

    let metadata = match msg.metadata.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) => {
            serde_json::from_str::<StringMap>(text).map_err(|_| {
                ApiError::invalid(
                    "INVALID_METADATA",
                    "`metadata` must be an object whose values are strings",
                )
            })?;
            Some(offset_in(body, text))
        }
    };

    let (topic_range, escaped_topic) = match topic {
        Cow::Borrowed(name) => (offset_in(body, name), None),
        Cow::Owned(name) => (0..0, Some(name)),
    };
    Ok(Parsed {
        span: DraftSpan {
            topic: topic_range,
            payload: offset_in(body, payload.get()),
            metadata,
            ttl_ms,
        },
        escaped_topic,
    })
}

fn finish_spans(body: &mut Vec<u8>, parsed: Vec<Parsed>) -> Vec<DraftSpan> {
    parsed
        .into_iter()
        .map(|p| {
            let mut span = p.span;
            if let Some(name) = p.escaped_topic {
                let start = body.len();
                body.extend_from_slice(name.as_bytes());
                span.topic = start..body.len();
            }
            span
        })
        .collect()
}

fn body_str(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("INVALID_JSON", "the body is not valid UTF-8"))
}

/// A single publish's 201 body, written straight into one buffer (per request: one
/// allocation). The topic needs no escaping: names are validated to a JSON-safe alphabet.
fn receipt_json(topic: &str, receipt: &Receipt) -> Vec<u8> {
    const PARTS: usize = r#"{"message_id":"","topic":"","timestamp":""}"#.len();
    let mut out = Vec::with_capacity(PARTS + receipt.id.text_len() + topic.len() + RFC3339_LEN);
    out.extend_from_slice(br#"{"message_id":""#);
    receipt.id.push_text(&mut out);
    out.extend_from_slice(br#"","topic":""#);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(br#"","timestamp":""#);
    push_rfc3339(receipt.timestamp_ms, &mut out);
    out.extend_from_slice(br#""}"#);
    out
}

/// The owner-side handler of a publish whose request was read at `read_at` (on whichever
/// shard): the owner's topics take the batch, and each new message goes out to the shards
/// with subscribers for it; refused, and nothing published, when it has waited too long
/// on its way here or the owner is late (see `shed`). Answered once Valkey confirmed the
/// writes (with tickets; in cluster mode, once Valkey answered each message).
fn publish_here(
    s: &Rc<Shard>,
    batch: &PublishBatch,
    read_at: Instant,
) -> Answer<Published, Pin<Box<dyn Future<Output = Published>>>> {
    if let Err(e) = shed::admit_at_owner(s, read_at) {
        return Answer::Now(Published::Failed(e));
    }
    if s.store.is_announced() {
        // Cluster mode: Valkey names the IDs and feeds every node's ring.
        return match s.topics.publish_announced(batch) {
            Answer::Now(result) => Answer::Now(Published::from(result)),
            Answer::Later(later) => {
                Answer::Later(Box::pin(async move { Published::from(later.await) }))
            }
        };
    }
    let (result, tickets) = s
        .topics
        .publish(batch, |msg, shards| s.fan_out(msg, shards));
    if tickets.is_empty() {
        return Answer::Now(Published::unawaited(result));
    }
    // Unbounded here: the requesting shard bounds its wait by `storage.ack_timeout`, and a
    // publish with an Idempotency-Key keeps waiting past it (see `single`).
    Answer::Later(Box::pin(async move {
        let receipts = match result {
            Ok(receipts) => receipts,
            Err(e) => return Published::Failed(e.into()),
        };
        // Every message was delivered from memory; a write Valkey refused fails its item.
        let (mut refused, mut short): (Vec<(usize, StoreError)>, _) = (Vec::new(), None);
        for (item, ticket) in tickets {
            match ticket.wait().await {
                Ok(()) => {}
                Err(e @ StoreError::ReplicationTimeout { .. }) => {
                    short.get_or_insert(e);
                }
                // An item may fail twice (its message and its record): either says why.
                Err(e) => refused.push((item, e)),
            }
        }
        Published::Done {
            receipts,
            refused,
            unreplicated: short,
        }
    }))
}

/// An owner's answer to a publish.
enum Published {
    /// Published: a receipt per item, in order, except that the items in `refused` (by
    /// index) failed: Valkey refused their write (on a standalone relay the message was
    /// delivered from memory all the same), and their receipts name no message. With
    /// `unreplicated`, Valkey's primary wrote the messages but too few replicas confirmed
    /// them (`storage.ack: replicated`). Either way an Idempotency-Key stays bound to the
    /// answer, so that a retry publishes nothing twice.
    Done {
        receipts: Vec<Receipt>,
        refused: Vec<(usize, StoreError)>,
        unreplicated: Option<StoreError>,
    },
    /// Nothing was published.
    Failed(ApiError),
}

impl From<PublishResult> for Published {
    fn from(result: PublishResult) -> Self {
        match result {
            Ok(written) => Published::Done {
                receipts: written.receipts,
                refused: written.refused,
                unreplicated: written.unreplicated,
            },
            Err(e) => Published::Failed(e.into()),
        }
    }
}

impl Published {
    /// Every message of `result` published, with no write to wait for.
    fn unawaited(result: Result<Vec<Receipt>, StoreError>) -> Self {
        match result {
            Ok(receipts) => Published::Done {
                receipts,
                refused: Vec::new(),
                unreplicated: None,
            },
            Err(e) => Published::Failed(e.into()),
        }
    }
}

/// From when the topic's owner counts a publish's wait (see `shed`): since it was read,
/// or, for one with an `Idempotency-Key`, since its key was taken, for it may have waited
/// for another request with that key, which is not the relay being late.
fn waited_from(read_at: Instant, keyed: bool) -> Instant {
    if keyed {
        Instant::now()
    } else {
        read_at
    }
}

/// When a publish that arrives now must be answered: `storage.ack_timeout` later, however
/// long it waited before its writes were queued (an Idempotency-Key lookup, say); `None`
/// when publishes wait for no write.
fn ack_deadline(shard: &Shard) -> Option<u64> {
    let limit = shard.store.ack_timeout()?;
    Some(now_ms() + limit.as_millis() as u64)
}

/// Waits for `call` until `deadline` (ms, on the connection's coarse timer: no timer per
/// request; no deadline: as long as it takes); `None` when the time ran out first. What
/// `call` waits for (the owner's writes) goes on regardless.
async fn by_deadline<F: Future>(
    ctl: &ConnCtl,
    deadline: Option<u64>,
    mut call: Pin<&mut F>,
) -> Option<F::Output> {
    let Some(deadline) = deadline else {
        return Some(call.await);
    };
    ctl.set_deadline(deadline);
    let answered = loop {
        let answered = future::or(async { Some(call.as_mut().await) }, async {
            ctl.signal.wait().await;
            None
        })
        .await;
        match answered {
            Some(value) => break Some(value),
            None if ctl.take_timeout() => break None,
            None => {}
        }
    };
    ctl.clear_deadline();
    answered
}

fn persist_timeout() -> ApiError {
    ApiError::from(StoreError::PersistTimeout)
}

pub async fn single(
    shard: &Rc<Shard>,
    ctl: &ConnCtl,
    principal: &Principal,
    publisher: Arc<Publisher>,
    req: Request,
    read_at: Instant,
) -> Result<Response, ApiError> {
    let deadline = ack_deadline(shard);
    let key = idempotency::key_of(&req)?;
    let mut body = req.body;
    let depth = shard.config.limits.max_json_depth;
    let parsed = parse_message(&body, body_str(&body)?, depth)?.scoped(&body, shard, principal)?;
    let held = match idempotency::begin(shard, ctl, principal, Endpoint::Single, key, &body).await?
    {
        Begin::Replay(response) => return Ok(response),
        Begin::Publish(held) => held,
    };
    let read_at = waited_from(read_at, held.is_some());
    shard
        .publish_rates
        .charge(&principal.subject, 1, body.len())?;
    let spans = finish_spans(&mut body, vec![parsed]);
    let topic_bytes = spans[0].topic.clone();
    let body = Arc::new(body);
    let batch = PublishBatch {
        body: Arc::clone(&body),
        items: spans,
        publisher,
    };
    let publishing = {
        let (shard, body, topic_bytes) = (Rc::clone(shard), Arc::clone(&body), topic_bytes.clone());
        async move {
            // Validated (or appended) as UTF-8 when parsed.
            let topic = std::str::from_utf8(&body[topic_bytes]).unwrap_or_default();
            shard
                .on_topic(topic, move |s| publish_here(s, &batch, read_at))
                .await
        }
    };
    let topic = std::str::from_utf8(&body[topic_bytes]).unwrap_or_default();
    let (answer, held) = match held {
        None => {
            futures_lite::pin!(publishing);
            (by_deadline(ctl, deadline, publishing).await, None)
        }
        Some(held) => {
            let mut publishing = Box::pin(publishing);
            match by_deadline(ctl, deadline, publishing.as_mut()).await {
                Some(answer) => (Some(answer), Some(held)),
                None => {
                    let topic = topic.to_owned();
                    held.keep_later(async move {
                        let (response, unconfirmed) =
                            single_outcome(&topic, publishing.await).ok()?;
                        Some((response, unconfirmed.map(|(message, _)| message)))
                    });
                    (None, None)
                }
            }
        }
    };
    let published = answer.ok_or_else(persist_timeout)?;
    let (response, unconfirmed) = single_outcome(topic, published)?;
    match unconfirmed {
        None => {
            if let Some(held) = held {
                held.keep(&response).await;
            }
            Ok(response)
        }
        Some((message, short)) => {
            if let Some(held) = held {
                held.keep_unconfirmed(&response, message).await;
            }
            Err(short.into())
        }
    }
}

/// The 201 of a published single message, with the message and the shortfall when its
/// replication is not confirmed; the error when it was not published (or, on a
/// standalone relay, delivered from memory but refused by Valkey: then the key is given
/// up, and a retry delivers it again).
fn single_outcome(
    topic: &str,
    published: Published,
) -> Result<(Response, Option<(Unconfirmed, StoreError)>), ApiError> {
    let (receipt, unreplicated) = match published {
        Published::Done {
            receipts,
            refused,
            unreplicated,
        } => {
            if let Some((_, e)) = refused.into_iter().next() {
                return Err(e.into());
            }
            (receipts.into_iter().next(), unreplicated)
        }
        Published::Failed(e) => return Err(e),
    };
    let Some(receipt) = receipt else {
        return Err(ApiError::new(
            500,
            "INTERNAL",
            "the topic owner returned no receipt",
        ));
    };
    let unconfirmed = unreplicated.map(|short| {
        let message = Unconfirmed {
            topic: topic.into(),
            id: receipt.id,
        };
        (message, short)
    });
    Ok((single_response(display_name(topic), &receipt), unconfirmed))
}

fn single_response(topic: &str, receipt: &Receipt) -> Response {
    Response::json(201, receipt_json(topic, receipt))
}

/// Per bulk item: its receipt, or the code and detail it was rejected with.
type ItemReceipt = Result<Receipt, (&'static str, String)>;

pub async fn bulk(
    shard: &Rc<Shard>,
    ctl: &ConnCtl,
    principal: &Principal,
    publisher: Arc<Publisher>,
    req: Request,
    read_at: Instant,
) -> Result<Response, ApiError> {
    let deadline = ack_deadline(shard);
    let key = idempotency::key_of(&req)?;
    let mut body = req.body;
    let max = shard.config.limits.max_bulk_messages;
    let text = body_str(&body)?;
    let outer: RawBulk<'_> = serde_json::from_str(text).map_err(|e| {
        ApiError::invalid(
            "INVALID_JSON",
            format!("body must be an object with a `messages` array: {e}"),
        )
    })?;
    let items = outer
        .messages
        .ok_or_else(|| ApiError::invalid("MISSING_FIELD", "`messages` is required"))?;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::invalid(
            "INVALID_BATCH_SIZE",
            format!(
                "`messages` must hold 1 to {max} messages, not {}",
                items.len()
            ),
        ));
    }
    let results: Vec<Result<Parsed, ApiError>> = items
        .iter()
        .map(|raw| {
            parse_message(&body, raw.get(), shard.config.limits.max_json_depth)
                .and_then(|p| p.scoped(&body, shard, principal))
        })
        .collect();
    drop(items);

    let mut outcomes: Vec<Result<(), ApiError>> = Vec::with_capacity(results.len());
    let mut parsed = Vec::new();
    for r in results {
        match r {
            Ok(p) => {
                parsed.push(p);
                outcomes.push(Ok(()));
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    let held = match idempotency::begin(shard, ctl, principal, Endpoint::Bulk, key, &body).await? {
        Begin::Replay(response) => return Ok(response),
        Begin::Publish(held) => held,
    };
    let read_at = waited_from(read_at, held.is_some());
    // A whole batch is refused (nothing published) when the subject is over its rate.
    shard
        .publish_rates
        .charge(&principal.subject, parsed.len(), body.len())?;
    let spans = finish_spans(&mut body, parsed);
    let topics: Vec<String> = spans
        .iter()
        .map(|s| String::from_utf8_lossy(&body[s.topic.clone()]).into_owned())
        .collect();

    // Group by owner, keeping each owner's items in request order.
    let mut by_owner: Vec<(Vec<usize>, Vec<DraftSpan>)> = (0..shard.count())
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    for (k, span) in spans.into_iter().enumerate() {
        let owner = owner_of(&topics[k], shard.count());
        by_owner[owner].0.push(k);
        by_owner[owner].1.push(span);
    }
    let body = Arc::new(body);
    let mut groups = Vec::new();
    let mut calls = Vec::new();
    for (keys, spans) in by_owner {
        if spans.is_empty() {
            continue;
        }
        let batch = PublishBatch {
            body: Arc::clone(&body),
            items: spans,
            publisher: Arc::clone(&publisher),
        };
        // Any of the group's topics names its owner.
        let (shard, topic) = (Rc::clone(shard), topics[keys[0]].clone());
        groups.push(keys);
        calls.push(Box::pin(async move {
            shard
                .on_topic(&topic, move |s| publish_here(s, &batch, read_at))
                .await
        }));
    }
    // Each owner's answer as it comes, until the deadline.
    let answers: Vec<Cell<Option<Published>>> = calls.iter().map(|_| Cell::new(None)).collect();
    {
        let all = join_all(
            calls
                .iter_mut()
                .zip(&answers)
                .map(|(call, answer)| async move { answer.set(Some(call.as_mut().await)) }),
        );
        futures_lite::pin!(all);
        by_deadline(ctl, deadline, all).await;
    }
    let mut receipts: Vec<ItemReceipt> =
        vec![Err(("INTERNAL", "no receipt".to_string())); topics.len()];
    let mut unconfirmed = Vec::new();
    // Whether any message of the request was published (if only to Valkey's primary, or
    // only from memory).
    let mut written = false;
    for ((keys, call), answer) in groups.into_iter().zip(calls).zip(answers) {
        match answer.into_inner() {
            Some(published) => {
                written |= matches!(published, Published::Done { .. });
                group_receipts(&mut receipts, &keys, published);
            }
            None => {
                group_receipts(&mut receipts, &keys, Published::Failed(persist_timeout()));
                unconfirmed.push((keys, call));
            }
        }
    }
    let (response, accepted) = bulk_response(&outcomes, &topics, &receipts);
    let Some(held) = held else {
        return Ok(response);
    };
    if unconfirmed.is_empty() {
        // An answer that published nothing is not recorded: a retry may still publish.
        if accepted > 0 || written {
            held.keep(&response).await;
        }
    } else {
        held.keep_later(async move {
            for (keys, call) in unconfirmed {
                let published = call.await;
                written |= matches!(published, Published::Done { .. });
                group_receipts(&mut receipts, &keys, published);
            }
            let (response, accepted) = bulk_response(&outcomes, &topics, &receipts);
            (accepted > 0 || written).then_some((response, None))
        });
    }
    Ok(response)
}

/// Records one owner's answer for the bulk items `keys` it published. An item whose
/// replication is short is rejected with that code though written.
fn group_receipts(receipts: &mut [ItemReceipt], keys: &[usize], published: Published) {
    let rejected = |e: ApiError| Err((e.code, e.detail));
    match published {
        Published::Done {
            receipts: owner_receipts,
            refused,
            unreplicated,
        } => {
            for (&k, receipt) in keys.iter().zip(owner_receipts) {
                receipts[k] = match &unreplicated {
                    None => Ok(receipt),
                    Some(short) => rejected(short.clone().into()),
                };
            }
            for (item, e) in refused {
                if let Some(&k) = keys.get(item) {
                    receipts[k] = rejected(e.into());
                }
            }
        }
        Published::Failed(e) => {
            for &k in keys {
                receipts[k] = Err((e.code, e.detail.clone()));
            }
        }
    }
}

/// The 207 answer of a bulk publish, and how many of its items were accepted.
fn bulk_response(
    outcomes: &[Result<(), ApiError>],
    topics: &[String],
    receipts: &[ItemReceipt],
) -> (Response, usize) {
    let mut results = Vec::with_capacity(outcomes.len());
    let mut k = 0;
    for outcome in outcomes {
        results.push(match outcome {
            Ok(()) => {
                let topic = Some(display_name(&topics[k]));
                let result = match &receipts[k] {
                    Ok(r) => ItemResult {
                        message_id: Some(Shown(r.id)),
                        topic,
                        timestamp: Some(Shown(Rfc3339(r.timestamp_ms))),
                        status: "accepted",
                        error: None,
                    },
                    Err((code, detail)) => ItemResult::rejected(topic, code, detail),
                };
                k += 1;
                result
            }
            Err(e) => ItemResult::rejected(None, e.code, &e.detail),
        });
    }
    let accepted = results.iter().filter(|r| r.error.is_none()).count();
    let reply = BulkReply {
        summary: Summary {
            total: results.len(),
            accepted,
            rejected: results.len() - accepted,
        },
        results,
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    (Response::json(207, body), accepted)
}

/// The 207 body, serialized straight from borrowed data: a bulk of a thousand items must
/// not build a thousand JSON maps first.
#[derive(Serialize)]
struct BulkReply<'a> {
    results: Vec<ItemResult<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct Summary {
    total: usize,
    accepted: usize,
    rejected: usize,
}

#[derive(Serialize)]
struct ItemResult<'a> {
    message_id: Option<Shown<MessageId>>,
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<Shown<Rfc3339>>,
    status: &'static str,
    error: Option<ItemError<'a>>,
}

impl<'a> ItemResult<'a> {
    fn rejected(topic: Option<&'a str>, code: &'a str, detail: &'a str) -> Self {
        ItemResult {
            message_id: None,
            topic,
            timestamp: None,
            status: "rejected",
            error: Some(ItemError { code, detail }),
        }
    }
}

#[derive(Serialize)]
struct ItemError<'a> {
    code: &'a str,
    detail: &'a str,
}

/// Serializes a value through its `Display`, written straight into the output.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

struct Rfc3339(u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(24);
        crate::text::push_rfc3339(self.0, &mut text);
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Parsed, Vec<u8>), ApiError> {
        let body = text.as_bytes().to_vec();
        let p = parse_message(&body, std::str::from_utf8(&body).unwrap(), 3)?;
        Ok((p, body))
    }

    #[test]
    fn a_receipt_is_the_documented_json_in_one_exact_buffer() {
        let receipt = Receipt {
            id: MessageId::parse("1764676800123-7").unwrap(),
            timestamp_ms: 1_764_676_800_123,
        };
        let body = receipt_json("ns:jobs.eu-1", &receipt);
        assert_eq!(body.len(), body.capacity(), "sized once, never grown");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "message_id": "1764676800123-7",
                "topic": "ns:jobs.eu-1",
                "timestamp": "2025-12-02T12:00:00.123Z",
            })
        );
    }

    #[test]
    fn ranges_point_at_the_producer_bytes() {
        let text = r#"{"topic":"jobs","payload":{"n": 1.50},"metadata":{"a":"b"},"ttl":5}"#;
        let (p, body) = parse(text).unwrap();
        assert_eq!(&body[p.span.topic.clone()], b"jobs");
        assert_eq!(&body[p.span.payload.clone()], br#"{"n": 1.50}"#);
        assert_eq!(&body[p.span.metadata.clone().unwrap()], br#"{"a":"b"}"#);
        assert_eq!(p.span.ttl_ms, Some(5000));
    }

    #[test]
    fn escaped_topic_is_appended_to_the_body() {
        let text = r#"{"topic":"jo\u0062s","payload":1}"#;
        let (p, mut body) = parse(text).unwrap();
        let spans = finish_spans(&mut body, vec![p]);
        assert_eq!(&body[spans[0].topic.clone()], b"jobs");
    }

    #[test]
    fn null_payload_is_a_value_but_missing_payload_is_an_error() {
        assert!(parse(r#"{"topic":"t","payload":null}"#).is_ok());
        assert_eq!(
            parse(r#"{"topic":"t"}"#).err().unwrap().code,
            "MISSING_FIELD"
        );
    }

    #[test]
    fn each_bad_field_has_its_code() {
        let cases = [
            (r#"[1]"#, "INVALID_MESSAGE"),
            (r#"topic=t&payload=1"#, "INVALID_JSON"),
            (r#"{"topic":"t","payload":"#, "INVALID_JSON"),
            ("", "INVALID_JSON"),
            (r#"{"payload":1}"#, "MISSING_FIELD"),
            (r#"{"topic":5,"payload":1}"#, "INVALID_TOPIC"),
            (r#"{"topic":"a b","payload":1}"#, "INVALID_TOPIC"),
            (r#"{"topic":"","payload":1}"#, "INVALID_TOPIC"),
            (r#"{"topic":"t","payload":1,"ttl":0}"#, "INVALID_TTL"),
            (r#"{"topic":"t","payload":1,"ttl":-1}"#, "INVALID_TTL"),
            (r#"{"topic":"t","payload":1,"ttl":1.5}"#, "INVALID_TTL"),
            (r#"{"topic":"t","payload":1,"ttl":"5"}"#, "INVALID_TTL"),
            (
                r#"{"topic":"t","payload":1,"metadata":{"a":1}}"#,
                "INVALID_METADATA",
            ),
            (
                r#"{"topic":"t","payload":1,"metadata":[]}"#,
                "INVALID_METADATA",
            ),
            (
                r#"{"topic":"t","topic":"u","payload":1}"#,
                "INVALID_MESSAGE",
            ),
            (r#"{"topic":"t","payload":[[[[1]]]]}"#, "JSON_TOO_DEEP"),
            (
                r#"{"topic":"t","payload":1,"metadata":{"a":{}}}"#,
                "INVALID_METADATA",
            ),
        ];
        for (text, code) in cases {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert_eq!(err.code, code, "{text}");
            assert_eq!(err.status, 422, "{text}");
        }
    }
}
