//! The connection budget: how many client connections the shards serve, derived from
//! `limits.max_connections` and the process's file-descriptor limit, and what happens to a
//! connection beyond it.
//!
//! Every connection costs a descriptor, and so do the listeners, the executors' rings, the
//! Valkey links and an answer that sheds a connection. Serving until accept(2) fails with
//! EMFILE leaves nothing for those: the relay could no longer answer even `/health`. So the
//! cap sits a reserve below RLIMIT_NOFILE. Beyond it a few connections ("probes") may still
//! send one request, which is served only if it is a health check or a metrics scrape;
//! every other connection is answered 503 at once and closed.
//!
//! Owns the arithmetic and the probe count (atomics shared by all shards); the accept loop
//! asks [`ConnectionBudget::admit`], and must not count connections here itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Descriptors kept free whatever the limit: standard streams, listeners, executor rings
/// and event fds, Valkey links, answers that shed connections.
const RESERVE_BASE: u64 = 64;
const RESERVE_PER_SHARD: u64 = 16;
/// And a share of the limit, for the probes and for bursts of shed connections.
const RESERVE_DIVISOR: u64 = 100;

pub struct ConnectionBudget {
    /// Connections served; a new one beyond it is a probe or shed.
    pub cap: usize,
    /// Connections beyond the cap that may send one health-check request at a time.
    pub probe_slots: usize,
    probes: Arc<AtomicUsize>,
}

/// What to do with a newly accepted connection.
pub enum Admission {
    Serve,
    /// Serve one request if it is a health check or a scrape; the slot is freed on drop.
    Probe(ProbeSlot),
    /// Answer 503 and close.
    Shed,
}

pub struct ProbeSlot(Arc<AtomicUsize>);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionBudget {
    /// The budget for this process: its soft RLIMIT_NOFILE, `configured` (0 = derive from
    /// the limit alone) and the shard count.
    pub fn for_process(configured: usize, shards: usize) -> ConnectionBudget {
        ConnectionBudget::new(configured, shards, open_file_limit())
    }

    /// `nofile` is the descriptor limit, `None` when unlimited. A configured cap above what
    /// the limit allows is lowered to it.
    pub fn new(configured: usize, shards: usize, nofile: Option<u64>) -> ConnectionBudget {
        let (derived, reserve) = match nofile {
            Some(limit) => {
                let reserve =
                    RESERVE_BASE + RESERVE_PER_SHARD * shards as u64 + limit / RESERVE_DIVISOR;
                (
                    usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX),
                    reserve,
                )
            }
            None => (usize::MAX, RESERVE_BASE),
        };
        let cap = match configured {
            0 => derived,
            n => n.min(derived),
        };
        ConnectionBudget {
            cap,
            probe_slots: usize::try_from(reserve / 4).unwrap_or(usize::MAX),
            probes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What to do with a new connection while `open` are open (all shards).
    pub fn admit(&self, open: usize) -> Admission {
        if open < self.cap {
            return Admission::Serve;
        }
        if self.probes.fetch_add(1, Ordering::Relaxed) < self.probe_slots {
            Admission::Probe(ProbeSlot(Arc::clone(&self.probes)))
        } else {
            self.probes.fetch_sub(1, Ordering::Relaxed);
            Admission::Shed
        }
    }
}

/// The soft RLIMIT_NOFILE, `None` when unlimited (or unreadable, which Linux never is).
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_reserve_below_the_file_limit() {
        let budget = ConnectionBudget::new(0, 2, Some(20_000));
        let reserve = 64 + 32 + 200;
        assert_eq!(budget.cap, 20_000 - reserve);
        assert_eq!(budget.probe_slots, reserve / 4);
        assert_eq!(ConnectionBudget::new(0, 2, Some(256)).cap, 256 - 98);
        assert_eq!(
            ConnectionBudget::new(0, 2, Some(50)).cap,
            0,
            "no room at all"
        );
        assert_eq!(ConnectionBudget::new(0, 2, None).cap, usize::MAX);
        // A configured cap is kept below the derived one, never raised to it.
        assert_eq!(ConnectionBudget::new(500, 2, Some(20_000)).cap, 500);
        assert_eq!(
            ConnectionBudget::new(50_000, 2, Some(20_000)).cap,
            20_000 - reserve
        );
    }

    #[test]
    fn beyond_the_cap_probes_are_counted_and_the_rest_shed() {
        let budget = ConnectionBudget::new(0, 1, Some(180));
        assert_eq!((budget.cap, budget.probe_slots), (180 - 81, 20));
        assert!(matches!(budget.admit(budget.cap - 1), Admission::Serve));
        let probes: Vec<Admission> = (0..20).map(|_| budget.admit(budget.cap)).collect();
        assert!(probes.iter().all(|a| matches!(a, Admission::Probe(_))));
        assert!(matches!(budget.admit(budget.cap), Admission::Shed));
        drop(probes);
        assert!(matches!(budget.admit(budget.cap + 5), Admission::Probe(_)));
    }
}
