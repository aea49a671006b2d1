//! The network between the pieces (issue #14): a fault-injecting proxy
//! (`tools/faultproxy`) between the relay and a real Valkey, and between clients and the
//! relay. Stalled, slow, reset and half-open links, and clients behind 1-byte segments and
//! stalls. The relay is the real binary, Valkey a real `valkey-server`; only the link is
//! tampered with.
//!
//! Timeouts are configured short (about a second) so each test takes seconds. Assertions
//! are about correctness (what is answered, what Valkey holds, what is closed); rates are
//! measured with `pulsar-loadgen` (benches/BENCHMARKS.md), never here.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsar_faultproxy::{Direction, FaultProxy, Segments};
use serde_json::{json, Value};
use tungstenite::Message;

/// `valkey.command_timeout` of the stall tests.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of a configured timeout for the relay to act on it: its connection clock
/// ticks every 250 ms, and the machine is shared.
const SLACK: Duration = Duration::from_millis(1500);
/// How long the relay may take to reconnect once a link flows again (its backoff is
/// capped at 5 s, plus jitter).
const RECONNECT: Duration = Duration::from_secs(15);

/// A relay on `proxy` (in front of a Valkey), ready.
fn relay_behind(proxy: &FaultProxy, env: &[(&str, &str)]) -> Relay {
    let relay = Relay::start_on_valkey_port(proxy.port(), env);
    relay.wait_ready(Duration::from_secs(10));
    relay
}

fn proxy_to(port: u16) -> FaultProxy {
    FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).expect("start the fault proxy")
}

fn message_body(topic: &str, payload: &str) -> String {
    format!(r#"{{"topic":"{topic}","payload":{payload}}}"#)
}

/// POST /api/v1/messages with a read-write token on `http`; any status.
fn post(http: &mut Http, topic: &str, payload: &str) -> Response {
    http.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
        ],
        message_body(topic, payload).as_bytes(),
    )
}

/// Waits for `/ready` to turn 503 within `valkey.command_timeout` (plus [`SLACK`]) of
/// `stalled_at`, and checks it names Valkey.
#[track_caller]
fn assert_unready_within_command_timeout(relay: &Relay, stalled_at: Instant) {
    let deadline = stalled_at + COMMAND_TIMEOUT + SLACK;
    let ready = relay.wait_not_ready(deadline.saturating_duration_since(Instant::now()));
    eprintln!(
        "the stalled link was noticed after {:?}",
        stalled_at.elapsed()
    );
    assert!(
        ready.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        ready.text()
    );
}

#[track_caller]
fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    assert!(
        eventually(timeout, &mut check),
        "timed out after {timeout:?}: {what}"
    );
}

/// How often the relay logged that a Valkey link was lost.
fn links_lost(relay: &Relay) -> usize {
    relay.stderr().matches("Valkey connection lost").count()
}

/// Every acknowledged message is in the topic's stream exactly once, in order, under its
/// acknowledged ID and with its payload, and nothing else is (`acked`: ID and the `i` of
/// the payload `{"i":i}`).
#[track_caller]
fn assert_stream_holds_exactly(valkey: &Valkey, topic: &str, acked: &[(String, u64)]) {
    let entries = valkey.xrange(&stream_key(topic));
    let stored: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.id.clone(), e.field("p").unwrap_or_default().to_string()))
        .collect();
    let expected: Vec<(String, String)> = acked
        .iter()
        .map(|(id, i)| (id.clone(), format!(r#"{{"i":{i}}}"#)))
        .collect();
    if stored != expected {
        let ids: HashSet<&String> = stored.iter().map(|(id, _)| id).collect();
        let lost: Vec<&String> = acked
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !ids.contains(id))
            .collect();
        let mut payloads: Vec<&String> = stored.iter().map(|(_, p)| p).collect();
        payloads.sort();
        let twice: Vec<&&String> = payloads
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| &w[0])
            .collect();
        panic!(
            "stream of {topic} differs from the acknowledged messages: {} stored, {} \
             acknowledged; acknowledged but missing: {lost:?}; payloads stored twice: {twice:?}",
            stored.len(),
            acked.len()
        );
    }
}

/// What a producer ends with: the acknowledged (ID, n) in order, and every other outcome.
type Produced = (Vec<(String, u64)>, Vec<String>);

/// Publishes `{"i":n}` (n = 1, 2, …) to `topic` on one keep-alive connection until `stop`;
/// returns the acknowledged (ID, n) in order and a description of every other outcome.
fn producer(
    relay: SocketAddr,
    topic: String,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> thread::JoinHandle<Produced> {
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut other = Vec::new();
        let mut http = Http::connect(relay);
        http.set_read_timeout(Duration::from_secs(30));
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            http.send_request(
                "POST",
                "/api/v1/messages",
                &[auth_header(&rw_token()).as_pair()],
                message_body(&topic, &format!(r#"{{"i":{i}}}"#)).as_bytes(),
            );
            match http.try_read_response(true) {
                Ok(resp) if resp.status == 201 => {
                    acked.push((id_of(&resp.json()).to_string(), i));
                    acked_total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => other.push(format!("{i}: {} {}", resp.status, resp.text())),
                Err(e) => {
                    other.push(format!("{i}: {e}"));
                    http = Http::connect(relay);
                    http.set_read_timeout(Duration::from_secs(30));
                }
            }
        }
        (acked, other)
    })
}

// ---------------------------------------------------------------------------------------
// The Valkey link stalls: bytes stop, the TCP connection stays open
// ---------------------------------------------------------------------------------------

/// `storage.ack: memory`: the relay notices the stall within `valkey.command_timeout`
/// (`/ready` 503), keeps accepting until the backlog is full and then refuses with 503
/// `BACKLOG_FULL`, keeps delivering live, and once the link flows flushes the backlog in
/// order.
#[test]
fn stalled_valkey_link_is_noticed_within_command_timeout_and_flushed_in_order() {
    let valkey = Valkey::start();
    let proxy = proxy_to(valkey.port);
    let relay = relay_behind(
        &proxy,
        &[
            ("PULSAR_STORAGE_ACK", "memory"),
            ("PULSAR_STORAGE_MAX_PENDING_WRITES", "20"),
            ("PULSAR_VALKEY_COMMAND_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "500ms"),
        ],
    );
    let [topic, other] = <[String; 2]>::try_from(topics_on_each_shard("stall-mem")).unwrap();
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));
    let mut http = relay.http();
    let mut accepted: Vec<String> = (0..3)
        .map(|i| id_of(&http.publish(&topic, &format!(r#"{{"before":{i}}}"#))).to_string())
        .collect();
    wait_until(IO_TIMEOUT, "the first writes reached Valkey", || {
        valkey.xlen(&stream_key(&topic)) == 3
    });
    for id in &accepted {
        assert_eq!(ws.recv_delivery()["message_id"], id.as_str());
    }

    proxy.stall(Direction::Both);
    let stalled_at = Instant::now();
    // Accepted (and delivered live) until 20 writes wait, then refused.
    let refused = loop {
        let resp = post(
            &mut http,
            &topic,
            &format!(r#"{{"during":{}}}"#, accepted.len()),
        );
        if resp.status != 201 {
            break resp;
        }
        let id = id_of(&resp.json()).to_string();
        assert_eq!(ws.recv_delivery()["message_id"], id.as_str());
        accepted.push(id);
        assert!(
            accepted.len() <= 3 + 20,
            "more publishes accepted than storage.max_pending_writes allows"
        );
    };
    refused.assert_error(503, "BACKLOG_FULL");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    // The other shard has its own backlog.
    let other_id = id_of(&http.publish(&other, r#"{"during":"stall"}"#)).to_string();

    assert_unready_within_command_timeout(&relay, stalled_at);

    proxy.flow(Direction::Both);
    relay.wait_ready(RECONNECT);
    let key = stream_key(&topic);
    wait_until(RECONNECT, "the backlog was flushed to Valkey", || {
        valkey.xlen(&key) as usize >= accepted.len()
    });
    assert_eq!(
        valkey.stream_ids(&key),
        accepted,
        "Valkey holds exactly the accepted messages, in order, once"
    );
    wait_until(RECONNECT, "the other shard's write was flushed", || {
        valkey.xlen(&stream_key(&other)) == 1
    });
    assert_eq!(valkey.stream_ids(&stream_key(&other)), [other_id]);

    let after = http.publish(&topic, r#"{"after":"stall"}"#);
    assert_eq!(ws.recv_delivery()["message_id"], after["message_id"]);
    assert!(
        ws.collect_until_pong().is_empty(),
        "a refused publish was delivered"
    );
    wait_until(
        IO_TIMEOUT,
        "the publish after the stall reached Valkey",
        || valkey.xlen(&key) as usize == accepted.len() + 1,
    );
}

/// `storage.ack: persisted` (the default): publishes wait for Valkey; beyond
/// `storage.max_pending_writes` waiting writes they are refused at once with 503
/// `BACKLOG_FULL`; `/ready` turns 503 within `valkey.command_timeout`; live subscribers
/// still get the messages; once the link flows the waiting publishes are acknowledged and
/// Valkey holds exactly them, in order.
///
/// Not asserted (it is not built yet): a bound on how long a waiting publish waits
/// (`storage.ack_timeout`). Today a publish waits for the whole stall.
#[test]
fn stalled_valkey_link_with_persisted_acks_refuses_beyond_the_backlog_and_acks_after() {
    const WAITING: usize = 4;
    let valkey = Valkey::start();
    let proxy = proxy_to(valkey.port);
    let relay = relay_behind(
        &proxy,
        &[
            ("PULSAR_STORAGE_MAX_PENDING_WRITES", "4"),
            ("PULSAR_VALKEY_COMMAND_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "500ms"),
        ],
    );
    let topic = topic_on("stall-persisted", 0);
    let key = stream_key(&topic);
    // Published before the stall, so the topic's periodic trim is not due during it (a
    // trim is a write too, and would take a backlog slot).
    let first = relay.publish(&topic, r#"{"i":0}"#);
    assert_eq!(valkey.stream_ids(&key), [id_of(&first)]);
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));

    proxy.stall(Direction::Both);
    let stalled_at = Instant::now();
    let waiting: Vec<_> = (1..=WAITING)
        .map(|i| {
            let addr = relay.addr;
            let topic = topic.clone();
            let publisher = thread::spawn(move || {
                let mut http = Http::connect(addr);
                http.set_read_timeout(Duration::from_secs(30));
                post(&mut http, &topic, &format!(r#"{{"i":{i}}}"#))
            });
            // One at a time, so the backlog (and the stream) has them in this order.
            wait_until(IO_TIMEOUT, "the publish is waiting for Valkey", || {
                relay.metrics().sum("pulsar_valkey_backlog") as usize >= i
            });
            publisher
        })
        .collect();
    // Live subscribers are not held back by the stall.
    let live: Vec<String> = (0..WAITING)
        .map(|_| {
            ws.recv_delivery()["message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let mut http = relay.http();
    let refused = post(&mut http, &topic, r#"{"i":"refused"}"#);
    refused.assert_error(503, "BACKLOG_FULL");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );

    assert_unready_within_command_timeout(&relay, stalled_at);

    proxy.flow(Direction::Both);
    let acked: Vec<String> = waiting
        .into_iter()
        .map(|p| {
            let resp = p.join().unwrap();
            resp.assert_status(201);
            id_of(&resp.json()).to_string()
        })
        .collect();
    assert_eq!(acked, live, "acknowledged as delivered live, in order");
    let mut expected = vec![id_of(&first).to_string()];
    expected.extend(acked);
    assert_eq!(
        valkey.stream_ids(&key),
        expected,
        "Valkey holds the acknowledged messages once each, in order, and not the refused one"
    );
    relay.wait_ready(RECONNECT);
    let after = relay.publish(&topic, r#"{"i":"after"}"#);
    expected.push(id_of(&after).to_string());
    assert_eq!(valkey.stream_ids(&key), expected);
}

// ---------------------------------------------------------------------------------------
// Resets and half-open links in the middle of a pipeline
// ---------------------------------------------------------------------------------------

/// Calls of `XADD` that Valkey refused: with explicit IDs, a retried write that Valkey had
/// already applied (its reply was lost) is refused as not above the stream's top.
fn failed_xadds(valkey: &Valkey) -> u64 {
    let info = valkey
        .command(&["INFO", "commandstats"])
        .text()
        .expect("INFO text");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xadd:"))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("failed_calls="))
        })
        .map_or(0, |n| n.parse().expect("failed_calls is a number"))
}

/// Producers publish with persisted acks while the Valkey link is reset in the middle of a
/// pipeline (replies cut after a few bytes, commands cut in the middle) and half-closed
/// either way. Each time the relay reconnects and retries what was not answered; in the
/// end every acknowledged message is in Valkey exactly once, in order, with its
/// acknowledged ID, nothing else is, and no publish failed.
#[test]
fn resets_and_half_open_links_mid_pipeline_lose_nothing_acknowledged_and_write_nothing_twice() {
    let valkey = Valkey::start();
    let proxy = proxy_to(valkey.port);
    // Replies 10 ms late: writes pile up behind each round trip, so pipelines carry several.
    proxy.latency(Direction::Down, Duration::from_millis(10), Duration::ZERO);
    let mut relay = relay_behind(
        &proxy,
        &[
            ("PULSAR_VALKEY_COMMAND_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "1s"),
        ],
    );
    let topics: Vec<String> = ["reset-a", "reset-b", "reset-c", "reset-d"]
        .iter()
        .flat_map(|p| topics_on_each_shard(p))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = topics
        .iter()
        .map(|t| producer(relay.addr, t.clone(), Arc::clone(&stop), Arc::clone(&acked)))
        .collect();
    wait_until(IO_TIMEOUT, "publishes flow before the faults", || {
        acked.load(Ordering::Relaxed) >= 40
    });

    /// A fault, and what ends it once the relay saw its link fail.
    type Fault = (&'static str, fn(&FaultProxy), fn(&FaultProxy));
    let faults: [Fault; 7] = [
        (
            "replies cut in the second reply",
            |p| p.reset_after(Direction::Down, 30),
            |_| {},
        ),
        (
            "replies cut further in",
            |p| p.reset_after(Direction::Down, 150),
            |_| {},
        ),
        (
            "commands cut in the second command",
            |p| p.reset_after(Direction::Up, 200),
            |_| {},
        ),
        (
            "commands cut further in",
            |p| p.reset_after(Direction::Up, 1000),
            |_| {},
        ),
        (
            "Valkey's side half-closed",
            |p| p.half_close(Direction::Down),
            |_| {},
        ),
        (
            "the relay's side half-closed",
            |p| p.half_close(Direction::Up),
            |_| {},
        ),
        (
            "replies silently stopped (writes applied, answers never come)",
            |p| p.stall(Direction::Down),
            |p| p.flow(Direction::Down),
        ),
    ];
    for (what, fault, end) in faults {
        relay.wait_ready(RECONNECT);
        let lost_before = links_lost(&relay);
        fault(&proxy);
        wait_until(
            RECONNECT,
            &format!("{what}: the relay saw its link fail"),
            || links_lost(&relay) > lost_before,
        );
        assert!(!proxy.reset_pending(Direction::Both), "{what}: not fired");
        end(&proxy);
        let acked_then = acked.load(Ordering::Relaxed);
        wait_until(
            RECONNECT,
            &format!("{what}: publishes are acknowledged again"),
            || acked.load(Ordering::Relaxed) >= acked_then + 2 * topics.len(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = producers.into_iter().map(|p| p.join().unwrap()).collect();

    for (topic, (acked, other)) in topics.iter().zip(&results) {
        assert!(
            other.is_empty(),
            "publishes to {topic} must wait for Valkey through a reset, not fail: {other:?}"
        );
        assert_stream_holds_exactly(&valkey, topic, acked);
    }
    // The faults did hit writes whose replies were lost: their retries were refused as
    // already applied (and acknowledged, since they are in the streams above).
    assert!(
        failed_xadds(&valkey) > 0,
        "no write was retried after its reply was lost: the test did not test that"
    );
    assert!(
        relay.wait_exit(Duration::ZERO).is_none(),
        "the relay exited"
    );
}

// ---------------------------------------------------------------------------------------
// A slow Valkey link
// ---------------------------------------------------------------------------------------

/// 50 ms added to every round trip to Valkey, default timeouts, persisted acks: every
/// publish (single and bulk) is acknowledged, Valkey holds them in order, and the link
/// never timed out or failed.
#[test]
fn fifty_ms_on_the_valkey_link_causes_no_timeouts_at_the_defaults() {
    let valkey = Valkey::start();
    let proxy = proxy_to(valkey.port);
    proxy.latency(Direction::Down, Duration::from_millis(50), Duration::ZERO);
    let relay = relay_behind(&proxy, &[]);
    let topics: Vec<String> = ["slow-a", "slow-b"]
        .iter()
        .flat_map(|p| topics_on_each_shard(p))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    // Four producers per topic: 16 publishes in flight, each waiting ≥ 50 ms for Valkey.
    let producers: Vec<(&String, _)> = topics
        .iter()
        .flat_map(|t| std::iter::repeat_n(t, 4))
        .map(|t| {
            let handle = producer(relay.addr, t.clone(), Arc::clone(&stop), Arc::clone(&acked));
            (t, handle)
        })
        .collect();
    let mut http = relay.http();
    let bulk: Vec<Value> = (0..100)
        .map(|i| json!({"topic": topics[0], "payload": {"bulk": i}}))
        .collect();
    let resp = http.request(
        "POST",
        "/api/v1/messages/bulk",
        &[auth_header(&rw_token()).as_pair()],
        json!({ "messages": bulk }).to_string().as_bytes(),
    );
    resp.assert_status(207);
    assert_eq!(resp.json()["summary"]["accepted"], 100, "{}", resp.text());
    wait_until(
        Duration::from_secs(20),
        "300 publishes acknowledged",
        || acked.load(Ordering::Relaxed) >= 300,
    );
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(&String, Vec<(String, u64)>)> = producers
        .into_iter()
        .map(|(topic, handle)| {
            let (acked, other) = handle.join().unwrap();
            assert!(other.is_empty(), "a producer to {topic}: {other:?}");
            assert!(
                !acked.is_empty(),
                "a producer to {topic} got nothing acknowledged"
            );
            (topic, acked)
        })
        .collect();
    let bulk_ids: Vec<String> = resp.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| id_of(r).to_string())
        .collect();
    for topic in &topics {
        let stream = valkey.stream_ids(&stream_key(topic));
        let in_stream: HashSet<&String> = stream.iter().collect();
        let mut acked_here: Vec<&String> = results
            .iter()
            .filter(|(t, _)| *t == topic)
            .flat_map(|(_, acked)| acked.iter().map(|(id, _)| id))
            .collect();
        if *topic == topics[0] {
            acked_here.extend(&bulk_ids);
        }
        assert!(
            acked_here.iter().all(|id| in_stream.contains(id)),
            "an acknowledged message of {topic} is missing from Valkey"
        );
        assert_eq!(
            stream.len(),
            acked_here.len(),
            "{topic}: the stream holds what was acknowledged, once each"
        );
    }
    let log = relay.stderr();
    assert!(
        links_lost(&relay) == 0 && !log.contains("cannot connect to Valkey"),
        "the link timed out or failed:\n{log}"
    );
    assert_eq!(relay.metrics().sum("pulsar_valkey_errors_total"), 0.0);
    assert_eq!(relay.metrics().sum("pulsar_valkey_up"), SHARDS as f64);
    relay.ready().assert_status(200);
}

// ---------------------------------------------------------------------------------------
// Clients behind 1-byte segments and stalls
// ---------------------------------------------------------------------------------------

/// A WebSocket session on `addr` whose opening handshake the test does itself:
/// tungstenite's client refuses a 101 response that arrives in more than 64 tiny reads (its
/// guard against slow-header attacks), which is just what 1-byte segments deliver.
fn ws_handshake_by_hand(addr: SocketAddr) -> Ws {
    let mut http = Http::connect(addr);
    http.send_request(
        "GET",
        &format!("/ws?token={}", rw_token()),
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    );
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = http.stream.read(&mut byte).expect("read the 101 response");
        assert_eq!(
            n,
            1,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&byte);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    // The accept key of the RFC 6455 example key.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let sock = tungstenite::WebSocket::from_raw_socket(
        http.stream,
        tungstenite::protocol::Role::Client,
        None,
    );
    let handshake = tungstenite::http::Response::builder()
        .status(101)
        .body(None)
        .unwrap();
    Ws { sock, handshake }
}

fn one_byte_segments() -> Option<Segments> {
    Some(Segments {
        size: 1,
        gap: Duration::from_millis(1),
    })
}

/// Every request and response crosses the link one byte per segment: a publish (with a
/// `Content-Length` body and a chunked one), a long-poll, and a WebSocket session (frames
/// with 7-bit and 16-bit lengths) all work, and nothing is left open afterwards.
#[test]
fn clients_behind_one_byte_segments_publish_poll_and_use_websockets() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let proxy = FaultProxy::start(relay.addr).unwrap();
    proxy.segments(Direction::Both, one_byte_segments());
    let topic = "segments";

    let mut http = Http::connect(proxy.addr());
    let first = http.publish(topic, r#"{"n":1}"#);
    let chunked_body = message_body(topic, r#"{"n":2}"#);
    let chunked = format!(
        "{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        10,
        &chunked_body[..10],
        chunked_body.len() - 10,
        &chunked_body[10..]
    );
    let resp = http.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Transfer-Encoding", "chunked"),
        ],
        chunked.as_bytes(),
    );
    resp.assert_status(201);
    let second = resp.json();
    let polled = http.request(
        "GET",
        &format!("/api/v1/poll?topics={topic}&since=earliest&timeout=1"),
        &[auth_header(&rw_token()).as_pair()],
        b"",
    );
    polled.assert_status(200);
    let body = polled.json();
    let ids: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, [id_of(&first), id_of(&second)], "{body}");
    assert_eq!(body["messages"][1]["payload"], json!({"n": 2}));

    let mut ws = ws_handshake_by_hand(proxy.addr());
    ws.subscribe(&[topic], json!({}));
    let long = "x".repeat(300);
    let live = relay.publish(topic, &format!(r#""{long}""#));
    let got = ws.recv_delivery();
    assert_eq!(got["message_id"], live["message_id"]);
    assert_eq!(got["payload"], json!(long));
    assert!(ws.collect_until_pong().is_empty());
    ws.close();
    drop(http);
    drop(proxy);
    baseline.assert_recovered(&relay, 10);
}

/// A request arriving one byte every 20 ms takes longer than `server.read_timeout` (1 s):
/// the relay answers 408 `REQUEST_TIMEOUT` after that timeout, without waiting for the
/// rest, closes, and publishes nothing.
#[test]
fn a_request_trickling_in_past_read_timeout_gets_408() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_READ_TIMEOUT", "1s")]);
    let proxy = FaultProxy::start(relay.addr).unwrap();
    proxy.segments(
        Direction::Up,
        Some(Segments {
            size: 1,
            gap: Duration::from_millis(20),
        }),
    );
    let topic = "trickled";
    let request = encode_request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        message_body(topic, "1").as_bytes(),
    );
    let mut http = Http::connect(proxy.addr());
    let started = Instant::now();
    http.send_raw(&request);
    let resp = http.read_response(true);
    let took = started.elapsed();
    resp.assert_error(408, "REQUEST_TIMEOUT");
    let delivered = proxy.forwarded(Direction::Up) as usize;
    assert!(
        delivered < request.len(),
        "the relay waited for the whole request ({delivered} of {} bytes) before its 408",
        request.len()
    );
    assert!(
        took >= Duration::from_secs(1),
        "408 before read_timeout: {took:?}"
    );
    http.assert_closed();
    let polled = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
    assert_eq!(
        polled.json()["messages"],
        json!([]),
        "a timed-out request published"
    );
}

/// Reads from `stream` until EOF or a reset; panics if it stays open past `timeout`.
fn read_until_closed(stream: &mut std::net::TcpStream, timeout: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection was not closed within {timeout:?}: {e}"),
        }
    }
}

/// Clients whose links stall: an idle keep-alive connection, a long-poll whose answer goes
/// into the stall, and a WebSocket are closed by the relay itself (`server.idle_timeout`,
/// `delivery.ws_pong_timeout`) while the stall lasts; a request stalled half-way gets 408
/// after `server.read_timeout`. Afterwards connections and memory are back to baseline.
#[test]
fn clients_behind_stalls_are_timed_out_as_documented_and_nothing_leaks() {
    let relay = Relay::start_with(&[
        ("PULSAR_SERVER_READ_TIMEOUT", "1s"),
        ("PULSAR_SERVER_IDLE_TIMEOUT", "1s"),
        ("PULSAR_DELIVERY_WS_PING_INTERVAL", "300ms"),
        ("PULSAR_DELIVERY_WS_PONG_TIMEOUT", "1s"),
    ]);
    let baseline = Baseline::take(&relay);
    let topic = "stalled-clients";
    let stalled = FaultProxy::start(relay.addr).unwrap();
    let half_stalled = FaultProxy::start(relay.addr).unwrap();

    // An idle keep-alive connection that served one request.
    let mut idle = Http::connect(stalled.addr());
    idle.publish(topic, "1");
    // A WebSocket subscriber.
    let mut ws = Ws::connect(stalled.addr(), &rw_token());
    ws.subscribe(&[topic], json!({}));
    // A long-poll that will answer (empty) after 2 s, into the stalled link.
    let mut poll = Http::connect(stalled.addr());
    poll.send_request(
        "GET",
        &format!("/api/v1/poll?topics={topic}&timeout=2"),
        &[auth_header(&rw_token()).as_pair()],
        b"",
    );
    // Half a request, then its link stalls towards the relay.
    let mut partial = Http::connect(half_stalled.addr());
    let request = encode_request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        message_body(topic, "2").as_bytes(),
    );
    partial.send_raw(&request[..40]);
    wait_until(
        IO_TIMEOUT,
        "the parked poll and the partial request arrived",
        || {
            half_stalled.forwarded(Direction::Up) == 40
                && relay.metrics().sum("pulsar_polls_waiting") >= 1.0
        },
    );
    let open_before = connections(&relay);
    assert!(open_before >= baseline.connections + 4, "{open_before}");

    stalled.stall(Direction::Both);
    half_stalled.stall(Direction::Up);
    partial.send_raw(&request[40..]);
    let started = Instant::now();
    // The 408 comes back over the direction that still flows.
    let resp = partial.read_response(true);
    resp.assert_error(408, "REQUEST_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(1) + SLACK);
    partial.assert_closed();

    // The relay closes the idle connection, the silent WebSocket and, once the poll was
    // answered and idled, the poll's connection on its own, while the stall is still on.
    let mut open = 0;
    assert!(
        eventually(Duration::from_secs(2 + 1) + SLACK, || {
            open = connections(&relay);
            open == baseline.connections
        }),
        "{open} connections still open behind the stall (baseline {})",
        baseline.connections
    );
    assert_eq!(relay.metrics().sum("pulsar_websocket_connections"), 0.0);
    assert_eq!(relay.metrics().sum("pulsar_polls_waiting"), 0.0);

    // Once the link flows, the clients see what the relay sent before it closed.
    stalled.flow(Direction::Both);
    assert!(read_until_closed(&mut idle.stream, IO_TIMEOUT).is_empty());
    let ws_stream = ws.sock.get_mut();
    ws_stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    loop {
        match ws.sock.read() {
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => {}
            Ok(other) => panic!("unexpected frame from a dropped session: {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                panic!("the dropped WebSocket is still open")
            }
            Err(_) => break,
        }
    }
    let poll_answer = read_until_closed(&mut poll.stream, IO_TIMEOUT);
    assert!(
        poll_answer.starts_with(b"HTTP/1.1 200"),
        "the poll's answer was not delivered before the close: {:?}",
        String::from_utf8_lossy(&poll_answer)
    );
    drop((idle, ws, poll, partial, stalled, half_stalled));
    baseline.assert_recovered(&relay, 10);
}
