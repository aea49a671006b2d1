//! The publishing side of every scenario: HTTP producers on keep-alive connections,
//! spread over worker threads that each drive many non-blocking connections.
//!
//! Closed loop (no rate): each connection sends its next request when the previous answer
//! arrives. Open loop (`rate`): each connection keeps a fixed schedule, pipelining when the
//! relay is slower than the schedule, and latency is counted from the intended send time,
//! so a stall shows up in the percentiles instead of silently lowering the offered load
//! (coordinated-omission correction).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::{now_ns, precise_timers, sleep_until, Window};
use crate::http::{self, find, number_after, push_decimal, push_json_post, Fill, HttpConn, Target};
use crate::poller::Poller;
use crate::progress::Live;
use crate::report::Latency;

/// Requests one connection may have in flight on an open-loop schedule; beyond it the
/// schedule waits (and the wait is counted as latency).
const MAX_PIPELINE: usize = 256;
/// How long after the end of the load in-flight requests may still be answered.
const DRAIN_NS: u64 = 5_000_000_000;
/// Reconnections one connection gets before it is given up for the run.
const RECONNECTS: u32 = 10;
/// Bytes of the fixed `{"data":""}` payload around its padding.
const FIXED_OVERHEAD: usize = 11;
/// Bytes of a stamped payload without padding, about: `{"t_ns":<19 digits>,"seq":<n>}`.
const STAMP_OVERHEAD: usize = 45;

pub enum Payload {
    /// `{"data":"xxx…"}` of about this many bytes, built once per topic.
    Fixed(usize),
    /// `{"t_ns":<intended send time>,"seq":n,"pad":"…"}` of about this many bytes, built
    /// per message: what receivers measure latency from.
    Stamped(usize),
}

pub struct Plan {
    pub target: Target,
    pub token: String,
    pub connections: usize,
    pub threads: usize,
    /// Messages per second over all connections; None = closed loop.
    pub rate: Option<f64>,
    /// Messages per bulk request; None = single-message POSTs.
    pub bulk: Option<usize>,
    pub payload: Payload,
    pub topics: Vec<String>,
}

/// What the publisher did. Counts marked "measured" are for requests intended inside the
/// measured phase; the per-topic totals cover the whole run (receivers compare with them).
pub struct Outcome {
    pub latency: Latency,
    pub messages: u64,
    pub errors: u64,
    pub published: Vec<u64>,
    /// Per topic, messages sent but never answered (connection lost, or no answer before
    /// the drain ended): the relay may or may not have published them.
    pub unconfirmed: Vec<u64>,
    /// Measured messages refused, by `"<status> <code>"` (the error body's `code`; bulk
    /// items by their own code) or `"no answer"`: what an overload curve needs to show.
    pub refusals: BTreeMap<String, u64>,
    pub first_error: Option<String>,
}

impl Outcome {
    fn new(topics: usize) -> Outcome {
        Outcome {
            latency: Latency::new(),
            messages: 0,
            errors: 0,
            published: vec![0; topics],
            unconfirmed: vec![0; topics],
            refusals: BTreeMap::new(),
            first_error: None,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.latency.merge(&other.latency);
        self.messages += other.messages;
        self.errors += other.errors;
        for (a, b) in self.published.iter_mut().zip(other.published) {
            *a += b;
        }
        for (a, b) in self.unconfirmed.iter_mut().zip(other.unconfirmed) {
            *a += b;
        }
        for (why, n) in other.refusals {
            *self.refusals.entry(why).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn note(&mut self, error: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }

    pub fn published_total(&self) -> u64 {
        self.published.iter().sum()
    }

    pub fn unconfirmed_total(&self) -> u64 {
        self.unconfirmed.iter().sum()
    }
}

/// Request bytes shared by the worker threads, built once.
struct Shared {
    target: Target,
    single_head: Vec<u8>,
    bulk_head: Vec<u8>,
    topics: Vec<String>,
    /// Fixed payload: each topic's whole message object.
    fixed: Vec<Vec<u8>>,
    /// Stamped payload: the padding field, or nothing.
    pad: Vec<u8>,
    stamped: bool,
    bulk: Option<usize>,
    connections: usize,
    /// Open loop: nanoseconds between two requests of one connection.
    interval_ns: Option<f64>,
}

impl Shared {
    fn new(plan: &Plan) -> Shared {
        let per_request = plan.bulk.unwrap_or(1) as f64;
        let (stamped, size) = match plan.payload {
            Payload::Fixed(n) => (false, n),
            Payload::Stamped(n) => (true, n),
        };
        let fixed = if stamped {
            Vec::new()
        } else {
            let data = "x".repeat(size.saturating_sub(FIXED_OVERHEAD));
            plan.topics
                .iter()
                .map(|t| format!(r#"{{"topic":"{t}","payload":{{"data":"{data}"}}}}"#).into_bytes())
                .collect()
        };
        let pad = match size.checked_sub(STAMP_OVERHEAD + 9) {
            Some(n) if stamped && n > 0 => format!(r#","pad":"{}""#, "x".repeat(n)).into_bytes(),
            _ => Vec::new(),
        };
        Shared {
            target: plan.target.clone(),
            single_head: http::request_head("POST", "/api/v1/messages", &plan.target, &plan.token),
            bulk_head: http::request_head(
                "POST",
                "/api/v1/messages/bulk",
                &plan.target,
                &plan.token,
            ),
            topics: plan.topics.clone(),
            fixed,
            pad,
            stamped,
            bulk: plan.bulk,
            connections: plan.connections,
            interval_ns: plan
                .rate
                .map(|r| 1e9 * per_request * plan.connections as f64 / r),
        }
    }

    /// When request `n` of connection `conn` is due; connections are staggered evenly.
    fn intended(&self, interval: f64, start: u64, conn: usize, n: u64) -> u64 {
        start + ((conn as f64 / self.connections as f64 + n as f64) * interval) as u64
    }

    fn push_message(&self, body: &mut Vec<u8>, topic: usize, intended: u64, seq: u64) {
        if !self.stamped {
            body.extend_from_slice(&self.fixed[topic]);
            return;
        }
        body.extend_from_slice(br#"{"topic":""#);
        body.extend_from_slice(self.topics[topic].as_bytes());
        body.extend_from_slice(br#"","payload":{"t_ns":"#);
        push_decimal(body, intended);
        body.extend_from_slice(br#","seq":"#);
        push_decimal(body, seq);
        body.extend_from_slice(&self.pad);
        body.extend_from_slice(b"}}");
    }

    /// Appends request `n` of connection `conn` to `out`, its body built in `scratch`.
    fn push_request(
        &self,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        conn: usize,
        n: u64,
        intended: u64,
    ) -> Pending {
        let per_request = self.bulk.unwrap_or(1);
        let first = (conn + n as usize * per_request) % self.topics.len();
        scratch.clear();
        let head = match self.bulk {
            None => {
                self.push_message(scratch, first, intended, n);
                &self.single_head
            }
            Some(count) => {
                scratch.extend_from_slice(br#"{"messages":["#);
                for k in 0..count {
                    if k > 0 {
                        scratch.push(b',');
                    }
                    let topic = (first + k) % self.topics.len();
                    self.push_message(scratch, topic, intended, n * count as u64 + k as u64);
                }
                scratch.extend_from_slice(b"]}");
                &self.bulk_head
            }
        };
        push_json_post(out, head, scratch.len(), |o| o.extend_from_slice(scratch));
        Pending {
            intended,
            first_topic: first,
            messages: per_request as u64,
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    intended: u64,
    first_topic: usize,
    messages: u64,
}

struct Slot {
    conn: Option<HttpConn>,
    /// Connection number over all threads: staggers schedules and rotates topics.
    index: usize,
    issued: u64,
    inflight: VecDeque<Pending>,
    write_interest: bool,
    reconnects: u32,
}

pub struct Publisher {
    threads: Vec<JoinHandle<Outcome>>,
    topics: usize,
}

/// Connects every connection (so a wrong address fails before anything starts), then
/// starts the worker threads, which begin sending at `window.start`.
pub fn start(plan: &Plan, window: Window, live: Arc<Live>) -> Result<Publisher, String> {
    let shared = Arc::new(Shared::new(plan));
    let threads = plan.threads.clamp(1, plan.connections);
    let mut per_thread: Vec<Vec<Slot>> = (0..threads).map(|_| Vec::new()).collect();
    for index in 0..plan.connections {
        let conn = HttpConn::connect(&plan.target)
            .map_err(|e| format!("cannot connect to {}: {e}", plan.target.addr))?;
        per_thread[index % threads].push(Slot {
            conn: Some(conn),
            index,
            issued: 0,
            inflight: VecDeque::with_capacity(MAX_PIPELINE),
            write_interest: false,
            reconnects: RECONNECTS,
        });
    }
    let mut handles = Vec::new();
    for (t, slots) in per_thread.into_iter().enumerate() {
        let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
        for (i, slot) in slots.iter().enumerate() {
            let fd = slot.conn.as_ref().expect("just connected").fd();
            poller
                .add(fd, i, false)
                .map_err(|e| format!("epoll: {e}"))?;
        }
        let worker = Worker {
            books: Books {
                out: Outcome::new(shared.topics.len()),
                ops: 0,
                errors: 0,
            },
            shared: Arc::clone(&shared),
            window,
            poller,
            slots,
            scratch: Vec::with_capacity(64 * 1024),
            live: Arc::clone(&live),
        };
        let handle = std::thread::Builder::new()
            .name(format!("publisher-{t}"))
            .spawn(move || worker.run())
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    Ok(Publisher {
        threads: handles,
        topics: plan.topics.len(),
    })
}

impl Publisher {
    /// Waits for the workers (they stop at the window's end, after draining) and merges.
    pub fn join(self) -> Outcome {
        let mut total = Outcome::new(self.topics);
        for handle in self.threads {
            match handle.join() {
                Ok(part) => total.merge(part),
                Err(_) => total.note(|| "a publisher thread panicked".into()),
            }
        }
        total
    }
}

struct Worker {
    shared: Arc<Shared>,
    window: Window,
    poller: Poller,
    slots: Vec<Slot>,
    scratch: Vec<u8>,
    books: Books,
    live: Arc<Live>,
}

/// What a worker has booked: its outcome, and the counts not yet added to `Live`.
struct Books {
    out: Outcome,
    ops: u64,
    errors: u64,
}

impl Worker {
    fn run(mut self) -> Outcome {
        precise_timers();
        sleep_until(self.window.start);
        let drain_until = self.window.end + DRAIN_NS;
        loop {
            let now = now_ns();
            let sending = now < self.window.end;
            // An open-loop schedule owes every request due before the end, also when this
            // thread wakes up late: dropping them would hide the stall that delayed it.
            let due_by = match self.shared.interval_ns {
                _ if sending => Some(now),
                Some(_) => Some(self.window.end - 1),
                None => None,
            };
            let mut wake = if sending {
                self.window.end
            } else {
                drain_until
            };
            for i in 0..self.slots.len() {
                if let Some(by) = due_by {
                    if let Some(due) = self.send_due(i, by) {
                        wake = wake.min(due);
                    }
                }
                self.flush(i);
            }
            if !sending
                && (now >= drain_until
                    || self
                        .slots
                        .iter()
                        .all(|s| s.conn.is_none() || s.inflight.is_empty()))
            {
                break;
            }
            self.live.add(self.books.ops, self.books.errors);
            (self.books.ops, self.books.errors) = (0, 0);
            let timeout = Duration::from_nanos(wake.saturating_sub(now_ns()));
            let ready = match self.poller.wait(Some(timeout)) {
                Ok(n) => n,
                Err(e) => {
                    self.books.out.note(|| format!("epoll_wait: {e}"));
                    break;
                }
            };
            for k in 0..ready {
                let event = self.poller.event(k);
                if event.writable {
                    self.flush(event.token);
                }
                if event.readable {
                    self.receive(event.token);
                }
            }
        }
        for i in 0..self.slots.len() {
            let abandoned: Vec<Pending> = self.slots[i].inflight.drain(..).collect();
            for p in abandoned {
                self.failed(p, || "no answer within 5 s of the end of the run".into());
            }
        }
        self.live.add(self.books.ops, self.books.errors);
        self.books.out
    }

    /// Queues every request of slot `i` that is due; returns when the next one is due.
    fn send_due(&mut self, i: usize, now: u64) -> Option<u64> {
        let slot = &mut self.slots[i];
        let conn = slot.conn.as_mut()?;
        loop {
            let intended = match self.shared.interval_ns {
                None if slot.inflight.is_empty() => now,
                None => return None,
                Some(interval) => {
                    self.shared
                        .intended(interval, self.window.start, slot.index, slot.issued)
                }
            };
            if intended >= self.window.end {
                return None;
            }
            if intended > now {
                return Some(intended);
            }
            if slot.inflight.len() >= MAX_PIPELINE {
                return None;
            }
            let pending = self.shared.push_request(
                conn.out(),
                &mut self.scratch,
                slot.index,
                slot.issued,
                intended,
            );
            slot.inflight.push_back(pending);
            slot.issued += 1;
        }
    }

    fn flush(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush() {
            return self.broken(i, format!("write: {e}"));
        }
        let want = conn.has_output();
        if want != slot.write_interest {
            slot.write_interest = want;
            let _ = self.poller.modify(conn.fd(), i, want);
        }
    }

    fn receive(&mut self, i: usize) {
        let Some(conn) = self.slots[i].conn.as_mut() else {
            return;
        };
        let fill = conn.fill();
        loop {
            let slot = &mut self.slots[i];
            let conn = slot.conn.as_mut().expect("checked above");
            let response = match conn.next_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return self.broken(i, e),
            };
            let Some(pending) = slot.inflight.pop_front() else {
                return self.broken(i, "a response nobody asked for".into());
            };
            let now = now_ns();
            self.books.account(
                &self.shared,
                &self.window,
                pending,
                response.status,
                response.body,
                now,
            );
        }
        match fill {
            Ok(Fill::Open) => {}
            Ok(Fill::Closed) => self.broken(i, "the relay closed the connection".into()),
            Err(e) => self.broken(i, format!("read: {e}")),
        }
    }

    /// Books a request that got no answer.
    fn failed(&mut self, p: Pending, why: impl FnOnce() -> String) {
        let books = &mut self.books;
        books.out.note(why);
        let topics = self.shared.topics.len();
        for k in 0..p.messages as usize {
            books.out.unconfirmed[(p.first_topic + k) % topics] += 1;
        }
        books.errors += p.messages;
        if self.window.measured(p.intended) {
            books.out.errors += p.messages;
            *books.out.refusals.entry("no answer".into()).or_default() += p.messages;
        }
    }

    /// The connection of slot `i` failed: its in-flight requests are errors; reconnect.
    fn broken(&mut self, i: usize, why: String) {
        let lost: Vec<Pending> = self.slots[i].inflight.drain(..).collect();
        let had_requests = !lost.is_empty();
        for p in lost {
            self.failed(p, || why.clone());
        }
        if !had_requests {
            self.books.out.note(|| why.clone());
        }
        let slot = &mut self.slots[i];
        if let Some(old) = slot.conn.take() {
            self.poller.delete(old.fd());
        }
        slot.write_interest = false;
        if slot.reconnects == 0 || now_ns() >= self.window.end {
            return;
        }
        slot.reconnects -= 1;
        if let Ok(conn) = HttpConn::connect(&self.shared.target) {
            if self.poller.add(conn.fd(), i, false).is_ok() {
                slot.conn = Some(conn);
            }
        }
    }
}

impl Books {
    /// Books one answered request.
    fn account(
        &mut self,
        shared: &Shared,
        window: &Window,
        p: Pending,
        status: u16,
        body: &[u8],
        now: u64,
    ) {
        let out = &mut self.out;
        let topics = shared.topics.len();
        let (accepted, rejected) = match (shared.bulk, status) {
            (None, 200..=299) => {
                out.published[p.first_topic] += 1;
                (1, 0)
            }
            (Some(_), 200..=299) => {
                let accepted = number_after(body, br#""accepted":"#).unwrap_or(0);
                let rejected = p.messages.saturating_sub(accepted);
                if rejected == 0 {
                    for k in 0..p.messages as usize {
                        out.published[(p.first_topic + k) % topics] += 1;
                    }
                } else {
                    // Item k of the results is message k of the request, topic first + k.
                    let mut rest = body;
                    let mut k = 0;
                    while let Some(at) = find(rest, br#""status":""#) {
                        rest = &rest[at + 10..];
                        if rest.starts_with(b"accepted") {
                            out.published[(p.first_topic + k) % topics] += 1;
                        }
                        k += 1;
                    }
                    out.note(|| format!("bulk item rejected: {}", excerpt(body)));
                }
                (accepted, rejected)
            }
            _ => {
                out.note(|| format!("HTTP {status}: {}", excerpt(body)));
                (0, p.messages)
            }
        };
        self.ops += accepted;
        self.errors += rejected;
        if window.measured(p.intended) {
            out.messages += accepted;
            out.errors += rejected;
            if rejected > 0 {
                *out.refusals.entry(refusal(status, body)).or_default() += rejected;
            }
            if rejected == 0 {
                out.latency.record_ns(now.saturating_sub(p.intended));
            }
        }
    }
}

/// `"<status> <code>"` of a refusal: the first `code` in the body (a bulk answer's first
/// rejected item's), or the status alone.
fn refusal(status: u16, body: &[u8]) -> String {
    let code = find(body, br#""code":""#).and_then(|at| {
        let rest = &body[at + 8..];
        let end = rest.iter().position(|&b| b == b'"')?;
        std::str::from_utf8(&rest[..end]).ok()
    });
    match code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}
