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

    // Every accepted write waits, with the time-based trims that ride along with some of
    // them (one per topic per second: more of them when the machine is slow).
    let backlog = || relay.metrics().sum("pulsar_valkey_backlog") as usize;
    let at_refusal = backlog();
    assert!(
        at_refusal >= waiting,
        "{at_refusal} writes waiting for {waiting} accepted"
    );

    // Keeps refusing, and nothing more waits: the backlog's memory is bounded.
    for i in 0..50 {
        post(&mut http, &topic, 1000 + i).assert_error(503, "BACKLOG_FULL");
    }
    assert_eq!(
        backlog(),
        at_refusal,
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

/// Producers that pipeline, each on its own connection: the relay reads up to 64 KiB of
/// each (about 200 of these requests) at once, so thousands wait behind their
/// connection's earlier requests and every other connection's work, far longer than the
/// small `limits.max_queue_delay` the shedding test sets.
const SHED_CONNECTIONS: usize = 16;
const SHED_PER_CONNECTION: usize = 500;

/// Every connection's publishes to `topic`, answered: `(connection, i, response)`.
fn pipelined_load(relay: &Relay, topic: &str) -> Vec<(usize, usize, Response)> {
    let token = rw_token();
    let senders: Vec<_> = (0..SHED_CONNECTIONS)
        .map(|c| {
            let (addr, topic, token) = (relay.addr, topic.to_owned(), token.clone());
            std::thread::spawn(move || {
                let mut requests = Vec::new();
                for i in 0..SHED_PER_CONNECTION {
                    let body = format!(r#"{{"topic":"{topic}","payload":{{"c":{c},"i":{i}}}}}"#);
                    requests.extend(encode_request(
                        "POST",
                        "/api/v1/messages",
                        &[
                            auth_header(&token).as_pair(),
                            ("Content-Type", "application/json"),
                        ],
                        body.as_bytes(),
                    ));
                }
                let answers = pipelined(addr, requests, SHED_PER_CONNECTION);
                answers
                    .into_iter()
                    .enumerate()
                    .map(|(i, resp)| (c, i, resp))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    senders
        .into_iter()
        .flat_map(|s| s.join().expect("a producer thread"))
        .collect()
}

/// The topic's history, oldest first, paged through `GET /api/v1/topics/{name}/messages`:
/// each message's `(c, i)`.
fn stored(relay: &Relay, topic: &str) -> Vec<(usize, usize)> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    let mut http = relay.http();
    loop {
        let resp = http.request(
            "GET",
            &format!("/api/v1/topics/{topic}/messages?order=asc&limit=100&cursor={cursor}"),
            &[auth_header(&rw_token()).as_pair()],
            b"",
        );
        // A topic nothing was ever published to does not exist.
        if resp.status == 404 && all.is_empty() {
            resp.assert_error(404, "TOPIC_NOT_FOUND");
            return all;
        }
        resp.assert_status(200);
        let page = resp.json();
        let messages = page["messages"].as_array().expect("messages").clone();
        if messages.is_empty() {
            return all;
        }
        cursor = page["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .to_owned();
        all.extend(messages.iter().map(|m| {
            let at = |k: &str| m["payload"][k].as_u64().expect("stamped payload") as usize;
            (at("c"), at("i"))
        }));
    }
}

/// CPU overload (issue #14 item 4): a shard whose requests wait longer than
/// `limits.max_queue_delay` between being read and being handled refuses new publishes,
/// cheaply and explicitly, instead of answering all of them later and later: 503
/// `OVERLOADED` with `Retry-After`. A refused publish is not stored (the topic's history
/// holds exactly the accepted ones), each refusal is counted, health checks are still
/// answered, and once the load stops publishes are accepted again.
///
/// Deterministic without timing: thousands of publishes read at once cannot all be handled
/// within 10 ms of being read, on any machine (a debug build takes tens of microseconds
/// for one), so some wait longer; a busier machine only makes more of them late.
#[test]
fn a_late_shard_refuses_publishes_with_overloaded_and_stores_none_of_them() {
    let relay = Relay::start_with(&[
        ("PULSAR_LIMITS_MAX_QUEUE_DELAY", "10ms"),
        ("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "100000"),
    ]);
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("overload-shed", 1);

    let answers = pipelined_load(&relay, &topic);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for (c, i, resp) in &answers {
        if resp.status == 201 {
            accepted.push((*c, *i));
            continue;
        }
        resp.assert_error(503, "OVERLOADED");
        assert_eq!(resp.header("retry-after"), Some("1"), "{:?}", resp.headers);
        refused += 1;
    }
    assert!(refused > 0, "nothing of {} was refused", answers.len());
    let refusals = relay.metrics().sum("pulsar_publishes_shed_total");
    assert_eq!(refusals as usize, refused, "every refusal counted, once");

    let mut kept = stored(&relay, &topic);
    kept.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(
        kept.len(),
        accepted.len(),
        "{refused} refused, {} accepted",
        accepted.len()
    );
    assert!(
        kept == accepted,
        "the history is not the accepted publishes"
    );

    // Recovery: with the load gone the shard catches up, and a publish is taken again.
    relay.request("GET", "/health", &[], b"").assert_status(200);
    let mut http = relay.http();
    assert!(
        eventually(Duration::from_secs(30), || {
            let body = format!(r#"{{"topic":"{topic}","payload":{{"c":99,"i":0}}}}"#);
            let resp = http.request(
                "POST",
                "/api/v1/messages",
                &[
                    auth_header(&rw_token()).as_pair(),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            resp.status == 201
        }),
        "publishes still refused once the load stopped"
    );
}

/// `limits.max_queue_delay: 0` turns shedding off: the same load is all accepted, however
/// late, and nothing is ever refused as `OVERLOADED`.
#[test]
fn with_shedding_off_every_publish_is_accepted_however_late() {
    let relay = Relay::start_with(&[
        ("PULSAR_LIMITS_MAX_QUEUE_DELAY", "0"),
        ("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "100000"),
    ]);
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("overload-unshed", 1);
    let answers = pipelined_load(&relay, &topic);
    for (_, _, resp) in &answers {
        assert_eq!(resp.status, 201, "{}", resp.text());
    }
    assert_eq!(relay.metrics().sum("pulsar_publishes_shed_total"), 0.0);
    assert_eq!(stored(&relay, &topic).len(), answers.len());
}
