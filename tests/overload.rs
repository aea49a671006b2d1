//! Overload (issue #14 item 4): offered more than it can pass on, the relay refuses
//! explicitly (503 with `Retry-After` and a stable code) instead of queueing without bound.
//! The relay is the real binary and Valkey a real `valkey-server`, made slow by stalling
//! the link between them with `tools/faultproxy`; the curve under open-loop load is
//! measured by `tools/bench/overload.sh` (benches/BENCHMARKS.md), never here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pulsar_faultproxy::{Direction, FaultProxy};

/// How long the relay may take to reconnect once the link flows again (backoff up to 5 s).
const RECONNECT: Duration = Duration::from_secs(15);
const PAYLOAD_BYTES: usize = 32 * 1024;
const BACKLOG_BYTES: usize = 256 * 1024;

fn post(http: &mut Http, topic: &str, i: usize) -> Response {
    let body = format!(
        r#"{{"topic":"{topic}","payload":{{"i":{i},"pad":"{}"}}}}"#,
        "x".repeat(PAYLOAD_BYTES)
    );
    http.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// With memory acks a publish is answered before Valkey has it, so while Valkey stalls the
/// writes pile up in the shard's backlog, each holding its message. The count limit
/// (`storage.max_pending_writes`, left at 100,000 here) would let that reach gigabytes
/// with large messages; `storage.max_pending_bytes` stops it: once that many bytes wait,
/// publishes get 503 `BACKLOG_FULL` with `Retry-After`, and every later one too (the
/// backlog does not grow by a single write), until Valkey flows again and gets exactly
/// the accepted messages, in order.
#[test]
fn a_stalled_valkey_with_memory_acks_refuses_publishes_beyond_the_backlog_bytes() {
    let valkey = Valkey::start();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], valkey.port)))
        .expect("start the fault proxy");
    let relay = Relay::start_on_valkey_port(
        proxy.port(),
        &[
            ("PULSAR_STORAGE_ACK", "memory"),
            ("PULSAR_STORAGE_MAX_PENDING_BYTES", "256KiB"),
            ("PULSAR_VALKEY_COMMAND_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "500ms"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("overload-bytes", 0);
    let key = stream_key(&topic);
    let mut http = relay.http();
    let first = id_of(&post(&mut http, &topic, 0).json()).to_string();
    assert!(
        eventually(Duration::from_secs(10), || valkey.xlen(&key) == 1),
        "the first write did not reach Valkey"
    );

    proxy.stall(Direction::Both);
    let mut accepted = vec![first];
    let refused = loop {
        let resp = post(&mut http, &topic, accepted.len());
        if resp.status != 201 {
            break resp;
        }
        accepted.push(id_of(&resp.json()).to_string());
        assert!(
            (accepted.len() - 1) * PAYLOAD_BYTES <= BACKLOG_BYTES + PAYLOAD_BYTES,
            "{} publishes of {PAYLOAD_BYTES} bytes accepted into a {BACKLOG_BYTES}-byte backlog",
            accepted.len() - 1
        );
    };
    refused.assert_error(503, "BACKLOG_FULL");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    let waiting = accepted.len() - 1;
    assert!(
        waiting * PAYLOAD_BYTES >= BACKLOG_BYTES - PAYLOAD_BYTES,
        "refused with only {waiting} writes of {PAYLOAD_BYTES} bytes waiting"
    );

    // Keeps refusing, and nothing more waits: the backlog's memory is bounded.
    for i in 0..50 {
        post(&mut http, &topic, 1000 + i).assert_error(503, "BACKLOG_FULL");
    }
    assert_eq!(
        relay.metrics().sum("pulsar_valkey_backlog") as usize,
        waiting,
        "refused publishes were queued for Valkey"
    );

    proxy.flow(Direction::Both);
    relay.wait_ready(RECONNECT);
    assert!(
        eventually(RECONNECT, || valkey.xlen(&key) as usize >= accepted.len()),
        "the backlog was not flushed to Valkey"
    );
    assert_eq!(
        valkey.stream_ids(&key),
        accepted,
        "Valkey holds exactly the accepted messages, in order, once"
    );
    post(&mut http, &topic, 2000).assert_status(201);
}
