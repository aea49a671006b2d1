//! `publish`: HTTP producers only; the relay's ingest rate and publish latency.

use serde_json::json;

use super::{plural, rate_words};
use crate::args::{Common, Load};
use crate::clock::Window;
use crate::progress::{watch, Live};
use crate::publisher::{self, Payload, Plan};
use crate::report::{Row, Summary};

pub fn run(common: &Common, load: &Load, bulk: Option<usize>) -> Result<Summary, String> {
    let topics = common.topics(load.topics);
    let plan = Plan {
        target: common.target.clone(),
        token: common.token.clone(),
        connections: load.connections,
        threads: common.threads(),
        rate: load.rate,
        bulk,
        payload: Payload::Fixed(load.payload_bytes),
        topics,
    };
    let live = Live::new();
    let window = Window::starting_soon(common.warmup, common.duration);
    let publisher = publisher::start(&plan, window, live.clone())?;
    let cpu = watch(&window, &live, "msgs", common.server_pid);
    let out = publisher.join();

    let secs = window.measured_secs();
    let setup = format!(
        "{} on {} thread(s), {}, {}, {}, {}-byte payloads",
        plural(load.connections, "connection"),
        common.threads().min(load.connections),
        rate_words(load.rate),
        match bulk {
            Some(n) => format!("bulk POSTs of {n}"),
            None => "single-message POSTs".into(),
        },
        plural(load.topics, "topic"),
        load.payload_bytes
    );
    let published = out.published_total();
    Ok(Summary {
        scenario: "publish",
        setup,
        measured_s: secs,
        warmup_s: common.warmup.as_secs_f64(),
        rows: vec![Row {
            name: "publish",
            per: "message acknowledged",
            count: out.messages,
            errors: out.errors,
            rate: out.messages as f64 / secs,
            latency: out.latency,
        }],
        extras: vec![
            ("published", json!(published)),
            (
                "requests_per_s",
                json!((out.messages as f64 / secs / bulk.unwrap_or(1) as f64).round()),
            ),
            ("connections", json!(load.connections)),
            ("target_rate", json!(load.rate)),
            ("bulk", json!(bulk)),
            ("refusals", json!(out.refusals)),
        ],
        cpu,
        server_pid: common.server_pid,
        first_error: out.first_error,
        duplicates: 0,
        failure: None,
    })
}
