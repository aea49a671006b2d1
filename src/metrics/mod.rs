//! Metrics: per-shard counters and latency histograms, merged only when scraped.
//!
//! Each shard owns one [`ShardMetrics`] and updates it with plain `Cell` arithmetic on its
//! own thread: no atomics, no locks on the hot path. `GET /metrics` asks every shard for a
//! [`Snapshot`] through the mesh, merges them and renders the Prometheus text format
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>). Histograms are
//! HdrHistograms in microseconds, exposed as Prometheus histograms with fixed buckets.
//!
//! Each shard's tick also keeps its [`Recent`] second (messages in and out, the latencies
//! of that second) for `GET /api/v1/stats`: differences of the same counters and
//! histograms, taken once a second, so it costs nothing per message.

use std::cell::{Cell, RefCell};
use std::fmt::Write;

use hdrhistogram::Histogram;

/// Bucket upper bounds in seconds, from 50 µs to 10 s.
const BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Largest recordable latency (µs); longer ones are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency distribution in microseconds, with an exact sum for `_sum`.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    sum_micros: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("static histogram bounds"),
            sum_micros: 0,
        }
    }

    pub fn record(&mut self, micros: u64) {
        let micros = micros.clamp(1, MAX_MICROS);
        // Within bounds by the clamp above, so recording cannot fail.
        let _ = self.hist.record(micros);
        self.sum_micros += micros;
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
        self.sum_micros += other.sum_micros;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// What was recorded since `earlier`, a copy of this distribution taken before.
    fn since(&self, earlier: &Latency) -> Latency {
        let mut window = self.clone();
        // `earlier` holds a subset of these counts, so nothing can underflow.
        if window.hist.subtract(&earlier.hist).is_err() {
            window.hist.reset();
        }
        window.sum_micros = window.sum_micros.saturating_sub(earlier.sum_micros);
        window
    }

    /// The largest recorded value, in microseconds.
    pub fn max_micros(&self) -> u64 {
        self.hist.max()
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

/// Requests answered, by route and status.
type RequestCounts = Vec<(&'static str, u16, u64)>;

/// One shard's instruments. Only its own shard touches it.
pub struct ShardMetrics {
    pub published: Cell<u64>,
    pub delivered: Cell<u64>,
    pub expired: Cell<u64>,
    pub dropped: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub slow_consumer_disconnects: Cell<u64>,
    pub websocket_connections: Cell<u64>,
    pub sse_sessions: Cell<u64>,
    pub polls_waiting: Cell<u64>,
    pub valkey_writes: Cell<u64>,
    pub valkey_errors: Cell<u64>,
    /// Pipelines whose `WAIT` counted fewer replicas than `storage.min_replicas`.
    pub valkey_replica_timeouts: Cell<u64>,
    /// Reconnects that found a Valkey server without a sentinel key seen there before.
    pub valkey_data_loss: Cell<u64>,
    /// Valkey Cluster answers `MOVED` and `ASK` that the router followed.
    pub valkey_moved: Cell<u64>,
    pub valkey_asked: Cell<u64>,
    /// Valkey Cluster slot maps read.
    pub valkey_map_refreshes: Cell<u64>,
    /// Topic entries the owner dropped from memory (mirrors the table's count).
    pub topics_dropped: Cell<u64>,
    /// Topics read back from the persistent tier on demand.
    pub topic_loads: Cell<u64>,
    /// TLS handshakes on the listener that failed or ran out of time.
    pub tls_handshake_failures: Cell<u64>,
    /// Cluster mode: gaps in a topic's announcements read back from its stream, and
    /// returns of the pub/sub connection (after which every listened topic is read).
    pub cluster_gaps: Cell<u64>,
    pub cluster_resumes: Cell<u64>,
    /// Cluster mode, on the directory shard: other nodes' account log entries applied
    /// here, loads of all account state (at start, after falling behind the log or after a
    /// commit whose outcome is unknown), and commits Valkey refused because another node
    /// changed the records first.
    pub cluster_account_entries: Cell<u64>,
    pub cluster_account_reloads: Cell<u64>,
    pub cluster_account_refusals: Cell<u64>,
    /// Publish requests refused with `OVERLOADED` by the shard that read them.
    pub shed_requests: Cell<u64>,
    /// Publish batches refused with `OVERLOADED` by their topics' owner shard.
    pub shed_at_owner: Cell<u64>,
    requests: RefCell<RequestCounts>,
    pub publish_latency: RefCell<Latency>,
    pub delivery_latency: RefCell<Latency>,
    pub valkey_latency: RefCell<Latency>,
    /// Cluster mode: a message's publishing (its timestamp, on the publishing node's clock)
    /// to its announcement heard here.
    pub announce_lag: RefCell<Latency>,
    /// The state at the start of the second being sampled, and the last full second.
    sampled: RefCell<Sample>,
    recent: RefCell<Recent>,
}

/// One shard's last full second, as its tick sampled it.
#[derive(Clone, Default)]
pub struct Recent {
    /// How long the sample really lasted (a tick or so over a second).
    pub millis: u64,
    pub published: u64,
    pub delivered: u64,
    pub publish_latency: Latency,
    pub delivery_latency: Latency,
}

/// The counters and histograms at the start of a sample.
#[derive(Default)]
struct Sample {
    at_ms: u64,
    published: u64,
    delivered: u64,
    publish_latency: Option<Latency>,
    delivery_latency: Option<Latency>,
}

/// How long one [`Recent`] sample lasts.
const SAMPLE_MS: u64 = 1000;

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            published: Cell::new(0),
            delivered: Cell::new(0),
            expired: Cell::new(0),
            dropped: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            slow_consumer_disconnects: Cell::new(0),
            websocket_connections: Cell::new(0),
            sse_sessions: Cell::new(0),
            polls_waiting: Cell::new(0),
            valkey_writes: Cell::new(0),
            valkey_errors: Cell::new(0),
            valkey_replica_timeouts: Cell::new(0),
            valkey_data_loss: Cell::new(0),
            valkey_moved: Cell::new(0),
            valkey_asked: Cell::new(0),
            valkey_map_refreshes: Cell::new(0),
            topics_dropped: Cell::new(0),
            topic_loads: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            cluster_gaps: Cell::new(0),
            cluster_resumes: Cell::new(0),
            cluster_account_entries: Cell::new(0),
            cluster_account_reloads: Cell::new(0),
            cluster_account_refusals: Cell::new(0),
            shed_requests: Cell::new(0),
            shed_at_owner: Cell::new(0),
            requests: RefCell::new(Vec::new()),
            publish_latency: RefCell::new(Latency::new()),
            delivery_latency: RefCell::new(Latency::new()),
            valkey_latency: RefCell::new(Latency::new()),
            announce_lag: RefCell::new(Latency::new()),
            sampled: RefCell::new(Sample::default()),
            recent: RefCell::new(Recent::default()),
        }
    }
}

pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// Holds a gauge one higher for as long as it lives (an open session, a parked poll).
pub struct Gauge<'a>(&'a Cell<u64>);

impl<'a> Gauge<'a> {
    pub fn inc(cell: &'a Cell<u64>) -> Self {
        add(cell, 1);
        Gauge(cell)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl ShardMetrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        let mut requests = self.requests.borrow_mut();
        match requests
            .iter_mut()
            .find(|(r, s, _)| *r == route && *s == status)
        {
            Some((_, _, n)) => *n += 1,
            None => requests.push((route, status, 1)),
        }
    }

    /// Closes the current sample once it is a second old (the shard's tick calls this):
    /// it becomes [`ShardMetrics::recent`], and the next one starts.
    pub fn sample(&self, now_ms: u64) {
        let mut sampled = self.sampled.borrow_mut();
        let elapsed = now_ms.saturating_sub(sampled.at_ms);
        if elapsed < SAMPLE_MS {
            return;
        }
        let publish = self.publish_latency.borrow().clone();
        let delivery = self.delivery_latency.borrow().clone();
        let (published, delivered) = (self.published.get(), self.delivered.get());
        if sampled.at_ms > 0 {
            let window = |now: &Latency, then: &Option<Latency>| match then {
                Some(then) => now.since(then),
                None => now.clone(),
            };
            *self.recent.borrow_mut() = Recent {
                millis: elapsed,
                published: published.wrapping_sub(sampled.published),
                delivered: delivered.wrapping_sub(sampled.delivered),
                publish_latency: window(&publish, &sampled.publish_latency),
                delivery_latency: window(&delivery, &sampled.delivery_latency),
            };
        }
        *sampled = Sample {
            at_ms: now_ms,
            published,
            delivered,
            publish_latency: Some(publish),
            delivery_latency: Some(delivery),
        };
    }

    /// The last full second (zeros until the tick has sampled one).
    pub fn recent(&self) -> Recent {
        self.recent.borrow().clone()
    }

    /// A copy to send to the scraping shard; `gauges` and `primaries` (each Valkey primary
    /// and whether the shard's connection to it is up) are read by the caller from the
    /// state it owns (topics, rings, queues, links).
    pub fn snapshot(&self, gauges: Gauges, primaries: Vec<(String, bool)>) -> Snapshot {
        Snapshot {
            counters: Counters {
                published: self.published.get(),
                delivered: self.delivered.get(),
                expired: self.expired.get(),
                dropped: self.dropped.get(),
                bytes_in: self.bytes_in.get(),
                bytes_out: self.bytes_out.get(),
                slow_consumer_disconnects: self.slow_consumer_disconnects.get(),
                valkey_writes: self.valkey_writes.get(),
                valkey_errors: self.valkey_errors.get(),
                valkey_replica_timeouts: self.valkey_replica_timeouts.get(),
                valkey_data_loss: self.valkey_data_loss.get(),
                valkey_moved: self.valkey_moved.get(),
                valkey_asked: self.valkey_asked.get(),
                valkey_map_refreshes: self.valkey_map_refreshes.get(),
                topics_dropped: self.topics_dropped.get(),
                topic_loads: self.topic_loads.get(),
                tls_handshake_failures: self.tls_handshake_failures.get(),
                cluster_gaps: self.cluster_gaps.get(),
                cluster_resumes: self.cluster_resumes.get(),
                cluster_account_entries: self.cluster_account_entries.get(),
                cluster_account_reloads: self.cluster_account_reloads.get(),
                cluster_account_refusals: self.cluster_account_refusals.get(),
                shed_requests: self.shed_requests.get(),
                shed_at_owner: self.shed_at_owner.get(),
            },
            gauges: Gauges {
                websocket_connections: self.websocket_connections.get(),
                sse_sessions: self.sse_sessions.get(),
                polls_waiting: self.polls_waiting.get(),
                ..gauges
            },
            requests: self.requests.borrow().clone(),
            primaries,
            pubsub_connections: Vec::new(),
            publish_latency: self.publish_latency.borrow().clone(),
            delivery_latency: self.delivery_latency.borrow().clone(),
            valkey_latency: self.valkey_latency.borrow().clone(),
            announce_lag: self.announce_lag.borrow().clone(),
        }
    }
}

#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub published: u64,
    pub delivered: u64,
    pub expired: u64,
    pub dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_consumer_disconnects: u64,
    pub valkey_writes: u64,
    pub valkey_errors: u64,
    pub valkey_replica_timeouts: u64,
    pub valkey_data_loss: u64,
    pub valkey_moved: u64,
    pub valkey_asked: u64,
    pub valkey_map_refreshes: u64,
    pub topics_dropped: u64,
    pub topic_loads: u64,
    pub tls_handshake_failures: u64,
    pub cluster_gaps: u64,
    pub cluster_resumes: u64,
    pub cluster_account_entries: u64,
    pub cluster_account_reloads: u64,
    pub cluster_account_refusals: u64,
    pub shed_requests: u64,
    pub shed_at_owner: u64,
}

#[derive(Clone, Copy, Default, Debug)]
pub struct Gauges {
    pub connections: u64,
    pub websocket_connections: u64,
    pub sse_sessions: u64,
    pub polls_waiting: u64,
    pub topics: u64,
    pub subscribed_topics: u64,
    pub hot_tier_bytes: u64,
    pub mesh_backlog: u64,
    pub valkey_backlog: u64,
    pub valkey_up: bool,
    /// Cluster mode: the pub/sub connection's state and the topics listened to; `None`
    /// outside cluster mode.
    pub pubsub: Option<(bool, u64)>,
    /// The longest wait the shard's work met in its last complete second (`rt::lateness`).
    pub queue_delay_micros: u64,
}

/// One shard's metrics at one instant; crosses shards by value.
#[derive(Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub gauges: Gauges,
    pub requests: RequestCounts,
    /// Each Valkey primary the shard writes to, and whether its connection is up.
    pub primaries: Vec<(String, bool)>,
    /// Cluster mode: each Valkey node the shard holds a pub/sub connection to, whether it
    /// is up, and the channels subscribed there (set by the caller after `snapshot`).
    pub pubsub_connections: Vec<(String, bool, u64)>,
    pub publish_latency: Latency,
    pub delivery_latency: Latency,
    pub valkey_latency: Latency,
    pub announce_lag: Latency,
}

/// Cluster mode's series: what keeps this node in step with the others.
fn render_nodes(out: &mut String, shards: &[Snapshot]) {
    let total = |f: fn(&Counters) -> u64| shards.iter().map(|s| f(&s.counters)).sum::<u64>();
    let counters: [Series<Counters, u64>; 5] = [
        (
            "pulsar_cluster_gaps_total",
            "Gaps in a topic's announcements from other nodes, read back from its stream.",
            |c| c.cluster_gaps,
        ),
        (
            "pulsar_cluster_resumes_total",
            "Subscriptions a shard restored after a lost pub/sub connection (every listened topic is then read up to its end) or, on a Valkey Cluster, after a slot move or failover (only the topics whose channels were resubscribed).",
            |c| c.cluster_resumes,
        ),
        (
            "pulsar_cluster_account_log_entries_total",
            "Other nodes' entries of the account log applied on this node.",
            |c| c.cluster_account_entries,
        ),
        (
            "pulsar_cluster_account_reloads_total",
            "Loads of all account state from Valkey: at start, after falling behind the account \
             log's retention, or after a commit whose outcome is unknown.",
            |c| c.cluster_account_reloads,
        ),
        (
            "pulsar_cluster_account_commits_refused_total",
            "Account changes whose commit Valkey refused because another node changed the same \
             records first (e.g. the loser of a refresh-token rotation); decided again.",
            |c| c.cluster_account_refusals,
        ),
    ];
    for (name, help, field) in counters {
        header(out, name, help, "counter");
        let _ = writeln!(out, "{name} {}", total(field));
    }
    type PubsubGauge = fn((bool, u64)) -> u64;
    let gauges: [(&str, &str, PubsubGauge); 2] = [
        (
            "pulsar_cluster_pubsub_up",
            "1 while every Valkey pub/sub connection the shard needs is up (on a Valkey Cluster: one per primary serving a listened topic's slot, and every listened topic has one).",
            |(up, _)| u64::from(up),
        ),
        (
            "pulsar_cluster_listened_topics",
            "Topics whose announcements the shard listens to (those with subscribers on this node).",
            |(_, topics)| topics,
        ),
    ];
    for (name, help, value) in gauges {
        header(out, name, help, "gauge");
        for (shard, s) in shards.iter().enumerate() {
            if let Some(pubsub) = s.gauges.pubsub {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(pubsub));
            }
        }
    }
    type ConnectionGauge = fn(&(String, bool, u64)) -> u64;
    let per_node: [(&str, &str, ConnectionGauge); 2] = [
        (
            "pulsar_cluster_pubsub_node_up",
            "1 while the shard's pub/sub connection to this Valkey node (a Cluster primary, or the standalone server) is up.",
            |(_, up, _)| u64::from(*up),
        ),
        (
            "pulsar_cluster_pubsub_node_channels",
            "Channels the shard subscribes to (or is subscribing to) on this Valkey node.",
            |(_, _, channels)| *channels,
        ),
    ];
    for (name, help, value) in per_node {
        header(out, name, help, "gauge");
        for (shard, s) in shards.iter().enumerate() {
            for connection in &s.pubsub_connections {
                let node = &connection.0;
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{shard}\",node=\"{node}\"}} {}",
                    value(connection)
                );
            }
        }
    }
}

/// The Valkey Cluster series: redirections followed, slot maps read, and each primary's
/// connection per shard (a standalone server shows as the one primary).
fn render_cluster(out: &mut String, shards: &[Snapshot]) {
    let total = |f: fn(&Counters) -> u64| shards.iter().map(|s| f(&s.counters)).sum::<u64>();
    header(
        out,
        "pulsar_valkey_redirects_total",
        "Valkey Cluster MOVED and ASK answers followed to another primary.",
        "counter",
    );
    let _ = writeln!(
        out,
        "pulsar_valkey_redirects_total{{kind=\"moved\"}} {}",
        total(|c| c.valkey_moved)
    );
    let _ = writeln!(
        out,
        "pulsar_valkey_redirects_total{{kind=\"ask\"}} {}",
        total(|c| c.valkey_asked)
    );
    header(
        out,
        "pulsar_valkey_slot_map_refreshes_total",
        "Valkey Cluster slot maps read (at start, after MOVED or a lost connection, and periodically).",
        "counter",
    );
    let _ = writeln!(
        out,
        "pulsar_valkey_slot_map_refreshes_total {}",
        total(|c| c.valkey_map_refreshes)
    );
    header(
        out,
        "pulsar_valkey_primary_up",
        "1 while the shard's connection to this Valkey primary is up.",
        "gauge",
    );
    for (shard, s) in shards.iter().enumerate() {
        for (primary, up) in &s.primaries {
            let _ = writeln!(
                out,
                "pulsar_valkey_primary_up{{shard=\"{shard}\",primary=\"{primary}\"}} {}",
                u8::from(*up)
            );
        }
    }
}

/// CPU overload: how late each shard's work runs, and the publishes refused for it.
fn render_overload(out: &mut String, shards: &[Snapshot]) {
    header(
        out,
        "pulsar_queue_delay_seconds",
        "Longest wait the shard's work met in its last complete second: requests between \
         read and handled, its executor's timer, publishes crossing to it. Over \
         limits.max_queue_delay, publishes are refused with 503 OVERLOADED.",
        "gauge",
    );
    for (shard, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "pulsar_queue_delay_seconds{{shard=\"{shard}\"}} {}",
            s.gauges.queue_delay_micros as f64 / 1e6
        );
    }
    header(
        out,
        "pulsar_publishes_shed_total",
        "Publishes refused with 503 OVERLOADED because a shard was too late: requests by the \
         shard that read them (at=\"request\"), batches by their topics' owner (at=\"owner\").",
        "counter",
    );
    let total = |f: fn(&Counters) -> u64| shards.iter().map(|s| f(&s.counters)).sum::<u64>();
    let _ = writeln!(
        out,
        "pulsar_publishes_shed_total{{at=\"request\"}} {}",
        total(|c| c.shed_requests)
    );
    let _ = writeln!(
        out,
        "pulsar_publishes_shed_total{{at=\"owner\"}} {}",
        total(|c| c.shed_at_owner)
    );
}

/// A metric's name, help text and where its value comes from.
type Series<From, To> = (&'static str, &'static str, fn(&From) -> To);

/// Picks one latency histogram out of a snapshot.
type LatencyOf = for<'a> fn(&'a Snapshot) -> &'a Latency;

/// Renders all shards' snapshots (index = shard) as Prometheus text. Counters are summed;
/// gauges are reported per shard where the shard matters (queues), summed otherwise.
pub fn render(shards: &[Snapshot], persistent: bool) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let total = |f: fn(&Counters) -> u64| shards.iter().map(|s| f(&s.counters)).sum::<u64>();
    let counters: [Series<Counters, u64>; 9] = [
        (
            "pulsar_messages_published_total",
            "Messages accepted from producers.",
            |c| c.published,
        ),
        (
            "pulsar_messages_delivered_total",
            "Messages written to subscribers (one per subscriber).",
            |c| c.delivered,
        ),
        (
            "pulsar_messages_expired_total",
            "Messages not delivered because their TTL had passed.",
            |c| c.expired,
        ),
        (
            "pulsar_messages_dropped_total",
            "Queued messages discarded when a slow consumer was disconnected.",
            |c| c.dropped,
        ),
        (
            "pulsar_bytes_received_total",
            "Bytes read from client connections.",
            |c| c.bytes_in,
        ),
        (
            "pulsar_bytes_sent_total",
            "Bytes written to client connections.",
            |c| c.bytes_out,
        ),
        (
            "pulsar_tls_handshake_failures_total",
            "TLS handshakes on the listener that failed or timed out (a client that does not \
             trust the certificate, plain HTTP sent to the TLS port, a scanner).",
            |c| c.tls_handshake_failures,
        ),
        (
            "pulsar_slow_consumer_disconnects_total",
            "WebSocket and SSE clients cut off for exceeding delivery.max_outbound_bytes.",
            |c| c.slow_consumer_disconnects,
        ),
        (
            "pulsar_topics_dropped_total",
            "Topic entries dropped from memory: nothing needed them, or cold under the hot-tier budget.",
            |c| c.topics_dropped,
        ),
    ];
    for (name, help, field) in counters {
        header(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {}", total(field));
    }

    header(
        &mut out,
        "pulsar_http_requests_total",
        "HTTP requests answered, by route and status.",
        "counter",
    );
    let mut requests: RequestCounts = Vec::new();
    for snapshot in shards {
        for &(route, status, n) in &snapshot.requests {
            match requests
                .iter_mut()
                .find(|(r, s, _)| *r == route && *s == status)
            {
                Some((_, _, total)) => *total += n,
                None => requests.push((route, status, n)),
            }
        }
    }
    requests.sort_unstable();
    for (route, status, n) in requests {
        let _ = writeln!(
            out,
            "pulsar_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }

    let gauges: [Series<Gauges, u64>; 7] = [
        ("pulsar_connections", "Open client connections.", |g| {
            g.connections
        }),
        (
            "pulsar_websocket_connections",
            "Open WebSocket sessions.",
            |g| g.websocket_connections,
        ),
        (
            "pulsar_sse_sessions",
            "Open Server-Sent Events streams.",
            |g| g.sse_sessions,
        ),
        (
            "pulsar_polls_waiting",
            "Long-poll requests waiting for messages.",
            |g| g.polls_waiting,
        ),
        (
            "pulsar_topics",
            "Topic entries in memory on their owner shards.",
            |g| g.topics,
        ),
        (
            "pulsar_subscribed_topics",
            "Topics with subscribers (WebSocket sessions, parked polls) on the shard.",
            |g| g.subscribed_topics,
        ),
        (
            "pulsar_hot_tier_bytes",
            "Bytes held by the hot tier: retained messages and the topics' own entries.",
            |g| g.hot_tier_bytes,
        ),
    ];
    for (name, help, field) in gauges {
        header(&mut out, name, help, "gauge");
        for (shard, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", field(&s.gauges));
        }
    }
    header(
        &mut out,
        "pulsar_mesh_backlog",
        "Cross-shard messages waiting for channel space.",
        "gauge",
    );
    for (shard, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "pulsar_mesh_backlog{{shard=\"{shard}\"}} {}",
            s.gauges.mesh_backlog
        );
    }
    render_overload(&mut out, shards);

    if persistent {
        header(
            &mut out,
            "pulsar_valkey_writes_total",
            "Writes Valkey confirmed.",
            "counter",
        );
        let _ = writeln!(
            out,
            "pulsar_valkey_writes_total {}",
            total(|c| c.valkey_writes)
        );
        header(
            &mut out,
            "pulsar_valkey_errors_total",
            "Valkey connection failures and refused writes.",
            "counter",
        );
        let _ = writeln!(
            out,
            "pulsar_valkey_errors_total {}",
            total(|c| c.valkey_errors)
        );
        header(
            &mut out,
            "pulsar_valkey_replica_timeouts_total",
            "Pipelines whose WAIT counted fewer replicas than storage.min_replicas (ack: replicated).",
            "counter",
        );
        let _ = writeln!(
            out,
            "pulsar_valkey_replica_timeouts_total {}",
            total(|c| c.valkey_replica_timeouts)
        );
        header(
            &mut out,
            "pulsar_valkey_data_loss_total",
            "Reconnects that found a Valkey server (a cluster primary) without a sentinel key it held before: its data was lost. Counted by each shard that noticed.",
            "counter",
        );
        let _ = writeln!(
            out,
            "pulsar_valkey_data_loss_total {}",
            total(|c| c.valkey_data_loss)
        );
        header(
            &mut out,
            "pulsar_topic_loads_total",
            "Topics read back from Valkey because an operation needed their state.",
            "counter",
        );
        let _ = writeln!(out, "pulsar_topic_loads_total {}", total(|c| c.topic_loads));
        header(
            &mut out,
            "pulsar_valkey_backlog",
            "Writes waiting for Valkey.",
            "gauge",
        );
        for (shard, s) in shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "pulsar_valkey_backlog{{shard=\"{shard}\"}} {}",
                s.gauges.valkey_backlog
            );
        }
        header(
            &mut out,
            "pulsar_valkey_up",
            "1 while the shard's Valkey connection is up.",
            "gauge",
        );
        for (shard, s) in shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "pulsar_valkey_up{{shard=\"{shard}\"}} {}",
                u8::from(s.gauges.valkey_up)
            );
        }
        render_cluster(&mut out, shards);
        if shards.iter().any(|s| s.gauges.pubsub.is_some()) {
            render_nodes(&mut out, shards);
        }
    }

    let histograms: [(&str, &str, LatencyOf); 4] = [
        (
            "pulsar_publish_latency_seconds",
            "Publish request received to acknowledged.",
            |s| &s.publish_latency,
        ),
        (
            "pulsar_delivery_latency_seconds",
            "Message accepted by its owner to written to a subscriber's socket.",
            |s| &s.delivery_latency,
        ),
        (
            "pulsar_valkey_write_latency_seconds",
            "Round trip of the Valkey pipeline that carried a write.",
            |s| &s.valkey_latency,
        ),
        (
            "pulsar_cluster_announce_lag_seconds",
            "Cluster mode: a message published (on its node's clock) to its announcement heard on this node.",
            |s| &s.announce_lag,
        ),
    ];
    for (name, help, field) in histograms {
        if !persistent && name.starts_with("pulsar_valkey") {
            continue;
        }
        let mut merged = Latency::new();
        for s in shards {
            merged.merge(field(s));
        }
        header(&mut out, name, help, "histogram");
        for bound in BUCKETS {
            let micros = (bound * 1e6) as u64;
            let count = if merged.count() == 0 {
                0
            } else {
                merged.hist.count_between(0, micros)
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", merged.count());
        let _ = writeln!(out, "{name}_sum {}", merged.sum_micros as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", merged.count());
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_are_summed_over_shards_and_gauges_kept_per_shard() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        add(&a.published, 3);
        add(&b.published, 4);
        a.count_request("publish", 201);
        b.count_request("publish", 201);
        b.count_request("publish", 422);
        let snaps = [
            a.snapshot(
                Gauges {
                    topics: 2,
                    ..Gauges::default()
                },
                Vec::new(),
            ),
            b.snapshot(
                Gauges {
                    topics: 5,
                    ..Gauges::default()
                },
                Vec::new(),
            ),
        ];
        let text = render(&snaps, false);
        assert_eq!(value(&text, "pulsar_messages_published_total"), 7.0);
        assert_eq!(
            value(
                &text,
                r#"pulsar_http_requests_total{route="publish",status="201"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"pulsar_http_requests_total{route="publish",status="422"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, r#"pulsar_topics{shard="0"}"#), 2.0);
        assert_eq!(value(&text, r#"pulsar_topics{shard="1"}"#), 5.0);
        assert!(
            !text.contains("pulsar_valkey"),
            "no Valkey series for the memory backend"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let m = ShardMetrics::default();
        for micros in [40, 400, 4_000, 40_000] {
            m.publish_latency.borrow_mut().record(micros);
        }
        let text = render(&[m.snapshot(Gauges::default(), Vec::new())], true);
        let bucket = |le: &str| {
            value(
                &text,
                &format!("pulsar_publish_latency_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00005"), 1.0);
        assert_eq!(bucket("0.0005"), 2.0);
        assert_eq!(bucket("0.005"), 3.0);
        assert_eq!(bucket("0.05"), 4.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(value(&text, "pulsar_publish_latency_seconds_count"), 4.0);
        assert!((value(&text, "pulsar_publish_latency_seconds_sum") - 0.04444).abs() < 1e-9);
        assert!(text.contains("pulsar_valkey_write_latency_seconds_count 0"));
    }

    #[test]
    fn the_recent_second_holds_only_what_happened_in_it() {
        let m = ShardMetrics::default();
        m.sample(10_000);
        add(&m.published, 5);
        m.publish_latency.borrow_mut().record(100);
        m.sample(10_500);
        assert_eq!(m.recent().millis, 0, "no full second sampled yet");
        m.sample(11_250);
        let first = m.recent();
        assert_eq!((first.millis, first.published), (1250, 5));
        assert_eq!(first.publish_latency.count(), 1);
        add(&m.published, 2);
        add(&m.delivered, 7);
        for micros in [2_000, 3_000] {
            m.publish_latency.borrow_mut().record(micros);
        }
        m.sample(12_250);
        let second = m.recent();
        assert_eq!((second.published, second.delivered), (2, 7));
        assert_eq!(
            second.publish_latency.count(),
            2,
            "the first second's value is gone"
        );
        assert!(second.publish_latency.quantile_micros(0.0) >= 1_900);
        assert_eq!(
            m.publish_latency.borrow().count(),
            3,
            "the totals are untouched"
        );
    }
}
