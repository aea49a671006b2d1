//! Counters the workers share with the coordinating thread, the once-a-second progress
//! line, and the CPU samples taken at the edges of the measured phase.
//!
//! Workers add to the counters once per event-loop pass, not once per message, so the
//! shared cache line is not a bottleneck of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::clock::{now_ns, sleep_until, Window};
use crate::cpu::{CpuSample, CpuUse};

/// Runs shorter than this print no progress lines.
const QUIET_BELOW_NS: u64 = 3_000_000_000;

#[derive(Default)]
pub struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    pub fn add(&self, ops: u64, errors: u64) {
        if ops > 0 {
            self.ops.fetch_add(ops, Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Relaxed);
        }
    }

    pub fn ops(&self) -> u64 {
        self.ops.load(Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

/// Sleeps until the window ends, printing `what`/s each second on long runs; returns the
/// CPU use of this process and of the relay over the measured phase.
pub fn watch(window: &Window, live: &Live, what: &str, server_pid: Option<u32>) -> CpuUse {
    let verbose = window.end - window.start >= QUIET_BELOW_NS;
    let mut at_measure: Option<CpuSample> = None;
    let mut tick = window.start + 1_000_000_000;
    let (mut last_ops, mut last_errors) = (live.ops(), live.errors());
    loop {
        let now = now_ns();
        if at_measure.is_none() && now >= window.measure {
            at_measure = Some(CpuSample::take(server_pid));
        }
        if now >= window.end {
            break;
        }
        if now >= tick {
            let (ops, errors) = (live.ops(), live.errors());
            if verbose {
                let phase = if tick <= window.measure {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprintln!(
                    "[{:>4}s] {phase:<9} {:>10} {what}/s  errors {}",
                    (tick - window.start) / 1_000_000_000,
                    ops - last_ops,
                    errors - last_errors
                );
            }
            (last_ops, last_errors) = (ops, errors);
            tick += 1_000_000_000;
        }
        let mut next = tick.min(window.end);
        if at_measure.is_none() {
            next = next.min(window.measure);
        }
        sleep_until(next);
    }
    let end = CpuSample::take(server_pid);
    at_measure.unwrap_or(end).until(&end)
}
