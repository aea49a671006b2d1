//! `poll`: long-poll consumers fed by an open-loop publisher.
//!
//! Each consumer loops on `GET /api/v1/poll` over its own keep-alive connection, starting
//! from `since=earliest` (topics are fresh for each run) and continuing from the last
//! message ID it got, so no message falls between two polls. Consumer threads drive many
//! connections each, like the publisher.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{plural, rate_words, settle, start_feeding, Crew, Tally};
use crate::args::{Common, Load};
use crate::clock::{now_ns, Window};
use crate::http::{Fill, HttpConn};
use crate::poller::Poller;
use crate::progress::{watch, Live};
use crate::report::{Latency, Row, Summary};

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
    let crew = Crew::launch(
        threads,
        "consumers",
        |t| {
            let mine = super::clients_of(t, threads, consumers, &topics);
            let (target, live) = (common.target.clone(), live.clone());
            let suffix = format!(
                " HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                target.host, common.token
            )
            .into_bytes();
            Box::new(move || {
                let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
                let mut list = Vec::with_capacity(mine.len());
                for (number, topic) in mine {
                    let conn = HttpConn::connect(&target)
                        .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
                    poller
                        .add(conn.fd(), list.len(), false)
                        .map_err(|e| format!("epoll: {e}"))?;
                    list.push(Consumer {
                        number,
                        conn: Some(conn),
                        prefix: format!(
                            "GET /api/v1/poll?topics={topic}&timeout={poll_timeout}&limit={LIMIT}&since="
                        )
                        .into_bytes(),
                        suffix: suffix.clone(),
                        cursor: "earliest".into(),
                        sent_at: 0,
                        received: 0,
                        write_interest: false,
                    });
                }
                Ok(Consumers {
                    poller,
                    list,
                    live,
                })
            })
        },
        consume,
    )?
    .all_ready()?;

    let window = Window::starting_soon(common.warmup, common.duration);
    crew.go(window);
    let publisher = start_feeding(common, load, &topics, window, &live)?;
    let cpu = watch(&window, &live, "msgs", common.server_pid);
    let published = publisher.join();
    settle(&live, Tally::expected(&published, consumers));

    let (mut delivery, mut poll) = (Latency::new(), Latency::new());
    let (mut measured, mut polls, mut empty, mut errors) = (0, 0, 0, 0);
    let mut tally = Tally::default();
    let mut first_error = published.first_error.clone();
    for part in crew.parts() {
        delivery.merge(&part.delivery);
        poll.merge(&part.poll);
        measured += part.measured_messages;
        polls += part.measured_polls;
        empty += part.empty_polls;
        errors += part.errors;
        for (i, got) in part.received {
            tally.add(&published, i, got);
        }
        first_error = first_error.or(part.first_error);
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
                per: "delivery",
                count: measured,
                errors: tally.lost,
                rate: measured as f64 / secs,
                latency: delivery,
            },
            Row {
                name: "poll",
                per: "poll answered",
                count: polls,
                errors,
                rate: polls as f64 / secs,
                latency: poll,
            },
            Row {
                name: "publish",
                per: "message acknowledged",
                count: published.messages,
                errors: published.errors,
                rate: published.messages as f64 / secs,
                latency: published.latency,
            },
        ],
        extras: vec![
            ("published", json!(published_total)),
            ("expected", json!(tally.expected)),
            ("delivered", json!(tally.received)),
            ("received", json!(tally.received)),
            ("delivered_unconfirmed", json!(tally.from_unconfirmed)),
            ("lost", json!(tally.lost)),
            ("unconfirmed", json!(unconfirmed)),
            ("duplicates", json!(tally.duplicates)),
            ("empty_polls", json!(empty)),
            ("consumers", json!(consumers)),
            ("topics", json!(topics.len())),
            ("target_rate", json!(load.rate)),
        ],
        cpu,
        server_pid: common.server_pid,
        first_error,
        duplicates: tally.duplicates,
        failure: None,
    })
}

/// One thread's consumers, connected.
struct Consumers {
    poller: Poller,
    list: Vec<Consumer>,
    live: Arc<Live>,
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

/// Polls until the run stops.
fn consume(mut state: Consumers, window: &Window) -> Part {
    let Consumers {
        poller,
        list: consumers,
        live,
    } = &mut state;
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
        if let Err(e) = c.send_poll(poller, i) {
            fail(c, poller, &mut part, e);
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
                if let Err(e) = c.flush(poller, event.token) {
                    fail(c, poller, &mut part, e);
                    continue;
                }
            }
            if event.readable {
                match answer(c, window, &mut part) {
                    Ok(Some(got)) => {
                        batch += got;
                        if let Err(e) = c.send_poll(poller, event.token) {
                            fail(c, poller, &mut part, e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => fail(c, poller, &mut part, e),
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
