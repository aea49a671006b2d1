//! `fanout` and `e2e`: WebSocket subscribers fed by an open-loop publisher.
//!
//! Both are one measurement seen from two sides: every delivery carries its intended send
//! time, so each subscriber records publish→receive latency, and counts what it received
//! against what the publisher got acknowledged. `fanout` is about the delivery rate and
//! losses with many subscribers, `e2e` about the latency with few; the defaults differ.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde_json::json;

use super::{feeding_publisher, plural, rate_words};
use crate::args::{Common, Load};
use crate::clock::{now_ns, sleep_until, Window};
use crate::http::{number_after, Target};
use crate::poller::Poller;
use crate::progress::{watch, Live};
use crate::publisher;
use crate::report::{Latency, Row, Summary};
use crate::ws::{self, Drained, WsConn};

/// After the publisher is done, how long stragglers may take to arrive.
const STRAGGLERS_NS: u64 = 2_000_000_000;
/// Input buffer per subscriber: room for a burst of small deliveries per read.
const READ_BUFFER: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Fanout,
    E2e,
}

/// What one subscriber thread saw.
struct Part {
    latency: Latency,
    /// Deliveries of messages intended inside the measured phase.
    measured: u64,
    /// (subscriber number, deliveries over the whole run).
    received: Vec<(usize, u64)>,
    dropped: u64,
    first_error: Option<String>,
}

pub fn run(
    common: &Common,
    load: &Load,
    subscribers: usize,
    kind: Kind,
) -> Result<Summary, String> {
    let topics = common.topics(load.topics);
    let threads = common.threads().min(subscribers);
    let live = Live::new();
    let (ready_tx, ready_rx) = unbounded::<Result<(), String>>();
    let (window_tx, window_rx) = bounded::<Window>(threads);
    let (part_tx, part_rx) = unbounded::<Part>();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for t in 0..threads {
        let mine: Vec<(usize, String)> = (t..subscribers)
            .step_by(threads)
            .map(|i| (i, topics[i % topics.len()].clone()))
            .collect();
        let setup = Setup {
            target: common.target.clone(),
            token: common.token.clone(),
            subscribers: mine,
            live: Arc::clone(&live),
            ready: ready_tx.clone(),
            window: window_rx.clone(),
            done: part_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("subscribers-{t}"))
            .spawn(move || setup.run())
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    drop((ready_tx, part_tx));
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a subscriber thread died".into())),
        }
    }
    if let Some(e) = failure {
        // Dropping the window sender tells every waiting thread to close its sockets.
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
            .expect("subscriber threads wait for the window");
    }
    let plan = feeding_publisher(common, load, &topics);
    let publisher = match publisher::start(&plan, window, Live::new()) {
        Ok(p) => p,
        Err(e) => {
            live.stop();
            return Err(e);
        }
    };
    let cpu = watch(&window, &live, "deliveries", common.server_pid);
    let published = publisher.join();

    let mut per_topic = vec![0u64; topics.len()];
    for i in 0..subscribers {
        per_topic[i % topics.len()] += 1;
    }
    let expected: u64 = published
        .published
        .iter()
        .zip(&per_topic)
        .map(|(p, s)| p * s)
        .sum();
    let give_up = now_ns() + STRAGGLERS_NS;
    while live.ops() < expected && now_ns() < give_up {
        sleep_until(now_ns() + 5_000_000);
    }
    live.stop();

    let mut latency = Latency::new();
    let (mut measured, mut delivered, mut lost, mut duplicates, mut dropped) = (0, 0, 0, 0, 0);
    let mut first_error = published.first_error.clone();
    for part in part_rx.iter() {
        latency.merge(&part.latency);
        measured += part.measured;
        dropped += part.dropped;
        for (i, got) in part.received {
            let want = published.published[i % topics.len()];
            delivered += got;
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
    let (scenario, setup) = match kind {
        Kind::Fanout => ("fanout", "fan-out"),
        Kind::E2e => ("e2e", "publish -> receive"),
    };
    let setup = format!(
        "{setup}, {} over {}, publisher at {} on {}",
        plural(subscribers, "subscriber"),
        plural(topics.len(), "topic"),
        rate_words(load.rate),
        plural(load.connections, "connection")
    );
    let published_total = published.published_total();
    let unconfirmed = published.unconfirmed_total();
    Ok(Summary {
        scenario,
        setup,
        measured_s: secs,
        warmup_s: common.warmup.as_secs_f64(),
        rows: vec![
            Row {
                name: "delivery",
                count: measured,
                errors: lost + dropped,
                rate: measured as f64 / secs,
                latency,
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
            ("delivered", json!(delivered)),
            ("lost", json!(lost)),
            ("unconfirmed", json!(unconfirmed)),
            ("duplicates", json!(duplicates)),
            ("dropped_subscribers", json!(dropped)),
            ("subscribers", json!(subscribers)),
            ("topics", json!(topics.len())),
            ("target_rate", json!(load.rate)),
        ],
        cpu,
        server_pid: common.server_pid,
        first_error,
    })
}

/// One subscriber thread: its subscribers, and the channels to the coordinator.
struct Setup {
    target: Target,
    token: String,
    subscribers: Vec<(usize, String)>,
    live: Arc<Live>,
    ready: Sender<Result<(), String>>,
    window: Receiver<Window>,
    done: Sender<Part>,
}

struct Sub {
    number: usize,
    ws: Option<WsConn>,
    received: u64,
}

impl Setup {
    fn run(self) {
        let mut subs = Vec::with_capacity(self.subscribers.len());
        let poller = match self.connect_all(&mut subs) {
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
        let part = receive(poller, &mut subs, &window, &self.live);
        let _ = self.done.send(part);
    }

    fn connect_all(&self, subs: &mut Vec<Sub>) -> Result<Poller, String> {
        let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
        for (number, topic) in &self.subscribers {
            let mut ws = ws::open(&self.target, &self.token, None, READ_BUFFER)?;
            ws.subscribe(topic)?;
            ws.set_nonblocking()?;
            poller
                .add(ws.fd(), subs.len(), false)
                .map_err(|e| format!("epoll: {e}"))?;
            subs.push(Sub {
                number: *number,
                ws: Some(ws),
                received: 0,
            });
        }
        Ok(poller)
    }
}

/// Reads deliveries until told to stop.
fn receive(mut poller: Poller, subs: &mut [Sub], window: &Window, live: &Live) -> Part {
    let mut part = Part {
        latency: Latency::new(),
        measured: 0,
        received: Vec::new(),
        dropped: 0,
        first_error: None,
    };
    while !live.stopped() {
        let ready = match poller.wait(Some(Duration::from_millis(50))) {
            Ok(n) => n,
            Err(e) => {
                part.first_error = Some(format!("epoll_wait: {e}"));
                break;
            }
        };
        let mut batch = 0u64;
        for k in 0..ready {
            let sub = &mut subs[poller.event(k).token];
            let Some(ws) = sub.ws.as_mut() else {
                continue;
            };
            let mut got = 0u64;
            let drained = ws.drain(|frame| {
                if !frame.starts_with(br#"{"type":"message""#) {
                    return;
                }
                got += 1;
                if let Some(sent) = number_after(frame, br#""t_ns":"#) {
                    if window.measured(sent) {
                        part.latency.record_ns(now_ns().saturating_sub(sent));
                        part.measured += 1;
                    }
                }
            });
            sub.received += got;
            batch += got;
            if let Drained::Closed(why) = drained {
                if let Some(ws) = sub.ws.take() {
                    poller.delete(ws.fd());
                }
                part.dropped += 1;
                part.first_error
                    .get_or_insert(format!("subscriber {}: {why}", sub.number));
            }
        }
        live.add(batch, 0);
    }
    part.received = subs.iter().map(|s| (s.number, s.received)).collect();
    part
}
