//! `GET /api/v1/stats` (admin): the relay at a glance, as JSON, for the console and other
//! tools: connections and sessions, messages in and out per second, load per shard,
//! publish and delivery latency percentiles of the last second, the Valkey link, and the
//! busiest topics.
//!
//! Built from what each shard already keeps (its metrics snapshot, the [`Recent`] second its
//! tick samples, its topics' rings and its subscriber index), asked for through the mesh:
//! one round for the numbers and each shard's busiest topics, one for the subscriber
//! counts of the topics chosen. Nothing here counts anything per message.

use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use super::error::ApiError;
use super::shard::Shard;
use crate::http::{Request, Response};
use crate::metrics::{Latency, Recent, Snapshot};
use crate::rt::mesh::Answer;
use crate::rt::now_ms;
use crate::text::rfc3339;
use crate::topic::TopicLoad;

/// Topics listed unless `?topics=` asks for another number (1 to [`MAX_TOPICS`]).
const DEFAULT_TOPICS: usize = 20;
const MAX_TOPICS: usize = 100;
/// A topic's rate is its retained messages of this last stretch, per second.
const TOPIC_WINDOW_MS: u64 = 10_000;

/// What one shard contributes.
struct Part {
    snapshot: Snapshot,
    recent: Recent,
    topics: Vec<TopicLoad>,
}

#[derive(Serialize)]
struct Stats {
    timestamp: String,
    shards: usize,
    backend: &'static str,
    connections: u64,
    websocket_sessions: u64,
    sse_sessions: u64,
    parked_polls: u64,
    messages: Messages,
    latency_ms: Latencies,
    /// `null` with the memory backend.
    valkey: Option<Valkey>,
    shard_load: Vec<ShardLoad>,
    topics: Vec<TopicStats>,
}

#[derive(Serialize)]
struct Messages {
    published_total: u64,
    delivered_total: u64,
    in_per_second: f64,
    out_per_second: f64,
}

/// Percentiles of the last sampled second, in milliseconds (`null` when nothing was
/// recorded in it).
#[derive(Serialize)]
struct Latencies {
    window_seconds: f64,
    publish: Option<Percentiles>,
    delivery: Option<Percentiles>,
}

#[derive(Serialize)]
struct Percentiles {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Serialize)]
struct Valkey {
    /// Every shard's link is up.
    up: bool,
    shards_up: usize,
    backlog: u64,
    writes_total: u64,
    errors_total: u64,
}

#[derive(Serialize)]
struct ShardLoad {
    shard: usize,
    connections: u64,
    websocket_sessions: u64,
    sse_sessions: u64,
    parked_polls: u64,
    in_per_second: f64,
    out_per_second: f64,
    topics: u64,
    hot_tier_bytes: u64,
    mesh_backlog: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    valkey_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valkey_backlog: Option<u64>,
}

#[derive(Serialize)]
struct TopicStats {
    topic: String,
    per_second: f64,
    subscribers: usize,
    retained: usize,
}

pub async fn stats(shard: &Rc<Shard>, req: &Request) -> Result<Response, ApiError> {
    let wanted = match req.query_param("topics") {
        None => DEFAULT_TOPICS,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_TOPICS).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "INVALID_LIMIT",
                    format!("`topics` must be a whole number from 1 to {MAX_TOPICS}"),
                ))
            }
        },
    };
    let now = now_ms();
    let since = now.saturating_sub(TOPIC_WINDOW_MS);
    let parts = shard
        .on_every_shard(|| {
            move |s: &Rc<Shard>| {
                Answer::now(Part {
                    snapshot: s.metrics_snapshot(),
                    recent: s.metrics.recent(),
                    topics: s.topics.busiest(since, wanted),
                })
            }
        })
        .await;
    let mut busiest: Vec<TopicLoad> = parts.iter().flat_map(|p| p.topics.clone()).collect();
    busiest.sort_unstable_by(|a, b| {
        (b.recent, b.retained, &a.topic).cmp(&(a.recent, a.retained, &b.topic))
    });
    busiest.truncate(wanted);
    let names: Vec<Arc<str>> = busiest.iter().map(|t| Arc::clone(&t.topic)).collect();
    let counts = shard
        .on_every_shard(|| {
            let names = names.clone();
            move |s: &Rc<Shard>| {
                let local = s.subscribers.borrow();
                Answer::now(names.iter().map(|n| local.count(n)).collect::<Vec<_>>())
            }
        })
        .await;
    let topics = busiest
        .iter()
        .enumerate()
        .map(|(i, load)| TopicStats {
            topic: load.topic.to_string(),
            per_second: round(load.recent as f64 * 1000.0 / TOPIC_WINDOW_MS as f64),
            subscribers: counts.iter().map(|c| c[i]).sum(),
            retained: load.retained,
        })
        .collect();
    let body = serde_json::to_vec(&summarize(shard, &parts, topics, now)).unwrap_or_default();
    Ok(Response::json(200, body))
}

fn summarize(shard: &Shard, parts: &[Part], topics: Vec<TopicStats>, now: u64) -> Stats {
    let persistent = shard.store.is_persistent();
    let rate = |n: u64, recent: &Recent| {
        if recent.millis == 0 {
            0.0
        } else {
            round(n as f64 * 1000.0 / recent.millis as f64)
        }
    };
    let shard_load: Vec<ShardLoad> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let g = &p.snapshot.gauges;
            ShardLoad {
                shard: i,
                connections: g.connections,
                websocket_sessions: g.websocket_connections,
                sse_sessions: g.sse_sessions,
                parked_polls: g.polls_waiting,
                in_per_second: rate(p.recent.published, &p.recent),
                out_per_second: rate(p.recent.delivered, &p.recent),
                topics: g.topics,
                hot_tier_bytes: g.hot_tier_bytes,
                mesh_backlog: g.mesh_backlog,
                valkey_up: persistent.then_some(g.valkey_up),
                valkey_backlog: persistent.then_some(g.valkey_backlog),
            }
        })
        .collect();
    let sum = |f: fn(&Part) -> u64| parts.iter().map(f).sum::<u64>();
    let window_ms = parts.iter().map(|p| p.recent.millis).max().unwrap_or(0);
    let merged = |f: fn(&Recent) -> &Latency| {
        let mut all = Latency::new();
        for p in parts {
            all.merge(f(&p.recent));
        }
        percentiles(&all)
    };
    Stats {
        timestamp: rfc3339(now),
        shards: parts.len(),
        backend: if persistent { "valkey" } else { "memory" },
        connections: sum(|p| p.snapshot.gauges.connections),
        websocket_sessions: sum(|p| p.snapshot.gauges.websocket_connections),
        sse_sessions: sum(|p| p.snapshot.gauges.sse_sessions),
        parked_polls: sum(|p| p.snapshot.gauges.polls_waiting),
        messages: Messages {
            published_total: sum(|p| p.snapshot.counters.published),
            delivered_total: sum(|p| p.snapshot.counters.delivered),
            in_per_second: round(shard_load.iter().map(|s| s.in_per_second).sum()),
            out_per_second: round(shard_load.iter().map(|s| s.out_per_second).sum()),
        },
        latency_ms: Latencies {
            window_seconds: window_ms as f64 / 1000.0,
            publish: merged(|r| &r.publish_latency),
            delivery: merged(|r| &r.delivery_latency),
        },
        valkey: persistent.then(|| Valkey {
            up: parts.iter().all(|p| p.snapshot.gauges.valkey_up),
            shards_up: parts.iter().filter(|p| p.snapshot.gauges.valkey_up).count(),
            backlog: sum(|p| p.snapshot.gauges.valkey_backlog),
            writes_total: sum(|p| p.snapshot.counters.valkey_writes),
            errors_total: sum(|p| p.snapshot.counters.valkey_errors),
        }),
        shard_load,
        topics,
    }
}

fn percentiles(latency: &Latency) -> Option<Percentiles> {
    if latency.count() == 0 {
        return None;
    }
    let ms = |micros: u64| round(micros as f64 / 1000.0);
    Some(Percentiles {
        count: latency.count(),
        p50: ms(latency.quantile_micros(0.5)),
        p90: ms(latency.quantile_micros(0.9)),
        p99: ms(latency.quantile_micros(0.99)),
        p999: ms(latency.quantile_micros(0.999)),
        max: ms(latency.max_micros()),
    })
}

/// Three decimals: rates and milliseconds need no more, and JSON stays short.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
