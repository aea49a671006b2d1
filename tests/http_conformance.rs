//! HTTP/1.1 conformance of the request reader on a real relay (RFC 9112, RFC 6455 §4.1):
//! `Host` rules, absolute-form targets, WebSocket handshakes over HTTP/1.0, the position of
//! `chunked` among transfer codings, and one line-ending rule for heads and chunked bodies.

mod common;

use common::*;
use serde_json::Value;

/// Sends `raw` on a fresh connection and reads the one response.
fn exchange(relay: &Relay, raw: &[u8]) -> (Response, Http) {
    let mut http = relay.http();
    http.send_raw(raw);
    let resp = http.read_response(true);
    (resp, http)
}

/// A publish request to `topic` with the read-write token, `head_lines` (each ending in
/// CRLF) in place of the usual `Host` line.
fn publish_with(target: &str, head_lines: &str, topic: &str) -> Vec<u8> {
    let body = format!(r#"{{"topic":"{topic}","payload":1}}"#);
    format!(
        "POST {target} HTTP/1.1\r\n{head_lines}Authorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        rw_token(),
        body.len()
    )
    .into_bytes()
}

/// How many messages `topic` holds.
fn stored(relay: &Relay, topic: &str) -> usize {
    let resp = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
    resp.assert_status(200);
    resp.json()["messages"].as_array().unwrap().len()
}

#[test]
fn host_must_appear_once_with_a_valid_value_on_http_1_1() {
    let relay = Relay::start();
    for (case, lines) in [
        ("missing", ""),
        ("duplicated", "Host: relay.test\r\nHost: relay.test\r\n"),
        ("two values", "Host: a.test, b.test\r\n"),
        ("a space", "Host: a b\r\n"),
        ("a user", "Host: user@relay.test\r\n"),
        ("a bad port", "Host: relay.test:http\r\n"),
        ("an open bracket", "Host: [::1\r\n"),
    ] {
        let topic = "host-refused";
        let (resp, mut http) = exchange(&relay, &publish_with("/api/v1/messages", lines, topic));
        resp.assert_error(400, "INVALID_HOST");
        http.assert_closed();
        assert_eq!(stored(&relay, topic), 0, "{case}: nothing was published");
    }
    for (case, lines) in [
        ("a name and port", "Host: relay.test:8080\r\n"),
        ("an IPv4 address", "Host: 127.0.0.1\r\n"),
        ("an IPv6 literal", "Host: [::1]:8080\r\n"),
        ("an empty value", "Host:\r\n"),
        ("sub-delims", "Host: a-b_c~d!e$f&g'h(i)j*k+l,m;n=o.test\r\n"),
    ] {
        let (resp, _) = exchange(&relay, &publish_with("/api/v1/messages", lines, "host-ok"));
        assert_eq!(resp.status, 201, "{case}: {}", resp.text());
    }
    assert_eq!(stored(&relay, "host-ok"), 5);
    // HTTP/1.0 has no Host requirement.
    let (resp, _) = exchange(&relay, b"GET /health HTTP/1.0\r\n\r\n");
    resp.assert_status(200);
}

#[test]
fn absolute_form_targets_are_served_like_their_path() {
    let relay = Relay::start();
    let target = format!("http://{}/api/v1/messages", relay.addr);
    let host = format!("Host: {}\r\n", relay.addr);
    let (resp, _) = exchange(&relay, &publish_with(&target, &host, "absolute"));
    resp.assert_status(201);
    assert_eq!(resp.json()["topic"], "absolute");

    // The query survives, the scheme is case-insensitive, and the target's authority wins
    // over the Host field (RFC 9112 §3.2.2).
    let poll = format!(
        "GET HTTP://other.test:9/api/v1/poll?topics=absolute&since=earliest&timeout=1 HTTP/1.1\r\n\
         Host: relay.test\r\nAuthorization: Bearer {}\r\n\r\n",
        rw_token()
    );
    let (resp, _) = exchange(&relay, poll.as_bytes());
    resp.assert_status(200);
    assert_eq!(resp.json()["messages"].as_array().unwrap().len(), 1);
    let (resp, _) = exchange(
        &relay,
        b"GET https://relay.test/health HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    );
    resp.assert_status(200);

    // Still an HTTP/1.1 request: Host is required; and a target with user info, another
    // scheme or a bad authority is not one this server serves.
    let (resp, _) = exchange(&relay, b"GET http://relay.test/health HTTP/1.1\r\n\r\n");
    resp.assert_error(400, "INVALID_HOST");
    for target in [
        "http://user@relay.test/health",
        "ftp://relay.test/health",
        "http:///health",
        "http://relay.test:x/health",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: relay.test\r\n\r\n");
        let (resp, _) = exchange(&relay, raw.as_bytes());
        resp.assert_error(400, "INVALID_TARGET");
    }
}

#[test]
fn a_websocket_handshake_over_http_1_0_is_refused() {
    let relay = Relay::start();
    let raw = format!(
        "GET /ws?token={} HTTP/1.0\r\nHost: relay.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        rw_token()
    );
    let (resp, mut http) = exchange(&relay, raw.as_bytes());
    resp.assert_error(400, "WS_HTTP_VERSION");
    http.assert_closed();
    // The same handshake over HTTP/1.1 opens a session.
    let mut ws = relay.ws();
    ws.subscribe(&["t"], Value::Null);
}

#[test]
fn chunked_must_be_the_final_transfer_coding_and_appear_once() {
    let relay = Relay::start();
    let send = |codings: &str| {
        let raw = format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\n\
             Authorization: Bearer {}\r\nTransfer-Encoding: {codings}\r\n\r\n0\r\n\r\n",
            rw_token()
        );
        let (resp, mut http) = exchange(&relay, raw.as_bytes());
        http.assert_closed();
        resp
    };
    for codings in [
        "chunked, gzip",
        "chunked, chunked",
        "gzip, chunked, chunked",
    ] {
        let resp = send(codings);
        assert_eq!(resp.status, 400, "{codings}: {}", resp.text());
        assert_eq!(resp.code(), "BAD_TRANSFER_ENCODING", "{codings}");
    }
    // A coding we do not implement, with chunked framing last, is 501.
    send("gzip, chunked").assert_error(501, "UNSUPPORTED_TRANSFER_ENCODING");
}

#[test]
fn a_bare_lf_ends_no_line_in_a_head_as_in_a_chunked_body() {
    let relay = Relay::start();
    let body = r#"{"topic":"lf","payload":1}"#;
    // Read leniently, the bare LF would end `X-A` and frame the body as chunked.
    let smuggled = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {}\r\n\
         X-A: a\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        rw_token(),
        body.len()
    );
    let (resp, mut http) = exchange(&relay, smuggled.as_bytes());
    resp.assert_error(400, "MALFORMED_REQUEST");
    assert!(resp.text().contains("bare LF"), "{}", resp.text());
    http.assert_closed();
    for raw in [
        &b"GET /health HTTP/1.1\nHost: relay.test\n\n"[..],
        b"GET /health HTTP/1.1\r\nHost: relay.test\n\r\n",
        b"\nGET /health HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    ] {
        let (resp, _) = exchange(&relay, raw);
        resp.assert_error(400, "MALFORMED_REQUEST");
    }
    // Chunk lines follow the same rule.
    let chunk_lf = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\n{body}\r\n0\r\n\r\n",
        rw_token(),
        body.len()
    );
    let (resp, _) = exchange(&relay, chunk_lf.as_bytes());
    resp.assert_error(400, "BAD_CHUNKED_ENCODING");
    assert_eq!(stored(&relay, "lf"), 0);
}
