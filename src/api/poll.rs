//! Long-poll delivery: `GET /api/v1/poll`.
//!
//! A poll subscribes like a WebSocket does (same snapshot-then-live seam), answers at once
//! when something is already there, and otherwise parks on the connection's signal until
//! the first message, the timeout or shutdown. Replies reuse each message's delivery JSON.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::conn::{Conn, Event};
use super::error::ApiError;
use super::subscriptions::{ReplayProblem, Subscriptions};
use super::{parse_client_id, parse_topics, permit_topics};
use crate::auth::Principal;
use crate::http::{Request, Response};
use crate::metrics::{self, ShardMetrics};
use crate::shard::conns::ConnCtl;
use crate::shard::now_ms;
use crate::topic::subscribers::Sink;
use crate::topic::{consumer_key, Cursor, Message};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
const DEFAULT_TIMEOUT_SECS: u64 = 30;

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
    let topics_param = req
        .query_param("topics")
        .ok_or_else(|| ApiError::invalid("MISSING_FIELD", "`topics` is required"))?;
    let topics = parse_topics(
        topics_param.split(',').map(str::trim),
        shard.config.limits.max_topics_per_request,
    )?;
    permit_topics(principal, &topics)?;
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
    let cursor = match req.query_param("since") {
        None => Cursor::Live,
        Some(text) => Cursor::parse(&text).ok_or_else(|| {
            ApiError::invalid(
                "INVALID_CURSOR",
                "`since` must be a message ID (ms-seq), `earliest` or `latest`",
            )
        })?,
    };
    let consumer = match req.query_param("client_id") {
        None => None,
        Some(id) => Some(consumer_key(&principal.subject, parse_client_id(&id)?)),
    };

    let sink = Rc::new(PollSink {
        messages: RefCell::new(Vec::new()),
        limit,
        more: Cell::new(false),
        ctl: Rc::clone(&conn.ctl),
    });
    let as_sink: Rc<dyn Sink> = sink.clone();
    let mut subs = Subscriptions::new(Rc::clone(&shard));
    for pending in subs
        .add(&topics, &cursor, consumer.as_ref(), &as_sink, limit)
        .await
    {
        match pending.problem {
            Some(ReplayProblem::Store(e)) => return Err(e.into()),
            Some(ReplayProblem::Truncated) => {
                sink.more.set(true);
                pending.sub.finish_truncated(&pending.backlog);
            }
            None => pending.sub.finish_replay(&pending.backlog),
        }
    }

    if sink.messages.borrow().is_empty() {
        let _waiting = metrics::Gauge::inc(&shard.metrics.polls_waiting);
        conn.ctl.set_deadline(now_ms() + timeout * 1000);
        let request_budget =
            shard.config.limits.max_header_bytes + shard.config.limits.max_body_bytes;
        loop {
            if !sink.messages.borrow().is_empty() || conn.ctl.closing() {
                break;
            }
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
    body.extend_from_slice(if sink.more.get() { b"true}" } else { b"false}" });
    Ok(Response::json(200, body))
}

fn record_deliveries(m: &ShardMetrics, messages: &[Arc<Message>]) {
    metrics::add(&m.delivered, messages.len() as u64);
    let now = std::time::Instant::now();
    let mut latency = m.delivery_latency.borrow_mut();
    for at in messages.iter().filter_map(|msg| msg.accepted_at) {
        latency.record(now.saturating_duration_since(at).as_micros() as u64);
    }
}
