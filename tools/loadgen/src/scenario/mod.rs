//! The scenarios, one module each; this module dispatches and holds what they share.

mod connections;
mod delivery;
mod poll;
mod publish;

use crate::args::{Common, Load, Options, Scenario};
use crate::publisher::{Payload, Plan};
use crate::report::Summary;

pub fn run(options: &Options) -> Result<Summary, String> {
    let common = &options.common;
    match &options.scenario {
        Scenario::Publish { load, bulk } => publish::run(common, load, *bulk),
        Scenario::Fanout { load, subscribers } => {
            delivery::run(common, load, *subscribers, delivery::Kind::Fanout)
        }
        Scenario::E2e { load, subscribers } => {
            delivery::run(common, load, *subscribers, delivery::Kind::E2e)
        }
        Scenario::Connections {
            count,
            rate,
            sources,
        } => connections::run(common, *count, *rate, *sources),
        Scenario::Poll {
            load,
            consumers,
            poll_timeout,
        } => poll::run(common, load, *consumers, *poll_timeout),
    }
}

/// The publisher that feeds the receiving scenarios: stamped payloads on one thread.
fn feeding_publisher(common: &Common, load: &Load, topics: &[String]) -> Plan {
    Plan {
        target: common.target.clone(),
        token: common.token.clone(),
        connections: load.connections,
        threads: 1,
        rate: load.rate,
        bulk: None,
        payload: Payload::Stamped(load.payload_bytes),
        topics: topics.to_vec(),
    }
}

fn rate_words(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{r} msg/s"),
        None => "closed loop".into(),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
