//! Frame floods, deeply nested JSON and garbage at the original relay's endpoints.

use std::time::Instant;

use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};
use tungstenite::Message;

use super::common::*;
use super::support::*;

#[test]
fn a_websocket_frame_flood_is_rate_limited_then_closed_with_4008() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let mut ws = relay.ws();
    ws.set_read_timeout(PROMPT);
    let ping = masked_frame(0x1, br#"{"type":"ping"}"#);
    let started = Instant::now();
    // The default 200 frames/s with a burst of one second's worth: of 250 commands in one
    // write, the first 200 are answered, the rest refused (but for what refilled since).
    ws.send_raw(&ping.repeat(250));
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..250 {
        let v = ws.recv_json();
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "RATE_LIMITED" => limited += 1,
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert!(limited > 0, "250 commands at once, none refused");
    assert!(pongs >= 200, "{pongs} of the burst of 200 answered");
    // Ten times the rate in one write: a second's worth (200) refused in all, then the
    // close; nothing more is answered but what refilled meanwhile.
    ws.send_raw(&ping.repeat(2000));
    loop {
        match ws.next_message() {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") if v["code"] == "RATE_LIMITED" => limited += 1,
                    _ => panic!("unexpected frame {v}"),
                }
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4008, "{frame:?}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let allowance = 200 + (200.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert_eq!(limited, 200, "refused frames before the close");
    assert!(
        pongs <= allowance,
        "{pongs} of 2250 commands answered, {allowance} allowed: the rate limit did not hold"
    );
    let got = read_until_close(ws.sock.get_mut(), PROMPT);
    assert!(got.closed, "the TCP connection stayed open after 4008");
    baseline.assert_recovered(&relay, 20);
}

#[test]
fn deeply_nested_json_is_refused_everywhere_without_hurting_the_relay() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let topic = topic_on("deep", 1);
    let token = rw_token();
    let headers = [auth_header(&token)];
    let headers = [headers[0].as_pair()];
    let nest = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    // Far deeper than any recursive parser survives on a thread stack; unbalanced too.
    let abyss = "[".repeat(400_000);
    let mut http = relay.http();

    // limits.max_json_depth (64) is the deepest payload taken; one level more is refused.
    let edge = topic_on("deep-edge", 0);
    let at_limit = format!(r#"{{"topic":"{edge}","payload":{}}}"#, nest(64));
    http.request("POST", "/api/v1/messages", &headers, at_limit.as_bytes())
        .assert_status(201);
    let over = format!(r#"{{"topic":"{edge}","payload":{}}}"#, nest(65));
    http.request("POST", "/api/v1/messages", &headers, over.as_bytes())
        .assert_error(422, "JSON_TOO_DEEP");
    let kept = relay.poll(&format!("topics={edge}&since=earliest&timeout=1"));
    let kept = kept.json();
    assert_eq!(kept["messages"].as_array().map(Vec::len), Some(1), "{kept}");
    assert_eq!(
        kept["messages"][0]["payload"],
        serde_json::from_str::<Value>(&nest(64)).unwrap()
    );

    // Far deeper than the limit, shallow enough for any parser: the relay's own limit
    // speaks.
    let deep = format!(r#"{{"topic":"{topic}","payload":{}}}"#, nest(100));
    http.request("POST", "/api/v1/messages", &headers, deep.as_bytes())
        .assert_error(422, "JSON_TOO_DEEP");
    let resp = http.request(
        "POST",
        "/api/v1/messages/bulk",
        &headers,
        format!(r#"{{"messages":[{deep}]}}"#).as_bytes(),
    );
    resp.assert_status(207);
    let item = &resp.json()["results"][0];
    assert_eq!(item["status"], "rejected", "{item}");
    assert_eq!(item["error"]["code"], "JSON_TOO_DEEP", "{item}");

    // The abyss, wherever JSON is read: refused with a 422, never a crash.
    let bodies = [
        (
            "/api/v1/messages",
            format!(r#"{{"topic":"{topic}","payload":{abyss}"#),
        ),
        (
            "/api/v1/messages",
            format!(
                r#"{{"topic":"{topic}","payload":1,"metadata":{}"#,
                "{\"a\":".repeat(200_000)
            ),
        ),
        ("/api/v1/messages", abyss.clone()),
        ("/api/v1/messages/bulk", format!(r#"{{"messages":{abyss}"#)),
        (
            "/api/v1/ack",
            format!(r#"{{"client_id":"c","message_ids":{abyss}"#),
        ),
    ];
    for (path, body) in &bodies {
        let resp = http.request("POST", path, &headers, body.as_bytes());
        assert_eq!(resp.status, 422, "{path}: {}", resp.text());
    }
    // In WebSocket frames: exactly one error frame each (a deep `ping` is not answered),
    // and the session goes on.
    let mut ws = relay.ws();
    ws.set_read_timeout(PROMPT);
    for (text, code) in [
        (
            format!(r#"{{"type":"subscribe","topics":{abyss}"#),
            "INVALID_JSON",
        ),
        (
            format!(r#"{{"type":"ping","x":{}}}"#, nest(100_000)),
            "JSON_TOO_DEEP",
        ),
        (
            format!(r#"{{"type":"ping","x":{}}}"#, nest(64)),
            "JSON_TOO_DEEP",
        ),
        (abyss.clone(), "INVALID_JSON"),
    ] {
        ws.send_text(&text);
        let frames = ws.collect_until_pong();
        assert_eq!(frames.len(), 1, "{}…: {frames:?}", &text[..30]);
        assert_eq!(frames[0]["type"], "error", "{frames:?}");
        assert_eq!(frames[0]["code"], code, "{frames:?}");
    }
    // At the limit (the frame's object and 63 arrays) a frame is taken.
    ws.send_text(&format!(r#"{{"type":"ping","x":{}}}"#, nest(63)));
    ws.expect_type("pong");
    ws.close();
    // In a token's claims, signed with the right secret.
    let deep_claims = claims(json!({"sub": "tester"}));
    let mut text = deep_claims.to_string();
    text.insert_str(1, &format!(r#""x":{},"#, nest(5000)));
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", b64url(text.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    let deep_token = format!("Bearer {input}.{sig}");
    let resp = http.request(
        "POST",
        "/api/v1/messages",
        &[("Authorization", &deep_token)],
        format!(r#"{{"topic":"{topic}","payload":1}}"#).as_bytes(),
    );
    assert_refused(&resp, 401, "INVALID_TOKEN", "deeply nested claims");
    drop(http);

    assert_topic_untouched(&relay, &topic);
    baseline.assert_recovered(&relay, 20);
}

#[test]
fn the_original_relays_endpoints_refuse_garbage_and_change_nothing() {
    let relay = Relay::start_with(&[
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "admin-password"),
        ("PULSAR_ACCOUNTS_LOGIN_RATE", "0"),
    ]);
    relay.wait_ready(PROMPT);
    let baseline = Baseline::take(&relay);
    let root = token(
        "root",
        Permissions::READ | Permissions::WRITE | Permissions::ADMIN,
    );
    let auth = auth_header(&root);
    let mut rng = Rng::new(6);
    let abyss = "[".repeat(200_000);
    let long = "x".repeat(100_000);
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\xff\xfe\x00garbage".to_vec(),
        abyss.clone().into_bytes(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"text\"".to_vec(),
        b"1e999".to_vec(),
        br#"{"topics":"jobs","since":[],"timeout":1e999}"#.to_vec(),
        br#"{"topics":[1,2],"since":{"a":1},"timeout":"x"}"#.to_vec(),
        format!(r#"{{"topics":["{long}"],"timeout":1}}"#).into_bytes(),
        br#"{"refresh_token":{"a":1},"revoke_chain":"yes"}"#.to_vec(),
        format!(r#"{{"refresh_token":"{long}.{long}"}}"#).into_bytes(),
        br#"{"username":["a"],"password":12345678,"permissions":"admin"}"#.to_vec(),
        format!(r#"{{"username":"{long}","password":"{long}"}}"#).into_bytes(),
        br#"{"topic_name":"bad name!","description":7}"#.to_vec(),
        format!(r#"{{"topic_name":"ok-name","description":"{long}"}}"#).into_bytes(),
        br#"{"email":5,"is_active":"no","permissions":["root"],"password":"short"}"#.to_vec(),
        b"username=&password=&grant_type=%ZZ%".to_vec(),
        format!("username={long}&password=%00%ff").into_bytes(),
    ];
    for _ in 0..20 {
        let n = rng.below(2000) as usize;
        bodies.push(rng.bytes(n));
    }
    let routes: [(&str, &str, bool); 10] = [
        ("POST", "/auth/login", false),
        ("POST", "/auth/token/refresh", false),
        ("POST", "/auth/token/revoke", false),
        ("POST", "/auth/register", true),
        (
            "PATCH",
            "/auth/users/00000000-0000-4000-8000-000000000000",
            true,
        ),
        ("POST", "/messages/poll", true),
        ("POST", "/api/v1/topics", true),
        ("PUT", "/api/v1/topics/jobs", true),
        ("DELETE", "/api/v1/topics/%ff%00", true),
        (
            "GET",
            "/api/v1/topics/jobs/messages?limit=%ff&order=sideways&cursor=-",
            true,
        ),
    ];
    let mut http = relay.http();
    for (method, path, authed) in routes {
        for body in &bodies {
            let headers: Vec<(&str, &str)> = if authed { vec![auth.as_pair()] } else { vec![] };
            let resp = http.request(method, path, &headers, body);
            assert!(
                (400..500).contains(&resp.status),
                "{method} {path} with {:?}: {} {}",
                String::from_utf8_lossy(&body[..body.len().min(60)]),
                resp.status,
                resp.text()
            );
            let error = resp.json();
            assert!(
                error["code"].is_string() && error["detail"].is_string(),
                "{error}"
            );
        }
    }
    // Nothing was created by any of it.
    let users = http.request("GET", "/auth/users", &[auth.as_pair()], b"");
    assert_eq!(
        users.json().as_array().map(Vec::len),
        Some(1),
        "only the bootstrap admin"
    );
    let topics = http.request("GET", "/api/v1/topics", &[auth.as_pair()], b"");
    assert_eq!(
        topics.json(),
        json!([]),
        "no topic records for the attacker"
    );
    drop(http);
    baseline.assert_recovered(&relay, 20);
}
