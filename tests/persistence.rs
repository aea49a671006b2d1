//! The Valkey persistent tier, against a real `valkey-server` (never mocked): restarts of
//! the relay and of Valkey, the write backlog, replay across Valkey, the hot ring and live
//! traffic, retention, durable consumer positions, data loss detection and AUTH.
//!
//! Every test starts its own Valkey (own port, own directory, AOF with `appendfsync
//! always`) and its own relay. `tools/test.sh` provides the server binary through
//! `PULSAR_TEST_VALKEY_SERVER`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// How long a relay may take to read its topics back from Valkey and turn ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay may take to reconnect after Valkey came back (its backoff is capped
/// at 5 s, plus jitter).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A relay on `valkey`, ready (its persistent tier recovered).
fn start_relay(valkey: &Valkey, env: &[(&str, &str)]) -> Relay {
    let relay = Relay::start_on_valkey(valkey, env);
    relay.wait_ready(READY_TIMEOUT);
    relay
}

fn message_body(topic: &str, payload: &str) -> String {
    format!(r#"{{"topic":"{topic}","payload":{payload}}}"#)
}

/// POST /api/v1/messages with a read-write token; any status.
fn post_message(http: &mut Http, body: &str) -> Response {
    let token = rw_token();
    http.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&token).as_pair(),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// POST /api/v1/messages/bulk; asserts every item was accepted and returns the IDs.
fn publish_bulk(http: &mut Http, topic: &str, payloads: &[String]) -> Vec<String> {
    let messages: Vec<Value> = payloads
        .iter()
        .map(|p| json!({"topic": topic, "payload": serde_json::from_str::<Value>(p).unwrap()}))
        .collect();
    let token = rw_token();
    let resp = http.request(
        "POST",
        "/api/v1/messages/bulk",
        &[
            auth_header(&token).as_pair(),
            ("Content-Type", "application/json"),
        ],
        json!({ "messages": messages }).to_string().as_bytes(),
    );
    resp.assert_status(207);
    let body = resp.json();
    assert_eq!(
        body["summary"]["accepted"],
        payloads.len(),
        "bulk publish not fully accepted: {body}"
    );
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| id_of(r).to_string())
        .collect()
}

/// One long-poll that must answer 200 at once; returns the parsed body and its raw text.
fn poll_now(relay: &Relay, query: &str) -> (Value, String) {
    let resp = relay.poll(&format!("{query}&timeout=1"));
    resp.assert_status(200);
    (resp.json(), resp.text())
}

fn message_ids(poll_body: &Value) -> Vec<String> {
    poll_body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array in {poll_body}"))
        .iter()
        .map(|m| id_of(m).to_string())
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Subscribes and returns the replayed deliveries (everything before the `pong`); fails on
/// any error frame.
fn ws_replay(ws: &mut Ws, topics: &[&str], extra: Value) -> Vec<Value> {
    ws.subscribe(topics, extra);
    let frames = ws.collect_until_pong();
    for f in &frames {
        assert_eq!(f["type"], "message", "unexpected frame during replay: {f}");
    }
    frames
}

/// The next text frame, or `None` if none arrived within the socket's read timeout.
fn try_recv_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.sock.read() {
            Ok(tungstenite::Message::Text(text)) => {
                return Some(serde_json::from_str(text.as_str()).expect("JSON frame"))
            }
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected WebSocket frame {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("WebSocket read failed: {e}"),
        }
    }
}

/// The `since` a REPLAY_TRUNCATED error frame tells the client to subscribe again with.
fn resume_cursor(frame: &Value) -> String {
    let text = frame["message"].as_str().unwrap_or_default();
    let (_, rest) = text
        .rsplit_once("since=")
        .unwrap_or_else(|| panic!("REPLAY_TRUNCATED without a resume cursor: {frame}"));
    rest.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Subscribes to `topic` from `since` and returns the replayed IDs, following the relay's
/// REPLAY_TRUNCATED instructions (subscribe again from where it says) up to `rounds` times.
fn ws_replay_following(ws: &mut Ws, topic: &str, since: &str, rounds: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut since = since.to_string();
    for _ in 0..rounds {
        ws.subscribe(&[topic], json!({ "since": since }));
        let mut truncated = None;
        for frame in ws.collect_until_pong() {
            match frame["type"].as_str() {
                Some("message") => ids.push(id_of(&frame).to_string()),
                Some("error") if frame["code"] == "REPLAY_TRUNCATED" => {
                    truncated = Some(resume_cursor(&frame))
                }
                _ => panic!("unexpected frame during replay: {frame}"),
            }
        }
        match truncated {
            Some(resume) => since = resume,
            None => return ids,
        }
    }
    panic!("the replay of {topic} did not finish after {rounds} subscribes; got {ids:?}");
}

/// A published message as the producer saw it.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    payload: String,
    timestamp: String,
    metadata: Option<Value>,
}

// ---------------------------------------------------------------------------------------
// 1. A relay killed with SIGKILL comes back with everything it acknowledged
// ---------------------------------------------------------------------------------------

#[test]
fn relay_kill9_and_restart_replays_every_acknowledged_message_with_same_ids() {
    let valkey = Valkey::start();
    let mut relay = start_relay(&valkey, &[]);
    let topics: Vec<String> = ["restart-a", "restart-b"]
        .iter()
        .flat_map(|p| topics_on_each_shard(p))
        .collect();
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); topics.len()];
    let mut http = relay.http();
    for i in 0..200 {
        let t = i % topics.len();
        // Spaces and `1.50`: the payload must come back byte for byte.
        let payload = format!(r#"{{"n": {i}, "v": 1.50, "s": "m{i}"}}"#);
        let metadata = (i % 5 == 0).then(|| json!({"k": format!("v{i}")}));
        let body = match &metadata {
            Some(m) => format!(
                r#"{{"topic":"{}","payload":{payload},"metadata":{m}}}"#,
                topics[t]
            ),
            None => message_body(&topics[t], &payload),
        };
        let receipt = http.publish_body(&body);
        sent[t].push(Sent {
            id: id_of(&receipt).to_string(),
            payload,
            timestamp: receipt["timestamp"].as_str().unwrap().to_string(),
            metadata,
        });
    }
    for (t, topic) in topics.iter().enumerate() {
        assert_eq!(
            valkey.stream_ids(&stream_key(topic)),
            sent[t].iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            "the stream of {topic} holds exactly the acknowledged messages"
        );
    }

    relay.kill9();
    let relay = start_relay(&valkey, &[]);

    // Long-poll replay: same IDs, order, payload bytes, timestamps and metadata.
    for (t, topic) in topics.iter().enumerate() {
        let (body, raw) = poll_now(&relay, &format!("topics={topic}&since=earliest&limit=1000"));
        assert_eq!(body["has_more"], false, "{topic}");
        let got = body["messages"].as_array().unwrap();
        assert_eq!(
            message_ids(&body),
            sent[t].iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            "replay of {topic} after the restart"
        );
        for (m, s) in got.iter().zip(&sent[t]) {
            assert_eq!(m["topic"], topic.as_str());
            assert_eq!(m["timestamp"], s.timestamp.as_str(), "{m}");
            assert_eq!(
                m["metadata"],
                s.metadata.clone().unwrap_or(Value::Null),
                "{m}"
            );
            assert!(
                raw.contains(&format!(r#""payload":{},"#, s.payload)),
                "payload {} not relayed byte for byte in {raw}",
                s.payload
            );
        }
    }

    // WebSocket replay of all four topics at once, then live messages with later IDs.
    let mut ws = relay.ws();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let replay = ws_replay(&mut ws, &names, json!({"since": "earliest"}));
    assert_eq!(replay.len(), 200, "WebSocket replay after the restart");
    for (t, topic) in topics.iter().enumerate() {
        let ids: Vec<&str> = replay
            .iter()
            .filter(|m| m["topic"] == topic.as_str())
            .map(id_of)
            .collect();
        let want: Vec<&str> = sent[t].iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, want, "WebSocket replay of {topic}");
    }
    let mut http = relay.http();
    for (t, topic) in topics.iter().enumerate() {
        let receipt = http.publish(topic, r#"{"after":"restart"}"#);
        let last = &sent[t].last().unwrap().id;
        assert!(
            parse_id(id_of(&receipt)) > parse_id(last),
            "new ID {} of {topic} does not continue after {last}",
            id_of(&receipt)
        );
        let live = ws.recv_delivery();
        assert_eq!(live["message_id"], receipt["message_id"]);
        assert_eq!(valkey.stream_ids(&stream_key(topic)).len(), 51);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Valkey killed under load: no acknowledged message is lost, the relay reconnects
// ---------------------------------------------------------------------------------------

/// Publishes to `topic` on one keep-alive connection until `stop`; returns the IDs
/// acknowledged with 201 (in order) and a description of every other outcome.
fn producer(
    relay: std::net::SocketAddr,
    topic: String,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> thread::JoinHandle<(Vec<String>, Vec<String>)> {
    thread::spawn(move || {
        let token = rw_token();
        let mut acked = Vec::new();
        let mut other = Vec::new();
        let connect = || {
            let mut http = Http::connect(relay);
            http.set_read_timeout(Duration::from_secs(30));
            http
        };
        let mut http = connect();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let body = message_body(&topic, &format!(r#"{{"i":{i}}}"#));
            http.send_request(
                "POST",
                "/api/v1/messages",
                &[auth_header(&token).as_pair()],
                body.as_bytes(),
            );
            match http.try_read_response(true) {
                Ok(resp) if resp.status == 201 => {
                    acked.push(id_of(&resp.json()).to_string());
                    acked_total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => {
                    other.push(format!("{}: {}", resp.status, resp.text()));
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    other.push(e);
                    http = connect();
                }
            }
        }
        (acked, other)
    })
}

#[test]
fn valkey_kill9_under_load_loses_no_acknowledged_message_and_the_relay_reconnects() {
    let mut valkey = Valkey::start();
    let mut relay = start_relay(&valkey, &[]);
    let topics: Vec<String> = ["load-a", "load-b"]
        .iter()
        .flat_map(|p| topics_on_each_shard(p))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = topics
        .iter()
        .map(|t| producer(relay.addr, t.clone(), Arc::clone(&stop), Arc::clone(&acked)))
        .collect();

    assert!(
        eventually(Duration::from_secs(10), || acked.load(Ordering::Relaxed)
            >= 40),
        "timed out after {:?}: 40 publishes before the kill",
        Duration::from_secs(10)
    );
    valkey.kill9();
    let at_kill = acked.load(Ordering::Relaxed);
    let down = relay.wait_not_ready(Duration::from_secs(5));
    assert!(
        down.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        down.text()
    );
    // Producers are now blocked on writes Valkey has not confirmed: no 201 while it is
    // down, but for at most the one request each producer had in flight, which Valkey
    // may have confirmed just before the kill.
    thread::sleep(Duration::from_millis(500));
    let while_down = acked.load(Ordering::Relaxed) - at_kill;
    assert!(
        while_down <= producers.len(),
        "{while_down} publishes acknowledged while Valkey was down"
    );
    valkey.restart_same_dir();
    relay.wait_ready(RECONNECT_TIMEOUT);
    let after_restart = acked.load(Ordering::Relaxed);
    assert!(
        eventually(RECONNECT_TIMEOUT, || acked.load(Ordering::Relaxed)
            >= after_restart + 40),
        "timed out after {:?}: 40 more publishes acknowledged after Valkey came back",
        RECONNECT_TIMEOUT
    );
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(Vec<String>, Vec<String>)> =
        producers.into_iter().map(|p| p.join().unwrap()).collect();
    assert!(
        relay.wait_exit(Duration::ZERO).is_none(),
        "the relay must reconnect by itself, not exit"
    );

    for (topic, (acked_ids, other)) in topics.iter().zip(&results) {
        let stream: Vec<String> = valkey.stream_ids(&stream_key(topic));
        let in_stream: HashSet<&String> = stream.iter().collect();
        let lost: Vec<&String> = acked_ids
            .iter()
            .filter(|id| !in_stream.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged messages of {topic} are missing from Valkey: {lost:?} (other outcomes: {other:?})",
            lost.len()
        );
        // Acknowledged messages keep their order in the stream.
        let positions: Vec<usize> = acked_ids
            .iter()
            .map(|id| stream.iter().position(|s| s == id).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "acknowledged messages of {topic} out of order in the stream"
        );
        assert!(
            other.is_empty(),
            "publishes to {topic} should wait for Valkey, not fail: {other:?}"
        );
        // The relay still serves history for it.
        let (body, _) = poll_now(&relay, &format!("topics={topic}&since=earliest&limit=1000"));
        let replayed: HashSet<String> = message_ids(&body).into_iter().collect();
        assert!(acked_ids.iter().all(|id| replayed.contains(id)), "{topic}");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Valkey down: live traffic continues, the backlog is bounded, then flushed in order
// ---------------------------------------------------------------------------------------

#[test]
fn valkey_down_keeps_live_delivery_bounds_the_backlog_and_flushes_it_in_order() {
    let mut valkey = Valkey::start();
    let relay = start_relay(
        &valkey,
        &[
            ("PULSAR_STORAGE_ACK", "memory"),
            ("PULSAR_STORAGE_MAX_PENDING_WRITES", "20"),
        ],
    );
    let [topic, other] = <[String; 2]>::try_from(topics_on_each_shard("backlog")).unwrap();
    let key = stream_key(&topic);
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));
    let mut http = relay.http();
    let mut accepted: Vec<String> = (0..3)
        .map(|i| id_of(&http.publish(&topic, &format!(r#"{{"before":{i}}}"#))).to_string())
        .collect();
    for id in &accepted {
        assert_eq!(ws.recv_delivery()["message_id"], id.as_str());
    }
    assert!(
        eventually(IO_TIMEOUT, || { valkey.xlen(&key) == 3 }),
        "timed out after {:?}: the first writes reached Valkey",
        IO_TIMEOUT
    );

    valkey.kill9();

    // A subscriber arriving while Valkey is down gets live messages too.
    let mut late = relay.ws();
    late.subscribe(&[&other], json!({}));
    let other_id = id_of(&http.publish(&other, r#"{"while":"down"}"#)).to_string();
    assert_eq!(late.recv_delivery()["message_id"], other_id.as_str());

    // ack=memory: 201 until 20 writes wait for Valkey, then 503 BACKLOG_FULL.
    let mut down_accepted = 0;
    let refused = loop {
        let resp = post_message(
            &mut http,
            &message_body(&topic, &format!(r#"{{"down":{down_accepted}}}"#)),
        );
        if resp.status != 201 {
            break resp;
        }
        let id = id_of(&resp.json()).to_string();
        // Live delivery continues while Valkey is down.
        assert_eq!(ws.recv_delivery()["message_id"], id.as_str());
        accepted.push(id);
        down_accepted += 1;
        assert!(
            down_accepted <= 20,
            "more publishes accepted than max_pending_writes allows"
        );
    };
    refused.assert_error(503, "BACKLOG_FULL");
    assert!(
        refused.header("retry-after").is_some(),
        "BACKLOG_FULL without Retry-After: {:?}",
        refused.headers
    );
    assert!(
        (15..=20).contains(&down_accepted),
        "{down_accepted} publishes accepted while Valkey was down, expected about 20"
    );
    post_message(&mut http, &message_body(&topic, r#"{"still":"full"}"#))
        .assert_error(503, "BACKLOG_FULL");

    let ready = relay.wait_not_ready(Duration::from_secs(5));
    assert!(
        ready.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        ready.text()
    );

    valkey.restart_same_dir();
    relay.wait_ready(RECONNECT_TIMEOUT);
    assert!(
        eventually(RECONNECT_TIMEOUT, || valkey.xlen(&key) as usize
            == accepted.len()),
        "timed out after {:?}: the backlog was flushed to Valkey",
        RECONNECT_TIMEOUT
    );
    assert_eq!(
        valkey.stream_ids(&key),
        accepted,
        "Valkey holds exactly the accepted messages, in ID order"
    );
    assert_eq!(valkey.stream_ids(&stream_key(&other)), [other_id]);

    // Publishes are accepted again; the refused ones never reached anybody.
    let last = http.publish(&topic, r#"{"after":"recovery"}"#);
    assert_eq!(ws.recv_delivery()["message_id"], last["message_id"]);
    assert!(ws.collect_until_pong().is_empty());
}

#[test]
fn persisted_publish_is_not_acknowledged_until_valkey_is_back() {
    let mut valkey = Valkey::start();
    let relay = start_relay(&valkey, &[]);
    let topic = topic_on("pending", 1);
    let key = stream_key(&topic);
    let first = relay.publish(&topic, "1");
    assert_eq!(valkey.stream_ids(&key), [id_of(&first)]);

    valkey.kill9();
    let mut http = relay.http();
    http.set_read_timeout(Duration::from_millis(1500));
    http.send_request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        message_body(&topic, "2").as_bytes(),
    );
    if let Ok(resp) = http.try_read_response(true) {
        panic!(
            "a persisted publish was answered while Valkey is down: {} {}",
            resp.status,
            resp.text()
        );
    }
    relay.wait_not_ready(Duration::from_secs(5));

    valkey.restart_same_dir();
    http.set_read_timeout(RECONNECT_TIMEOUT);
    let resp = http.read_response(true);
    resp.assert_status(201);
    let second = resp.json();
    assert_eq!(
        valkey.stream_ids(&key),
        [id_of(&first), id_of(&second)],
        "the acknowledged message is in Valkey"
    );
    relay.wait_ready(RECONNECT_TIMEOUT);
}

#[test]
fn ready_turns_503_when_valkey_dies_even_without_traffic_and_history_is_store_unavailable() {
    let mut valkey = Valkey::start();
    let relay = start_relay(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "2")],
    );
    let topic = topic_on("idle", 0);
    let mut http = relay.http();
    let ids: Vec<String> = (0..4)
        .map(|i| id_of(&http.publish(&topic, &i.to_string())).to_string())
        .collect();
    valkey.kill9();
    // Nobody publishes: the relay must still notice that its persistent tier is gone.
    let resp = relay.wait_not_ready(Duration::from_secs(5));
    assert!(
        resp.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        resp.text()
    );
    // History older than the ring (two of four) cannot be read: said so, not skipped.
    let query = format!("topics={topic}&since=earliest&timeout=1");
    let resp = relay.poll(&query);
    resp.assert_error(503, "STORE_UNAVAILABLE");
    assert!(resp.header("retry-after").is_some(), "no Retry-After");
    let history = |order: &str| {
        relay.request(
            "GET",
            &format!("/api/v1/topics/{topic}/messages?order={order}&limit=10"),
            &[auth_header(&rw_token()).as_pair()],
            b"",
        )
    };
    history("asc").assert_error(503, "STORE_UNAVAILABLE");
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({"since": "earliest"}));
    let err = ws.expect_error("STORE_UNAVAILABLE");
    assert!(
        err["message"].as_str().unwrap().contains("since=earliest"),
        "{err}"
    );

    valkey.restart_same_dir();
    relay.wait_ready(RECONNECT_TIMEOUT);
    let (body, _) = poll_now(&relay, &format!("topics={topic}&since=earliest"));
    assert_eq!(message_ids(&body), ids);
    history("asc").assert_status(200);
    let replayed = ws_replay_following(&mut ws, &topic, "earliest", 3);
    assert_eq!(replayed, ids);
}

// ---------------------------------------------------------------------------------------
// 4. Replay from Valkey into the hot ring and on into live traffic
// ---------------------------------------------------------------------------------------

/// Publishes 30 messages, then keeps publishing 40 more from a thread (every 3 ms) while
/// `consume(first_30)` runs; returns (all acknowledged IDs in order, what `consume` got).
fn with_history_and_live_producer(
    relay: &Relay,
    topic: &str,
    consume: impl FnOnce(&[String], &Mutex<Vec<String>>, &AtomicBool) -> Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let mut http = relay.http();
    let history: Vec<String> = (1..=30)
        .map(|i| id_of(&http.publish(topic, &format!(r#"{{"n":{i}}}"#))).to_string())
        .collect();
    let live = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (live, done, topic, addr) = (
            Arc::clone(&live),
            Arc::clone(&done),
            topic.to_string(),
            relay.addr,
        );
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            for i in 31..=70 {
                let id = id_of(&http.publish(&topic, &format!(r#"{{"n":{i}}}"#))).to_string();
                live.lock().unwrap().push(id);
                thread::sleep(Duration::from_millis(3));
            }
            done.store(true, Ordering::Release);
        })
    };
    assert!(
        eventually(IO_TIMEOUT, || { live.lock().unwrap().len() >= 3 }),
        "timed out after {:?}: the live producer started",
        IO_TIMEOUT
    );
    let got = consume(&history, &live, &done);
    producer.join().unwrap();
    let mut all = history;
    all.extend(live.lock().unwrap().iter().cloned());
    (all, got)
}

/// `got` must be messages 4.. of `all`, each once, in order; the failure names the
/// missing and repeated messages by number.
#[track_caller]
fn assert_exactly_from_4(all: &[String], got: &[String]) {
    let number = |id: &String| all.iter().position(|a| a == id).map_or(0, |i| i + 1);
    let missing: Vec<usize> = all[3..]
        .iter()
        .filter(|id| !got.contains(id))
        .map(number)
        .collect();
    let mut seen = HashSet::new();
    let repeated: Vec<usize> = got
        .iter()
        .filter(|id| !seen.insert(*id))
        .map(number)
        .collect();
    let numbers: Vec<usize> = got.iter().map(number).collect();
    assert!(
        got == &all[3..],
        "expected messages 4..={} once each, in order; missing {missing:?}, repeated \
         {repeated:?}; received (by number) {numbers:?}",
        all.len()
    );
}

#[test]
fn websocket_replay_crosses_from_valkey_into_the_ring_and_live_without_gap_or_duplicate() {
    let valkey = Valkey::start();
    let relay = start_relay(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "5")],
    );
    let topic = topic_on("crossing-ws", 0);
    let (all, got) = with_history_and_live_producer(&relay, &topic, |history, live, done| {
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"since": history[2]}));
        // Short reads, so that the end of the producer is noticed between frames.
        ws.set_read_timeout(Duration::from_millis(100));
        let mut got: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if done.load(Ordering::Acquire) && got.last() == live.lock().unwrap().last() {
                break got;
            }
            assert!(Instant::now() < deadline, "replay incomplete: got {got:?}");
            let Some(frame) = try_recv_json(&mut ws) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("message") => got.push(id_of(&frame).to_string()),
                // A replay longer than the relay sends at once: it says where to resume.
                Some("error") if frame["code"] == "REPLAY_TRUNCATED" => {
                    ws.set_read_timeout(IO_TIMEOUT);
                    ws.subscribe(&[&topic], json!({"since": resume_cursor(&frame)}));
                    ws.set_read_timeout(Duration::from_millis(100));
                }
                _ => panic!("unexpected frame {frame}; got so far {got:?}"),
            }
        }
    });
    assert_exactly_from_4(&all, &got);
}

#[test]
fn long_poll_replay_crosses_from_valkey_into_the_ring_and_live_without_gap_or_duplicate() {
    let valkey = Valkey::start();
    let relay = start_relay(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "5")],
    );
    let topic = topic_on("crossing-poll", 1);
    let (all, got) = with_history_and_live_producer(&relay, &topic, |history, live, done| {
        let mut got: Vec<String> = Vec::new();
        let mut since = history[2].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if done.load(Ordering::Acquire) && got.last() == live.lock().unwrap().last() {
                break got;
            }
            assert!(Instant::now() < deadline, "replay incomplete: got {got:?}");
            let resp = relay.poll(&format!(
                "topics={topic}&since={since}&limit=1000&timeout=2"
            ));
            resp.assert_status(200);
            let ids = message_ids(&resp.json());
            if let Some(last) = ids.last() {
                since = last.clone();
            }
            got.extend(ids);
        }
    });
    assert_exactly_from_4(&all, &got);
}

/// A consumer in the deterministic crossing scenario ([`slow_history_crossing`]).
trait Consumer {
    /// Asks for everything after `since`, without waiting for the answer.
    fn start(&mut self, since: &str);
    /// Reads (and asks again, as the relay instructs) until `last` was received and nothing
    /// more is on its way.
    fn catch_up(&mut self, last: &str);
    fn received(&self) -> &[String];
}

/// The deterministic form of the crossing: Valkey answers the history read late (paused
/// with `CLIENT PAUSE`), and live messages arrive while the replay waits for it.
///
/// With `ack: memory` (so that publishes are answered while Valkey is paused) and a hot ring
/// of 5: publishes 30 messages and waits until Valkey has them, pauses Valkey for 400 ms,
/// starts the consumer from message 3, publishes 31..40 during the pause, waits until Valkey
/// has them, lets the consumer catch up; then publishes 41..50 (live), waits for Valkey and
/// lets the consumer catch up again. The consumer must have got 4..=50.
fn slow_history_crossing(topic: &str, consumer: impl FnOnce(&Relay) -> Box<dyn Consumer>) {
    let valkey = Valkey::start();
    let relay = start_relay(
        &valkey,
        &[
            ("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "5"),
            ("PULSAR_STORAGE_ACK", "memory"),
        ],
    );
    let mut consumer = consumer(&relay);
    let mut http = relay.http();
    let mut all = Vec::new();
    let mut publish_and_persist = |all: &mut Vec<String>, range: std::ops::RangeInclusive<u32>| {
        for i in range {
            all.push(id_of(&http.publish(topic, &format!(r#"{{"n":{i}}}"#))).to_string());
        }
        let n = all.len();
        assert!(
            eventually(IO_TIMEOUT, || {
                valkey.xlen(&stream_key(topic)) as usize == n
            }),
            "timed out after {:?}: the messages reached Valkey",
            IO_TIMEOUT
        );
    };
    publish_and_persist(&mut all, 1..=30);
    let paused = valkey.command(&["CLIENT", "PAUSE", "400", "ALL"]);
    assert_eq!(paused, Resp::Simple("OK".into()));
    consumer.start(&all[2]);
    publish_and_persist(&mut all, 31..=40);
    consumer.catch_up(&all[39]);
    publish_and_persist(&mut all, 41..=50);
    consumer.catch_up(&all[49]);
    assert_exactly_from_4(&all, consumer.received());
}

struct WsConsumer {
    ws: Ws,
    topic: String,
    got: Vec<String>,
}

impl Consumer for WsConsumer {
    fn start(&mut self, since: &str) {
        // Not `Ws::subscribe`: the `subscribed` answer only comes once Valkey answered.
        self.ws
            .send_json(&json!({"type": "subscribe", "topics": [self.topic], "since": since}));
    }

    fn catch_up(&mut self, last: &str) {
        self.ws.set_read_timeout(Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(frame) = try_recv_json(&mut self.ws) else {
                if self.got.last().map(String::as_str) == Some(last) {
                    return;
                }
                assert!(Instant::now() < deadline, "stalled; got {:?}", self.got);
                continue;
            };
            match frame["type"].as_str() {
                Some("message") => self.got.push(id_of(&frame).to_string()),
                Some("subscribed") => {}
                // A replay longer than the relay sends at once: it says where to resume.
                Some("error") if frame["code"] == "REPLAY_TRUNCATED" => {
                    self.start(&resume_cursor(&frame))
                }
                _ => panic!("unexpected frame {frame}; got so far {:?}", self.got),
            }
        }
    }

    fn received(&self) -> &[String] {
        &self.got
    }
}

struct PollConsumer {
    http: Http,
    topic: String,
    got: Vec<String>,
}

impl Consumer for PollConsumer {
    fn start(&mut self, since: &str) {
        // A small limit, so that the replay takes several requests.
        let path = format!(
            "/api/v1/poll?topics={}&since={since}&limit=5&timeout=2",
            self.topic
        );
        self.http
            .send_request("GET", &path, &[auth_header(&rw_token()).as_pair()], b"");
    }

    fn catch_up(&mut self, last: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // A poll is always in flight: read it and send the next one from its last ID.
        loop {
            let resp = self.http.read_response(true);
            resp.assert_status(200);
            self.got.extend(message_ids(&resp.json()));
            assert!(Instant::now() < deadline, "stalled; got {:?}", self.got);
            let since = self
                .got
                .last()
                .cloned()
                .unwrap_or_else(|| "earliest".into());
            self.start(&since);
            if since == last {
                // That poll waits for the next live message.
                return;
            }
        }
    }

    fn received(&self) -> &[String] {
        &self.got
    }
}

#[test]
fn websocket_replay_with_slow_history_and_live_traffic_has_no_gap_or_duplicate() {
    let topic = topic_on("slow-history-ws", 0);
    slow_history_crossing(&topic, |relay| {
        Box::new(WsConsumer {
            ws: relay.ws(),
            topic: topic.clone(),
            got: Vec::new(),
        })
    });
}

#[test]
fn long_poll_replay_with_slow_history_and_live_traffic_has_no_gap_or_duplicate() {
    let topic = topic_on("slow-history-poll", 1);
    slow_history_crossing(&topic, |relay| {
        let mut http = relay.http();
        http.set_read_timeout(Duration::from_secs(10));
        Box::new(PollConsumer {
            http,
            topic: topic.clone(),
            got: Vec::new(),
        })
    });
}

// ---------------------------------------------------------------------------------------
// 5. Retention and TTL
// ---------------------------------------------------------------------------------------

#[test]
fn retention_by_count_trims_the_stream() {
    let valkey = Valkey::start();
    let relay = start_relay(&valkey, &[("PULSAR_STORAGE_MAX_MESSAGES_PER_TOPIC", "10")]);
    let topic = topic_on("count-retention", 0);
    let key = stream_key(&topic);
    let mut http = relay.http();
    let mut last = String::new();
    for batch in 0..6 {
        let payloads: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"n":{}}}"#, batch * 100 + i))
            .collect();
        last = publish_bulk(&mut http, &topic, &payloads).pop().unwrap();
    }
    let len = valkey.xlen(&key);
    assert!(
        (10..250).contains(&len),
        "XLEN {len} after 600 messages with max_messages_per_topic 10 (MAXLEN ~ trims whole nodes)"
    );
    assert_eq!(
        valkey.stream_ids(&key).last(),
        Some(&last),
        "the newest message is kept"
    );
}

#[test]
fn retention_by_time_trims_the_stream() {
    let valkey = Valkey::start();
    let env = [("PULSAR_STORAGE_PERSISTENT_TIER_RETENTION", "1s")];
    let mut relay = start_relay(&valkey, &env);
    let topic = topic_on("time-retention", 1);
    let key = stream_key(&topic);
    let mut http = relay.http();
    for batch in 0..3 {
        let payloads: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"n":{}}}"#, batch * 100 + i))
            .collect();
        publish_bulk(&mut http, &topic, &payloads);
    }
    let published_at = now_ms();
    // The first write trimmed at once (nothing was older than 1 s); the next trim is 10 s
    // away.
    assert_eq!(valkey.xlen(&key), 300);
    // The relay trims a topic by time on its first write, then at most every 10 s. A
    // restart starts that clock again, which keeps this test short.
    thread::sleep(Duration::from_millis(
        (published_at + 1300).saturating_sub(now_ms()),
    ));
    relay.kill9();
    let relay = start_relay(&valkey, &env);
    let newest = relay.publish(&topic, r#"{"n":"newest"}"#);
    assert!(
        eventually(Duration::from_secs(5), || valkey.xlen(&key) < 150),
        "timed out after {:?}: XTRIM MINID removed the messages older than 1 s",
        Duration::from_secs(5)
    );
    assert_eq!(
        valkey.stream_ids(&key).last().map(String::as_str),
        Some(id_of(&newest)),
        "the new message is kept"
    );
}

/// Publishes a message with `ttl: 2`, one with `ttl: 3600` and one without; returns their
/// receipts and when the relay took the first (its ID's milliseconds).
fn publish_short_long_plain(relay: &Relay, topic: &str) -> ([Value; 3], u64) {
    let mut http = relay.http();
    let short = http.publish_body(&format!(
        r#"{{"topic":"{topic}","payload":"short","ttl":2}}"#
    ));
    let (published_at, _) = parse_id(id_of(&short));
    let long = http.publish_body(&format!(
        r#"{{"topic":"{topic}","payload":"long","ttl":3600}}"#
    ));
    let plain = http.publish(topic, r#""plain""#);
    ([short, long, plain], published_at)
}

fn sleep_until_ms(at: u64) {
    thread::sleep(Duration::from_millis(at.saturating_sub(now_ms())));
}

#[test]
fn expired_messages_are_not_replayed_from_valkey() {
    let valkey = Valkey::start();
    let env = [("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "2")];
    let mut relay = start_relay(&valkey, &env);
    let topic = topic_on("ttl", 0);
    let key = stream_key(&topic);
    let ([short, long, plain], published_at) = publish_short_long_plain(&relay, &topic);
    let entries = valkey.xrange(&key);
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].field("l"), Some("2000"), "{entries:?}");
    assert_eq!(entries[2].field("l"), None, "{entries:?}");

    let query = format!("topics={topic}&since=earliest&limit=100");
    // The ring holds the two newest messages; the first comes from Valkey.
    let (body, _) = poll_now(&relay, &query);
    // Answered before the expiry, so the relay looked before it too. Not skipped when
    // late: a poll that took 2 s is a failure worth seeing.
    let answered = now_ms().saturating_sub(published_at);
    assert!(
        answered < 2000,
        "the first poll was answered {answered} ms after the publish, past the 2 s TTL"
    );
    assert_eq!(
        message_ids(&body),
        [id_of(&short), id_of(&long), id_of(&plain)],
        "before its expiry the short-lived message is replayed"
    );
    sleep_until_ms(published_at + 2300);
    let want = [id_of(&long), id_of(&plain)];
    let (body, _) = poll_now(&relay, &query);
    assert_eq!(message_ids(&body), want, "expired message replayed");

    // After a restart the ring is empty: everything is read from Valkey.
    relay.kill9();
    let relay = start_relay(&valkey, &env);
    assert_eq!(
        valkey.xlen(&key),
        3,
        "still in the stream; the relay filters it"
    );
    let (body, _) = poll_now(&relay, &query);
    assert_eq!(
        message_ids(&body),
        want,
        "expired message replayed after restart"
    );
    let mut ws = relay.ws();
    let ids = ws_replay_following(&mut ws, &topic, "earliest", 5);
    assert_eq!(ids, want, "expired message replayed over WebSocket");
}

/// A relay (hot ring of 1 message) restarted after a topic's first message expired: a
/// replay from `earliest` must read everything from Valkey, starting with expired entries.
/// Returns the relay and the IDs a replay must give.
fn relay_with_expired_head(valkey: &Valkey, topic: &str) -> (Relay, [String; 2]) {
    let env = [("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "1")];
    let mut relay = start_relay(valkey, &env);
    let ([_short, long, plain], published_at) = publish_short_long_plain(&relay, topic);
    sleep_until_ms(published_at + 2300);
    relay.kill9();
    let relay = start_relay(valkey, &env);
    (relay, [id_of(&long).to_string(), id_of(&plain).to_string()])
}

#[test]
fn websocket_replay_is_not_stuck_behind_expired_messages() {
    // A WebSocket subscribe replays at most hot_tier_messages_per_topic (here 1) entries and
    // then tells the client where to resume. Expired entries must not keep that point from
    // moving on to the live messages behind them.
    let valkey = Valkey::start();
    let topic = topic_on("ttl-stuck-ws", 0);
    let (relay, want) = relay_with_expired_head(&valkey, &topic);
    let mut ws = relay.ws();
    let ids = ws_replay_following(&mut ws, &topic, "earliest", 10);
    assert_eq!(ids, want);
}

#[test]
fn long_poll_is_not_stuck_behind_expired_messages() {
    let valkey = Valkey::start();
    let topic = topic_on("ttl-stuck-poll", 1);
    let (relay, want) = relay_with_expired_head(&valkey, &topic);
    // One message per request, each from the previous one's last ID.
    let mut since = "earliest".to_string();
    let mut got = Vec::new();
    for _ in 0..10 {
        let (body, _) = poll_now(&relay, &format!("topics={topic}&since={since}&limit=1"));
        let ids = message_ids(&body);
        assert!(
            !ids.is_empty() || body["has_more"] == false,
            "poll since={since}&limit=1 answered no message but has_more: the consumer cannot move on ({body})"
        );
        match ids.last() {
            Some(last) => since = last.clone(),
            None => break,
        }
        got.extend(ids);
    }
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------
// 6. Durable consumer positions survive a restart
// ---------------------------------------------------------------------------------------

/// The position stored in Valkey for consumer `client_id` (subject "tester") of `topic`.
fn stored_position(valkey: &Valkey, topic: &str, client_id: &str) -> Option<String> {
    valkey
        .command(&[
            "HGET",
            &positions_key(topic),
            &format!("tester\0{client_id}"),
        ])
        .text()
}

fn ack_http(relay: &Relay, body: Value) -> Value {
    let resp = relay.request(
        "POST",
        "/api/v1/ack",
        &[auth_header(&rw_token()).as_pair()],
        body.to_string().as_bytes(),
    );
    resp.assert_status(200);
    resp.json()
}

#[test]
fn consumer_positions_survive_a_relay_kill9() {
    let valkey = Valkey::start();
    let mut relay = start_relay(&valkey, &[]);
    let [ws_topic, poll_topic] =
        <[String; 2]>::try_from(topics_on_each_shard("positions")).unwrap();

    // Two durable consumers, created at the (empty) head of their topics.
    let mut ws = relay.ws();
    ws.subscribe(&[&ws_topic], json!({"client_id": "ws-c"}));
    let (body, _) = poll_now(&relay, &format!("topics={poll_topic}&client_id=poll-c"));
    assert_eq!(message_ids(&body), Vec::<String>::new());

    let mut http = relay.http();
    let ws_ids: Vec<String> = (1..=10)
        .map(|i| id_of(&http.publish(&ws_topic, &i.to_string())).to_string())
        .collect();
    let poll_ids: Vec<String> = (1..=10)
        .map(|i| id_of(&http.publish(&poll_topic, &i.to_string())).to_string())
        .collect();
    for id in &ws_ids {
        assert_eq!(ws.recv_delivery()["message_id"], id.as_str());
    }
    // Acknowledge message 4 over WebSocket and message 6 over HTTP (topic named).
    ws.send_json(&json!({"type": "ack", "message_id": ws_ids[3]}));
    assert!(ws.collect_until_pong().is_empty(), "the ack was refused");
    let acked = ack_http(
        &relay,
        json!({"message_ids": [poll_ids[5]], "client_id": "poll-c", "topic": poll_topic}),
    );
    assert_eq!(acked["acknowledged"], 1, "{acked}");
    assert!(
        eventually(IO_TIMEOUT, || {
            stored_position(&valkey, &ws_topic, "ws-c").as_ref() == Some(&ws_ids[3])
                && stored_position(&valkey, &poll_topic, "poll-c").as_ref() == Some(&poll_ids[5])
        }),
        "timed out after {:?}: positions written to Valkey",
        IO_TIMEOUT
    );
    drop(ws);

    relay.kill9();
    let relay = start_relay(&valkey, &[]);

    // Same client_id, no since: resume right after the acknowledged message.
    let mut ws = relay.ws();
    let replay = ws_replay(&mut ws, &[&ws_topic], json!({"client_id": "ws-c"}));
    let ids: Vec<&str> = replay.iter().map(id_of).collect();
    assert_eq!(
        ids,
        &ws_ids[4..],
        "WebSocket consumer resumes after message 4"
    );
    let (body, _) = poll_now(&relay, &format!("topics={poll_topic}&client_id=poll-c"));
    assert_eq!(
        message_ids(&body),
        &poll_ids[6..],
        "long-poll consumer resumes after message 6"
    );

    // Acks without a topic, of messages only Valkey holds (the rings are empty).
    let acked = ack_http(
        &relay,
        json!({"message_ids": [poll_ids[7]], "client_id": "poll-c"}),
    );
    assert_eq!(acked["acknowledged"], 1, "{acked}");
    assert_eq!(acked["unknown"], json!([]), "{acked}");
    ws.send_json(&json!({"type": "ack", "message_id": ws_ids[6]}));
    assert!(
        ws.collect_until_pong().is_empty(),
        "the WebSocket ack was refused"
    );
    assert!(
        eventually(IO_TIMEOUT, || {
            stored_position(&valkey, &ws_topic, "ws-c").as_ref() == Some(&ws_ids[6])
                && stored_position(&valkey, &poll_topic, "poll-c").as_ref() == Some(&poll_ids[7])
        }),
        "timed out after {:?}: positions written to Valkey",
        IO_TIMEOUT
    );
    drop(ws);
    let mut ws = relay.ws();
    let replay = ws_replay(&mut ws, &[&ws_topic], json!({"client_id": "ws-c"}));
    let ids: Vec<&str> = replay.iter().map(id_of).collect();
    assert_eq!(ids, &ws_ids[7..]);
    let (body, _) = poll_now(&relay, &format!("topics={poll_topic}&client_id=poll-c"));
    assert_eq!(message_ids(&body), &poll_ids[8..]);
}

// ---------------------------------------------------------------------------------------
// 7. A Valkey that comes back empty
// ---------------------------------------------------------------------------------------

#[test]
fn valkey_back_without_its_data_is_reported_as_data_loss_and_the_relay_keeps_working() {
    let mut valkey = Valkey::start();
    let relay = start_relay(&valkey, &[]);
    let topics = topics_on_each_shard("amnesia");
    for topic in &topics {
        relay.publish(topic, "1");
    }
    valkey.kill9();
    valkey.wipe_data();
    valkey.restart_same_dir();
    // Back empty: nothing but (once a shard reconnected, which it does at once) the
    // sentinel the relay writes again.
    let keys = valkey.command(&["KEYS", "*"]);
    assert!(
        keys.items()
            .iter()
            .all(|k| k.text().as_deref() == Some("pulsar:{relay}:epoch")),
        "{keys:?}"
    );

    // Both shards find out as they reconnect (checking the sentinel), and persist again.
    for topic in &topics {
        let mut http = relay.http();
        http.set_read_timeout(RECONNECT_TIMEOUT);
        let receipt = http.publish(topic, "2");
        assert_eq!(
            valkey.stream_ids(&stream_key(topic)),
            [id_of(&receipt)],
            "new messages are persisted again"
        );
    }
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.stderr().matches("DATA LOSS").count() == SHARDS
                && relay.metrics().sum("pulsar_valkey_data_loss_total") == SHARDS as f64
        }),
        "timed out after {:?}: a DATA LOSS line on stderr and a count per shard: {}",
        IO_TIMEOUT,
        relay.stderr()
    );
    relay.wait_ready(RECONNECT_TIMEOUT);
    assert!(
        valkey
            .command(&["GET", "pulsar:{relay}:epoch"])
            .text()
            .is_some(),
        "the sentinel is set again"
    );
    assert_relay_still_serves(&relay);
}

// ---------------------------------------------------------------------------------------
// 8. AUTH
// ---------------------------------------------------------------------------------------

#[test]
fn valkey_password_is_used_and_a_wrong_one_keeps_the_relay_unready() {
    let valkey = Valkey::start_with(&["--requirepass", "s3cret-pw"]);
    let good = start_relay(&valkey, &[("PULSAR_VALKEY_PASSWORD", "s3cret-pw")]);
    let topic = topic_on("auth", 0);
    let receipt = good.publish(&topic, "1");
    assert_eq!(valkey.stream_ids(&stream_key(&topic)), [id_of(&receipt)]);

    let wrong = Relay::start_on_valkey(&valkey, &[("PULSAR_VALKEY_PASSWORD", "wrong-pw")]);
    // 503 throughout (at first possibly because a shard is still starting), then naming
    // Valkey.
    let deadline = Instant::now() + Duration::from_secs(2);
    let last = loop {
        let resp = wrong.ready();
        resp.assert_status(503);
        if Instant::now() >= deadline {
            break resp;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        last.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        last.text()
    );
    let resp = post_message(&mut wrong.http(), &message_body(&topic, "2"));
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(
        wrong.stderr().contains("AUTH"),
        "the relay should log the refused AUTH:\n{}",
        wrong.stderr()
    );
    assert_eq!(valkey.xlen(&stream_key(&topic)), 1);
    // No password at all is refused just the same, and said so: the log names the refused
    // AUTH (NOAUTH) and /ready names Valkey, which a relay merely starting would not.
    let none = Relay::start_on_valkey(&valkey, &[]);
    assert!(
        eventually(READY_TIMEOUT, || { none.stderr().contains("NOAUTH") }),
        "timed out after {:?}: a NOAUTH line on stderr",
        READY_TIMEOUT
    );
    let resp = none.ready();
    resp.assert_status(503);
    assert!(
        resp.text().to_lowercase().contains("valkey"),
        "/ready should name Valkey: {}",
        resp.text()
    );
    post_message(&mut none.http(), &message_body(&topic, "3")).assert_status(503);
    assert_eq!(valkey.xlen(&stream_key(&topic)), 1);
}
