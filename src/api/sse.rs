//! Server-Sent Events sessions on `GET /api/v1/sse`: opening a stream (token, topics,
//! cursor, durable consumer), and the push loop that keeps it until the client leaves, the
//! token expires, access is withdrawn, the client falls too far behind, or the relay stops.
//!
//! A stream subscribes exactly as a WebSocket `subscribe` or a poll does (the same
//! snapshot-then-live seam, through [`Subscriptions`]), before anything is answered: every
//! refusal is an ordinary JSON error, and a `200` means the subscriptions are in place.
//! Deliveries go through the same bounded [`Outbound`] queue as WebSocket sessions, written
//! as events by the `http::event_stream` codec; the session must not touch topic state
//! beyond its subscriptions.

use std::io;
use std::rc::Rc;

use super::conn::{Conn, Event};
use super::cors;
use super::error::{ws_error_json, ApiError};
use super::fields::{parse_client_id, parse_cursor, query_topics};
use super::outbound::{self, drive, Outbound, Until, Wire};
use super::quota::{self, QuotaSlot};
use super::shard::Shard;
use super::subscriptions::{ReplayProblem, Subscriptions};
use crate::auth::{AuthError, Permission, Principal};
use crate::http::{event_stream, Request};
use crate::metrics;
use crate::rt::now_ms;
use crate::topic::subscribers::Sink;
use crate::topic::{consumer_key, display_name, Cursor, MessageId};

/// The event that carries a session-level error (`{"type":"error","code","message"}`, as a
/// WebSocket `error` frame): not `error`, which `EventSource` reserves for its own
/// connection failures.
pub const ERROR_EVENT: &str = "relay-error";

/// A stream whose subscriptions are in place and whose replay is queued, ready to run on
/// the connection once its head is written.
pub struct Stream {
    principal: Principal,
    out: Rc<Outbound>,
    subs: Subscriptions,
    /// Set when a replay stopped short: the stream ends once it is written, so the client
    /// reconnects from its last event.
    ending: bool,
    /// `Access-Control-Allow-Origin` and friends, for a browser on an allowed origin.
    cors: Vec<(&'static str, String)>,
    /// The subject's streaming-session quota slot, held for the session's life.
    _slot: Option<QuotaSlot>,
}

/// Validates the request, its token and its topics, and subscribes; errors become an HTTP
/// response. The cursor is `Last-Event-ID` (what `EventSource` sends when it reconnects)
/// when present, else `since`; with `client_id` and neither, the consumer's position.
pub async fn open(conn: &Conn, req: &Request) -> Result<Stream, ApiError> {
    let shard = &conn.shard;
    cors::check_origin(&shard.config.server.allowed_origins, req)?;
    let token = req
        .query_param("token")
        .or_else(|| super::bearer(req).map(str::to_string))
        .ok_or(AuthError::Missing)?;
    let principal = Rc::unwrap_or_clone(super::verify_token(shard, &token)?);
    principal.require(Permission::Read)?;
    let topics = query_topics(shard, &principal, req)?;
    let cursor = match req.header("last-event-id").map(str::trim) {
        Some(last) if !last.is_empty() => match MessageId::parse(last) {
            Some(id) => Cursor::After(id),
            None => {
                return Err(ApiError::invalid(
                    "INVALID_CURSOR",
                    "`Last-Event-ID` must be a message ID this relay sent",
                ))
            }
        },
        _ => parse_cursor(req.query_param("since").as_deref())?,
    };
    let consumer = match req.query_param("client_id") {
        None => None,
        Some(id) => Some(consumer_key(&principal.subject, parse_client_id(&id)?)),
    };
    let slot = quota::session_slot(shard, &principal.subject).await?;

    let out = Rc::new(Outbound::new(
        Wire::EventStream,
        &shard.config.delivery,
        &conn.ctl,
    ));
    let mut subs = Subscriptions::new(Rc::clone(shard));
    let sink: Rc<dyn Sink> = out.clone();
    let limit = shard.config.storage.hot_tier_messages_per_topic;
    let pending = subs
        .add(&topics, &cursor, consumer.as_ref(), &sink, limit)
        .await;
    if let Some(e) = pending.iter().find_map(|p| match &p.problem {
        Some(ReplayProblem::Store(e)) => Some(e.clone()),
        _ => None,
    }) {
        return Err(e.into());
    }
    let mut head = Vec::new();
    event_stream::retry(
        &mut head,
        shard.config.delivery.sse_retry.as_millis() as u64,
    );
    out.push_control(head);
    out.set_replaying(true);
    let mut truncated = None;
    for p in &pending {
        if p.problem.is_some() {
            p.sub.finish_truncated(&p.backlog);
            truncated.get_or_insert((display_name(&p.sub.topic).to_owned(), p.sub.cursor()));
        } else {
            p.sub.finish_replay(&p.backlog);
        }
    }
    out.set_replaying(false);
    // A replay that stopped short must not continue live with a gap: the stream ends
    // after it, and the client's reconnection (from its last event) fetches the rest.
    if let Some((topic, cursor)) = &truncated {
        let topics: Vec<_> = subs.topics().cloned().collect();
        for topic in topics {
            subs.remove(&topic);
        }
        let resume = if *cursor == MessageId::ZERO {
            "earliest".to_owned()
        } else {
            cursor.to_string()
        };
        let why = format!(
            "the replay of {topic:?} stopped after the first part; reconnect with Last-Event-ID or since={resume}"
        );
        push_error(&out, "REPLAY_TRUNCATED", &why);
    }
    let cors = cors::allow_origin(&shard.config.server.allowed_origins, req)
        .map(|origin| {
            vec![
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin".to_owned()),
            ]
        })
        .unwrap_or_default();
    Ok(Stream {
        principal,
        out,
        subs,
        ending: truncated.is_some(),
        cors,
        _slot: slot,
    })
}

/// Queues an error event (the stream's last words, or a notice).
fn push_error(out: &Outbound, code: &str, message: &str) {
    let mut bytes = Vec::new();
    event_stream::event(&mut bytes, b"", ERROR_EVENT, &ws_error_json(code, message));
    out.push_control(bytes);
}

/// Writes the stream's head and serves it until it ends; the connection closes with it.
pub async fn run(conn: &mut Conn, stream: Stream) -> io::Result<()> {
    let mut head = Vec::new();
    event_stream::head(&stream.cors, &mut head);
    conn.write_all(&head).await?;

    let shard = Rc::clone(&conn.shard);
    let _open = metrics::Gauge::inc(&shard.metrics.sse_sessions);
    let Stream {
        mut principal,
        out,
        subs,
        ending,
        ..
    } = stream;
    let cfg = &shard.config;
    let heartbeat_every = cfg.delivery.sse_heartbeat_interval.as_millis() as u64;
    let leeway = cfg.jwt.leeway.as_millis() as u64;
    // As on WebSocket: account tokens, and tokens that can be logged out, are watched.
    let watched = principal.username.is_some() || principal.jti.is_some();
    let _watch = watched.then(|| shard.accounts.watch(&principal.subject, &conn.ctl));
    let mut account_checked = shard.accounts.generation();
    let mut wbuf = Vec::new();
    let mut next_heartbeat = now_ms() + heartbeat_every;

    let last_words = loop {
        // A client has nothing to say on an event stream; whatever it sends is dropped.
        let unread = conn.rbuf.filled().len();
        conn.rbuf.consume(unread);
        if let Some(notice) = out.take_shed(&shard.metrics) {
            let mut bytes = Vec::new();
            event_stream::event(&mut bytes, b"", ERROR_EVENT, &notice);
            out.push_control(bytes);
        }
        if let Some(reason) = out.cut_off(&shard.metrics) {
            break Some(("SLOW_CONSUMER", reason));
        }
        if ending {
            break None;
        }
        if conn.ctl.closing() {
            break Some(("SHUTTING_DOWN", "the relay is shutting down".to_owned()));
        }
        if watched && account_checked != shard.accounts.generation() {
            account_checked = shard.accounts.generation();
            match recheck_access(&shard, &principal) {
                Ok(current) => principal = current,
                Err(e) => break Some((e.code, e.detail)),
            }
        }
        let expires = principal.expires_at.saturating_mul(1000) + leeway;
        if conn.ctl.take_timeout() {
            let now = now_ms();
            if now >= expires {
                let why = "token expired: reconnect with a fresh token (from the last event ID)";
                break Some(("TOKEN_EXPIRED", why.to_owned()));
            }
            if now >= next_heartbeat {
                let mut bytes = Vec::new();
                event_stream::comment(&mut bytes, "heartbeat");
                out.push_control(bytes);
                next_heartbeat = now + heartbeat_every;
            }
        }
        conn.ctl.set_deadline(next_heartbeat.min(expires));
        let until = if out.backlogged() {
            Until::Drained
        } else {
            Until::Event
        };
        match drive(conn, &out, &mut wbuf, until).await? {
            Event::Eof => return Ok(()),
            Event::Data | Event::Woken => {}
        }
    };
    drop(subs);
    if let Some((code, why)) = last_words {
        push_error(&out, code, &why);
    }
    outbound::finish(conn, &out, &mut wbuf).await
}

/// The session's principal as account state has it now; `Err` when its access is gone
/// (logged out, account deactivated or deleted, `read` taken away).
fn recheck_access(shard: &Shard, principal: &Principal) -> Result<Principal, ApiError> {
    let current = super::admitted(shard, Rc::new(principal.clone()))?;
    current.require(Permission::Read)?;
    Ok(Rc::unwrap_or_clone(current))
}
