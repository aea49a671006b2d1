//! Cross-shard hop: latency and idle cost of the mechanism `rt::mesh` is built on
//! (glommio `shared_channel` between two pinned executors).
//!
//! `cargo bench --bench mesh_hop` prints the one-way hop latency (half a ping-pong round
//! trip, p50/p99/max), the throughput of a one-way stream, and the CPU the two executors
//! burn while idle with their receive loops parked.

use std::time::{Duration, Instant};

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

const ROUND_TRIPS: u64 = 200_000;
const STREAM: u64 = 5_000_000;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ping_pong() {
    let (to_b, from_a) = shared_channel::new_bounded::<u64>(4096);
    let (to_a, from_b) = shared_channel::new_bounded::<u64>(4096);
    let b = LocalExecutorBuilder::new(Placement::Fixed(1 % cpus()))
        .spawn(move || async move {
            let rx = from_a.connect().await;
            let tx = to_a.connect().await;
            while let Some(n) = rx.recv().await {
                if tx.send(n).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let a = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tx = to_b.connect().await;
            let rx = from_b.connect().await;
            let mut hist = Histogram::<u64>::new(3).unwrap();
            for i in 0..ROUND_TRIPS {
                let start = Instant::now();
                tx.send(i).await.unwrap();
                rx.recv().await.unwrap();
                hist.record(start.elapsed().as_nanos() as u64 / 2).unwrap();
            }
            hist
        })
        .unwrap();
    let hist = a.join().unwrap();
    b.join().unwrap();
    println!(
        "hop latency (one way, {ROUND_TRIPS} round trips): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.value_at_quantile(0.999) as f64 / 1e3,
        hist.max() as f64 / 1e3,
    );
}

fn stream() {
    let (tx, rx) = shared_channel::new_bounded::<u64>(4096);
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1 % cpus()))
        .spawn(move || async move {
            let rx = rx.connect().await;
            let mut sum = 0u64;
            while let Some(n) = rx.recv().await {
                sum = sum.wrapping_add(n);
            }
            sum
        })
        .unwrap();
    let producer = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tx = tx.connect().await;
            let start = Instant::now();
            for i in 0..STREAM {
                tx.send(i).await.unwrap();
            }
            drop(tx);
            start.elapsed()
        })
        .unwrap();
    let elapsed = producer.join().unwrap();
    consumer.join().unwrap();
    println!(
        "stream throughput: {:.1} M messages/s ({STREAM} messages in {:.2} s)",
        STREAM as f64 / elapsed.as_secs_f64() / 1e6,
        elapsed.as_secs_f64()
    );
}

fn idle() {
    let (tx, rx) = shared_channel::new_bounded::<u64>(4096);
    let idle_for = Duration::from_secs(2);
    let receiver = LocalExecutorBuilder::new(Placement::Fixed(1 % cpus()))
        .spawn(move || async move {
            let rx = rx.connect().await;
            rx.recv().await
        })
        .unwrap();
    let sender = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tx = tx.connect().await;
            let before = cpu_seconds();
            glommio::timer::sleep(idle_for).await;
            let used = cpu_seconds() - before;
            tx.send(1).await.unwrap();
            used
        })
        .unwrap();
    let used = sender.join().unwrap();
    receiver.join().unwrap();
    println!(
        "idle cost: {:.2}% of one core for two connected, idle executors ({:.1} ms CPU over {} s)",
        used / idle_for.as_secs_f64() * 100.0,
        used * 1e3,
        idle_for.as_secs()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this binary only
    // has to build, not spend seconds measuring on a busy CI machine.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    ping_pong();
    stream();
    idle();
}
