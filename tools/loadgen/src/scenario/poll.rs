//! `poll`: long-poll consumers fed by an open-loop publisher.
//!
//! Each consumer loops on `GET /api/v1/poll` over its own keep-alive connection, starting
//! from `since=earliest` (topics are fresh for each run) and continuing from the last
//! message ID it got, so no message falls between two polls. Consumer threads drive many
//! connections each, like the publisher.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde::Deserialize;
use serde_json::json;

use super::{feeding_publisher, plural, rate_words};
use crate::args::{Common, Load};
use crate::clock::{now_ns, sleep_until, Window};
use crate::http::{Fill, HttpConn, Target};
use crate::poller::Poller;
use crate::progress::{watch, Live};
use crate::publisher;
use crate::report::{Latency, Row, Summary};

const STRAGGLERS_NS: u64 = 2_000_000_000;
/// Messages per poll reply at most (the relay's maximum).
const LIMIT: u32 = 1000;

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    messages: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    message_id: &'a str,
    payload: Stamp,
}

#[derive(Deserialize)]
struct Stamp {
    t_ns: u64,
}

struct Part {
    delivery: Latency,
    poll: Latency,
    measured_messages: u64,
    measured_polls: u64,
    empty_polls: u64,
    errors: u64,
    /// (consumer number, messages over the whole run).
    received: Vec<(usize, u64)>,
    first_error: Option<String>,
}

pub fn run(
    common: &Common,
    load: &Load,
    consumers: usize,
    poll_timeout: u64,
) -> Result<Summary, String> {
    let topics = common.topics(load.topics);
    let threads = common.threads().min(consumers);
    let live = Live::new();
    let (ready_tx, ready_rx) = unbounded::<Result<(), String>>();
    let (window_tx, window_rx) = bounded::<Window>(threads);
    let (part_tx, part_rx) = unbounded::<Part>();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for t in 0..threads {
        let setup = Setup {
            target: common.target.clone(),
            token: common.token.clone(),
            consumers: (t..consumers)
                .step_by(threads)
                .map(|i| (i, topics[i % topics.len()].clone()))
                .collect(),
            poll_timeout,
            live: Arc::clone(&live),
            ready: ready_tx.clone(),
            window: window_rx.clone(),
            done: part_tx.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("consumers-{t}"))
                .spawn(move || setup.run())
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    drop((ready_tx, part_tx));
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a consumer thread died".into())),
        }
    }
    if let Some(e) = failure {
        drop(window_tx);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }

    let window = Window::starting_soon(common.warmup, common.duration);
    for _ in 0..threads {
        window_tx
            .send(window)
            .expect("consumer threads wait for the window");
    }
    let plan = feeding_publisher(common, load, &topics);
    let publisher = match publisher::start(&plan, window, Live::new()) {
        Ok(p) => p,
        Err(e) => {
            live.stop();
            return Err(e);
        }
    };
    let cpu = watch(&window, &live, "msgs", common.server_pid);
    let published = publisher.join();

    let mut per_topic = vec![0u64; topics.len()];
    for i in 0..consumers {
        per_topic[i % topics.len()] += 1;
    }
    let expected: u64 = published
        .published
        .iter()
        .zip(&per_topic)
        .map(|(p, c)| p * c)
        .sum();
    let give_up = now_ns() + STRAGGLERS_NS;
    while live.ops() < expected && now_ns() < give_up {
        sleep_until(now_ns() + 5_000_000);
    }
    live.stop();

    let (mut delivery, mut poll) = (Latency::new(), Latency::new());
    let (mut measured, mut polls, mut empty, mut errors) = (0, 0, 0, 0);
    let (mut received, mut lost, mut duplicates) = (0, 0, 0);
    let mut first_error = published.first_error.clone();
    for part in part_rx.iter() {
        delivery.merge(&part.delivery);
        poll.merge(&part.poll);
        measured += part.measured_messages;
        polls += part.measured_polls;
        empty += part.empty_polls;
        errors += part.errors;
        for (i, got) in part.received {
            let want = published.published[i % topics.len()];
            received += got;
            lost += want.saturating_sub(got);
            // Unconfirmed publishes may have been delivered; only beyond them is a
            // delivery a duplicate.
            duplicates += got.saturating_sub(want + published.unconfirmed[i % topics.len()]);
        }
        if first_error.is_none() {
            first_error = part.first_error;
        }
    }
    for h in handles {
        let _ = h.join();
    }

    let secs = window.measured_secs();
    let published_total = published.published_total();
    let unconfirmed = published.unconfirmed_total();
    let setup = format!(
        "{} over {} (poll timeout {poll_timeout} s), publisher at {} on {}",
        plural(consumers, "consumer"),
        plural(topics.len(), "topic"),
        rate_words(load.rate),
        plural(load.connections, "connection")
    );
    Ok(Summary {
        scenario: "poll",
        setup,
        measured_s: secs,
        warmup_s: common.warmup.as_secs_f64(),
        rows: vec![
            Row {
                name: "delivery",
                count: measured,
                errors: lost,
                rate: measured as f64 / secs,
                latency: delivery,
            },
            Row {
                name: "poll",
                count: polls,
                errors,
                rate: polls as f64 / secs,
                latency: poll,
            },
            Row {
                name: "publish",
                count: published.messages,
                errors: published.errors,
                rate: published.messages as f64 / secs,
                latency: published.latency,
            },
        ],
        extras: vec![
            ("published", json!(published_total)),
            ("expected", json!(expected)),
            ("delivered", json!(received)),
            ("received", json!(received)),
            ("lost", json!(lost)),
            ("unconfirmed", json!(unconfirmed)),
            ("duplicates", json!(duplicates)),
            ("empty_polls", json!(empty)),
            ("consumers", json!(consumers)),
            ("topics", json!(topics.len())),
            ("target_rate", json!(load.rate)),
        ],
        cpu,
        server_pid: common.server_pid,
        first_error,
    })
}

struct Setup {
    target: Target,
    token: String,
    consumers: Vec<(usize, String)>,
    poll_timeout: u64,
    live: Arc<Live>,
    ready: Sender<Result<(), String>>,
    window: Receiver<Window>,
    done: Sender<Part>,
}

struct Consumer {
    number: usize,
    conn: Option<HttpConn>,
    /// The request up to the cursor, and after it.
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    cursor: String,
    sent_at: u64,
    received: u64,
    write_interest: bool,
}

impl Setup {
    fn run(self) {
        let mut consumers = Vec::with_capacity(self.consumers.len());
        let poller = match self.connect_all(&mut consumers) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.ready.send(Err(e));
                return;
            }
        };
        let _ = self.ready.send(Ok(()));
        let Ok(window) = self.window.recv() else {
            return;
        };
        let part = consume(poller, &mut consumers, &window, &self.live);
        let _ = self.done.send(part);
    }

    fn connect_all(&self, consumers: &mut Vec<Consumer>) -> Result<Poller, String> {
        let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
        let suffix = format!(
            " HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.target.host, self.token
        )
        .into_bytes();
        for (number, topic) in &self.consumers {
            let conn = HttpConn::connect(self.target.addr)
                .map_err(|e| format!("cannot connect to {}: {e}", self.target.addr))?;
            poller
                .add(conn.fd(), consumers.len(), false)
                .map_err(|e| format!("epoll: {e}"))?;
            consumers.push(Consumer {
                number: *number,
                conn: Some(conn),
                prefix: format!(
                    "GET /api/v1/poll?topics={topic}&timeout={}&limit={LIMIT}&since=",
                    self.poll_timeout
                )
                .into_bytes(),
                suffix: suffix.clone(),
                cursor: "earliest".into(),
                sent_at: 0,
                received: 0,
                write_interest: false,
            });
        }
        Ok(poller)
    }
}

impl Consumer {
    fn send_poll(&mut self, poller: &Poller, token: usize) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("only live consumers poll");
        let out = conn.out();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(self.cursor.as_bytes());
        out.extend_from_slice(&self.suffix);
        self.sent_at = now_ns();
        self.flush(poller, token)
    }

    fn flush(&mut self, poller: &Poller, token: usize) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("only live consumers write");
        conn.flush().map_err(|e| format!("write: {e}"))?;
        let want = conn.has_output();
        if want != self.write_interest {
            self.write_interest = want;
            let _ = poller.modify(conn.fd(), token, want);
        }
        Ok(())
    }
}

fn consume(mut poller: Poller, consumers: &mut [Consumer], window: &Window, live: &Live) -> Part {
    let mut part = Part {
        delivery: Latency::new(),
        poll: Latency::new(),
        measured_messages: 0,
        measured_polls: 0,
        empty_polls: 0,
        errors: 0,
        received: Vec::new(),
        first_error: None,
    };
    for (i, c) in consumers.iter_mut().enumerate() {
        if let Err(e) = c.send_poll(&poller, i) {
            fail(c, &poller, &mut part, e);
        }
    }
    while !live.stopped() {
        let ready = match poller.wait(Some(Duration::from_millis(50))) {
            Ok(n) => n,
            Err(e) => {
                part.first_error.get_or_insert(format!("epoll_wait: {e}"));
                break;
            }
        };
        let mut batch = 0;
        for k in 0..ready {
            let event = poller.event(k);
            let c = &mut consumers[event.token];
            if c.conn.is_none() {
                continue;
            }
            if event.writable {
                if let Err(e) = c.flush(&poller, event.token) {
                    fail(c, &poller, &mut part, e);
                    continue;
                }
            }
            if event.readable {
                match answer(c, window, &mut part) {
                    Ok(Some(got)) => {
                        batch += got;
                        if let Err(e) = c.send_poll(&poller, event.token) {
                            fail(c, &poller, &mut part, e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => fail(c, &poller, &mut part, e),
                }
            }
        }
        live.add(batch, 0);
    }
    part.received = consumers.iter().map(|c| (c.number, c.received)).collect();
    part
}

/// Reads a consumer's socket; when its poll was answered, books it and returns how many
/// messages it carried.
fn answer(c: &mut Consumer, window: &Window, part: &mut Part) -> Result<Option<u64>, String> {
    let conn = c.conn.as_mut().expect("checked by the caller");
    let fill = conn.fill().map_err(|e| format!("read: {e}"))?;
    let Some(response) = conn.next_response()? else {
        return match fill {
            Fill::Open => Ok(None),
            Fill::Closed => Err("the relay closed the connection".into()),
        };
    };
    let now = now_ns();
    if response.status != 200 {
        let body = String::from_utf8_lossy(&response.body[..response.body.len().min(300)]);
        return Err(format!("poll: HTTP {}: {body}", response.status));
    }
    let reply: Reply = serde_json::from_slice(response.body)
        .map_err(|e| format!("poll reply is not the expected JSON: {e}"))?;
    if window.measured(c.sent_at) {
        part.poll.record_ns(now - c.sent_at);
        part.measured_polls += 1;
    }
    if reply.messages.is_empty() {
        part.empty_polls += 1;
    }
    for item in &reply.messages {
        if window.measured(item.payload.t_ns) {
            part.delivery
                .record_ns(now.saturating_sub(item.payload.t_ns));
            part.measured_messages += 1;
        }
    }
    if let Some(last) = reply.messages.last() {
        c.cursor.clear();
        c.cursor.push_str(last.message_id);
    }
    let got = reply.messages.len() as u64;
    c.received += got;
    Ok(Some(got))
}

fn fail(c: &mut Consumer, poller: &Poller, part: &mut Part, why: String) {
    if let Some(conn) = c.conn.take() {
        poller.delete(conn.fd());
    }
    part.errors += 1;
    part.first_error
        .get_or_insert_with(|| format!("consumer {}: {why}", c.number));
}
