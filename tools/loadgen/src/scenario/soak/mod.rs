//! `soak`: a long mixed load with a correctness checker running all along, for
//! `tools/soak.sh`, which kills and restarts the relay and stalls its Valkey meanwhile.
//!
//! Durable WebSocket consumers, durable long-poll consumers and cursor long-poll consumers
//! subscribe first (so every message published later is theirs to receive), then
//! publishers (single and bulk, with Idempotency-Keys) and an account login loop start.
//! Consumers disconnect and resume at random. Every `--interval` the relay's RSS and
//! open descriptors (read through `--server-pid-file`, which the script rewrites on each
//! restart), the publishes, deliveries, publish-to-delivery latency, restarts and stalls
//! (from `--events-file`) of that interval make a row. At the end the load stops, the
//! consumers drain, and the run fails on any checker violation (see `checker`) or on
//! RSS or descriptors that did not level off (see `growth`).
//!
//! Must not: kill or stall anything itself (the script does, on its schedule).

mod checker;
mod client;
mod consumer;
mod growth;
mod logins;
mod producer;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};
use serde_json::json;

use self::checker::{Checker, ConsumerSpec, Published, Seen};
use self::consumer::{Consumer, Flags, Kind};
use crate::args::Common;
use crate::clock::{now_ns, sleep_until};
use crate::cpu::{rss_kib, CpuUse};
use crate::report::{Latency, Row, Summary};

/// The soak's own flags.
pub struct Plan {
    pub publishers: usize,
    pub rate: f64,
    pub topics: usize,
    pub ws: usize,
    pub polls: usize,
    pub cursors: usize,
    pub interval: Duration,
    pub mean_session: Duration,
    pub pid_file: Option<PathBuf>,
    pub events_file: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
    /// Bootstrap administrator for the login loop (none: no logins).
    pub admin: Option<(String, String)>,
    pub tolerance: f64,
    pub drain: Duration,
    /// `--retry-duplicates fail`: a publish under two IDs after a lost attempt fails the
    /// run too (by default it is counted and shown, see `checker`).
    pub strict: bool,
}

/// How long the consumers' first subscriptions may take (a relay still recovering).
const SETUP_NS: u64 = 30_000_000_000;
/// Open descriptors within this many of the middle third's highest are no growth.
const FD_SLACK: u64 = 16;
/// RSS (KiB) within this much of the middle third's highest is no growth: in a one-minute
/// run a relay restarted late in the first third can still be filling its hot tier through
/// the middle third (seen: 50 MiB at 30-40 s, 63 MiB at the end, after a restart at 13 s
/// across a Valkey stall). A leak passes it within minutes of a long soak.
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// A small xorshift generator: the soak's randomness needs no quality, only independence
/// between threads and no crate.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice((now_ns() ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Exponentially distributed around `mean`.
    pub fn exponential(&mut self, mean: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-(1.0 - u).ln() * mean as f64) as u64
    }
}

/// One interval's readings of the relay.
#[derive(Default, Clone)]
struct Reading {
    rss_kib: Option<u64>,
    fds: Option<u64>,
    restarts: u64,
    stalls: u64,
}

pub fn run(common: &Common, plan: &Plan) -> Result<Summary, String> {
    let run_id = format!("{}", now_ns() / 1_000_000);
    let topics = common.topics(plan.topics);
    let flags = Arc::new(Flags {
        draining: AtomicBool::new(false),
        quit: AtomicBool::new(false),
    });
    let (seen_tx, seen_rx) = unbounded::<Seen>();
    let (pub_tx, pub_rx) = unbounded::<Published>();
    let (ready_tx, ready_rx) = unbounded::<()>();

    let mut kinds = Vec::new();
    kinds.extend((0..plan.ws).map(|i| (Kind::WsDurable, i)));
    kinds.extend((0..plan.polls).map(|i| (Kind::PollDurable, i)));
    kinds.extend((0..plan.cursors).map(|i| (Kind::PollCursor, i)));
    let mut specs = Vec::new();
    let mut consumer_threads: Vec<JoinHandle<(u64, Option<String>)>> = Vec::new();
    for (number, &(kind, i)) in kinds.iter().enumerate() {
        // Durable consumers read two topics each (two offsets apart for the pollers, so
        // the pairs differ); a cursor poll follows one topic, as `since` is one cursor.
        let mine: Vec<usize> = match kind {
            Kind::PollCursor => vec![i % plan.topics],
            Kind::WsDurable => vec![i % plan.topics, (i + 1) % plan.topics],
            Kind::PollDurable => vec![i % plan.topics, (i + 2) % plan.topics],
        };
        let mut mine_unique = mine.clone();
        mine_unique.dedup();
        let named: Vec<(usize, String)> = mine_unique
            .iter()
            .map(|&t| (t, topics[t].clone()))
            .collect();
        let c = Consumer::new(
            number,
            kind,
            &run_id,
            named,
            common.target.clone(),
            common.token.clone(),
            plan.mean_session.as_nanos() as u64,
            seen_tx.clone(),
            Arc::clone(&flags),
            ready_tx.clone(),
        );
        specs.push(ConsumerSpec {
            name: c.client_id.clone(),
            resume: kind.resume(),
            topics: mine_unique,
        });
        let handle = std::thread::Builder::new()
            .name(format!("soak-{}-{i}", kind.word()))
            .spawn(move || c.run())
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        consumer_threads.push(handle);
    }
    drop(ready_tx);
    let give_up = now_ns() + SETUP_NS;
    for _ in 0..kinds.len() {
        let left = Duration::from_nanos(give_up.saturating_sub(now_ns()));
        if ready_rx.recv_timeout(left).is_err() {
            flags.quit.store(true, SeqCst);
            return Err("the consumers could not subscribe within 30 s".into());
        }
    }
    // The durable positions the first subscriptions created reach Valkey in a round trip;
    // a relay killed before that would meet these consumers as new ones.
    sleep_until(now_ns() + 1_000_000_000);

    let start = now_ns();
    let interval = plan.interval.as_nanos() as u64;
    let end = start + common.duration.as_nanos() as u64;
    let intervals = common
        .duration
        .as_nanos()
        .div_ceil(plan.interval.as_nanos()) as usize;
    let mut checker = Checker::new(plan.topics, specs, start, interval, plan.strict);
    if let Some(path) = &plan.ready_file {
        std::fs::write(path, format!("{start}\n")).map_err(|e| format!("--ready-file: {e}"))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut in_flight = Vec::new();
    let mut producer_threads = Vec::new();
    for number in 0..plan.publishers {
        let slot = Arc::new(AtomicU64::new(0));
        in_flight.push(Arc::clone(&slot));
        let p = producer::Producer {
            number: number as u32,
            run_id: run_id.clone(),
            topics: topics.clone(),
            target: common.target.clone(),
            token: common.token.clone(),
            rate: plan.rate / plan.publishers as f64,
            published: pub_tx.clone(),
            seen: seen_tx.clone(),
            in_flight: slot,
            stop: Arc::clone(&stop),
        };
        producer_threads.push(
            std::thread::Builder::new()
                .name(format!("soak-pub-{number}"))
                .spawn(move || p.run())
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    let (logins_done, logins_cut) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let login_first_cut = Arc::new(std::sync::Mutex::new(None::<String>));
    let login_thread = plan.admin.as_ref().map(|(user, password)| {
        let l = logins::Logins {
            target: common.target.clone(),
            username: user.clone(),
            password: password.clone(),
            seen: seen_tx.clone(),
            stop: Arc::clone(&stop),
            done: Arc::clone(&logins_done),
            cut: Arc::clone(&logins_cut),
            first_cut: Arc::clone(&login_first_cut),
        };
        std::thread::spawn(move || l.run())
    });
    drop((seen_tx, pub_tx));

    // The run: judge, sample, and print a row per interval.
    let mut readings = vec![Reading::default(); intervals];
    let mut pid: Option<u32> = None;
    let mut next_sample = start;
    let mut printed = 0;
    eprintln!("{}", header());
    while now_ns() < end {
        judge(&mut checker, &in_flight, &pub_rx, &seen_rx);
        let now = now_ns();
        if now >= next_sample {
            let k = ((now - start) / interval) as usize;
            if let Some(r) = readings.get_mut(k) {
                sample(plan, &mut pid, r);
            }
            next_sample += 1_000_000_000;
        }
        let done_intervals = ((now - start) / interval) as usize;
        while printed < done_intervals.min(intervals) {
            count_events(plan, start, interval, &mut readings);
            eprintln!("{}", row(&checker, &readings, printed, interval));
            printed += 1;
        }
        sleep_until(now + 100_000_000);
    }

    // The end: publishers settle what they have under way, consumers drain.
    stop.store(true, SeqCst);
    flags.draining.store(true, SeqCst);
    for h in producer_threads {
        while !h.is_finished() {
            judge(&mut checker, &in_flight, &pub_rx, &seen_rx);
            sleep_until(now_ns() + 100_000_000);
        }
        let _ = h.join();
    }
    if let Some(h) = login_thread {
        let _ = h.join();
    }
    let drain_until = now_ns() + plan.drain.as_nanos() as u64;
    loop {
        judge(&mut checker, &in_flight, &pub_rx, &seen_rx);
        if checker.caught_up() || now_ns() > drain_until {
            break;
        }
        sleep_until(now_ns() + 100_000_000);
    }
    flags.quit.store(true, SeqCst);
    let mut troubles = 0;
    let mut first_trouble = None;
    for h in consumer_threads {
        if let Ok((n, first)) = h.join() {
            troubles += n;
            first_trouble = first_trouble.or(first);
        }
    }
    judge(&mut checker, &in_flight, &pub_rx, &seen_rx);
    checker.finish(now_ns());
    count_events(plan, start, interval, &mut readings);
    while printed < intervals {
        eprintln!("{}", row(&checker, &readings, printed, interval));
        printed += 1;
    }

    let table = table(&checker, &readings, interval);
    print!("{table}");
    let mut failures = Vec::new();
    if checker.violation_count() > 0 {
        println!("\nviolations ({}):", checker.violation_count());
        for v in checker.violations() {
            println!("  {v}");
        }
        failures.push(format!("{} checker violations", checker.violation_count()));
    }
    let (retry_duplicates, notes) = checker.retry_duplicates();
    if retry_duplicates > 0 {
        println!(
            "\npublishes under two IDs after an attempt lost with the killed relay ({retry_duplicates}; \
             at-least-once, see --retry-duplicates):"
        );
        for n in notes {
            println!("  {n}");
        }
    }
    let rss: Vec<Option<u64>> = readings.iter().map(|r| r.rss_kib).collect();
    let fds: Vec<Option<u64>> = readings.iter().map(|r| r.fds).collect();
    for verdict in [
        growth::judge("RSS (KiB)", &rss, plan.tolerance, RSS_SLACK_KIB),
        growth::judge("open descriptors", &fds, plan.tolerance, FD_SLACK),
    ] {
        if let Err(e) = verdict {
            println!("{e}");
            failures.push(e);
        }
    }
    let delivered: u64 = checker.intervals.iter().map(|t| t.delivered).sum();
    if delivered == 0 {
        failures.push("nothing was delivered".into());
    }

    let mut latency = Latency::new();
    let mut publish = Latency::new();
    let (mut published, mut redelivered, mut retries, mut sessions) = (0, 0, 0, 0);
    for t in &checker.intervals {
        latency.merge(&t.latency);
        publish.merge(&t.publish);
        published += t.published;
        redelivered += t.redelivered;
        retries += t.retries;
        sessions += t.sessions;
    }
    let secs = common.duration.as_secs_f64();
    let restarts: u64 = readings.iter().map(|r| r.restarts).sum();
    let stalls: u64 = readings.iter().map(|r| r.stalls).sum();
    Ok(Summary {
        scenario: "soak",
        setup: format!(
            "{} publishers at {} msg/s over {} topics; {} WebSocket, {} durable poll and {} \
             cursor poll consumers (sessions ~{:?}); {}",
            plan.publishers,
            plan.rate,
            plan.topics,
            plan.ws,
            plan.polls,
            plan.cursors,
            plan.mean_session,
            if plan.admin.is_some() {
                "logins"
            } else {
                "no logins"
            }
        ),
        measured_s: secs,
        warmup_s: 0.0,
        rows: vec![
            Row {
                name: "delivery",
                per: "delivery",
                count: delivered,
                errors: 0,
                rate: delivered as f64 / secs,
                latency,
            },
            Row {
                name: "publish",
                per: "message acknowledged",
                count: published,
                errors: 0,
                rate: published as f64 / secs,
                latency: publish,
            },
        ],
        extras: vec![
            ("violations", json!(checker.violation_count())),
            ("violation_list", json!(checker.violations())),
            ("accepted", json!(checker.accepted_total())),
            ("retry_duplicates", json!(retry_duplicates)),
            ("retry_duplicate_list", json!(notes)),
            ("redelivered", json!(redelivered)),
            ("publish_retries", json!(retries)),
            ("unresolved", json!(checker.unresolved)),
            ("rejected", json!(checker.rejected)),
            ("sessions", json!(sessions)),
            ("session_troubles", json!(troubles)),
            ("relay_restarts", json!(restarts)),
            ("valkey_stalls", json!(stalls)),
            ("login_rounds", json!(logins_done.load(SeqCst))),
            ("login_rounds_cut", json!(logins_cut.load(SeqCst))),
            (
                "login_first_cut",
                json!(login_first_cut.lock().ok().and_then(|f| f.clone())),
            ),
            ("intervals", intervals_json(&checker, &readings, interval)),
        ],
        cpu: CpuUse::default(),
        server_pid: None,
        first_error: first_trouble,
        duplicates: 0,
        failure: (!failures.is_empty()).then(|| failures.join("; ")),
    })
}

/// Takes what the threads reported and judges up to the horizon: the time before which
/// every publish is settled and reported. `now` is read before the publishers' slots, so
/// a publish that starts after the reading starts after the horizon too.
fn judge(
    checker: &mut Checker,
    in_flight: &[Arc<AtomicU64>],
    published: &Receiver<Published>,
    seen: &Receiver<Seen>,
) {
    let mut horizon = now_ns();
    for slot in in_flight {
        let since = slot.load(SeqCst);
        if since != 0 {
            horizon = horizon.min(since);
        }
    }
    for p in published.try_iter() {
        checker.published(p);
    }
    for s in seen.try_iter() {
        checker.seen(s);
    }
    checker.advance(horizon);
}

/// Reads the relay's pid (a change is a restart), RSS and open descriptors.
fn sample(plan: &Plan, pid: &mut Option<u32>, r: &mut Reading) {
    let Some(path) = &plan.pid_file else { return };
    let Some(now) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    if pid.is_some_and(|p| p != now) {
        r.restarts += 1;
    }
    *pid = Some(now);
    if let Some(kib) = rss_kib(now) {
        r.rss_kib = Some(r.rss_kib.map_or(kib, |m| m.max(kib)));
    }
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{now}/fd")) {
        let n = dir.count() as u64;
        r.fds = Some(r.fds.map_or(n, |m| m.max(n)));
    }
}

/// Counts the `stall <unix ns>` lines of `--events-file` per interval.
fn count_events(plan: &Plan, start: u64, interval: u64, readings: &mut [Reading]) {
    let Some(text) = plan
        .events_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    else {
        return;
    };
    for r in readings.iter_mut() {
        r.stalls = 0;
    }
    for line in text.lines() {
        if let Some(("stall", at)) = line.split_once(' ') {
            if let Ok(at) = at.trim().parse::<u64>() {
                let k = (at.saturating_sub(start) / interval) as usize;
                if let Some(r) = readings.get_mut(k) {
                    r.stalls += 1;
                }
            }
        }
    }
}

fn header() -> String {
    format!(
        "{:>7} {:>8} {:>5} {:>4} {:>5} {:>9} {:>7} {:>5} {:>9} {:>8} {:>9} {:>9} {:>9} {:>6}",
        "t (s)",
        "RSS MiB",
        "fds",
        "kill",
        "stall",
        "published",
        "retries",
        "twice",
        "delivered",
        "redeliv",
        "e2e p50",
        "e2e p99",
        "pub p99",
        "viol."
    )
}

fn row(checker: &Checker, readings: &[Reading], k: usize, interval: u64) -> String {
    let r = &readings[k];
    let t = checker.intervals.get(k);
    let n = |f: fn(&checker::Tally) -> u64| t.map_or(0, f);
    let ms = |l: Option<&Latency>, q: f64| l.map_or(0.0, |l| l.quantile_ms(q));
    let or_dash = |v: Option<u64>, f: fn(u64) -> String| v.map_or("-".into(), f);
    format!(
        "{:>7} {:>8} {:>5} {:>4} {:>5} {:>9} {:>7} {:>5} {:>9} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>6}",
        (k as u64 + 1) * interval / 1_000_000_000,
        or_dash(r.rss_kib, |k| format!("{:.1}", k as f64 / 1024.0)),
        or_dash(r.fds, |f| f.to_string()),
        r.restarts,
        r.stalls,
        n(|t| t.published),
        n(|t| t.retries),
        n(|t| t.retry_duplicates),
        n(|t| t.delivered),
        n(|t| t.redelivered),
        ms(t.map(|t| &t.latency), 0.5),
        ms(t.map(|t| &t.latency), 0.99),
        ms(t.map(|t| &t.publish), 0.99),
        n(|t| t.violations),
    )
}

fn table(checker: &Checker, readings: &[Reading], interval: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pulsar-loadgen soak: per interval (latencies in ms: e2e = first send to a consumer's \
         first receipt, pub = first send to the accepting answer, retries included; twice = \
         publishes seen under a second ID after an attempt lost with the killed relay)"
    );
    let _ = writeln!(out, "{}", header());
    for k in 0..readings.len() {
        let _ = writeln!(out, "{}", row(checker, readings, k, interval));
    }
    out
}

fn intervals_json(checker: &Checker, readings: &[Reading], interval: u64) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = readings
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let t = checker.intervals.get(k);
            json!({
                "end_s": (k as u64 + 1) * interval / 1_000_000_000,
                "rss_kib": r.rss_kib,
                "fds": r.fds,
                "restarts": r.restarts,
                "stalls": r.stalls,
                "published": t.map_or(0, |t| t.published),
                "delivered": t.map_or(0, |t| t.delivered),
                "redelivered": t.map_or(0, |t| t.redelivered),
                "violations": t.map_or(0, |t| t.violations),
                "retry_duplicates": t.map_or(0, |t| t.retry_duplicates),
                "e2e_p50_ms": t.map_or(0.0, |t| t.latency.quantile_ms(0.5)),
                "e2e_p99_ms": t.map_or(0.0, |t| t.latency.quantile_ms(0.99)),
                "publish_p99_ms": t.map_or(0.0, |t| t.publish.quantile_ms(0.99)),
            })
        })
        .collect();
    json!(rows)
}
