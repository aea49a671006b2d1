//! Security features against the real binary: CORS, WebSocket token expiry and
//! re-authentication, publish rate limits, connection quotas, and tokens kept out of the
//! relay's output. The `topics` claim, JSON depth and frame floods are attacked in
//! `adversarial/` (`topics_claim.rs`, `floods.rs`).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the test secret carrying arbitrary claims.
fn token_from_claims(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn cors_preflight_and_allow_origin() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_ALLOWED_ORIGINS", "https://app.example")]);
    let preflight = relay.request(
        "OPTIONS",
        "/api/v1/messages",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        b"",
    );
    preflight.assert_status(204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(preflight
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    // Producers may send Idempotency-Key from a browser, and the answer is cached 600 s.
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("Authorization, Content-Type, Idempotency-Key")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));

    relay
        .request(
            "OPTIONS",
            "/api/v1/messages",
            &[("Origin", "https://evil.example")],
            b"",
        )
        .assert_error(403, "ORIGIN_NOT_ALLOWED");

    let token = rw_token();
    let allowed = relay.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&token).as_pair(),
            ("Origin", "https://app.example"),
        ],
        br#"{"topic":"t","payload":1}"#,
    );
    allowed.assert_status(201);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        allowed.header("access-control-expose-headers"),
        Some("Idempotent-Replayed, Retry-After"),
        "browser producers can see idempotent replays and back-off hints"
    );
    let other = relay.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&token).as_pair(),
            ("Origin", "https://evil.example"),
        ],
        br#"{"topic":"t","payload":1}"#,
    );
    assert_eq!(other.header("access-control-allow-origin"), None);

    let open = Relay::start();
    let any = open.request("GET", "/health", &[("Origin", "https://x.example")], b"");
    assert_eq!(any.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn websocket_closes_with_4001_when_its_token_expires_unless_renewed() {
    let relay = Relay::start_with(&[("PULSAR_JWT_LEEWAY", "0s")]);
    let short = |secs: u64| {
        token_from_claims(json!({
            "sub": "tester",
            "permissions": ["read"],
            "exp": now_secs() + secs,
        }))
    };
    let mut ws = Ws::connect(relay.addr, &short(2));
    ws.set_read_timeout(Duration::from_secs(6));
    let started = Instant::now();
    let reason = ws.expect_close(4001);
    assert!(reason.contains("expired"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut renewed = Ws::connect(relay.addr, &short(2));
    renewed.send_json(&json!({"type": "auth", "token": short(60)}));
    renewed.expect_type("authenticated");
    std::thread::sleep(Duration::from_millis(3500));
    // Still open: a ping is answered.
    renewed.send_json(&json!({"type": "ping"}));
    renewed.expect_type("pong");

    // Another subject cannot take over the session.
    let other = token("someone-else", pulsar_relay::auth::Permissions::READ);
    renewed.send_json(&json!({"type": "auth", "token": other}));
    renewed.expect_error("AUTH_SUBJECT_MISMATCH");
    renewed.send_json(&json!({"type": "auth", "token": "garbage"}));
    renewed.expect_error("INVALID_TOKEN");
}

#[test]
fn publish_rate_limit_answers_429_with_retry_after() {
    let relay = Relay::start_with(&[
        ("PULSAR_LIMITS_PUBLISH_RATE", "5"),
        ("PULSAR_SERVER_SHARDS", "1"),
    ]);
    let mut http = relay.http();
    let producer = rw_token();
    let mut statuses = Vec::new();
    // The bucket holds one second's worth (5) and refills at 5/s from the first request:
    // over `elapsed`, at most 5 + 5 × elapsed publishes get through.
    let started = Instant::now();
    for i in 0..20 {
        let resp = http.request(
            "POST",
            "/api/v1/messages",
            &[auth_header(&producer).as_pair()],
            format!(r#"{{"topic":"rl","payload":{i}}}"#).as_bytes(),
        );
        if resp.status == 429 {
            assert_eq!(resp.code(), "RATE_LIMITED");
            assert!(resp.header("retry-after").is_some());
        }
        statuses.push(resp.status);
    }
    let allowance = 5 + (5.0 * started.elapsed().as_secs_f64()).floor() as usize;
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        statuses[..5].iter().all(|s| *s == 201),
        "the burst is refused: {statuses:?}"
    );
    assert!(
        accepted <= allowance,
        "{accepted} accepted, {allowance} allowed: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20 - accepted,
        "{statuses:?}"
    );
    // Refused publishes changed nothing.
    let got = relay.poll("topics=rl&since=earliest&timeout=1").json();
    assert_eq!(got["messages"].as_array().unwrap().len(), accepted);
    // Another subject has its own bucket.
    let other = token("other", pulsar_relay::auth::Permissions::WRITE);
    http.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&other).as_pair()],
        br#"{"topic":"rl","payload":9}"#,
    )
    .assert_status(201);
}

#[test]
fn connections_per_ip_are_capped_across_shards() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_CONNECTIONS_PER_IP", "3")]);
    let mut held: Vec<Http> = (0..3).map(|_| relay.http()).collect();
    for http in &mut held {
        http.request("GET", "/health", &[], b"").assert_status(200);
    }
    relay
        .request("GET", "/health", &[], b"")
        .assert_error(503, "TOO_MANY_CONNECTIONS");
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(5), || {
            relay.request("GET", "/health", &[], b"").status == 200
        }),
        "a closed connection's slot comes back"
    );
}

#[test]
fn websockets_per_subject_are_capped() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_WEBSOCKETS_PER_SUBJECT", "2")]);
    let first = relay.ws();
    let _second = relay.ws();
    let request = || {
        use tungstenite::client::IntoClientRequest;
        format!("ws://{}/ws?token={}", relay.addr, rw_token())
            .into_client_request()
            .unwrap()
    };
    match Ws::connect_request(relay.addr, request()) {
        WsConnect::Refused(status) => assert_eq!(status, 429),
        WsConnect::Open(_) => panic!("a third session was accepted"),
    }
    // Another subject is not affected.
    let _other = Ws::connect(
        relay.addr,
        &token("other", pulsar_relay::auth::Permissions::READ),
    );
    first.close();
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            Ws::connect_request(relay.addr, request()),
            WsConnect::Open(_)
        )),
        "a closed session's slot comes back"
    );
}

#[test]
fn drop_oldest_sheds_messages_and_tells_the_slow_consumer() {
    let relay = Relay::start_with(&[
        ("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "64KiB"),
        ("PULSAR_DELIVERY_SLOW_CONSUMER", "drop_oldest"),
    ]);
    let mut slow = relay.ws();
    slow.subscribe(&["firehose"], json!({}));
    // ~24 MB, far more than the loopback socket buffers can absorb while it does not read.
    let payload = format!("\"{}\"", "x".repeat(1000));
    let batch = format!(
        r#"{{"messages":[{}]}}"#,
        vec![format!(r#"{{"topic":"firehose","payload":{payload}}}"#); 100].join(",")
    );
    let mut http = relay.http();
    let token = rw_token();
    for _ in 0..240 {
        http.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&token).as_pair()],
            batch.as_bytes(),
        )
        .assert_status(207);
    }
    slow.set_read_timeout(Duration::from_secs(10));
    let mut dropped = 0;
    let mut last_id = (0, 0);
    let mut received = 0;
    while received < 24_000 {
        let frame = slow.recv_json();
        match frame["type"].as_str() {
            Some("message") => {
                let id = parse_id(id_of(&frame));
                assert!(id > last_id, "order kept across drops");
                last_id = id;
                received += 1;
            }
            Some("error") => {
                assert_eq!(frame["code"], "MESSAGES_DROPPED", "{frame}");
                dropped += frame["count"].as_u64().unwrap();
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
        if dropped > 0 && received + dropped as usize >= 24_000 {
            break;
        }
    }
    assert!(dropped > 0, "nothing was dropped");
    assert_eq!(
        received as u64 + dropped,
        24_000,
        "every message delivered or reported"
    );
    // Still connected and served.
    slow.send_json(&json!({"type": "ping"}));
    slow.expect_type("pong");
}

#[test]
fn tokens_never_reach_the_relays_output() {
    let mut relay = Relay::start_with(&[
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "12345678"),
    ]);
    relay.wait_ready(Duration::from_secs(10));
    let login = relay.request(
        "POST",
        "/auth/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"username=admin&password=12345678",
    );
    login.assert_status(200);
    let access = login.json()["access_token"].as_str().unwrap().to_owned();
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_owned();
    let logged_out = {
        let again = relay.request(
            "POST",
            "/auth/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"username=admin&password=12345678",
        );
        again.json()["access_token"].as_str().unwrap().to_owned()
    };
    relay
        .request(
            "POST",
            "/auth/logout",
            &[auth_header(&logged_out).as_pair()],
            b"",
        )
        .assert_status(204);
    let service = rw_token();
    let write_only = write_token();
    let expired = expired_token();
    let foreign = foreign_token();
    let truncated = service[..service.len() - 5].to_string();
    let ws_url = |token: &str| {
        use tungstenite::client::IntoClientRequest;
        format!("ws://{}/ws?token={token}", relay.addr)
            .into_client_request()
            .unwrap()
    };

    // A session with `?token=`, working.
    let topic = topic_on("quiet", 0);
    let mut ws = Ws::connect(relay.addr, &access);
    ws.subscribe(&[&topic], json!({}));
    relay.publish(&topic, "1");
    ws.recv_delivery();
    ws.send_json(&json!({"type": "auth", "token": service}));
    ws.expect_error("AUTH_SUBJECT_MISMATCH");
    ws.send_json(&json!({"type": "auth", "token": expired}));
    ws.expect_error("TOKEN_EXPIRED");
    ws.close();
    // Refused ones: every error path of the handshake.
    for (token, status) in [
        (&expired, 401),
        (&foreign, 401),
        (&truncated, 401),
        (&logged_out, 401),
        (&write_only, 403),
    ] {
        match Ws::connect_request(relay.addr, ws_url(token)) {
            WsConnect::Refused(got) => assert_eq!(got, status),
            WsConnect::Open(_) => panic!("a bad token opened a WebSocket"),
        }
    }
    // In HTTP headers and query strings, in a malformed request, in an oversized one.
    for token in [&expired, &foreign, &truncated, &logged_out] {
        relay
            .request(
                "POST",
                "/api/v1/messages",
                &[auth_header(token).as_pair()],
                br#"{"topic":"t","payload":1}"#,
            )
            .assert_status(401);
    }
    relay
        .request(
            "GET",
            &format!("/api/v1/poll?topics=t&timeout=1&token={service}"),
            &[],
            b"",
        )
        .assert_status(401);
    let mut http = relay.http();
    http.send_raw(format!("GET /ws?token={service} HTTP/1.1\r\nHost x\r\n\r\n").as_bytes());
    let resp = http.read_response(true);
    assert_eq!(resp.status, 400, "{}", resp.text());
    http.assert_closed();
    // Closed on this side too, so that the relay need not linger on it at shutdown.
    drop(http);
    let long = format!("/ws?token={service}&pad={}", "x".repeat(20_000));
    assert_eq!(relay.request("GET", &long, &[], b"").status, 431);
    // Refresh tokens: spent, replayed, revoked, forged.
    let body = |t: &str| json!({ "refresh_token": t }).to_string();
    let post = |path: &str, t: &str| relay.request("POST", path, &[], body(t).as_bytes());
    post("/auth/token/refresh", &refresh).assert_status(200);
    post("/auth/token/refresh", &refresh).assert_status(401);
    post("/auth/token/revoke", &refresh).assert_status(204);
    let forged = format!("{}.{}", refresh.split('.').next().unwrap(), "f".repeat(64));
    post("/auth/token/refresh", &forged).assert_status(401);

    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(10)).is_some());
    // The output readers finish once the pipes close.
    std::thread::sleep(Duration::from_millis(200));
    let output = relay.output();
    assert!(output.contains("listening"), "output captured: {output}");
    let mut secrets = vec![refresh.split('.').nth(1).unwrap().to_owned()];
    for token in [
        &access,
        &logged_out,
        &service,
        &write_only,
        &expired,
        &foreign,
        &truncated,
    ] {
        secrets.push(token.clone());
        secrets.push(token.rsplit('.').next().unwrap().to_owned());
    }
    for secret in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "the relay printed a token (or its signature):\n{output}"
        );
    }
}
