//! Long-poll delivery: `GET /api/v1/poll`, and the collecting, parking and answering that
//! the original relay's `POST /messages/poll` (`compat_poll`) shares with it.
//!
//! A poll subscribes like a WebSocket does (same snapshot-then-live seam), answers at once
//! when something is already there, and otherwise parks on the connection's signal until
//! the first message, the timeout or shutdown. Replies reuse each message's delivery JSON.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::conn::{Conn, Event};
use super::error::ApiError;
use super::fields::{parse_client_id, parse_cursor, query_topics};
use super::shard::Shard;
use super::subscriptions::{ReplayProblem, Subscriptions};
use crate::auth::Principal;
use crate::http::{Request, Response};
use crate::metrics::{self, ShardMetrics};
use crate::rt::conns::ConnCtl;
use crate::rt::now_ms;
use crate::topic::subscribers::Sink;
use crate::topic::{consumer_key, ConsumerKey, Cursor, Message};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
pub(super) const DEFAULT_TIMEOUT_SECS: u64 = 30;

struct PollSink {
    messages: RefCell<Vec<Arc<Message>>>,
    limit: usize,
    more: Cell<bool>,
    ctl: Rc<ConnCtl>,
}

impl Sink for PollSink {
    fn offer(&self, msg: &Arc<Message>) {
        let mut messages = self.messages.borrow_mut();
        if messages.len() < self.limit {
            messages.push(Arc::clone(msg));
        } else {
            self.more.set(true);
        }
        self.ctl.signal.raise();
    }
}

fn number_param(
    req: &Request,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    code: &'static str,
) -> Result<u64, ApiError> {
    match req.query_param(name) {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                code,
                format!(
                    "`{name}` must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        },
    }
}

pub async fn poll(
    conn: &mut Conn,
    principal: &Principal,
    req: &Request,
) -> Result<Response, ApiError> {
    let shard = Rc::clone(&conn.shard);
    let topics = query_topics(&shard, principal, req)?;
    let max_timeout = shard.config.delivery.max_poll_timeout.as_secs().max(1);
    let timeout = number_param(
        req,
        "timeout",
        DEFAULT_TIMEOUT_SECS.min(max_timeout),
        1..=max_timeout,
        "INVALID_TIMEOUT",
    )?;
    let limit = number_param(
        req,
        "limit",
        DEFAULT_LIMIT as u64,
        1..=MAX_LIMIT as u64,
        "INVALID_LIMIT",
    )? as usize;
    let cursor = parse_cursor(req.query_param("since").as_deref())?;
    let consumer = match req.query_param("client_id") {
        None => None,
        Some(id) => Some(consumer_key(&principal.subject, parse_client_id(&id)?)),
    };

    let mut collected = Collected::new(conn, limit);
    let each = topics.iter().map(|topic| (topic, &cursor));
    collected.subscribe(each, consumer.as_ref(), limit).await?;
    collected.wait(conn, timeout).await;
    Ok(collected.into_response(false))
}

/// What one poll request collects: its subscriptions and the messages they delivered. Both
/// poll endpoints subscribe through it, park in [`Collected::wait`] and answer with
/// [`Collected::into_response`].
pub(super) struct Collected {
    shard: Rc<Shard>,
    sink: Rc<PollSink>,
    subs: Subscriptions,
}

impl Collected {
    /// Keeps at most `limit` messages; later ones only set `has_more`. The sink drops a
    /// suffix, so what is kept of each topic is that topic's oldest messages, in order.
    pub(super) fn new(conn: &Conn, limit: usize) -> Self {
        let shard = Rc::clone(&conn.shard);
        Collected {
            sink: Rc::new(PollSink {
                messages: RefCell::new(Vec::new()),
                limit,
                more: Cell::new(false),
                ctl: Rc::clone(&conn.ctl),
            }),
            subs: Subscriptions::new(Rc::clone(&shard)),
            shard,
        }
    }

    /// Subscribes each topic from its cursor and hands over the replays (at most
    /// `replay_limit` messages per topic). A topic that had more stays at its last
    /// replayed message and marks the answer as having more.
    pub(super) async fn subscribe<'a>(
        &mut self,
        topics: impl IntoIterator<Item = (&'a Arc<str>, &'a Cursor)>,
        consumer: Option<&ConsumerKey>,
        replay_limit: usize,
    ) -> Result<(), ApiError> {
        let sink: Rc<dyn Sink> = self.sink.clone();
        for pending in self
            .subs
            .add_each(topics, consumer, &sink, replay_limit)
            .await
        {
            match pending.problem {
                Some(ReplayProblem::Store(e)) => return Err(e.into()),
                Some(ReplayProblem::Truncated) => {
                    self.sink.more.set(true);
                    pending.sub.finish_truncated(&pending.backlog);
                }
                None => pending.sub.finish_replay(&pending.backlog),
            }
        }
        Ok(())
    }

    /// How many messages were collected so far.
    pub(super) fn len(&self) -> usize {
        self.sink.messages.borrow().len()
    }

    /// Unless something was collected already, parks until the first message, the timeout
    /// (seconds), the client leaving or shutdown.
    pub(super) async fn wait(&self, conn: &mut Conn, timeout_secs: u64) {
        if self.len() > 0 {
            return;
        }
        let _waiting = metrics::Gauge::inc(&self.shard.metrics.polls_waiting);
        conn.ctl.set_deadline(now_ms() + timeout_secs * 1000);
        let limits = &self.shard.config.limits;
        let request_budget = limits.max_header_bytes + limits.max_body_bytes;
        while self.len() == 0 && !conn.ctl.closing() {
            // Keep reading while parked so a vanished client is noticed; bytes of a
            // pipelined next request stay buffered (up to one request's worth).
            let event = if conn.rbuf.filled().len() < request_budget {
                conn.read_or_wake().await
            } else {
                conn.ctl.signal.wait().await;
                Ok(Event::Woken)
            };
            match event {
                Ok(Event::Data) => {}
                Ok(Event::Eof) | Err(_) => break,
                Ok(Event::Woken) => {
                    if conn.ctl.take_timeout() {
                        break;
                    }
                }
            }
        }
        conn.ctl.clear_deadline();
    }

    /// Ends the subscriptions and answers `{"messages":[…],"has_more":…}` with each
    /// message's delivery JSON; `has_more` is set when a replay or the sink was cut short,
    /// or when the caller says so (`more`).
    pub(super) fn into_response(self, more: bool) -> Response {
        let Collected { shard, sink, subs } = self;
        drop(subs);
        let messages = sink.messages.take();
        record_deliveries(&shard.metrics, &messages);
        let size: usize = messages.iter().map(|m| m.json().len() + 1).sum();
        let mut body = Vec::with_capacity(size + 40);
        body.extend_from_slice(b"{\"messages\":[");
        for (i, msg) in messages.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(msg.json());
        }
        body.extend_from_slice(b"],\"has_more\":");
        let has_more = more || sink.more.get();
        body.extend_from_slice(if has_more { b"true}" } else { b"false}" });
        Response::json(200, body)
    }
}

fn record_deliveries(m: &ShardMetrics, messages: &[Arc<Message>]) {
    metrics::add(&m.delivered, messages.len() as u64);
    let now = std::time::Instant::now();
    let mut latency = m.delivery_latency.borrow_mut();
    for at in messages.iter().filter_map(|msg| msg.accepted_at) {
        latency.record(now.saturating_duration_since(at).as_micros() as u64);
    }
}
