//! WebSocket sessions on `GET /ws`: the upgrade, the client commands, and the push loop.
//!
//! One task per connection serves both directions: it decodes client frames, answers
//! commands, and writes queued frames. Deliveries arrive through the [`Outbound`] sink as
//! shared `Arc<Message>`s whose frame bytes were built once by the topic owner; the session
//! only copies them into its socket buffer. The queue is bounded in bytes: a subscriber
//! that does not read is cut off with close code 4000 instead of growing memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::AsyncWrite;
use serde::Serialize;

use super::ack::{self, AckOutcome};
use super::conn::{poll_read_into, Conn, Event};
use super::cors;
use super::error::ApiError;
use super::fields::{
    parse_client_id, parse_cursor, parse_message_id, parse_topics, permit_topics, scope_topics,
};
use super::limits::{self, Bucket};
use super::quota::{self, QuotaKey, QuotaSlot};
use super::shard::Shard;
use super::subscriptions::{ReplayProblem, Subscriptions};
use super::ws_command::{self, AckCmd, AuthCmd, Command, SubscribeCmd, UnsubscribeCmd};
use crate::auth::{AuthError, Permission, Principal};
use crate::config::SlowConsumer;
use crate::http::Request;
use crate::metrics::{self, ShardMetrics};
use crate::rt::conns::ConnCtl;
use crate::rt::now_ms;
use crate::text::rfc3339;
use crate::topic::subscribers::Sink;
use crate::topic::{consumer_key, display_name, ConsumerKey, Message, MessageId};
use crate::ws::frame::{close_frame, ping_frame, pong_frame, text_frame, FrameDecoder, Incoming};
use crate::ws::{
    handshake, ACCESS_REVOKED, GOING_AWAY, POLICY_VIOLATION, RATE_LIMITED, SLOW_CONSUMER,
    TOKEN_EXPIRED,
};

/// Invalid commands tolerated per session before it is closed as abusive.
const MAX_INVALID_FRAMES: u32 = 100;
/// Bytes gathered from the queue into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

pub struct Upgrade {
    accept_key: String,
    protocol: Option<&'static str>,
    principal: Principal,
    /// The subject's WebSocket quota slot, held for the session's life.
    _slot: Option<QuotaSlot>,
}

/// Validates the upgrade request and its token; errors become an HTTP response.
pub async fn upgrade(shard: &Rc<Shard>, req: &Request) -> Result<Upgrade, ApiError> {
    cors::check_origin(&shard.config.server.allowed_origins, req)?;
    let accept_key = handshake::accept(&req.headers, true, req.version_minor).map_err(|e| {
        let mut err = ApiError::new(e.status(), e.code(), e.detail());
        if e.status() == 426 {
            err = err.with_header("Sec-WebSocket-Version", "13");
        }
        err
    })?;
    let protocols = handshake::requested_protocols(&req.headers);
    let from_protocol = protocols
        .iter()
        .find_map(|p| p.strip_prefix("bearer.").map(str::to_string));
    let token = req
        .query_param("token")
        .or_else(|| super::bearer(req).map(str::to_string))
        .or(from_protocol.clone())
        .ok_or(AuthError::Missing)?;
    let principal = Rc::unwrap_or_clone(super::verify_token(shard, &token)?);
    principal.require(Permission::Read)?;
    let protocol =
        (from_protocol.is_some() && protocols.iter().any(|p| p == "bearer")).then_some("bearer");
    let per_subject = shard.config.limits.max_websockets_per_subject;
    let slot = if per_subject > 0 {
        let key = QuotaKey::Subject(principal.subject.as_str().into());
        let slot = quota::acquire(shard, key, per_subject)
            .await
            .ok_or_else(|| {
                ApiError::new(
                    429,
                    "TOO_MANY_CONNECTIONS",
                    format!("this token's subject already holds {per_subject} WebSocket sessions"),
                )
                .with_header("Retry-After", "1")
            })?;
        Some(slot)
    } else {
        None
    };
    Ok(Upgrade {
        accept_key,
        protocol,
        principal,
        _slot: slot,
    })
}

enum Frame {
    /// A delivery; `replay` marks snapshot messages, which do not count toward the limit.
    Message {
        msg: Arc<Message>,
        replay: bool,
    },
    Control(Vec<u8>),
}

/// The session's outbound queue, fed by the shard's subscriber index.
struct Outbound {
    frames: RefCell<VecDeque<Frame>>,
    live_bytes: Cell<usize>,
    limit: usize,
    /// `delivery.slow_consumer: drop_oldest`: shed old messages instead of disconnecting.
    drop_oldest: bool,
    /// Messages shed since the client was last told.
    dropped: Cell<u64>,
    /// Every queued byte: live, replayed and control frames. Over `limit`, the session
    /// stops reading client frames (so commands cannot pile up replies and replays in a
    /// client that does not read) until the queue drains.
    queued: Cell<usize>,
    overflow: Cell<bool>,
    replaying: Cell<bool>,
    ctl: Rc<ConnCtl>,
}

impl Sink for Outbound {
    fn offer(&self, msg: &Arc<Message>) {
        if self.overflow.get() {
            return;
        }
        let replay = self.replaying.get();
        let mut frames = self.frames.borrow_mut();
        if !replay {
            let bytes = self.live_bytes.get() + msg.ws_frame().len();
            self.live_bytes.set(bytes);
            if bytes > self.limit {
                if self.drop_oldest {
                    self.shed(&mut frames);
                } else {
                    self.overflow.set(true);
                }
            }
        }
        self.queued.set(self.queued.get() + msg.ws_frame().len());
        frames.push_back(Frame::Message {
            msg: Arc::clone(msg),
            replay,
        });
        self.ctl.signal.raise();
    }
}

impl Outbound {
    /// Drops the oldest queued live messages until the queue is back under its limit.
    fn shed(&self, frames: &mut VecDeque<Frame>) {
        let mut dropped = 0;
        frames.retain(|frame| match frame {
            Frame::Message { msg, replay: false } if self.live_bytes.get() > self.limit => {
                self.live_bytes
                    .set(self.live_bytes.get() - msg.ws_frame().len());
                self.queued.set(self.queued.get() - msg.ws_frame().len());
                dropped += 1;
                false
            }
            _ => true,
        });
        self.dropped.set(self.dropped.get() + dropped);
    }
}

impl Outbound {
    fn push_control(&self, bytes: Vec<u8>) {
        self.queued.set(self.queued.get() + bytes.len());
        self.frames.borrow_mut().push_back(Frame::Control(bytes));
        self.ctl.signal.raise();
    }

    fn backlogged(&self) -> bool {
        self.queued.get() > self.limit
    }

    fn push_json(&self, json: &[u8]) {
        self.push_control(text_frame(json));
    }

    /// Moves queued frames into `wbuf` (up to a batch); false when nothing was queued.
    fn fill(&self, wbuf: &mut Vec<u8>, metrics: &ShardMetrics) -> bool {
        let mut frames = self.frames.borrow_mut();
        let mut any = false;
        let now = Instant::now();
        let mut delivered = 0;
        let mut latency = metrics.delivery_latency.borrow_mut();
        while wbuf.len() < WRITE_BATCH {
            let Some(frame) = frames.pop_front() else {
                break;
            };
            any = true;
            match frame {
                Frame::Message { msg, replay } => {
                    wbuf.extend_from_slice(msg.ws_frame());
                    self.queued.set(self.queued.get() - msg.ws_frame().len());
                    delivered += 1;
                    if let Some(at) = msg.accepted_at {
                        latency.record(now.saturating_duration_since(at).as_micros() as u64);
                    }
                    if !replay {
                        self.live_bytes
                            .set(self.live_bytes.get() - msg.ws_frame().len());
                    }
                }
                Frame::Control(bytes) => {
                    wbuf.extend_from_slice(&bytes);
                    self.queued.set(self.queued.get() - bytes.len());
                }
            }
        }
        metrics::add(&metrics.delivered, delivered);
        any
    }
}

struct Session {
    shard: Rc<Shard>,
    principal: Principal,
    out: Rc<Outbound>,
    subs: Subscriptions,
    consumer: Option<(String, ConsumerKey)>,
    session_id: String,
    invalid_frames: u32,
}

/// `subscribed` / `unsubscribed` frames, `type` first for readers' sake.
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topics: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

pub async fn run(conn: &mut Conn, up: Upgrade) -> io::Result<()> {
    let mut head = Vec::new();
    crate::ws::handshake::switching_protocols(&up.accept_key, up.protocol, &mut head);
    conn.write_all(&head).await?;

    let shard = Rc::clone(&conn.shard);
    let _open = metrics::Gauge::inc(&shard.metrics.websocket_connections);
    let cfg = &shard.config;
    let ping_every = cfg.delivery.ws_ping_interval.as_millis() as u64;
    let dead_after = cfg.delivery.ws_pong_timeout.as_millis() as u64;
    let out = Rc::new(Outbound {
        frames: RefCell::new(VecDeque::new()),
        live_bytes: Cell::new(0),
        limit: cfg.delivery.max_outbound_bytes,
        drop_oldest: cfg.delivery.slow_consumer == SlowConsumer::DropOldest,
        dropped: Cell::new(0),
        queued: Cell::new(0),
        overflow: Cell::new(false),
        replaying: Cell::new(false),
        ctl: Rc::clone(&conn.ctl),
    });
    let mut session = Session {
        shard: Rc::clone(&shard),
        principal: up.principal,
        out: Rc::clone(&out),
        subs: Subscriptions::new(Rc::clone(&shard)),
        consumer: None,
        session_id: session_id(shard.id()),
        invalid_frames: 0,
    };
    // Sessions of account tokens, and of tokens that can be logged out, end when their
    // access is withdrawn; other service tokens are not watched (and cost nothing here).
    let watched = session.principal.username.is_some() || session.principal.jti.is_some();
    let _watch = watched.then(|| shard.accounts.watch(&session.principal.subject, &conn.ctl));
    let mut account_checked = shard.accounts.generation();
    let mut decoder = FrameDecoder::new(cfg.limits.max_ws_message_bytes);
    let mut wbuf = Vec::new();
    let mut last_heard = now_ms();
    let mut next_ping = last_heard + ping_every;
    let leeway = cfg.jwt.leeway.as_millis() as u64;
    let frame_rate = cfg.limits.ws_frame_rate;
    let mut frames_allowed = (frame_rate > 0).then(|| Bucket::new(frame_rate, Instant::now()));
    let mut over_rate = 0u64;

    loop {
        while !out.backlogged() {
            match decoder.decode(conn.rbuf.filled()) {
                Ok(Some((incoming, used))) => {
                    conn.rbuf.consume(used);
                    let counted = !matches!(incoming, Incoming::Pong | Incoming::Close { .. });
                    if let (true, Some(bucket)) = (counted, frames_allowed.as_mut()) {
                        if let Err(wait) = bucket.take(1.0, Instant::now()) {
                            // Refused frames are not processed; a client that keeps
                            // sending a second's worth past the limit is cut off.
                            over_rate += 1;
                            if over_rate > frame_rate {
                                let reason = "too many frames per second";
                                return close(conn, &out, &mut wbuf, RATE_LIMITED, reason).await;
                            }
                            let err = limits::rate_limited(wait, "frame rate limit exceeded");
                            out.push_json(&err.to_ws_json());
                            continue;
                        }
                    }
                    match incoming {
                        Incoming::Text(text) => session.command(&text).await,
                        Incoming::Binary(_) => session.reject(ApiError::invalid(
                            "UNSUPPORTED_FRAME",
                            "binary frames are not supported; send JSON text frames",
                        )),
                        Incoming::Ping(payload) => out.push_control(pong_frame(&payload)),
                        Incoming::Pong => {}
                        Incoming::Close { code, .. } => {
                            let echo = code.unwrap_or(crate::ws::NORMAL);
                            return close(conn, &out, &mut wbuf, echo, "").await;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return close(conn, &out, &mut wbuf, e.close_code(), e.reason()).await,
            }
        }
        let shed = out.dropped.replace(0);
        if shed > 0 {
            metrics::add(&shard.metrics.dropped, shed);
            let notice = format!(
                r#"{{"type":"error","code":"MESSAGES_DROPPED","count":{shed},"message":"this connection fell more than {} bytes behind; the oldest {shed} queued messages were dropped"}}"#,
                out.limit
            );
            out.push_json(notice.as_bytes());
        }
        if out.overflow.get() {
            let dropped = out.frames.borrow_mut().drain(..).count();
            metrics::add(&shard.metrics.dropped, dropped as u64);
            metrics::add(&shard.metrics.slow_consumer_disconnects, 1);
            let reason = format!("slow consumer: more than {} bytes queued", out.limit);
            return close(conn, &out, &mut wbuf, SLOW_CONSUMER, &reason).await;
        }
        if session.invalid_frames > MAX_INVALID_FRAMES {
            return close(
                conn,
                &out,
                &mut wbuf,
                POLICY_VIOLATION,
                "too many invalid frames",
            )
            .await;
        }
        if conn.ctl.closing() {
            return close(conn, &out, &mut wbuf, GOING_AWAY, "server shutting down").await;
        }
        if watched && account_checked != shard.accounts.generation() {
            account_checked = shard.accounts.generation();
            if let Err(why) = session.recheck_access() {
                return close(conn, &out, &mut wbuf, ACCESS_REVOKED, &why).await;
            }
        }
        let expires = session.principal.expires_at.saturating_mul(1000) + leeway;
        if conn.ctl.take_timeout() {
            let now = now_ms();
            if now >= expires {
                let reason = "token expired: send an auth frame before expiry, or reconnect";
                return close(conn, &out, &mut wbuf, TOKEN_EXPIRED, reason).await;
            }
            if now >= next_ping {
                if now.saturating_sub(last_heard) >= dead_after {
                    return Ok(());
                }
                out.push_control(ping_frame(b""));
                next_ping = now + ping_every;
            }
        }
        conn.ctl.set_deadline(next_ping.min(expires));
        let read = !out.backlogged();
        match drive(conn, &out, &mut wbuf, read).await? {
            Event::Data => last_heard = now_ms(),
            Event::Eof => return Ok(()),
            Event::Woken => {}
        }
    }
}

/// Writes what is queued and reads what arrives until one of them needs the session's
/// attention: new bytes, end of stream, or the signal (new frames, deadline, shutdown).
///
/// With `read` false (the outbound queue is over its limit) nothing is read: the client
/// is back-pressured through TCP, and the call returns once the queue is under the limit.
async fn drive(
    conn: &mut Conn,
    out: &Outbound,
    wbuf: &mut Vec<u8>,
    read: bool,
) -> io::Result<Event> {
    let Conn {
        stream,
        ctl,
        rbuf,
        shard,
        ..
    } = conn;
    let metrics = &shard.metrics;
    let mut written = 0;
    let event = poll_fn(|cx| {
        loop {
            if written == wbuf.len() {
                wbuf.clear();
                written = 0;
                if !out.fill(wbuf, metrics) {
                    break;
                }
            }
            match Pin::new(&mut *stream).poll_write(cx, &wbuf[written..]) {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    metrics::add(&metrics.bytes_out, n as u64);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if ctl.signal.poll_wait(cx).is_ready() {
            return Poll::Ready(Ok(Event::Woken));
        }
        if !read {
            return if out.backlogged() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(Event::Woken))
            };
        }
        poll_read_into(stream, rbuf, metrics, cx)
    })
    .await;
    // Keep unwritten bytes at the front for the next round.
    wbuf.drain(..written);
    if wbuf.is_empty() && wbuf.capacity() > 2 * WRITE_BATCH {
        *wbuf = Vec::new();
    }
    event
}

/// Sends a close frame after what is already queued and lets the peer go.
async fn close(
    conn: &mut Conn,
    out: &Outbound,
    wbuf: &mut Vec<u8>,
    code: u16,
    reason: &str,
) -> io::Result<()> {
    out.push_control(close_frame(code, reason));
    while !wbuf.is_empty() || !out.frames.borrow().is_empty() {
        let event = drive(conn, out, wbuf, true).await?;
        // Nothing the peer sends now matters; don't let it pile up.
        let unread = conn.rbuf.filled().len();
        conn.rbuf.consume(unread);
        if let Event::Eof = event {
            return Ok(());
        }
    }
    // Closing the socket with the peer's frames unread would send a reset, which can
    // destroy the close frame before the peer reads it: half-close, then drain briefly.
    conn.linger().await;
    Ok(())
}

fn session_id(shard: usize) -> String {
    thread_local!(static NEXT: Cell<u64> = const { Cell::new(0) });
    let n = NEXT.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let mixed = (now_ms() << 20) ^ ((shard as u64) << 56) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("sess_{:012x}", mixed & 0xFFFF_FFFF_FFFF)
}

impl Session {
    /// Checks the session's token against the account state again (after a change): `Err`
    /// with the reason when the session must end; changed permissions apply at once.
    fn recheck_access(&mut self) -> Result<(), String> {
        let current = Rc::new(self.principal.clone());
        let admitted = super::admitted(&self.shard, current).map_err(|e| e.detail)?;
        self.principal = Rc::unwrap_or_clone(admitted);
        self.principal
            .require(Permission::Read)
            .map_err(|e| e.detail())
    }

    fn reject(&mut self, err: ApiError) {
        self.invalid_frames += 1;
        self.out.push_json(&err.to_ws_json());
    }

    async fn command(&mut self, text: &[u8]) {
        let result = match ws_command::parse(text, self.shard.config.limits.max_json_depth) {
            Err(e) => Err(e),
            Ok(Command::Subscribe(cmd)) => self.subscribe(cmd).await,
            Ok(Command::Unsubscribe(cmd)) => self.unsubscribe(cmd),
            Ok(Command::Ack(cmd)) => self.ack(cmd).await,
            Ok(Command::Auth(cmd)) => self.reauthenticate(cmd),
            Ok(Command::Ping) => {
                let pong = format!(r#"{{"type":"pong","timestamp":"{}"}}"#, rfc3339(now_ms()));
                self.out.push_json(pong.as_bytes());
                Ok(())
            }
        };
        if let Err(e) = result {
            self.reject(e);
        }
    }

    /// Replaces the session's token before it expires. The subject must stay the same:
    /// durable consumer positions and subscriptions belong to it.
    fn reauthenticate(&mut self, cmd: AuthCmd) -> Result<(), ApiError> {
        let principal = Rc::unwrap_or_clone(super::verify_token(&self.shard, &cmd.token)?);
        principal.require(Permission::Read)?;
        if principal.subject != self.principal.subject {
            return Err(ApiError::new(
                403,
                "AUTH_SUBJECT_MISMATCH",
                "a session cannot change its subject; open a new connection",
            ));
        }
        // Subscriptions are held by topic key (namespaced in `per_user`); the claim and
        // the consumer speak of bare names.
        let mut subscribed = self.subs.topics().map(|key| display_name(key));
        if let Some(denied) = subscribed.find(|name| !principal.may_use(name)) {
            return Err(ApiError::topic_forbidden(denied));
        }
        let expires = rfc3339(principal.expires_at.saturating_mul(1000));
        self.principal = principal;
        let reply = format!(r#"{{"type":"authenticated","expires_at":"{expires}"}}"#);
        self.out.push_json(reply.as_bytes());
        Ok(())
    }

    async fn subscribe(&mut self, cmd: SubscribeCmd) -> Result<(), ApiError> {
        let cfg = &self.shard.config;
        let topics = parse_topics(
            cmd.topics.iter().map(String::as_str),
            cfg.limits.max_topics_per_request,
        )?;
        permit_topics(&self.principal, &topics)?;
        let topics = scope_topics(&self.shard, &self.principal, topics)?;
        let new = topics.iter().filter(|t| !self.subs.contains(t)).count();
        if self.subs.len() + new > cfg.limits.max_topics_per_request {
            return Err(ApiError::invalid(
                "TOO_MANY_TOPICS",
                format!(
                    "at most {} topics per connection",
                    cfg.limits.max_topics_per_request
                ),
            ));
        }
        let cursor = parse_cursor(cmd.since.as_deref())?;
        if let Some(id) = cmd.client_id.as_deref() {
            let id = parse_client_id(id)?;
            match &self.consumer {
                Some((current, _)) if current != id => {
                    return Err(ApiError::invalid(
                        "CLIENT_ID_MISMATCH",
                        format!("this connection already consumes as {current:?}"),
                    ))
                }
                Some(_) => {}
                None => {
                    self.consumer =
                        Some((id.to_string(), consumer_key(&self.principal.subject, id)))
                }
            }
        }
        let consumer = self.consumer.as_ref().map(|(_, key)| key.clone());
        let sink: Rc<dyn Sink> = self.out.clone();
        let limit = cfg.storage.hot_tier_messages_per_topic;
        let pending = self
            .subs
            .add(&topics, &cursor, consumer.as_ref(), &sink, limit)
            .await;
        let reply = Reply {
            kind: "subscribed",
            topics: topics.iter().map(|t| display_name(t)).collect(),
            session_id: Some(&self.session_id),
            timestamp: Some(rfc3339(now_ms())),
        };
        self.out
            .push_json(&serde_json::to_vec(&reply).unwrap_or_default());
        self.out.replaying.set(true);
        let mut incomplete = Vec::new();
        for p in &pending {
            if p.problem.is_some() {
                p.sub.finish_truncated(&p.backlog);
            } else {
                p.sub.finish_replay(&p.backlog);
            }
            if let Some(problem) = &p.problem {
                incomplete.push((Arc::clone(&p.sub.topic), p.sub.cursor(), problem.clone()));
            }
        }
        self.out.replaying.set(false);
        // A replay that could not be completed must not silently continue with a gap:
        // the topic is dropped and the client told where to resume.
        for (key, cursor, problem) in incomplete {
            self.subs.remove(&key);
            let topic = display_name(&key);
            let resume = if cursor == MessageId::ZERO {
                "earliest".to_string()
            } else {
                cursor.to_string()
            };
            let err = match problem {
                ReplayProblem::Truncated => ApiError::invalid(
                    "REPLAY_TRUNCATED",
                    format!("the replay of {topic:?} stopped after the first part; subscribe again with since={resume}"),
                ),
                ReplayProblem::Store(e) => ApiError::new(
                    503,
                    "STORE_UNAVAILABLE",
                    format!("history of {topic:?} is unavailable ({e}); subscribe again with since={resume}"),
                ),
            };
            self.out.push_json(&err.to_ws_json());
        }
        Ok(())
    }

    fn unsubscribe(&mut self, cmd: UnsubscribeCmd) -> Result<(), ApiError> {
        let topics = parse_topics(cmd.topics.iter().map(String::as_str), usize::MAX)?;
        let topics = scope_topics(&self.shard, &self.principal, topics)?;
        for topic in &topics {
            self.subs.remove(topic);
        }
        let reply = Reply {
            kind: "unsubscribed",
            topics: topics.iter().map(|t| display_name(t)).collect(),
            session_id: None,
            timestamp: None,
        };
        self.out
            .push_json(&serde_json::to_vec(&reply).unwrap_or_default());
        Ok(())
    }

    async fn ack(&mut self, cmd: AckCmd) -> Result<(), ApiError> {
        let Some((_, consumer)) = &self.consumer else {
            return Err(ApiError::invalid(
                "CLIENT_ID_REQUIRED",
                "acknowledgements need a durable consumer: subscribe with a `client_id` first",
            ));
        };
        let id = parse_message_id(&cmd.message_id)?;
        let topic = match cmd.topic {
            Some(topic) => {
                let topic = parse_topics([topic.as_str()], 1)?;
                permit_topics(&self.principal, &topic)?;
                let topic = scope_topics(&self.shard, &self.principal, topic)?;
                Some(Box::from(&*topic[0]))
            }
            None => None,
        };
        let candidates: Vec<Box<str>> = self.subs.topics().map(|t| Box::from(&**t)).collect();
        let outcome = ack::acknowledge(
            &self.shard,
            &self.principal,
            consumer,
            &[id],
            topic,
            Some(candidates),
        )
        .await;
        match outcome.first() {
            Some(AckOutcome::Acked) => Ok(()),
            Some(AckOutcome::Ambiguous) => Err(ApiError::invalid(
                "AMBIGUOUS_MESSAGE",
                format!(
                    "several subscribed topics hold message {}; name it with `topic`",
                    cmd.message_id
                ),
            )),
            _ => Err(ApiError::invalid(
                "UNKNOWN_MESSAGE",
                format!("no subscribed topic holds message {}", cmd.message_id),
            )),
        }
    }
}
