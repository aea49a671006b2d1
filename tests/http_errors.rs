//! The HTTP layer: routing, auth and validation errors, framing errors, limits, keep-alive,
//! pipelining, HEAD, chunked bodies, the slow-client timeout and the idle timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn health_and_ready() {
    let relay = Relay::start();
    let resp = relay.request("GET", "/health", &[], b"");
    resp.assert_status(200);
    assert_eq!(resp.json()["status"], "ok");
    let resp = relay.request("GET", "/ready", &[], b"");
    resp.assert_status(200);
    assert_eq!(resp.json(), json!({"status": "ready", "shards": 2}));
}

/// (description, method, path, authorization, body, status, code)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    u16,
    &'a str,
);

#[test]
fn bad_requests_get_their_status_and_code_and_the_relay_keeps_serving() {
    let relay = Relay::start();
    let rw = rw_token();
    let bearer = format!("Bearer {rw}");
    let expired = format!("Bearer {}", expired_token());
    let foreign = format!("Bearer {}", foreign_token());
    let read_only = format!("Bearer {}", read_token());
    let write_only = format!("Bearer {}", write_token());
    let long_topic = "t".repeat(256);

    let publish = "/api/v1/messages";
    let cases: Vec<Case> = vec![
        (
            "unknown path",
            "GET",
            "/nope",
            None,
            String::new(),
            404,
            "NOT_FOUND",
        ),
        (
            "unknown api path",
            "POST",
            "/api/v1/nope",
            Some(&bearer),
            String::new(),
            404,
            "NOT_FOUND",
        ),
        (
            "no token",
            "POST",
            publish,
            None,
            r#"{"topic":"t","payload":1}"#.into(),
            401,
            "AUTH_REQUIRED",
        ),
        (
            "not a JWT",
            "POST",
            publish,
            Some("Bearer not.a.jwt"),
            r#"{"topic":"t","payload":1}"#.into(),
            401,
            "INVALID_TOKEN",
        ),
        (
            "other scheme",
            "POST",
            publish,
            Some("Basic dXNlcjpwYXNz"),
            r#"{"topic":"t","payload":1}"#.into(),
            401,
            "AUTH_REQUIRED",
        ),
        (
            "foreign secret",
            "POST",
            publish,
            Some(&foreign),
            r#"{"topic":"t","payload":1}"#.into(),
            401,
            "INVALID_TOKEN",
        ),
        (
            "expired",
            "POST",
            publish,
            Some(&expired),
            r#"{"topic":"t","payload":1}"#.into(),
            401,
            "TOKEN_EXPIRED",
        ),
        (
            "read-only publishes",
            "POST",
            publish,
            Some(&read_only),
            r#"{"topic":"t","payload":1}"#.into(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            "read-only bulk",
            "POST",
            "/api/v1/messages/bulk",
            Some(&read_only),
            r#"{"messages":[]}"#.into(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            "write-only polls",
            "GET",
            "/api/v1/poll?topics=t&timeout=1",
            Some(&write_only),
            String::new(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            "no token polls",
            "GET",
            "/api/v1/poll?topics=t&timeout=1",
            None,
            String::new(),
            401,
            "AUTH_REQUIRED",
        ),
        (
            "not an object",
            "POST",
            publish,
            Some(&bearer),
            "[1,2]".into(),
            422,
            "INVALID_MESSAGE",
        ),
        (
            "missing topic",
            "POST",
            publish,
            Some(&bearer),
            r#"{"payload":1}"#.into(),
            422,
            "MISSING_FIELD",
        ),
        (
            "missing payload",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t"}"#.into(),
            422,
            "MISSING_FIELD",
        ),
        (
            "topic with space",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"a b","payload":1}"#.into(),
            422,
            "INVALID_TOPIC",
        ),
        (
            "empty topic",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"","payload":1}"#.into(),
            422,
            "INVALID_TOPIC",
        ),
        (
            "topic not a string",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":7,"payload":1}"#.into(),
            422,
            "INVALID_TOPIC",
        ),
        (
            "topic of 256 chars",
            "POST",
            publish,
            Some(&bearer),
            format!(r#"{{"topic":"{long_topic}","payload":1}}"#),
            422,
            "INVALID_TOPIC",
        ),
        (
            "ttl zero",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"ttl":0}"#.into(),
            422,
            "INVALID_TTL",
        ),
        (
            "ttl negative",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"ttl":-5}"#.into(),
            422,
            "INVALID_TTL",
        ),
        (
            "ttl fraction",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"ttl":1.5}"#.into(),
            422,
            "INVALID_TTL",
        ),
        (
            "ttl string",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"ttl":"5"}"#.into(),
            422,
            "INVALID_TTL",
        ),
        (
            "metadata number value",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"metadata":{"a":1}}"#.into(),
            422,
            "INVALID_METADATA",
        ),
        (
            "metadata array",
            "POST",
            publish,
            Some(&bearer),
            r#"{"topic":"t","payload":1,"metadata":["a"]}"#.into(),
            422,
            "INVALID_METADATA",
        ),
    ];
    for (what, method, path, authorization, body, status, code) in &cases {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = authorization {
            headers.push(("Authorization", a));
        }
        let resp = relay.request(method, path, &headers, body.as_bytes());
        assert_eq!(resp.status, *status, "{what}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["code"], *code, "{what}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
        if *status == 401 {
            assert!(
                resp.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{what}: no WWW-Authenticate: {:?}",
                resp.headers
            );
        }
    }

    // Nothing above was published: topic `t` has no history.
    let resp = relay.poll("topics=t&since=earliest&timeout=1");
    assert_eq!(
        resp.json()["messages"],
        json!([]),
        "a rejected request published"
    );

    // A 255-character topic is the maximum that is accepted.
    let max_topic = "t".repeat(255);
    relay.publish(&max_topic, "1");
    assert_relay_still_serves(&relay);
}

/// A publish body that is not JSON at all is `INVALID_JSON`, as for bulk and ack (and as
/// the README's error table says); `INVALID_MESSAGE` is for JSON that is not a message
/// object.
#[test]
fn unparseable_publish_body_is_invalid_json() {
    let relay = Relay::start();
    let token = rw_token();
    let cases: [(&str, &[u8]); 4] = [
        ("form encoding", b"topic=t&payload=1"),
        ("truncated JSON", br#"{"topic":"t","payload":"#),
        ("empty body", b""),
        ("not UTF-8", b"{\"topic\":\"t\",\"payload\":\"\xff\"}"),
    ];
    for (what, body) in cases {
        let resp = relay.request(
            "POST",
            "/api/v1/messages",
            &[auth_header(&token).as_pair()],
            body,
        );
        assert_eq!(resp.status, 422, "{what}: {}", resp.text());
        assert_eq!(resp.code(), "INVALID_JSON", "{what}: {}", resp.text());
    }
}

#[test]
fn wrong_method_gets_405_with_allow() {
    let relay = Relay::start();
    let cases = [
        ("GET", "/api/v1/messages", "POST"),
        ("DELETE", "/api/v1/messages", "POST"),
        ("PUT", "/api/v1/messages/bulk", "POST"),
        ("POST", "/api/v1/poll", "GET"),
        ("GET", "/api/v1/ack", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/ready", "GET, HEAD"),
        ("POST", "/ws", "GET"),
    ];
    for (method, path, allow) in cases {
        let resp = relay.request(method, path, &[], b"");
        resp.assert_error(405, "METHOD_NOT_ALLOWED");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
    }
}

/// Sends raw bytes on a fresh connection and reads one response.
fn raw(relay: &Relay, bytes: &[u8]) -> (Http, Response) {
    let mut http = relay.http();
    http.send_raw(bytes);
    let resp = http.read_response(true);
    (http, resp)
}

#[test]
fn malformed_framing_is_rejected_and_the_connection_closed() {
    let relay = Relay::start();
    let token = rw_token();
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let many_headers = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let publish_head =
        format!("POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "space in path",
            b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "bad header line",
            b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "headers too large",
            big_header.into_bytes(),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "too many headers",
            many_headers.into_bytes(),
            431,
            "TOO_MANY_HEADERS",
        ),
        (
            "Transfer-Encoding and Content-Length",
            format!(
                "{publish_head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            400,
            "AMBIGUOUS_LENGTH",
        ),
        (
            "non-numeric Content-Length",
            format!("{publish_head}Content-Length: ten\r\n\r\n").into_bytes(),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "conflicting Content-Length",
            format!("{publish_head}Content-Length: 3\r\nContent-Length: 4\r\n\r\n1234")
                .into_bytes(),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "unsupported Transfer-Encoding",
            format!("{publish_head}Transfer-Encoding: gzip, chunked\r\n\r\n").into_bytes(),
            501,
            "UNSUPPORTED_TRANSFER_ENCODING",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!("{publish_head}Transfer-Encoding: gzip\r\n\r\n").into_bytes(),
            400,
            "BAD_TRANSFER_ENCODING",
        ),
        (
            "bad chunk size",
            format!("{publish_head}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
                .into_bytes(),
            400,
            "BAD_CHUNKED_ENCODING",
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            505,
            "HTTP_VERSION_NOT_SUPPORTED",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let (mut http, resp) = raw(&relay, &bytes);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_eq!(resp.code(), code, "{what}");
        assert_eq!(resp.header("connection"), Some("close"), "{what}");
        http.assert_closed();
    }
    assert_relay_still_serves(&relay);
}

#[test]
fn chunked_request_body_is_accepted() {
    let relay = Relay::start();
    let topic = topic_on("chunked", 1);
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));
    let token = rw_token();
    let body = format!(r#"{{"topic":"{topic}","payload":{{"chunked":[1,2,3]}}}}"#);
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut http = relay.http();
    // In two writes, split inside a chunk.
    let (first, second) = request.as_bytes().split_at(request.len() / 2);
    http.send_raw(first);
    std::thread::sleep(Duration::from_millis(50));
    http.send_raw(second);
    let resp = http.read_response(true);
    resp.assert_status(201);
    let d = ws.recv_delivery();
    assert_eq!(d["message_id"], resp.json()["message_id"]);
    assert_eq!(d["payload"], json!({"chunked": [1, 2, 3]}));
    // The connection is still usable.
    http.request("GET", "/health", &[], b"").assert_status(200);
}

#[test]
fn body_over_the_limit_gets_413_before_it_is_sent() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_BODY_BYTES", "1024")]);
    let token = rw_token();
    let topic = topic_on("limit", 0);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut http = relay.http();
        // Only the head: the relay must answer from Content-Length alone.
        http.send_raw(
            format!(
                "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 {expect}Content-Length: 5000\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = http.read_response(true);
        resp.assert_error(413, "BODY_TOO_LARGE");
        assert_eq!(resp.header("connection"), Some("close"));
        http.assert_closed();
    }
    // Chunked bodies are limited too.
    let mut http = relay.http();
    let chunk = "x".repeat(2000);
    http.send_raw(
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
    );
    http.read_response(true).assert_error(413, "BODY_TOO_LARGE");

    // At the limit is accepted.
    let filler = "y".repeat(1024 - format!(r#"{{"topic":"{topic}","payload":""}}"#).len());
    let body = format!(r#"{{"topic":"{topic}","payload":"{filler}"}}"#);
    assert_eq!(body.len(), 1024);
    relay.http().publish_body(&body);
}

#[test]
fn expect_continue_gets_100_then_the_response() {
    let relay = Relay::start();
    let token = rw_token();
    let topic = topic_on("continue", 1);
    let body = format!(r#"{{"topic":"{topic}","payload":1}}"#);
    let mut http = relay.http();
    http.send_raw(
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut head = [0u8; 25];
    use std::io::Read;
    http.stream.read_exact(&mut head).expect("100 Continue");
    assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
    http.send_raw(body.as_bytes());
    http.read_response(true).assert_status(201);
}

#[test]
fn keep_alive_and_connection_close() {
    let relay = Relay::start();
    let topic = topic_on("keepalive", 0);
    let mut http = relay.http();
    for i in 0..5 {
        let r = http.publish(&topic, &i.to_string());
        assert_eq!(r["topic"], topic.as_str());
    }
    let resp = http.request("GET", "/health", &[], b"");
    resp.assert_status(200);
    assert_ne!(resp.header("connection"), Some("close"));

    let resp = http.request("GET", "/health", &[("Connection", "close")], b"");
    resp.assert_status(200);
    assert_eq!(resp.header("connection"), Some("close"));
    http.assert_closed();

    // HTTP/1.0 without keep-alive closes too.
    let mut http = relay.http();
    http.send_raw(b"GET /health HTTP/1.0\r\n\r\n");
    http.read_response(true).assert_status(200);
    http.assert_closed();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("pipeline");
    let token = rw_token();
    let auth = auth_header(&token);
    let mut bytes = Vec::new();
    bytes.extend(encode_request("GET", "/health", &[], b""));
    for (i, topic) in topics.iter().chain(topics.iter()).enumerate() {
        let body = format!(r#"{{"topic":"{topic}","payload":{i}}}"#);
        bytes.extend(encode_request(
            "POST",
            "/api/v1/messages",
            &[auth.as_pair()],
            body.as_bytes(),
        ));
    }
    bytes.extend(encode_request("GET", "/nope", &[], b""));
    bytes.extend(encode_request(
        "GET",
        &format!("/api/v1/poll?topics={}&since=earliest&timeout=5", topics[0]),
        &[auth.as_pair()],
        b"",
    ));
    bytes.extend(encode_request("HEAD", "/health", &[], b""));
    bytes.extend(encode_request("GET", "/ready", &[], b""));

    let mut http = relay.http();
    http.send_raw(&bytes);
    http.read_response(true).assert_status(200);
    let mut receipts = Vec::new();
    for i in 0..4 {
        let resp = http.read_response(true);
        resp.assert_status(201);
        let r = resp.json();
        assert_eq!(
            r["topic"],
            topics[i % 2].as_str(),
            "response {i} out of order"
        );
        receipts.push(r);
    }
    assert!(parse_id(id_of(&receipts[0])) < parse_id(id_of(&receipts[2])));
    assert!(parse_id(id_of(&receipts[1])) < parse_id(id_of(&receipts[3])));
    http.read_response(true).assert_error(404, "NOT_FOUND");
    let poll = http.read_response(true);
    poll.assert_status(200);
    let polled = poll.json();
    let ids: Vec<&str> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, [id_of(&receipts[0]), id_of(&receipts[2])]);
    let head = http.read_response(false);
    head.assert_status(200);
    let ready = http.read_response(true);
    assert_eq!(ready.json()["status"], "ready");
    assert!(http.leftover().is_empty());
}

#[test]
fn head_health_has_content_length_but_no_body() {
    let relay = Relay::start();
    let get = relay.request("GET", "/health", &[], b"");
    let mut http = relay.http();
    let head = http.request("HEAD", "/health", &[], b"");
    head.assert_status(200);
    let len = head
        .header("content-length")
        .expect("Content-Length on HEAD");
    assert_eq!(len, get.body.len().to_string());
    // No body bytes follow: the next response on the connection starts right away.
    let next = http.request("GET", "/ready", &[], b"");
    next.assert_status(200);
    assert_eq!(next.json()["status"], "ready");
}

#[test]
fn slow_client_gets_408_and_is_disconnected() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_READ_TIMEOUT", "1s")]);
    let mut http = relay.http();
    let started = Instant::now();
    http.send_raw(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Le");
    let resp = http.read_response(true);
    let elapsed = started.elapsed();
    resp.assert_error(408, "REQUEST_TIMEOUT");
    assert_eq!(resp.header("connection"), Some("close"));
    http.assert_closed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "408 after only {elapsed:?}"
    );

    // A body that stops half way is cut off as well.
    let token = rw_token();
    let mut http = relay.http();
    http.send_raw(
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 100\r\n\r\n{{\"topic\":"
        )
        .as_bytes(),
    );
    http.read_response(true)
        .assert_error(408, "REQUEST_TIMEOUT");
    http.assert_closed();

    // An idle keep-alive connection between requests is not a slow request.
    let mut http = relay.http();
    http.request("GET", "/health", &[], b"").assert_status(200);
    std::thread::sleep(Duration::from_millis(1600));
    http.request("GET", "/health", &[], b"").assert_status(200);
}

#[test]
fn idle_connections_are_closed_after_server_idle_timeout() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_IDLE_TIMEOUT", "400ms")]);
    let started = Instant::now();
    // One connection that never sends a byte, one idle after a request.
    let mut silent = relay.http();
    let mut used = relay.http();
    used.request("GET", "/health", &[], b"").assert_status(200);
    // One that sends a request every 200 ms: open long past 400 ms, since the timeout
    // counts each wait for the next request, not the connection's age.
    let mut busy = relay.http();
    while started.elapsed() < Duration::from_millis(1000) {
        busy.request("GET", "/health", &[], b"").assert_status(200);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The idle ones were closed by now, without a response.
    for http in [&mut silent, &mut used] {
        http.set_read_timeout(Duration::from_millis(200));
        http.assert_closed();
    }
}

#[test]
fn auth_is_checked_on_every_request_of_a_keep_alive_connection() {
    let relay = Relay::start();
    let topic = topic_on("auth-keepalive", 0);
    let body = format!(r#"{{"topic":"{topic}","payload":1}}"#);
    let rw = rw_token();
    let reader = read_token();
    let expired = expired_token();
    let mut http = relay.http();
    let mut publish = |token: Option<&str>| {
        let auth = token.map(auth_header);
        let headers: Vec<(&str, &str)> = auth.iter().map(|h| h.as_pair()).collect();
        http.request("POST", "/api/v1/messages", &headers, body.as_bytes())
    };
    publish(Some(&rw)).assert_status(201);
    publish(Some(&reader)).assert_error(403, "PERMISSION_DENIED");
    publish(None).assert_error(401, "AUTH_REQUIRED");
    publish(Some(&expired)).assert_error(401, "TOKEN_EXPIRED");
    publish(Some("garbage")).assert_error(401, "INVALID_TOKEN");
    publish(Some(&rw)).assert_status(201);
}

#[test]
fn connections_over_the_limit_get_503() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_CONNECTIONS", "3")]);
    let mut open: Vec<Http> = (0..3)
        .map(|_| {
            let mut http = relay.http();
            http.request("GET", "/health", &[], b"").assert_status(200);
            http
        })
        .collect();
    let mut extra = relay.http();
    extra.send_raw(&encode_request("GET", "/api/v1/topics", &[], b""));
    let resp = extra.read_response(true);
    resp.assert_error(503, "TOO_MANY_CONNECTIONS");
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
    extra.assert_closed();
    // Health checks still get through, one request per connection.
    let mut health = relay.http();
    health.send_raw(&encode_request("GET", "/health", &[], b""));
    health.read_response(true).assert_status(200);
    health.assert_closed();
    // The open ones keep working.
    for http in &mut open {
        http.request("GET", "/health", &[], b"").assert_status(200);
    }
    // Once one closes, a new connection is served (the count drops asynchronously).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = relay.request("GET", "/api/v1/topics", &[], b"");
        if resp.status == 401 {
            break;
        }
        resp.assert_error(503, "TOO_MANY_CONNECTIONS");
        assert!(
            Instant::now() < deadline,
            "slot not freed after a connection closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
