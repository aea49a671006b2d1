//! What a streaming session (WebSocket on `/ws`, Server-Sent Events on `/api/v1/sse`) has
//! queued for its client, and the loop that writes it to the socket.
//!
//! Deliveries arrive through the [`Outbound`] sink as shared `Arc<Message>`s whose bytes
//! the topic owner built once; the session only copies them into its socket buffer, in its
//! [`Wire`] form. The queue is bounded in bytes: a subscriber that does not read is cut off
//! (or, with `delivery.slow_consumer: drop_oldest`, loses its oldest live messages) instead
//! of growing memory. What the client sends, and what the session answers, is the
//! session's business.

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

use super::conn::{poll_read_into, Conn, Event};
use crate::config::DeliveryConfig;
use crate::config::SlowConsumer;
use crate::http::event_stream;
use crate::metrics::{self, ShardMetrics};
use crate::rt::conns::ConnCtl;
use crate::topic::subscribers::Sink;
use crate::topic::Message;

/// Bytes gathered from the queue into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// How a delivery is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The message's prebuilt text frame, as is.
    WebSocket,
    /// An `id:` / `event: message` / `data:` event around the same delivery JSON.
    EventStream,
}

impl Wire {
    /// What the queue counts for `msg` (an estimate for an event whose data has line
    /// breaks: the same for queueing and unqueueing, which is all the limit needs).
    fn size(self, msg: &Message) -> usize {
        match self {
            Wire::WebSocket => msg.ws_frame().len(),
            Wire::EventStream => {
                event_stream::event_len(msg.id_text().len(), "message", msg.json().len())
            }
        }
    }

    fn write(self, msg: &Message, out: &mut Vec<u8>) {
        match self {
            Wire::WebSocket => out.extend_from_slice(msg.ws_frame()),
            Wire::EventStream => event_stream::event(out, msg.id_text(), "message", msg.json()),
        }
    }
}

enum Frame {
    /// A delivery; `replay` marks snapshot messages, which do not count toward the limit.
    Message { msg: Arc<Message>, replay: bool },
    /// Bytes already in the wire's form (a reply, a ping, a heartbeat, a close).
    Control(Vec<u8>),
}

/// A session's outbound queue, fed by the shard's subscriber index.
pub struct Outbound {
    wire: Wire,
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
        let size = self.wire.size(msg);
        let mut frames = self.frames.borrow_mut();
        if !replay {
            let bytes = self.live_bytes.get() + size;
            self.live_bytes.set(bytes);
            if bytes > self.limit {
                if self.drop_oldest {
                    self.shed(&mut frames);
                } else {
                    self.overflow.set(true);
                }
            }
        }
        self.queued.set(self.queued.get() + size);
        frames.push_back(Frame::Message {
            msg: Arc::clone(msg),
            replay,
        });
        self.ctl.signal.raise();
    }
}

impl Outbound {
    /// An empty queue for a session on `ctl`'s connection, bounded as `delivery` says.
    pub fn new(wire: Wire, delivery: &DeliveryConfig, ctl: &Rc<ConnCtl>) -> Outbound {
        Outbound {
            wire,
            frames: RefCell::new(VecDeque::new()),
            live_bytes: Cell::new(0),
            limit: delivery.max_outbound_bytes,
            drop_oldest: delivery.slow_consumer == SlowConsumer::DropOldest,
            dropped: Cell::new(0),
            queued: Cell::new(0),
            overflow: Cell::new(false),
            replaying: Cell::new(false),
            ctl: Rc::clone(ctl),
        }
    }

    /// Drops the oldest queued live messages until the queue is back under its limit.
    fn shed(&self, frames: &mut VecDeque<Frame>) {
        let mut dropped = 0;
        frames.retain(|frame| match frame {
            Frame::Message { msg, replay: false } if self.live_bytes.get() > self.limit => {
                let size = self.wire.size(msg);
                self.live_bytes.set(self.live_bytes.get() - size);
                self.queued.set(self.queued.get() - size);
                dropped += 1;
                false
            }
            _ => true,
        });
        self.dropped.set(self.dropped.get() + dropped);
    }

    pub fn push_control(&self, bytes: Vec<u8>) {
        self.queued.set(self.queued.get() + bytes.len());
        self.frames.borrow_mut().push_back(Frame::Control(bytes));
        self.ctl.signal.raise();
    }

    /// Over the limit: the session stops reading from its client until the queue drains.
    pub fn backlogged(&self) -> bool {
        self.queued.get() > self.limit
    }

    /// Messages offered from now until `false` are a replay (not counted as live).
    pub fn set_replaying(&self, replaying: bool) {
        self.replaying.set(replaying);
    }

    /// The JSON of a `MESSAGES_DROPPED` notice for the messages shed since the last call
    /// (counted in `metrics`), if any were.
    pub fn take_shed(&self, metrics: &ShardMetrics) -> Option<Vec<u8>> {
        let shed = self.dropped.replace(0);
        if shed == 0 {
            return None;
        }
        metrics::add(&metrics.dropped, shed);
        let notice = format!(
            r#"{{"type":"error","code":"MESSAGES_DROPPED","count":{shed},"message":"this connection fell more than {} bytes behind; the oldest {shed} queued messages were dropped"}}"#,
            self.limit
        );
        Some(notice.into_bytes())
    }

    /// When the live queue went over its limit (and the session must end): discards what
    /// is queued, counts the loss in `metrics`, and returns the reason to give the client.
    pub fn cut_off(&self, metrics: &ShardMetrics) -> Option<String> {
        if !self.overflow.get() {
            return None;
        }
        let dropped = self.frames.borrow_mut().drain(..).count();
        self.queued.set(0);
        self.live_bytes.set(0);
        metrics::add(&metrics.dropped, dropped as u64);
        metrics::add(&metrics.slow_consumer_disconnects, 1);
        Some(format!(
            "slow consumer: more than {} bytes queued",
            self.limit
        ))
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
                    let size = self.wire.size(&msg);
                    self.wire.write(&msg, wbuf);
                    self.queued.set(self.queued.get() - size);
                    delivered += 1;
                    if let Some(at) = msg.accepted_at {
                        latency.record(now.saturating_duration_since(at).as_micros() as u64);
                    }
                    if !replay {
                        self.live_bytes.set(self.live_bytes.get() - size);
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

/// What [`drive`] waits for besides the session's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// New bytes, end of stream, or the signal (new frames, deadline, shutdown).
    Event,
    /// The queue is over its limit: nothing is read (the client is back-pressured through
    /// TCP) and the call returns once the queue is under the limit.
    Drained,
    /// Everything queued is written (or an event came first).
    Written,
}

/// Writes what is queued and reads what arrives until one of them needs the session's
/// attention, as `until` says.
pub async fn drive(
    conn: &mut Conn,
    out: &Outbound,
    wbuf: &mut Vec<u8>,
    until: Until,
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
                    if until == Until::Written {
                        return Poll::Ready(Ok(Event::Woken));
                    }
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
        if until == Until::Drained {
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

/// Writes everything still queued (the session's last words among it), then lets the
/// peer go.
pub async fn finish(conn: &mut Conn, out: &Outbound, wbuf: &mut Vec<u8>) -> io::Result<()> {
    while !wbuf.is_empty() || !out.frames.borrow().is_empty() {
        let event = drive(conn, out, wbuf, Until::Written).await?;
        // Nothing the peer sends now matters; don't let it pile up.
        let unread = conn.rbuf.filled().len();
        conn.rbuf.consume(unread);
        if let Event::Eof = event {
            return Ok(());
        }
    }
    // Closing the socket with the peer's bytes unread would send a reset, which can
    // destroy the last words before the peer reads them: half-close, then drain briefly.
    conn.linger().await;
    Ok(())
}
