//! Topic micro-benchmarks: the owner shard's per-message work (delivery frame, routing hash,
//! ring append with eviction, backlog reads) and a shard's local fan-out.
//!
//! `cargo bench --bench topic` prints time per iteration and a throughput in elements/s:
//! messages/s for build, publish and routing (compare with the ingest req/s in
//! benches/BENCHMARKS.md), messages read/s for ring reads, deliveries/s for fan-out. Under
//! `cargo test --all-targets` each benchmark runs once, as a smoke test.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pulsar_relay::topic::ring::Ring;
use pulsar_relay::topic::subscribers::{LocalSubscribers, Sink, Subscription};
use pulsar_relay::topic::{owner_of, IdClock, Message, MessageId, TopicLimits, TopicTable};
use pulsar_relay::topic::{Cursor, Draft};

/// A wall-clock instant in 2026, as `now_ms`.
const NOW_MS: u64 = 1_795_775_969_418;

/// The relay's default `storage.hot_tier_messages_per_topic`.
const RING_MESSAGES: usize = 10_000;

/// The payload `tools/bench/publish.lua` sends.
const PAYLOAD: &[u8] = br#"{"n":12345,"text":"hello relay"}"#;

fn draft<'a>(topic: &'a str, payload: &'a [u8]) -> Draft<'a> {
    Draft {
        topic,
        payload,
        metadata: None,
        ttl_ms: None,
    }
}

fn message(topic: &Arc<str>, id: MessageId) -> Arc<Message> {
    Arc::new(Message::build(
        id,
        Arc::clone(topic),
        NOW_MS,
        &draft(topic, PAYLOAD),
    ))
}

fn message_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("message_build");
    group.throughput(Throughput::Elements(1));
    let topic: Arc<str> = Arc::from("bench-1");
    let id = MessageId::new(NOW_MS, 3);
    // A JSON array of 31 such payloads: exactly 1 KiB.
    let big = format!(
        "[{}]",
        vec![std::str::from_utf8(PAYLOAD).unwrap(); 31].join(",")
    );
    assert_eq!(big.len(), 1024);
    let with_ttl = |payload, metadata| Draft {
        topic: &topic,
        payload,
        metadata,
        ttl_ms: Some(3_600_000),
    };
    let metadata = br#"{"source":"bench","trace":"4bf92f3577b34da6"}"#;
    let cases = [
        ("payload_32B", with_ttl(PAYLOAD, None)),
        ("payload_32B_metadata", with_ttl(PAYLOAD, Some(metadata))),
        ("payload_1KiB", with_ttl(big.as_bytes(), None)),
    ];
    for (name, d) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                Message::build(
                    black_box(id),
                    Arc::clone(&topic),
                    black_box(NOW_MS),
                    black_box(&d),
                )
            })
        });
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("owner_of");
    group.throughput(Throughput::Elements(1));
    for topic in ["bench-1", "tenant-42.orders.eu-west-1:created"] {
        group.bench_with_input(BenchmarkId::from_parameter(topic.len()), topic, |b, t| {
            b.iter(|| owner_of(black_box(t), black_box(2)))
        });
    }
    group.finish();
}

/// One topic whose ring is full: every publish appends one message and evicts the oldest,
/// as on a busy topic at steady state (memory backend: no durability bound on eviction;
/// one shard's default limits).
fn table_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_table_publish");
    group.throughput(Throughput::Elements(1));
    let mut table = TopicTable::new(limits(256 << 20), false, IdClock::new(0, 2));
    // One other shard subscribed, so the interest set is not empty.
    table.subscribe("bench-1", 1, &Cursor::Live, None, NOW_MS, 0);
    let d = draft("bench-1", PAYLOAD);
    for _ in 0..RING_MESSAGES + 1 {
        table.publish(&d, NOW_MS, None);
    }
    let (all, _) = table.subscribe("bench-1", 1, &Cursor::Earliest, None, NOW_MS, usize::MAX);
    assert_eq!(all.backlog.len(), RING_MESSAGES, "the ring is full");
    drop(all);
    let mut now = NOW_MS;
    group.bench_function("ring_full_evicting", |b| {
        b.iter(|| {
            now += 1;
            table.publish(black_box(&d), now, None)
        })
    });
    // Every publish to a new topic, on a shard at its budget: each makes an entry, and
    // the coldest topics are dropped in batches (the `--topics 2000000` load of issue #14).
    let mut table = TopicTable::new(limits(32 << 20), false, IdClock::new(0, 2));
    let names: Vec<String> = (0..1 << 20).map(|i| format!("bench-{i}")).collect();
    let mut next = 0;
    for name in &names[..200_000] {
        table.publish(&draft(name, b"1"), NOW_MS, None);
    }
    assert!(table.len() < 200_000, "the budget dropped cold topics");
    group.bench_function("distinct_topics_at_budget", |b| {
        b.iter(|| {
            now += 1;
            next = (next + 1) % names.len();
            table.publish(black_box(&draft(&names[next], b"1")), now, None)
        })
    });
    group.finish();
}

/// One shard's default limits, with `max_bytes` as its budget.
fn limits(max_bytes: usize) -> TopicLimits {
    TopicLimits {
        messages_per_topic: RING_MESSAGES,
        max_bytes,
        max_kept_records: 10_000,
    }
}

fn ring_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_read_after");
    let topic: Arc<str> = Arc::from("bench-1");
    let mut ring = Ring::default();
    for i in 0..RING_MESSAGES as u64 {
        ring.push(message(&topic, MessageId::new(NOW_MS + i, 0)));
    }
    // A consumer 100 messages behind the head (the end of the ring), and one resuming from
    // the middle of the ring with a page of 100 (more follow).
    let behind = MessageId::new(NOW_MS + RING_MESSAGES as u64 - 101, 0);
    let middle = MessageId::new(NOW_MS + RING_MESSAGES as u64 / 2, 0);
    let (page, more) = ring.read_after(Some(behind), NOW_MS, 100);
    assert_eq!((page.len(), more), (100, false));
    let (page, more) = ring.read_after(Some(middle), NOW_MS, 100);
    assert_eq!((page.len(), more), (100, true));
    group.throughput(Throughput::Elements(100));
    for (name, after) in [
        ("last_100_of_10k", behind),
        ("100_from_middle_of_10k", middle),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| ring.read_after(black_box(Some(after)), NOW_MS, 100))
        });
    }
    group.finish();
}

/// Counts what it is offered: the cost measured is the fan-out itself, not a session's
/// outbound queue.
#[derive(Default)]
struct Counter(Cell<u64>);

impl Sink for Counter {
    fn offer(&self, msg: &Arc<Message>) {
        black_box(msg);
        self.0.set(self.0.get() + 1);
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_subscribers_deliver");
    let topic: Arc<str> = Arc::from("bench-1");
    for subscriptions in [1, 100, 10_000] {
        let mut index = LocalSubscribers::default();
        let mut sinks = Vec::with_capacity(subscriptions);
        for _ in 0..subscriptions {
            // One sink per subscription, as each WebSocket session has its own queue.
            let sink = Rc::new(Counter::default());
            let sub = Subscription::new(Arc::clone(&topic), MessageId::ZERO, sink.clone());
            sub.finish_replay(&[]);
            index.add(sub);
            sinks.push(sink);
        }
        // Each delivery needs a new, higher ID: a subscription skips what it already has.
        let next = Cell::new(0u64);
        let fresh = || {
            next.set(next.get() + 1);
            message(&topic, MessageId::new(NOW_MS, next.get()))
        };
        assert!(index.deliver(&fresh(), NOW_MS));
        assert!(sinks.iter().all(|s| s.0.get() == 1), "every sink got it");
        group.throughput(Throughput::Elements(subscriptions as u64));
        group.bench_function(BenchmarkId::from_parameter(subscriptions), |b| {
            b.iter_batched(
                fresh,
                |msg| {
                    index.deliver(&msg, NOW_MS);
                    msg
                },
                BatchSize::SmallInput,
            )
        });
        assert!(sinks.iter().all(|s| s.0.get() == next.get()), "no skips");
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = message_build, routing, table_publish, ring_read, fan_out
}
criterion_main!(benches);
