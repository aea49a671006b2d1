//! Server-Sent Events on `GET /api/v1/sse`: replay then live, `Last-Event-ID` resume
//! without gap or repeat, durable consumers, the refusals before a stream starts, and what
//! ends a stream (token expiry, logout, a slow consumer), against the real binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ids(deliveries: &[Value]) -> Vec<String> {
    deliveries.iter().map(|d| id_of(d).to_string()).collect()
}

fn publish_n(relay: &Relay, topic: &str, n: usize) -> Vec<String> {
    let mut http = relay.http();
    (0..n)
        .map(|i| id_of(&http.publish(topic, &format!("{{\"n\":{i}}}"))).to_string())
        .collect()
}

#[test]
fn replays_then_delivers_live_as_message_events_with_the_websocket_json() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("sse-live") {
        let before = publish_n(&relay, &topic, 3);
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"since": "earliest"}));
        let mut sse = Sse::connect(
            relay.addr,
            &read_token(),
            &format!("topics={topic}&since=earliest"),
        );
        assert_eq!(sse.status, 200);
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        assert_eq!(sse.header("content-length"), None);
        // Each event's data is the WebSocket message frame's JSON, byte for byte, and its
        // id the message ID.
        let mut same_as_ws = |sse: &mut Sse| {
            let event = sse.next_event().expect("an event");
            assert_eq!(event.event, "message", "{event:?}");
            assert_eq!(event.data, ws.recv_text());
            assert_eq!(event.id.as_deref(), event.json()["message_id"].as_str());
            event.json()
        };
        let replayed: Vec<Value> = (0..3).map(|_| same_as_ws(&mut sse)).collect();
        assert_eq!(ids(&replayed), before);
        assert_eq!(sse.retry, Some(2000), "the stream starts with retry:");
        // Live, with a pretty-printed payload: its line breaks travel as data: lines.
        let receipt = relay.publish(&topic, "{\n  \"multi\": [1,\n 2]\n}");
        let live = same_as_ws(&mut sse);
        assert_eq!(live["message_id"], receipt["message_id"]);
        assert_eq!(live["payload"], json!({"multi": [1, 2]}));
    }
}

#[test]
fn last_event_id_resumes_after_that_message_without_gap_or_repeat() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("sse-resume") {
        let published = publish_n(&relay, &topic, 5);
        // As an EventSource does: the same URL (with its stale `since`) on every attempt.
        let target = format!(
            "/api/v1/sse?topics={topic}&since=earliest&token={}",
            read_token()
        );
        let mut first = Sse::open(relay.addr, &target, &[]).stream();
        let got: Vec<Value> = (0..3).map(|_| first.recv_delivery()).collect();
        assert_eq!(ids(&got), published[..3]);
        drop(first);
        let more = publish_n(&relay, &topic, 3);
        let last = published[2].clone();
        let mut again = Sse::open(relay.addr, &target, &[("Last-Event-ID", &last)]).stream();
        let resumed: Vec<Value> = (0..5).map(|_| again.recv_delivery()).collect();
        let expected: Vec<String> = published[3..].iter().chain(&more).cloned().collect();
        assert_eq!(ids(&resumed), expected, "exactly the messages after {last}");
        let live = relay.publish(&topic, "9");
        assert_eq!(again.recv_delivery()["message_id"], live["message_id"]);
    }
}

#[test]
fn a_durable_consumer_resumes_after_its_last_acknowledged_message() {
    let relay = Relay::start();
    let topic = topic_on("sse-durable", 1);
    let token = rw_token();
    let query = format!("topics={topic}&client_id=browser-1");
    // New consumer: starts at the end of the topic.
    publish_n(&relay, &topic, 2);
    let mut sse = Sse::connect(relay.addr, &token, &query);
    let sent = publish_n(&relay, &topic, 3);
    let got: Vec<Value> = (0..3).map(|_| sse.recv_delivery()).collect();
    assert_eq!(ids(&got), sent);
    drop(sse);
    let ack = relay.request(
        "POST",
        "/api/v1/ack",
        &[auth_header(&token).as_pair()],
        json!({"message_ids": [sent[0]], "client_id": "browser-1"})
            .to_string()
            .as_bytes(),
    );
    ack.assert_status(200);
    assert_eq!(ack.json()["acknowledged"], 1);
    // Without a cursor: after the acknowledged one, so the rest comes again.
    let mut sse = Sse::connect(relay.addr, &token, &query);
    let again: Vec<Value> = (0..2).map(|_| sse.recv_delivery()).collect();
    assert_eq!(ids(&again), sent[1..]);
    drop(sse);
    // An EventSource reconnecting says where it was: that wins over the position.
    let target = format!("/api/v1/sse?token={token}&{query}");
    let mut sse = Sse::open(relay.addr, &target, &[("Last-Event-ID", &sent[1])]).stream();
    assert_eq!(id_of(&sse.recv_delivery()), sent[2]);
    let live = relay.publish(&topic, "7");
    assert_eq!(sse.recv_delivery()["message_id"], live["message_id"]);
}

#[test]
fn refusals_before_the_stream_are_json_errors() {
    let relay = Relay::start();
    let open =
        |target: &str, headers: &[(&str, &str)]| Sse::open(relay.addr, target, headers).refused();
    open("/api/v1/sse?topics=a", &[]).assert_error(401, "AUTH_REQUIRED");
    let token = read_token();
    open(
        &format!("/api/v1/sse?topics=a&token={}", expired_token()),
        &[],
    )
    .assert_error(401, "TOKEN_EXPIRED");
    open(
        &format!("/api/v1/sse?topics=a&token={}", foreign_token()),
        &[],
    )
    .assert_error(401, "INVALID_TOKEN");
    open(
        &format!("/api/v1/sse?topics=a&token={}", write_token()),
        &[],
    )
    .assert_error(403, "PERMISSION_DENIED");
    open(&format!("/api/v1/sse?token={token}"), &[]).assert_error(422, "MISSING_FIELD");
    open(
        &format!("/api/v1/sse?topics=bad%20topic!&token={token}"),
        &[],
    )
    .assert_error(422, "INVALID_TOPIC");
    open(
        &format!("/api/v1/sse?topics=a&since=nope&token={token}"),
        &[],
    )
    .assert_error(422, "INVALID_CURSOR");
    open(
        &format!("/api/v1/sse?topics=a&token={token}"),
        &[("Last-Event-ID", "not-an-id")],
    )
    .assert_error(422, "INVALID_CURSOR");
    open(
        &format!("/api/v1/sse?topics=a&client_id=no%20way&token={token}"),
        &[],
    )
    .assert_error(422, "INVALID_CLIENT_ID");
    let scoped = token_with("scoped", &["read"], json!({"topics": ["mine.*"]}));
    open(
        &format!("/api/v1/sse?topics=mine.a,theirs&token={scoped}"),
        &[],
    )
    .assert_error(403, "TOPIC_FORBIDDEN");
    let post = relay.request("POST", "/api/v1/sse?topics=a", &[], b"");
    post.assert_error(405, "METHOD_NOT_ALLOWED");
    // A token in the Authorization header works as well as one in the query; and a
    // scoped token may use what its claim covers.
    let sse = Sse::open(
        relay.addr,
        "/api/v1/sse?topics=mine.a",
        &[auth_header(&scoped).as_pair()],
    )
    .stream();
    assert_eq!(sse.status, 200);
}

#[test]
fn the_stream_ends_when_its_token_expires() {
    let relay = Relay::start_with(&[("PULSAR_JWT_LEEWAY", "0s")]);
    let topic = topic_on("sse-expiry", 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = token_with("short", &["read"], json!({"exp": now + 2}));
    let mut sse = Sse::connect(relay.addr, &short, &format!("topics={topic}"));
    let receipt = relay.publish(&topic, "1");
    assert_eq!(sse.recv_delivery()["message_id"], receipt["message_id"]);
    sse.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let why = sse.expect_final_error("TOKEN_EXPIRED");
    assert!(why.contains("expired"), "{why}");
    // Reconnecting with the expired token is refused before any stream.
    let again = Sse::open(
        relay.addr,
        &format!("/api/v1/sse?topics={topic}&token={short}"),
        &[],
    );
    again.refused().assert_error(401, "TOKEN_EXPIRED");
}

#[test]
fn idle_streams_get_heartbeat_comments() {
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_SSE_HEARTBEAT_INTERVAL", "200ms")]);
    let mut sse = Sse::connect(relay.addr, &read_token(), "topics=quiet");
    sse.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let seen = eventually(Duration::from_secs(3), || {
        // Nothing is published, so reading times out between heartbeats; a timeout is
        // what `next_event` panics on, hence the short peek.
        let mut byte = [0u8; 64];
        match std::io::Read::read(&mut sse.stream, &mut byte) {
            Ok(n) => String::from_utf8_lossy(&byte[..n]).contains(": heartbeat\n\n"),
            Err(_) => false,
        }
    });
    assert!(seen, "no heartbeat comment within 3 s");
}

#[test]
fn logging_out_ends_open_streams_of_that_token() {
    let relay = Relay::start();
    let token = token_with("leaver", &["read"], json!({"jti": "jti-sse-1"}));
    let mut sse = Sse::connect(relay.addr, &token, "topics=news");
    let resp = relay.request(
        "POST",
        "/auth/logout",
        &[auth_header(&token).as_pair()],
        b"",
    );
    resp.assert_status(204);
    sse.expect_final_error("TOKEN_REVOKED");
}

#[test]
fn streams_count_in_the_metrics_while_open() {
    let relay = Relay::start();
    let gauge = || relay.metrics().sum("pulsar_sse_sessions");
    assert_eq!(gauge(), 0.0);
    let sse = Sse::connect(relay.addr, &read_token(), "topics=counted");
    assert!(eventually(IO_TIMEOUT, || gauge() == 1.0));
    drop(sse);
    assert!(eventually(IO_TIMEOUT, || gauge() == 0.0));
    assert_eq!(
        relay
            .metrics()
            .value(r#"pulsar_http_requests_total{route="sse",status="200"}"#),
        1.0
    );
}

#[test]
fn a_slow_consumer_is_cut_off_with_the_reason_as_its_last_event() {
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "262144")]);
    let topic = topic_on("sse-slow", 1);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&relay.addr.into()).unwrap();
    let mut raw: std::net::TcpStream = socket.into();
    raw.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    std::io::Write::write_all(
        &mut raw,
        &encode_request(
            "GET",
            &format!("/api/v1/sse?topics={topic}&token={}", read_token()),
            &[],
            b"",
        ),
    )
    .unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut raw, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // About 16 MiB, unread by the stream.
    let payload = format!("\"{}\"", "p".repeat(8 * 1024));
    let item = format!(r#"{{"topic":"{topic}","payload":{payload}}}"#);
    let body = format!(r#"{{"messages":[{}]}}"#, vec![item; 16].join(","));
    let mut http = relay.http();
    for _ in 0..128 {
        let resp = http.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&rw_token()).as_pair()],
            body.as_bytes(),
        );
        resp.assert_status(207);
    }
    assert!(eventually(IO_TIMEOUT, || {
        relay
            .metrics()
            .sum("pulsar_slow_consumer_disconnects_total")
            == 1.0
    }));
    // What was already on the wire, then the reason, then the end.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.ends_with("\"code\":\"SLOW_CONSUMER\",\"message\":\"slow consumer: more than 262144 bytes queued\"}\n\n"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}

#[test]
fn shutdown_ends_streams_with_a_reason() {
    let mut relay = Relay::start();
    let mut sse = Sse::connect(relay.addr, &read_token(), "topics=closing-time");
    relay.terminate();
    sse.expect_final_error("SHUTTING_DOWN");
    let status = relay.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        relay.output()
    );
}

#[test]
fn a_replay_longer_than_one_part_continues_by_reconnecting_from_the_last_event() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "5")],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("sse-long", 1);
    let published = publish_n(&relay, &topic, 12);
    let target = format!(
        "/api/v1/sse?topics={topic}&since=earliest&token={}",
        read_token()
    );
    // Each connection replays at most 5, then ends: what EventSource would do next is
    // reconnect with the last event's ID.
    let mut got: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for part in 0..2 {
        let headers: Vec<(&str, &str)> =
            last.iter().map(|l| ("Last-Event-ID", l.as_str())).collect();
        let mut sse = Sse::open(relay.addr, &target, &headers).stream();
        for _ in 0..5 {
            got.push(id_of(&sse.recv_delivery()).to_string());
        }
        let why = sse.expect_final_error("REPLAY_TRUNCATED");
        assert!(why.contains(&got[got.len() - 1]), "part {part}: {why}");
        last = got.last().cloned();
    }
    let last = last.unwrap();
    let mut sse = Sse::open(relay.addr, &target, &[("Last-Event-ID", &last)]).stream();
    for _ in 0..2 {
        got.push(id_of(&sse.recv_delivery()).to_string());
    }
    assert_eq!(got, published, "every message once, in order");
    let live = relay.publish(&topic, "12");
    assert_eq!(sse.recv_delivery()["message_id"], live["message_id"]);
}
