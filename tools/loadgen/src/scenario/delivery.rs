//! `fanout` and `e2e`: WebSocket subscribers fed by an open-loop publisher.
//!
//! Both are one measurement seen from two sides: every delivery carries its intended send
//! time, so each subscriber records publish→receive latency, and counts what it received
//! against what the publisher got acknowledged. `fanout` is about the delivery rate and
//! losses with many subscribers, `e2e` about the latency with few; the defaults differ.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{plural, rate_words, settle, start_feeding, Crew, Tally};
use crate::args::{Common, Load};
use crate::clock::{now_ns, Window};
use crate::http::number_after;
use crate::poller::Poller;
use crate::progress::{watch, Live};
use crate::report::{Latency, Row, Summary};
use crate::ws::{self, Drained, WsConn};

/// Input buffer per subscriber: room for a burst of small deliveries per read.
const READ_BUFFER: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Fanout,
    E2e,
}

/// One thread's subscribers, connected and subscribed.
struct Subscribers {
    poller: Poller,
    subs: Vec<Sub>,
    live: Arc<Live>,
}

struct Sub {
    number: usize,
    ws: Option<WsConn>,
    received: u64,
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
    let crew = Crew::launch(
        threads,
        "subscribers",
        |t| {
            let mine = super::clients_of(t, threads, subscribers, &topics);
            let (targets, token, live) = (
                common.subscribe_targets.clone(),
                common.token.clone(),
                live.clone(),
            );
            Box::new(move || {
                let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
                let mut subs = Vec::with_capacity(mine.len());
                for (number, topic) in mine {
                    let target = &targets[number % targets.len()];
                    let mut ws = ws::open(target, &token, None, READ_BUFFER)?;
                    ws.subscribe(&topic)?;
                    ws.set_nonblocking()?;
                    poller
                        .add(ws.fd(), subs.len(), false)
                        .map_err(|e| format!("epoll: {e}"))?;
                    subs.push(Sub {
                        number,
                        ws: Some(ws),
                        received: 0,
                    });
                }
                Ok(Subscribers { poller, subs, live })
            })
        },
        receive,
    )?
    .all_ready()?;

    let window = Window::starting_soon(common.warmup, common.duration);
    crew.go(window);
    let publisher = start_feeding(common, load, &topics, window, &live)?;
    let cpu = watch(&window, &live, "deliveries", common.server_pid);
    let published = publisher.join();
    settle(&live, Tally::expected(&published, subscribers));

    let mut latency = Latency::new();
    let mut tally = Tally::default();
    let (mut measured, mut dropped) = (0, 0);
    let mut first_error = published.first_error.clone();
    for part in crew.parts() {
        latency.merge(&part.latency);
        measured += part.measured;
        dropped += part.dropped;
        for (i, got) in part.received {
            tally.add(&published, i, got);
        }
        first_error = first_error.or(part.first_error);
    }

    let secs = window.measured_secs();
    let (scenario, what) = match kind {
        Kind::Fanout => ("fanout", "fan-out"),
        Kind::E2e => ("e2e", "publish -> receive"),
    };
    let mut setup = format!(
        "{what}, {} over {}, publisher at {} on {}",
        plural(subscribers, "subscriber"),
        plural(topics.len(), "topic"),
        rate_words(load.rate),
        plural(load.connections, "connection")
    );
    let relays = &common.subscribe_targets;
    if relays.len() > 1 || common.publish_target.addr != common.target.addr {
        setup += &format!(
            "; publishing on {}, subscribers on {}",
            common.publish_target.host,
            relays
                .iter()
                .map(|t| t.host.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let extras = vec![
        ("published", json!(published.published_total())),
        ("expected", json!(tally.expected)),
        ("delivered", json!(tally.received)),
        ("delivered_unconfirmed", json!(tally.from_unconfirmed)),
        ("lost", json!(tally.lost)),
        ("unconfirmed", json!(published.unconfirmed_total())),
        ("duplicates", json!(tally.duplicates)),
        ("dropped_subscribers", json!(dropped)),
        ("subscribers", json!(subscribers)),
        ("topics", json!(topics.len())),
        ("target_rate", json!(load.rate)),
        ("publish_url", json!(common.publish_target.host)),
        (
            "subscribe_urls",
            json!(relays.iter().map(|t| t.host.as_str()).collect::<Vec<_>>()),
        ),
    ];
    Ok(Summary {
        scenario,
        setup,
        measured_s: secs,
        warmup_s: common.warmup.as_secs_f64(),
        rows: vec![
            Row {
                name: "delivery",
                per: "delivery",
                count: measured,
                errors: tally.lost + dropped,
                rate: measured as f64 / secs,
                latency,
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
        extras,
        cpu,
        server_pid: common.server_pid,
        first_error,
        duplicates: tally.duplicates,
        failure: None,
    })
}

/// Reads deliveries until the run stops.
fn receive(mut state: Subscribers, window: &Window) -> Part {
    let Subscribers { poller, subs, live } = &mut state;
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
