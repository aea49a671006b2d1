//! WebSocket consumers: authentication, the subscribe/unsubscribe/ack/ping commands,
//! replay with `since`, durable consumers (`client_id`), bad frames and protocol violations.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

fn ws_request(relay: &Relay, query: &str) -> tungstenite::handshake::client::Request {
    format!("ws://{}/ws{query}", relay.addr)
        .into_client_request()
        .unwrap()
}

/// Subscribes on `ws`, publishes one message and checks it arrives.
fn assert_receives(relay: &Relay, ws: &mut Ws, topic: &str) {
    ws.subscribe(&[topic], json!({}));
    let receipt = relay.publish(topic, r#"{"via":"ws"}"#);
    let d = ws.recv_delivery();
    assert_eq!(d["message_id"], receipt["message_id"]);
}

#[test]
fn token_is_accepted_from_query_header_and_subprotocol() {
    let relay = Relay::start();
    let token = read_token();
    let topic = topic_on("auth-ways", 0);

    let mut ws = Ws::connect(relay.addr, &token);
    assert_receives(&relay, &mut ws, &topic);

    let mut req = ws_request(&relay, "");
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let WsConnect::Open(mut ws) = Ws::connect_request(relay.addr, req) else {
        panic!("Authorization: Bearer was refused");
    };
    assert_receives(&relay, &mut ws, &topic);

    let mut req = ws_request(&relay, "");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("bearer, bearer.{token}").parse().unwrap(),
    );
    let WsConnect::Open(mut ws) = Ws::connect_request(relay.addr, req) else {
        panic!("bearer subprotocol was refused");
    };
    assert_eq!(
        ws.handshake
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("bearer"),
        "the relay must answer the `bearer` subprotocol"
    );
    assert_receives(&relay, &mut ws, &topic);
}

#[test]
fn upgrade_without_valid_read_token_is_refused() {
    let relay = Relay::start();
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases = [
        (String::new(), 401, "AUTH_REQUIRED"),
        ("?token=garbage".to_string(), 401, "INVALID_TOKEN"),
        (format!("?token={}", foreign_token()), 401, "INVALID_TOKEN"),
        (format!("?token={}", expired_token()), 401, "TOKEN_EXPIRED"),
        (
            format!("?token={}", write_token()),
            403,
            "PERMISSION_DENIED",
        ),
    ];
    for (query, status, code) in cases {
        let resp = relay.request("GET", &format!("/ws{query}"), &upgrade, b"");
        assert_eq!(resp.status, status, "{query}: {}", resp.text());
        assert_eq!(resp.code(), code, "{query}");
        if status == 401 {
            assert!(resp.header("www-authenticate").is_some(), "{query}");
        }
        // And through a real WebSocket client.
        match Ws::connect_request(relay.addr, ws_request(&relay, &query)) {
            WsConnect::Refused(s) => assert_eq!(s, status, "{query}"),
            WsConnect::Open(_) => panic!("{query}: upgrade accepted"),
        }
    }
}

#[test]
fn subscribed_reply_and_ping_pong() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("sub-reply");
    let mut ws = relay.ws();
    ws.send_json(&json!({"type": "subscribe", "topics": [topics[0], topics[1], topics[0]]}));
    let reply = ws.expect_type("subscribed");
    // Duplicates are folded, order kept.
    assert_eq!(reply["topics"], json!([topics[0], topics[1]]));
    let session = reply["session_id"].as_str().expect("session_id");
    assert!(
        session.starts_with("sess_") && session.len() > 5,
        "{session}"
    );
    assert!(reply["timestamp"].is_string(), "{reply}");

    ws.send_json(&json!({"type": "ping"}));
    let pong = ws.expect_type("pong");
    assert!(pong["timestamp"].is_string(), "{pong}");

    // A WebSocket-level ping is answered with a pong carrying the same payload.
    ws.sock.send(Message::Ping(b"hb".to_vec().into())).unwrap();
    loop {
        match ws.sock.read().expect("read") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hb");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[test]
fn resubscribing_does_not_duplicate_deliveries() {
    // Subscribing again to a topic already held answers `subscribed` but adds no second
    // copy of each delivery.
    let relay = Relay::start();
    let topic = topic_on("resub", 1);
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));
    ws.subscribe(&[&topic], json!({}));
    let a = relay.publish(&topic, "1");
    let b = relay.publish(&topic, "2");
    assert_eq!(ws.recv_delivery()["message_id"], a["message_id"]);
    assert_eq!(ws.recv_delivery()["message_id"], b["message_id"]);
}

#[test]
fn unsubscribe_stops_deliveries() {
    let relay = Relay::start();
    for shard in 0..SHARDS {
        // Both topics on the same owner: its deliveries to this connection's shard travel
        // in publish order, so the sentinel on `keep` proves `gone` was not delivered.
        let gone = topic_on(&format!("unsub-gone-{shard}"), shard);
        let keep = topic_on(&format!("unsub-keep-{shard}"), shard);
        let mut ws = relay.ws();
        ws.subscribe(&[&gone, &keep], json!({}));
        let before = relay.publish(&gone, r#""before""#);
        assert_eq!(ws.recv_delivery()["message_id"], before["message_id"]);

        ws.send_json(&json!({"type": "unsubscribe", "topics": [gone]}));
        let reply = ws.expect_type("unsubscribed");
        assert_eq!(reply["topics"], json!([gone]));

        // Another subscriber still gets `gone`, so the messages are really published.
        let mut witness = relay.ws();
        witness.subscribe(&[&gone], json!({}));
        let mut http = relay.http();
        let after = http.publish(&gone, r#""after""#);
        let sentinel = http.publish(&keep, r#""sentinel""#);
        assert_eq!(witness.recv_delivery()["message_id"], after["message_id"]);
        let d = ws.recv_delivery();
        assert_eq!(
            d["message_id"], sentinel["message_id"],
            "got {d} after unsubscribing from {gone}"
        );
    }
}

#[test]
fn since_replay_then_live_has_no_gap_and_no_duplicate() {
    const BEFORE: usize = 50;
    const AFTER_SUBSCRIBED: usize = 30;
    let relay = Relay::start();
    for topic in topics_on_each_shard("since") {
        let mut http = relay.http();
        let ids: Vec<String> = (0..BEFORE)
            .map(|i| id_of(&http.publish(&topic, &i.to_string())).to_string())
            .collect();
        let from = 20; // since = ID of message 20 (exclusive): the first delivery is 21
                       // A producer keeps publishing while the subscription is set up, and goes on for a
                       // while after `subscribed`, so replay, the seam and live delivery all happen.
        let subscribed = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = mpsc::channel();
        let producer = {
            let addr = relay.addr;
            let topic = topic.clone();
            let subscribed = Arc::clone(&subscribed);
            thread::spawn(move || {
                let mut http = Http::connect(addr);
                let mut next = BEFORE;
                let mut after = 0;
                while after < AFTER_SUBSCRIBED {
                    if subscribed.load(Ordering::Acquire) {
                        after += 1;
                    }
                    http.publish(&topic, &next.to_string());
                    next += 1;
                    if next == BEFORE + 5 {
                        started_tx.send(()).unwrap();
                    }
                }
                next
            })
        };
        started_rx.recv().expect("producer started");
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"since": ids[from]}));
        subscribed.store(true, Ordering::Release);
        let total = producer.join().expect("producer");

        let mut last = parse_id(&ids[from]);
        for want in from + 1..total {
            let d = ws.recv_delivery();
            assert_eq!(
                d["payload"], want as u64,
                "{topic}: gap or duplicate at {d}"
            );
            let id = parse_id(id_of(&d));
            assert!(id > last, "{topic}: {id:?} after {last:?}");
            last = id;
            if let Some(published) = ids.get(want) {
                assert_eq!(id_of(&d), published, "{topic}: replayed id differs");
            }
        }
        // Nothing extra is queued behind the last message.
        assert!(
            ws.collect_until_pong().is_empty(),
            "{topic}: extra deliveries"
        );
    }
}

#[test]
fn since_earliest_replays_everything_and_latest_only_new() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("earliest") {
        let mut http = relay.http();
        let old: Vec<Value> = (0..5)
            .map(|i| http.publish(&topic, &i.to_string()))
            .collect();

        let mut earliest = relay.ws();
        earliest.subscribe(&[&topic], json!({"since": "earliest"}));
        let frames = earliest.collect_until_pong();
        let got: Vec<&Value> = frames.iter().map(|f| &f["message_id"]).collect();
        let want: Vec<&Value> = old.iter().map(|r| &r["message_id"]).collect();
        assert_eq!(got, want, "{topic}");

        let mut latest = relay.ws();
        latest.subscribe(&[&topic], json!({"since": "latest"}));
        let mut live = relay.ws();
        live.subscribe(&[&topic], json!({}));
        assert!(
            latest.collect_until_pong().is_empty(),
            "latest replayed history"
        );
        assert!(
            live.collect_until_pong().is_empty(),
            "no since replayed history"
        );

        let new = relay.publish(&topic, "5");
        for ws in [&mut earliest, &mut latest, &mut live] {
            assert_eq!(ws.recv_delivery()["message_id"], new["message_id"]);
        }
    }
}

#[test]
fn client_id_resumes_after_last_ack_and_redelivers_unacked() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("durable") {
        let client = format!("worker-{topic}");
        // First time: the consumer starts live.
        let mut http = relay.http();
        http.publish(&topic, r#""before the consumer existed""#);
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"client_id": client}));
        assert!(
            ws.collect_until_pong().is_empty(),
            "a new consumer starts live"
        );

        let first: Vec<Value> = (1..=10)
            .map(|i| http.publish(&topic, &i.to_string()))
            .collect();
        for (i, r) in first.iter().enumerate() {
            let d = ws.recv_delivery();
            assert_eq!(d["message_id"], r["message_id"], "{topic} #{i}");
        }
        // Acks are cumulative: acking message 4 acknowledges 1..=4.
        ws.send_json(&json!({"type": "ack", "message_id": id_of(&first[3])}));
        // Success is silent: the next frame is the pong.
        assert!(
            ws.collect_until_pong().is_empty(),
            "ack answered with a frame"
        );
        ws.close();

        let more: Vec<Value> = (11..=15)
            .map(|i| http.publish(&topic, &i.to_string()))
            .collect();

        // Reconnect: everything after the acked message, unacked ones included.
        let expected: Vec<&Value> = first[4..]
            .iter()
            .chain(&more)
            .map(|r| &r["message_id"])
            .collect();
        for round in 0..2 {
            let mut ws = relay.ws();
            ws.subscribe(&[&topic], json!({"client_id": client}));
            let frames = ws.collect_until_pong();
            let got: Vec<&Value> = frames.iter().map(|f| &f["message_id"]).collect();
            assert_eq!(got, expected, "{topic}, reconnect {round}");
            assert_eq!(frames[0]["payload"], 5);
            ws.close();
        }

        // The position belongs to (subject, client_id): another subject with the same
        // client_id is a new consumer and starts live.
        let other = token("someone-else", Permissions::READ);
        let mut ws = Ws::connect(relay.addr, &other);
        ws.subscribe(&[&topic], json!({"client_id": client}));
        assert!(ws.collect_until_pong().is_empty());

        // Acking the last one leaves nothing to redeliver; the ack names the topic.
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"client_id": client}));
        assert_eq!(ws.collect_until_pong().len(), expected.len());
        ws.send_json(&json!({"type": "ack", "message_id": id_of(&more[4]), "topic": topic}));
        assert!(ws.collect_until_pong().is_empty());
        ws.close();
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"client_id": client}));
        assert!(
            ws.collect_until_pong().is_empty(),
            "acked messages came back"
        );
    }
}

#[test]
fn bad_frames_get_error_frames_and_the_session_survives() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_TOPICS_PER_REQUEST", "3")]);
    let topic = topic_on("frames", 0);
    let mut ws = relay.ws();
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "INVALID_JSON"),
        ("{\"type\":\"subscribe\"".into(), "INVALID_JSON"),
        (json!({"topics": [topic]}).to_string(), "MISSING_TYPE"),
        (json!({"type": "dance"}).to_string(), "UNKNOWN_MESSAGE_TYPE"),
        (json!({"type": "subscribe"}).to_string(), "INVALID_FRAME"),
        (
            json!({"type": "subscribe", "topics": topic}).to_string(),
            "INVALID_FRAME",
        ),
        (json!({"type": "unsubscribe"}).to_string(), "INVALID_FRAME"),
        (json!({"type": "ack"}).to_string(), "INVALID_FRAME"),
        (
            json!({"type": "subscribe", "topics": ["no spaces"]}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            json!({"type": "subscribe", "topics": ["x".repeat(256)]}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            json!({"type": "subscribe", "topics": ["a", "b", "c", "d"]}).to_string(),
            "TOO_MANY_TOPICS",
        ),
        (
            json!({"type": "subscribe", "topics": [topic], "since": "yesterday"}).to_string(),
            "INVALID_CURSOR",
        ),
        (
            json!({"type": "subscribe", "topics": [topic], "client_id": "has space"}).to_string(),
            "INVALID_CLIENT_ID",
        ),
        (
            json!({"type": "unsubscribe", "topics": ["bad topic"]}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            json!({"type": "ack", "message_id": "1-0"}).to_string(),
            "CLIENT_ID_REQUIRED",
        ),
    ];
    for (frame, code) in &cases {
        ws.send_text(frame);
        let err = ws.recv_json();
        assert_eq!(err["type"], "error", "{frame}: {err}");
        assert_eq!(err["code"], *code, "{frame}: {err}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
    }
    // Binary frames are not commands.
    ws.sock
        .send(Message::Binary(b"{}".to_vec().into()))
        .unwrap();
    ws.expect_error("UNSUPPORTED_FRAME");

    // None of the rejected subscribes took effect; a good one still works.
    ws.subscribe(&[&topic], json!({"client_id": "frames-a"}));
    ws.send_json(&json!({"type": "subscribe", "topics": ["other"], "client_id": "frames-b"}));
    ws.expect_error("CLIENT_ID_MISMATCH");
    ws.send_json(&json!({"type": "ack", "message_id": "not-an-id"}));
    ws.expect_error("INVALID_MESSAGE_ID");
    ws.send_json(&json!({"type": "ack", "message_id": "99999999999999-0", "topic": "unrelated"}));
    ws.expect_error("UNKNOWN_MESSAGE");

    let receipt = relay.publish(&topic, r#""still here""#);
    let d = ws.recv_delivery();
    assert_eq!(d["message_id"], receipt["message_id"]);
    assert_relay_still_serves(&relay);
}

#[test]
fn more_than_100_invalid_frames_close_the_session_with_1008() {
    let relay = Relay::start();
    let mut ws = relay.ws();
    // A hundred refusals are answered one by one, and the session goes on.
    ws.send_raw(&masked_frame(0x1, b"{}").repeat(100));
    for _ in 0..100 {
        ws.expect_error("MISSING_TYPE");
    }
    ws.send_json(&json!({"type": "ping"}));
    ws.expect_type("pong");
    // The 101st ends it.
    ws.send_text(r#"{"type":"dance"}"#);
    ws.expect_error("UNKNOWN_MESSAGE_TYPE");
    let reason = ws.expect_close(1008);
    assert!(reason.contains("invalid"), "{reason}");
    assert_relay_still_serves(&relay);
}

#[test]
fn the_server_pings_and_drops_peers_silent_for_the_pong_timeout() {
    let relay = Relay::start_with(&[
        ("PULSAR_DELIVERY_WS_PING_INTERVAL", "200ms"),
        ("PULSAR_DELIVERY_WS_PONG_TIMEOUT", "600ms"),
    ]);
    // A silent peer: its bytes are read raw, so no pong ever answers the pings.
    let silent = relay.ws();
    let started = Instant::now();
    let silent = thread::spawn(move || {
        let mut stream = silent.sock.get_ref().try_clone().unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the silent peer is still connected after 3 s"
            );
            match std::io::Read::read(&mut stream, &mut chunk) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the silent peer is still connected: {e}"),
            }
        }
        (bytes, started.elapsed())
    });
    // A live peer: tungstenite answers every ping while it reads, so it outlives the
    // timeout twice over.
    let mut live = relay.ws();
    live.set_read_timeout(Duration::from_millis(100));
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1400) {
        match live.sock.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the live peer was dropped: {e}"),
        }
    }
    assert!(
        pings >= 3,
        "{pings} server pings in 1.4 s at one per 200 ms"
    );
    live.send_json(&json!({"type": "ping"}));
    live.expect_type("pong");

    let (bytes, dropped_after) = silent.join().unwrap();
    // Dropped at the first ping tick 600 ms after it was last heard from (its handshake).
    assert!(
        (Duration::from_millis(550)..Duration::from_millis(1900)).contains(&dropped_after),
        "the silent peer was dropped after {dropped_after:?}"
    );
    let ping = [0x89u8, 0x00];
    assert!(
        bytes.chunks(2).filter(|c| *c == ping).count() >= 2,
        "the silent peer got no pings before it was dropped: {bytes:?}"
    );
}

#[test]
fn oversized_message_closes_with_1009() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_WS_MESSAGE_BYTES", "1024")]);
    // At the limit is fine.
    let mut ws = relay.ws();
    let pad = "x".repeat(1024 - r#"{"type":"ping","pad":""}"#.len());
    ws.send_text(&format!(r#"{{"type":"ping","pad":"{pad}"}}"#));
    ws.expect_type("pong");
    // Over it closes.
    let pad = "x".repeat(2000);
    ws.send_text(&format!(r#"{{"type":"ping","pad":"{pad}"}}"#));
    ws.expect_close(1009);
    assert_relay_still_serves(&relay);
}

#[test]
fn client_close_is_echoed() {
    let relay = Relay::start();
    let mut ws = relay.ws();
    ws.send_raw(&masked_frame(0x8, &[0x03, 0xe8]));
    ws.expect_close(1000);
}

#[test]
fn ack_without_topic_only_acknowledges_the_topic_that_holds_the_message() {
    let relay = Relay::start();
    let [a, b]: [String; 2] = topics_on_each_shard("ack-scope").try_into().unwrap();
    let client = "scoped";
    let mut ws = relay.ws();
    ws.subscribe(&[&a, &b], json!({"client_id": client}));
    let mut http = relay.http();
    let b1 = http.publish(&b, r#""b1""#);
    let a1 = http.publish(&a, r#""a1""#);
    let b2 = http.publish(&b, r#""b2""#);
    for _ in 0..3 {
        ws.recv_delivery();
    }
    // Acknowledge a1 without naming its topic: only topic `a` may move.
    ws.send_json(&json!({"type": "ack", "message_id": id_of(&a1)}));
    assert!(ws.collect_until_pong().is_empty());
    ws.close();

    let mut ws = relay.ws();
    ws.subscribe(&[&a, &b], json!({"client_id": client}));
    let mut got: Vec<String> = ws
        .collect_until_pong()
        .iter()
        .map(|f| format!("{}/{}", f["topic"].as_str().unwrap(), id_of(f)))
        .collect();
    got.sort();
    let mut want = vec![format!("{b}/{}", id_of(&b1)), format!("{b}/{}", id_of(&b2))];
    want.sort();
    assert_eq!(
        got,
        want,
        "acking {a}'s message {} must not acknowledge {b}'s unacked messages",
        id_of(&a1)
    );
}

#[test]
fn later_subscribes_add_topics_and_resubscribing_at_the_limit_is_fine() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_TOPICS_PER_REQUEST", "2")]);
    let [a, b]: [String; 2] = topics_on_each_shard("add").try_into().unwrap();
    let mut ws = relay.ws();
    ws.subscribe(&[&a], json!({}));
    ws.subscribe(&[&b], json!({}));
    let ra = relay.publish(&a, "1");
    let first = ws.recv_delivery();
    assert_eq!(first["message_id"], ra["message_id"]);
    let rb = relay.publish(&b, "2");
    assert_eq!(ws.recv_delivery()["message_id"], rb["message_id"]);
    // A third topic is over the per-connection limit...
    ws.send_json(&json!({"type": "subscribe", "topics": ["third"]}));
    ws.expect_error("TOO_MANY_TOPICS");
    // ...but subscribing again to a topic already held adds nothing.
    ws.send_json(&json!({"type": "subscribe", "topics": [a]}));
    let reply = ws.recv_json();
    assert_eq!(
        reply["type"], "subscribed",
        "re-subscribing to a held topic at the topic limit was refused: {reply}"
    );
}

#[test]
fn fragmented_text_message_is_reassembled() {
    let relay = Relay::start();
    let topic = topic_on("fragments", 1);
    let mut ws = relay.ws();
    let text = format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#);
    let (one, two) = text.as_bytes().split_at(10);
    let (two, three) = two.split_at(10);
    let mut first = masked_frame(0x1, one);
    first[0] &= 0x7f; // no FIN
    let mut middle = masked_frame(0x0, two);
    middle[0] &= 0x7f;
    ws.send_raw(&first);
    ws.send_raw(&masked_frame(0x9, b"between")); // control frames may interleave
    ws.send_raw(&middle);
    ws.send_raw(&masked_frame(0x0, three));
    let reply = ws.expect_type("subscribed");
    assert_eq!(reply["topics"], json!([topic]));
    let r = relay.publish(&topic, "1");
    assert_eq!(ws.recv_delivery()["message_id"], r["message_id"]);
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    use std::io::{Read, Write};
    let relay = Relay::start();
    let topic = topic_on("eager", 0);
    let token = read_token();
    let mut bytes = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    let subscribe = format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#);
    bytes.extend(masked_frame(0x1, subscribe.as_bytes()));
    let mut stream = std::net::TcpStream::connect(relay.addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(&bytes).unwrap();
    // Read the 101 head byte by byte so no frame bytes are consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("101 response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "wrong Sec-WebSocket-Accept: {head}"
    );
    let sock =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    let mut ws = Ws {
        sock,
        handshake: tungstenite::handshake::client::Response::new(None),
    };
    ws.expect_type("subscribed");
    let r = relay.publish(&topic, "1");
    assert_eq!(ws.recv_delivery()["message_id"], r["message_id"]);
}

#[test]
fn origin_allow_list_is_enforced_on_upgrade() {
    let relay = Relay::start_with(&[(
        "PULSAR_SERVER_ALLOWED_ORIGINS",
        "https://app.example,https://admin.example",
    )]);
    let token = read_token();
    let upgrade = |origin: Option<&str>| {
        let mut req = ws_request(&relay, &format!("?token={token}"));
        if let Some(origin) = origin {
            req.headers_mut().insert("Origin", origin.parse().unwrap());
        }
        Ws::connect_request(relay.addr, req)
    };
    for origin in [
        None,
        Some("https://app.example"),
        Some("https://admin.example"),
    ] {
        assert!(
            matches!(upgrade(origin), WsConnect::Open(_)),
            "{origin:?} refused"
        );
    }
    for origin in ["https://evil.example", "https://app.example.evil", "null"] {
        match upgrade(Some(origin)) {
            WsConnect::Refused(status) => assert_eq!(status, 403, "{origin}"),
            WsConnect::Open(_) => panic!("{origin} accepted"),
        }
        let resp = relay.request(
            "GET",
            &format!("/ws?token={token}"),
            &[
                ("Origin", origin),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
        );
        resp.assert_error(403, "ORIGIN_NOT_ALLOWED");
    }
}

#[test]
fn slow_consumer_is_cut_off_with_4000() {
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "262144")]);
    let topic = topic_on("slow", 1);
    // A small receive buffer so the kernel absorbs little of what the relay sends.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&relay.addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let req = format!("ws://{}/ws?token={}", relay.addr, read_token())
        .into_client_request()
        .unwrap();
    let (sock, handshake) = tungstenite::client::client(req, stream).expect("handshake");
    let mut slow = Ws { sock, handshake };
    slow.subscribe(&[&topic], json!({}));
    // A healthy subscriber on the same topic keeps up (each burst is half the limit) and is
    // not affected.
    let mut fast = relay.ws();
    fast.subscribe(&[&topic], json!({}));

    // Publish about 16 MiB without reading from the slow subscriber.
    let payload = format!("\"{}\"", "p".repeat(8 * 1024));
    let item = format!(r#"{{"topic":"{topic}","payload":{payload}}}"#);
    const BATCH: usize = 16;
    let body = format!(r#"{{"messages":[{}]}}"#, vec![item; BATCH].join(","));
    let token = rw_token();
    let mut http = relay.http();
    let mut published = 0;
    for _ in 0..128 {
        let resp = http.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&token).as_pair()],
            body.as_bytes(),
        );
        resp.assert_status(207);
        published += BATCH;
        for _ in 0..BATCH {
            fast.recv_delivery();
        }
    }
    // The slow one gets what was already on the wire, then close 4000.
    let mut received = 0;
    loop {
        match slow.next_message() {
            tungstenite::Message::Text(_) => received += 1,
            tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4000, "{:?}", frame.reason);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            received < published,
            "all {published} delivered and no close"
        );
    }
    // The healthy subscriber still works.
    let r = relay.publish(&topic, "1");
    assert_eq!(fast.recv_delivery()["message_id"], r["message_id"]);
}
