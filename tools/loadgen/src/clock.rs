//! Time for the whole run: one clock every thread reads, and the run's phases.
//!
//! Timestamps are UNIX nanoseconds so they can travel in payloads (the e2e scenario), but
//! they are read from the monotonic clock anchored to the wall clock once per process:
//! publisher and receiver threads then compare exactly and an NTP step cannot skew a run.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();

/// Now, as nanoseconds since the UNIX epoch.
pub fn now_ns() -> u64 {
    let (at, unix) = ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), unix)
    });
    unix + at.elapsed().as_nanos() as u64
}

/// Sleeps until `t` (a [`now_ns`] value); returns at once when it has passed.
pub fn sleep_until(t: u64) {
    let now = now_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// Asks the kernel to wake this thread on time: the default 50 µs timer slack would show up
/// as latency in every open-loop schedule this thread keeps.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// The phases of a run: load starts at `start`, results count from `measure` (after the
/// warm-up) and load stops at `end`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: u64,
    pub measure: u64,
    pub end: u64,
}

impl Window {
    /// A window whose load starts a moment from now, so every thread that receives it can
    /// be ready before its first scheduled send.
    pub fn starting_soon(warmup: Duration, duration: Duration) -> Window {
        let start = now_ns() + 20_000_000;
        let measure = start + warmup.as_nanos() as u64;
        Window {
            start,
            measure,
            end: measure + duration.as_nanos() as u64,
        }
    }

    /// Whether an event stamped `t` (an intended send time) belongs to the measured phase.
    pub fn measured(&self, t: u64) -> bool {
        t >= self.measure && t < self.end
    }

    pub fn measured_secs(&self) -> f64 {
        (self.end - self.measure) as f64 / 1e9
    }
}
