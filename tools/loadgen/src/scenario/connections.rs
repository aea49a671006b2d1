//! `connections`: ramp to many idle WebSocket connections and hold them.
//!
//! Handshakes run on `--threads` blocking threads (optionally paced by `--rate`); each
//! thread then keeps its connections on one epoll set, answering the relay's pings, until
//! the hold ends. One source address has only the ephemeral port range toward the relay's
//! port, so beyond it connections are spread over 127.0.0.1, 127.0.0.2, … (all loopback).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use serde_json::json;

use super::plural;
use crate::args::Common;
use crate::clock::{now_ns, sleep_until};
use crate::cpu::{cores, rss_kib, CpuSample};
use crate::poller::Poller;
use crate::progress::Live;
use crate::report::{Latency, Row, Summary};
use crate::ws::{self, Drained, WsConn};

/// Ephemeral ports per source address left to other programs.
const PORT_MARGIN: usize = 1000;
/// A thread gives up after this many failed handshakes in a row.
const FAILURE_STREAK: u32 = 10;
/// Idle connections read only pings: a small input buffer keeps the client's memory low.
const READ_BUFFER: usize = 1024;

struct Ramped {
    latency: Latency,
    established: u64,
    failed: u64,
    first_error: Option<String>,
}

pub fn run(
    common: &Common,
    count: usize,
    rate: Option<f64>,
    wanted_sources: Option<usize>,
) -> Result<Summary, String> {
    let sources = source_addresses(
        common.target.addr.ip(),
        count,
        wanted_sources,
        ephemeral_ports(),
    )?;
    // Blocking handshakes mostly wait for the relay: one thread per core overlaps them.
    let threads = common.threads.unwrap_or_else(cores).min(count);
    let live = Live::new();
    let rss_before = common.server_pid.and_then(rss_kib);
    let cpu_start = CpuSample::take(common.server_pid);
    let start = now_ns();
    let (ramped_tx, ramped_rx) = unbounded::<Ramped>();
    let (held_tx, held_rx) = unbounded::<u64>();
    let mut handles = Vec::new();
    for t in 0..threads {
        let worker = Worker {
            target: common.target.clone(),
            token: common.token.clone(),
            numbers: (t..count).step_by(threads).collect(),
            sources: sources.clone(),
            rate,
            start,
            live: Arc::clone(&live),
            ramped: ramped_tx.clone(),
            held: held_tx.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("connections-{t}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    drop((ramped_tx, held_tx));

    let verbose = count >= 5000 || common.duration + common.warmup >= Duration::from_secs(3);
    let mut latency = Latency::new();
    let (mut established, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    let mut reported = 0;
    let mut next_line = start + 1_000_000_000;
    while reported < threads {
        match ramped_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                reported += 1;
                latency.merge(&r.latency);
                established += r.established;
                failed += r.failed;
                if first_error.is_none() {
                    first_error = r.first_error;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                first_error.get_or_insert("a connection thread died".to_string());
                break;
            }
        }
        if verbose && now_ns() >= next_line {
            eprintln!(
                "[{:>4}s] ramp      {:>10} connections",
                (next_line - start) / 1_000_000_000,
                live.ops()
            );
            next_line += 1_000_000_000;
        }
    }
    let ramp_end = now_ns();
    let cpu = cpu_start.until(&CpuSample::take(common.server_pid));
    let ramp_s = (ramp_end - start) as f64 / 1e9;

    let measure = ramp_end + common.warmup.as_nanos() as u64;
    let end = measure + common.duration.as_nanos() as u64;
    let mut rss_after = None;
    let mut next_line = ramp_end + 1_000_000_000;
    loop {
        let now = now_ns();
        if rss_after.is_none() && now >= measure {
            rss_after = common.server_pid.and_then(rss_kib);
        }
        if now >= end {
            break;
        }
        if now >= next_line {
            if verbose {
                eprintln!(
                    "[{:>4}s] hold      {:>10} open",
                    (next_line - start) / 1_000_000_000,
                    live.ops() - live.errors()
                );
            }
            next_line += 1_000_000_000;
        }
        let wake = if rss_after.is_none() { measure } else { end };
        sleep_until(wake.min(next_line));
    }
    live.stop();
    let dropped: u64 = held_rx.iter().sum();
    for h in handles {
        let _ = h.join();
    }

    let open = established - dropped;
    let per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if established > 0 => {
            json!(((a as f64 - b as f64) * 1024.0 / established as f64).round())
        }
        _ => json!(null),
    };
    let setup = format!(
        "ramp to {} on {} thread(s){}, from {}, held {:.1} s; cpu over the ramp",
        plural(count, "connection"),
        threads,
        match rate {
            Some(r) => format!(" at {r} handshakes/s"),
            None => String::new(),
        },
        plural(sources.len().max(1), "source address"),
        common.duration.as_secs_f64()
    );
    Ok(Summary {
        scenario: "connections",
        setup,
        measured_s: common.duration.as_secs_f64(),
        warmup_s: common.warmup.as_secs_f64(),
        rows: vec![Row {
            name: "handshake",
            per: "handshake",
            count: established,
            errors: failed + dropped,
            rate: established as f64 / ramp_s.max(1e-9),
            latency,
        }],
        extras: vec![
            ("connections", json!(open)),
            ("target_count", json!(count)),
            ("failed", json!(failed)),
            ("dropped", json!(dropped)),
            ("ramp_s", json!((ramp_s * 100.0).round() / 100.0)),
            ("source_addresses", json!(sources.len().max(1))),
            ("server_rss_before_kib", json!(rss_before)),
            ("server_rss_after_kib", json!(rss_after)),
            ("server_rss_per_connection_bytes", per_connection),
        ],
        cpu,
        server_pid: common.server_pid,
        first_error,
        duplicates: 0,
        failure: None,
    })
}

/// Source addresses to spread `count` connections over (empty: let the kernel choose):
/// `wanted` of them, or as many as the ephemeral port range needs.
fn source_addresses(
    target: IpAddr,
    count: usize,
    wanted: Option<usize>,
    port_range: usize,
) -> Result<Vec<IpAddr>, String> {
    let per_address = port_range.saturating_sub(PORT_MARGIN).max(1000);
    let addresses = match wanted {
        Some(n) => n,
        None if count <= per_address => return Ok(Vec::new()),
        None => count.div_ceil(per_address),
    };
    match target {
        IpAddr::V4(ip) if ip.is_loopback() && addresses <= 254 => Ok((1..=addresses as u8)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect()),
        _ => Err(format!(
            "{count} connections need {addresses} source addresses ({per_address} ports each); \
             that is only done for a relay on 127.0.0.1 (any 127.0.0.x is local)"
        )),
    }
}

/// Ports in the kernel's ephemeral range (what one source address has toward one port).
fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|n| n.parse::<usize>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_000)
}

struct Worker {
    target: crate::http::Target,
    token: String,
    numbers: Vec<usize>,
    sources: Vec<IpAddr>,
    rate: Option<f64>,
    start: u64,
    live: Arc<Live>,
    ramped: Sender<Ramped>,
    held: Sender<u64>,
}

impl Worker {
    fn run(self) {
        let mut ramped = Ramped {
            latency: Latency::new(),
            established: 0,
            failed: 0,
            first_error: None,
        };
        let mut poller = match Poller::new() {
            Ok(p) => p,
            Err(e) => {
                ramped.first_error = Some(format!("epoll: {e}"));
                let _ = self.ramped.send(ramped);
                let _ = self.held.send(0);
                return;
            }
        };
        let mut open: Vec<Option<WsConn>> = Vec::with_capacity(self.numbers.len());
        let mut streak = 0;
        for &n in &self.numbers {
            if let Some(rate) = self.rate {
                sleep_until(self.start + (n as f64 * 1e9 / rate) as u64);
            }
            let source = (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()]);
            let began = now_ns();
            let result = ws::open(&self.target, &self.token, source, READ_BUFFER)
                .and_then(|ws| ws.set_nonblocking().map(|()| ws))
                .and_then(|ws| {
                    poller
                        .add(ws.fd(), open.len(), false)
                        .map(|()| ws)
                        .map_err(|e| format!("epoll: {e}"))
                });
            match result {
                Ok(ws) => {
                    ramped.latency.record_ns(now_ns() - began);
                    ramped.established += 1;
                    open.push(Some(ws));
                    self.live.add(1, 0);
                    streak = 0;
                }
                Err(e) => {
                    ramped.failed += 1;
                    ramped.first_error.get_or_insert(e);
                    streak += 1;
                    if streak >= FAILURE_STREAK {
                        break;
                    }
                }
            }
        }
        let _ = self.ramped.send(ramped);

        let mut dropped = 0;
        while !self.live.stopped() {
            let ready = match poller.wait(Some(Duration::from_millis(100))) {
                Ok(n) => n,
                Err(_) => break,
            };
            for k in 0..ready {
                let slot = &mut open[poller.event(k).token];
                if let Some(ws) = slot.as_mut() {
                    if let Drained::Closed(_) = ws.drain(|_| {}) {
                        poller.delete(ws.fd());
                        *slot = None;
                        dropped += 1;
                        self.live.add(0, 1);
                    }
                }
            }
        }
        let _ = self.held.send(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn one_address_while_ports_last() {
        assert!(source_addresses(LOCAL, 19_000, None, 28_232)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn more_addresses_when_ports_run_short() {
        let got = source_addresses(LOCAL, 60_000, None, 28_232).unwrap();
        let want: Vec<IpAddr> = (1..=3)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            source_addresses(LOCAL, 10, Some(2), 28_232).unwrap().len(),
            2
        );
        let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert!(source_addresses(remote, 60_000, None, 28_232).is_err());
    }
}
