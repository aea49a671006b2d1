//! Request smuggling: conflicting framing is refused, and the request hidden behind it never runs.

use std::time::Duration;

use super::common::*;
use super::support::*;

#[test]
fn smuggling_shapes_are_refused_and_the_smuggled_request_never_runs() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let probe = topic_on("smuggled", 0);
    let token = rw_token();
    // Appended after each refused request: if the relay parsed on past its refusal, this
    // publish would land in the probe topic.
    let smuggled = publish_request(&probe, &token, r#""smuggled""#);
    let post = |headers: &str, body: &str| {
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{headers}\r\n{body}{smuggled}"
        )
    };
    let n = smuggled.len();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            400,
            "AMBIGUOUS_LENGTH",
        ),
        (
            "CL.TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            "AMBIGUOUS_LENGTH",
        ),
        (
            "CL with TE identity",
            post("Content-Length: 0\r\nTransfer-Encoding: identity\r\n", ""),
            400,
            "AMBIGUOUS_LENGTH",
        ),
        (
            "CL with an invalid CL and TE",
            post(
                "Content-Length: x\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            "AMBIGUOUS_LENGTH",
        ),
        (
            "two differing Content-Lengths",
            post(&format!("Content-Length: 0\r\nContent-Length: {n}\r\n"), ""),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "a Content-Length list with differing values",
            post(&format!("Content-Length: 0, {n}\r\n"), ""),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "signed Content-Length",
            post("Content-Length: +0\r\n", ""),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "hexadecimal Content-Length",
            post("Content-Length: 0x0\r\n", ""),
            400,
            "INVALID_CONTENT_LENGTH",
        ),
        (
            "Transfer-Encoding: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            400,
            "BAD_TRANSFER_ENCODING",
        ),
        (
            "Transfer-Encoding: identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
            501,
            "UNSUPPORTED_TRANSFER_ENCODING",
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            400,
            "BAD_TRANSFER_ENCODING",
        ),
        (
            "Transfer-Encoding: chunked twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            "BAD_TRANSFER_ENCODING",
        ),
        (
            "Transfer-Encoding with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "Content-Length with a space before the colon",
            post("Content-Length : 0\r\n", ""),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "Transfer-Encoding folded onto a continuation line",
            post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "Transfer-Encoding with a vertical tab",
            post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "chunked on HTTP/1.0",
            post("Transfer-Encoding: chunked\r\n", "0\r\n\r\n").replacen("HTTP/1.1", "HTTP/1.0", 1),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "chunk size line ending in a bare LF",
            post("Transfer-Encoding: chunked\r\n", "2\nab\r\n0\r\n\r\n"),
            400,
            "BAD_CHUNKED_ENCODING",
        ),
        (
            "negative chunk size",
            post("Transfer-Encoding: chunked\r\n", "-2\r\nab\r\n0\r\n\r\n"),
            400,
            "BAD_CHUNKED_ENCODING",
        ),
        (
            "chunk data longer than its size",
            post("Transfer-Encoding: chunked\r\n", "2\r\nabc\r\n0\r\n\r\n"),
            400,
            "BAD_CHUNKED_ENCODING",
        ),
        (
            "chunk size that overflows 64 bits",
            post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000002\r\nab\r\n0\r\n\r\n",
            ),
            413,
            "BODY_TOO_LARGE",
        ),
    ];
    for (name, raw, status, code) in cases {
        let mut http = relay.http();
        http.send_raw(raw.as_bytes());
        let resp = http
            .try_read_response(true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.status, status, "{name}: {}", resp.text());
        assert_eq!(resp.code(), code, "{name}: {}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"), "{name}");
        // Exactly one response, then the end of the connection: the smuggled request
        // after it was not answered (nor run).
        http.assert_closed();
    }

    // A request hidden inside a body is body, not a request: Content-Length covers it,
    // the publish body is not JSON (422), and the connection stays in sync.
    let mut http = relay.http();
    let hidden = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n{smuggled}\
         GET /health HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    );
    http.send_raw(hidden.as_bytes());
    http.read_response(true).assert_error(422, "INVALID_JSON");
    http.read_response(true).assert_status(200);
    // Same with chunked framing, the hidden request split across two chunks.
    let (a, b) = smuggled.split_at(n / 3);
    let chunked = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: relay.test\r\n\r\n",
        a.len(),
        b.len()
    );
    http.send_raw(chunked.as_bytes());
    http.read_response(true).assert_error(422, "INVALID_JSON");
    http.read_response(true).assert_status(200);
    // A body on a GET is read and ignored, not run: two requests, two answers.
    let get_with_body = format!(
        "GET /health HTTP/1.1\r\nHost: relay.test\r\nContent-Length: {n}\r\n\r\n{smuggled}\
         GET /ready HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    );
    http.send_raw(get_with_body.as_bytes());
    assert_eq!(http.read_response(true).json()["status"], "ok");
    assert_eq!(http.read_response(true).json()["status"], "ready");
    // Nothing else is pending on the connection: a third answer would be the smuggled one.
    http.set_read_timeout(Duration::from_millis(500));
    let extra = http.try_read_response(true);
    assert!(
        extra.is_err(),
        "an extra response arrived: {:?}",
        extra.map(|r| r.text())
    );
    assert!(http.leftover().is_empty(), "{:?}", http.leftover());

    assert_topic_untouched(&relay, &probe);
    drop(http);
    baseline.assert_recovered(&relay, 20);
}
