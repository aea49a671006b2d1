//! How late one shard is: the delays its work meets before it runs, measured on the shard
//! itself, and whether it is too late to take on more.
//!
//! A shard whose CPU cannot keep up does not slow down evenly: work waits in its run queue
//! and read buffers, and everything it accepts is answered later and later. Three delays
//! show it, all observed on the shard that suffers them, so no state crosses cores:
//! - the lag of a periodic timer on the shard's executor ([`watch`]): how long ready work
//!   waits for its turn, whatever the work is;
//! - how long a request waited between being read and being handled (its connection's
//!   earlier requests and every other connection's work ran first);
//! - how long a cross-shard call waited on its way to this shard (the mesh channel and this
//!   shard's run queue).
//!
//! Any delay over the limit makes the shard late for as long again (so it stays late while
//! delays keep coming, and recovers within one limit of them stopping). What a late shard
//! refuses is its host's decision; this module only measures. It owns no sockets and knows
//! nothing of requests.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often [`watch`] measures the executor's lag.
pub const PERIOD: Duration = Duration::from_millis(25);

/// How long the gauge's window of delays lasts: [`Lateness::peak`] is the largest delay of
/// the last complete window.
const WINDOW: Duration = Duration::from_secs(1);

/// One shard's lateness. Only its own shard touches it.
pub struct Lateness {
    /// Delays above this make the shard late; zero: never late (delays are still measured).
    limit: Duration,
    late_until: Cell<Option<Instant>>,
    window_start: Cell<Instant>,
    window_peak: Cell<Duration>,
    last_peak: Cell<Duration>,
}

impl Lateness {
    pub fn new(limit: Duration, now: Instant) -> Lateness {
        Lateness {
            limit,
            late_until: Cell::new(None),
            window_start: Cell::new(now),
            window_peak: Cell::new(Duration::ZERO),
            last_peak: Cell::new(Duration::ZERO),
        }
    }

    /// Whether this shard refuses anything at all.
    pub fn enabled(&self) -> bool {
        !self.limit.is_zero()
    }

    /// Records that some work waited `delay` before it ran at `now`.
    pub fn observe(&self, delay: Duration, now: Instant) {
        self.roll(now);
        if delay > self.window_peak.get() {
            self.window_peak.set(delay);
        }
        if self.enabled() && delay > self.limit {
            let until = now + self.limit;
            if self.late_until.get().is_none_or(|t| t < until) {
                self.late_until.set(Some(until));
            }
        }
    }

    /// Whether work that has waited since `queued` may still run at `now`: no when it
    /// waited longer than the limit, or the shard is late.
    pub fn admits(&self, queued: Instant, now: Instant) -> bool {
        self.observe(now.saturating_duration_since(queued), now);
        !self.is_late(now)
    }

    pub fn is_late(&self, now: Instant) -> bool {
        self.late_until.get().is_some_and(|until| now < until)
    }

    /// The largest delay seen in the last complete window (about a second): the gauge.
    pub fn peak(&self, now: Instant) -> Duration {
        self.roll(now);
        self.last_peak.get()
    }

    fn roll(&self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start.get());
        if elapsed < WINDOW {
            return;
        }
        // A window in which nothing was observed (an idle shard) has a peak of zero.
        let peak = if elapsed < 2 * WINDOW {
            self.window_peak.get()
        } else {
            Duration::ZERO
        };
        self.last_peak.set(peak);
        self.window_peak.set(Duration::ZERO);
        self.window_start.set(now);
    }
}

/// Measures the executor's lag every [`PERIOD`] for as long as `lateness` is held
/// elsewhere: a sleep that ends later than asked waited that much for its turn.
pub async fn watch(lateness: std::rc::Weak<Lateness>) {
    loop {
        let asked = Instant::now() + PERIOD;
        super::sleep(PERIOD).await;
        let now = Instant::now();
        let Some(lateness) = lateness.upgrade() else {
            return;
        };
        lateness.observe(now.saturating_duration_since(asked), now);
    }
}

/// Starts [`watch`] on the current shard.
pub fn start(lateness: &Rc<Lateness>) {
    super::spawn_local(watch(Rc::downgrade(lateness))).detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_delay_over_the_limit_makes_the_shard_late_for_as_long_again() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        l.observe(100 * MS, t0);
        assert!(!l.is_late(t0), "at the limit is not over it");
        l.observe(101 * MS, t0);
        assert!(l.is_late(t0) && l.is_late(t0 + 99 * MS));
        assert!(!l.is_late(t0 + 100 * MS), "recovers once delays stop");
        // Later delays extend it, earlier ones never shorten it.
        l.observe(500 * MS, t0 + 50 * MS);
        l.observe(500 * MS, t0 + 10 * MS);
        assert!(l.is_late(t0 + 149 * MS) && !l.is_late(t0 + 150 * MS));
    }

    #[test]
    fn admits_refuses_what_waited_too_long_and_what_comes_after() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        assert!(l.admits(t0, t0 + 100 * MS));
        assert!(!l.admits(t0, t0 + 150 * MS), "waited too long");
        assert!(
            !l.admits(t0 + 200 * MS, t0 + 200 * MS),
            "fresh work on a late shard"
        );
        assert!(l.admits(t0 + 250 * MS, t0 + 250 * MS));
    }

    #[test]
    fn zero_is_never_late_but_still_measures() {
        let t0 = Instant::now();
        let l = Lateness::new(Duration::ZERO, t0);
        assert!(!l.enabled());
        assert!(l.admits(t0, t0 + 5000 * MS));
        assert!(!l.is_late(t0 + 5000 * MS));
        assert_eq!(l.peak(t0 + 6000 * MS), 5000 * MS);
    }

    #[test]
    fn the_gauge_shows_the_last_complete_window() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        l.observe(30 * MS, t0);
        l.observe(70 * MS, t0 + 500 * MS);
        l.observe(10 * MS, t0 + 900 * MS);
        assert_eq!(l.peak(t0 + 999 * MS), Duration::ZERO, "window not complete");
        assert_eq!(l.peak(t0 + 1000 * MS), 70 * MS);
        l.observe(5 * MS, t0 + 1500 * MS);
        assert_eq!(l.peak(t0 + 2000 * MS), 5 * MS);
        assert_eq!(l.peak(t0 + 9000 * MS), Duration::ZERO, "idle since");
    }
}
