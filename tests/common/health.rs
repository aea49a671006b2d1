//! The relay's health after an attack or a fault: its connection gauges come back to a
//! quiet baseline, it still serves, and its memory settles near where it started.

use std::time::Duration;

use super::{assert_relay_still_serves, eventually, Relay};

/// How long a quiet relay may take to settle before a baseline is measured.
const SETTLE: Duration = Duration::from_secs(10);

/// Open client connections over all shards. The scrape's own connection is included, so a
/// quiet relay reports 1.
pub fn connections(relay: &Relay) -> u64 {
    relay.metrics().sum("pulsar_connections") as u64
}

/// The state an attack must leave behind: measured on a warmed-up, quiet relay.
pub struct Baseline {
    pub connections: u64,
    pub websockets: u64,
    pub rss_kib: u64,
}

impl Baseline {
    /// Warms the relay up with ordinary traffic (so allocator arenas and lazily created
    /// state exist), waits until it is quiet, and measures.
    pub fn take(relay: &Relay) -> Baseline {
        assert_relay_still_serves(relay);
        for _ in 0..20 {
            relay.request("GET", "/health", &[], b"").assert_status(200);
        }
        let mut connections = 0;
        assert!(
            eventually(SETTLE, || {
                connections = self::connections(relay);
                connections <= 1
            }),
            "a quiet relay does not settle at (at most) the scrape's connection: {connections}"
        );
        Baseline {
            connections,
            websockets: relay.metrics().sum("pulsar_websocket_connections") as u64,
            rss_kib: relay.rss_kib(),
        }
    }

    /// The relay serves normal traffic, its connection gauges come back to the baseline
    /// within a few seconds, and its RSS settles within `rss_slack_mib` of the baseline.
    #[track_caller]
    pub fn assert_recovered(&self, relay: &Relay, rss_slack_mib: u64) {
        let mut open = 0;
        let settled = eventually(Duration::from_secs(10), || {
            open = connections(relay);
            open == self.connections
        });
        assert!(
            settled,
            "pulsar_connections is {open}, baseline {}: connections leaked\n{}",
            self.connections,
            relay.output()
        );
        let ws = relay.metrics().sum("pulsar_websocket_connections") as u64;
        assert_eq!(ws, self.websockets, "pulsar_websocket_connections leaked");
        assert_relay_still_serves(relay);
        self.assert_memory_near(relay, rss_slack_mib);
    }

    #[track_caller]
    pub fn assert_memory_near(&self, relay: &Relay, slack_mib: u64) {
        let limit = self.rss_kib + slack_mib * 1024;
        let mut now = 0;
        let ok = eventually(Duration::from_secs(5), || {
            now = relay.rss_kib();
            now <= limit
        });
        eprintln!(
            "relay RSS {now} KiB, baseline {} KiB (allowed +{slack_mib} MiB)",
            self.rss_kib
        );
        assert!(
            ok,
            "relay RSS {now} KiB is more than {slack_mib} MiB over the baseline {} KiB",
            self.rss_kib
        );
    }
}
