//! How late one shard is: the delays its work meets before it runs, measured on the shard
//! itself, and whether it is too late to take on more.
//!
//! A shard whose CPU cannot keep up does not slow down evenly: work waits in its run queue
//! and read buffers, and everything it accepts is answered later and later. Two delays
//! show it, both observed on the shard that suffers them, so no state crosses cores:
//! - how long a piece of work (a request, a cross-shard publish) has waited before it runs:
//!   work that waited longer than the limit is refused ([`Lateness::admits`]) — its answer
//!   would come too late anyway, and refusing it is how the queue ahead of fresher work
//!   drains, the way CoDel drops what sat in a queue too long;
//! - the lag of a periodic timer on the shard's executor ([`watch`]): how long ready work
//!   waits for its turn, whatever the work is. When it is over the limit on consecutive
//!   ticks the queue is standing, not a burst, and the shard is late: it admits nothing
//!   new until a tick is on time again.
//!
//! What a shard refuses is its host's decision; this module only measures. It owns no
//! sockets and knows nothing of requests.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::signal::Signal;

/// How often [`watch`] measures the executor's lag while the shard has work.
pub const PERIOD: Duration = Duration::from_millis(25);

/// How often it measures once the shard has had no work for [`DOZE_AFTER`] ticks: an idle
/// relay then wakes a few times a second instead of forty (each wake-up of an idle executor
/// is a sleep, an interrupt and a dozen system calls). Work wakes the watch at once.
const IDLE_PERIOD: Duration = Duration::from_millis(250);

/// Quiet ticks in a row (no work admitted, no lag to speak of) before the watch dozes: a
/// second's worth.
const DOZE_AFTER: u32 = 40;

/// A lag below this is an idle executor's timer noise, not a queue.
const NO_LAG: Duration = Duration::from_millis(1);

/// How long the gauge's window of delays lasts: [`Lateness::peak`] is the largest delay of
/// the last complete window.
const WINDOW: Duration = Duration::from_secs(1);

/// Consecutive late timer ticks that make a shard late: one could be a burst.
const LATE_TICKS: u32 = 2;

/// One shard's lateness. Only its own shard touches it.
pub struct Lateness {
    /// Delays above this are too late; zero: nothing is (delays are still measured).
    limit: Duration,
    /// Timer ticks over the limit in a row.
    late_ticks: Cell<u32>,
    window_start: Cell<Instant>,
    window_peak: Cell<Duration>,
    last_peak: Cell<Duration>,
    /// Work was admitted since the watch's last tick.
    worked: Cell<bool>,
    /// Ticks in a row without work or lag.
    quiet_ticks: Cell<u32>,
    /// The watch measures every [`IDLE_PERIOD`]; the next admitted work raises `wake`.
    dozing: Cell<bool>,
    wake: Signal,
}

impl Lateness {
    pub fn new(limit: Duration, now: Instant) -> Lateness {
        Lateness {
            limit,
            late_ticks: Cell::new(0),
            window_start: Cell::new(now),
            window_peak: Cell::new(Duration::ZERO),
            last_peak: Cell::new(Duration::ZERO),
            worked: Cell::new(false),
            quiet_ticks: Cell::new(0),
            dozing: Cell::new(false),
            wake: Signal::default(),
        }
    }

    /// Whether this shard refuses anything at all.
    pub fn enabled(&self) -> bool {
        !self.limit.is_zero()
    }

    /// Whether work that has waited since `queued` may still run at `now`: no when it
    /// waited longer than the limit, or the shard is late.
    pub fn admits(&self, queued: Instant, now: Instant) -> bool {
        let waited = now.saturating_duration_since(queued);
        self.worked.set(true);
        if self.dozing.replace(false) {
            self.wake.raise();
        }
        self.observe(waited, now);
        !self.too_late(waited) && !self.is_late()
    }

    /// Records a tick of the executor's timer that came `lag` after it was due.
    pub fn tick(&self, lag: Duration, now: Instant) {
        self.observe(lag, now);
        let ticks = if self.too_late(lag) {
            self.late_ticks.get().saturating_add(1)
        } else {
            0
        };
        self.late_ticks.set(ticks);
        let quiet = !self.worked.replace(false) && lag < NO_LAG;
        let quiet_ticks = if quiet {
            self.quiet_ticks.get().saturating_add(1)
        } else {
            0
        };
        self.quiet_ticks.set(quiet_ticks);
        self.dozing.set(quiet_ticks >= DOZE_AFTER);
    }

    /// How long the watch sleeps before its next tick.
    fn period(&self) -> Duration {
        if self.dozing.get() {
            IDLE_PERIOD
        } else {
            PERIOD
        }
    }

    /// The executor has been late on consecutive ticks.
    pub fn is_late(&self) -> bool {
        self.late_ticks.get() >= LATE_TICKS
    }

    fn too_late(&self, delay: Duration) -> bool {
        self.enabled() && delay > self.limit
    }

    fn observe(&self, delay: Duration, now: Instant) {
        self.roll(now);
        if delay > self.window_peak.get() {
            self.window_peak.set(delay);
        }
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

/// Measures the executor's lag every [`PERIOD`] (every [`IDLE_PERIOD`] while the shard is
/// idle) for as long as `lateness` is held elsewhere: a sleep that ends later than asked
/// waited that much for its turn.
pub async fn watch(lateness: Rc<Lateness>) {
    loop {
        let period = lateness.period();
        let asked = Instant::now() + period;
        let timer = async {
            super::sleep(period).await;
            true
        };
        let woken = async {
            lateness.wake.wait().await;
            false
        };
        let on_timer = futures_lite::future::or(timer, woken).await;
        if Rc::strong_count(&lateness) == 1 {
            return;
        }
        if on_timer {
            let now = Instant::now();
            lateness.tick(now.saturating_duration_since(asked), now);
        }
    }
}

/// Starts [`watch`] on the current shard.
pub fn start(lateness: &Rc<Lateness>) {
    super::spawn_local(watch(Rc::clone(lateness))).detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn work_that_waited_longer_than_the_limit_is_refused() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        assert!(l.admits(t0, t0 + 100 * MS), "at the limit is not over it");
        assert!(!l.admits(t0, t0 + 101 * MS));
        assert!(
            l.admits(t0 + 150 * MS, t0 + 150 * MS),
            "fresher work is still taken: refusing the late drains the queue"
        );
    }

    #[test]
    fn consecutive_late_ticks_make_the_shard_late_until_one_is_on_time() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        l.tick(300 * MS, t0);
        assert!(!l.is_late(), "one late tick is a burst");
        assert!(l.admits(t0, t0));
        l.tick(150 * MS, t0 + 400 * MS);
        assert!(l.is_late());
        assert!(
            !l.admits(t0 + 400 * MS, t0 + 400 * MS),
            "fresh work, late shard"
        );
        l.tick(200 * MS, t0 + 600 * MS);
        assert!(l.is_late());
        l.tick(20 * MS, t0 + 650 * MS);
        assert!(!l.is_late(), "on time again");
        assert!(l.admits(t0 + 650 * MS, t0 + 650 * MS));
    }

    #[test]
    fn zero_is_never_late_but_still_measures() {
        let t0 = Instant::now();
        let l = Lateness::new(Duration::ZERO, t0);
        assert!(!l.enabled());
        for _ in 0..5 {
            l.tick(5000 * MS, t0);
        }
        assert!(!l.is_late());
        assert!(l.admits(t0, t0 + 5000 * MS));
        assert_eq!(l.peak(t0 + 6000 * MS), 5000 * MS);
    }

    #[test]
    fn an_idle_shard_is_watched_less_often_until_work_arrives() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        for _ in 0..DOZE_AFTER - 1 {
            l.tick(Duration::ZERO, t0);
        }
        assert_eq!(l.period(), PERIOD, "not yet a second of quiet");
        l.tick(Duration::ZERO, t0);
        assert_eq!(l.period(), IDLE_PERIOD);
        assert!(l.admits(t0, t0));
        assert_eq!(l.period(), PERIOD, "work wakes the watch");
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            l.wake.poll_wait(&mut cx).is_ready(),
            "and raises its signal"
        );
        l.tick(Duration::ZERO, t0);
        assert_eq!(
            l.period(),
            PERIOD,
            "a tick with work starts the count again"
        );
        for _ in 0..DOZE_AFTER {
            l.tick(Duration::ZERO, t0);
        }
        assert_eq!(l.period(), IDLE_PERIOD);
        l.tick(5 * MS, t0);
        assert_eq!(
            l.period(),
            PERIOD,
            "a lagging tick (work that is not a publish) wakes it too"
        );
    }

    #[test]
    fn lag_or_work_on_every_tick_keeps_the_watch_awake() {
        let t0 = Instant::now();
        let lagging = Lateness::new(100 * MS, t0);
        let working = Lateness::new(100 * MS, t0);
        for _ in 0..3 * DOZE_AFTER {
            lagging.tick(2 * MS, t0);
            working.admits(t0, t0);
            working.tick(Duration::ZERO, t0);
        }
        assert_eq!(lagging.period(), PERIOD);
        assert_eq!(working.period(), PERIOD);
    }

    #[test]
    fn the_gauge_shows_the_last_complete_window() {
        let t0 = Instant::now();
        let l = Lateness::new(100 * MS, t0);
        l.tick(30 * MS, t0);
        assert!(!l.admits(t0, t0 + 500 * MS));
        l.tick(10 * MS, t0 + 900 * MS);
        assert_eq!(l.peak(t0 + 999 * MS), Duration::ZERO, "window not complete");
        assert_eq!(l.peak(t0 + 1000 * MS), 500 * MS);
        l.tick(5 * MS, t0 + 1500 * MS);
        assert_eq!(l.peak(t0 + 2000 * MS), 5 * MS);
        assert_eq!(l.peak(t0 + 9000 * MS), Duration::ZERO, "idle since");
    }
}
