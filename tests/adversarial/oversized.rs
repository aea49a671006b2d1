//! Oversized heads and bodies: 431 and 413 before the body is sent.

use std::thread;
use std::time::Instant;

use super::common::*;
use super::support::*;

#[test]
fn huge_heads_get_431_and_huge_bodies_413_before_the_body_is_sent() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let token = rw_token();
    let topic = topic_on("huge", 1);

    let big_value = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "v".repeat(100 * 1024)
    );
    let many_headers = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..1000)
            .map(|i| format!("H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_target = format!(
        "GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(100 * 1024)
    );
    let big_upgrade = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        "p,".repeat(50 * 1024)
    );
    let cases = [
        ("100 KiB header value", big_value, "HEADERS_TOO_LARGE"),
        ("1000 headers", many_headers, "TOO_MANY_HEADERS"),
        ("100 KiB request target", long_target, "HEADERS_TOO_LARGE"),
        ("100 KiB upgrade request", big_upgrade, "HEADERS_TOO_LARGE"),
    ];
    for (name, raw, code) in &cases {
        let got = attack(relay.addr, raw.as_bytes());
        assert!(got.closed, "{name}: still open");
        assert_eq!(got.status(), Some(431), "{name}: {:?}", got.text());
        assert_eq!(got.json()["code"], *code, "{name}");
    }

    // Bodies refused from the head alone: the body is never sent, yet the answer comes.
    let publish_head = |framing: &str| {
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{framing}\r\n"
        )
    };
    let heads = [
        (
            "10 MiB Content-Length",
            publish_head("Content-Length: 10485760\r\n"),
        ),
        (
            "Content-Length beyond u64",
            publish_head("Content-Length: 184467440737095516160\r\n"),
        ),
        (
            "10 MiB with Expect: 100-continue",
            publish_head("Expect: 100-continue\r\nContent-Length: 10485760\r\n"),
        ),
        (
            "a 1 GiB chunk",
            publish_head("Transfer-Encoding: chunked\r\n") + "40000000\r\n",
        ),
    ];
    for (name, head) in &heads {
        let started = Instant::now();
        let got = attack(relay.addr, head.as_bytes());
        assert!(got.closed, "{name}: still open without a body");
        // No `100 Continue` first: the refusal is the first thing said.
        assert_eq!(got.status(), Some(413), "{name}: {:?}", got.text());
        assert_eq!(got.json()["code"], "BODY_TOO_LARGE", "{name}");
        assert!(started.elapsed() < PROMPT, "{name}");
    }

    // Many attackers at once, each streaming 256 KiB of header: every one is refused and
    // the relay's memory does not grow with what they send.
    let addr = relay.addr;
    let attackers: Vec<_> = (0..32)
        .map(|i| {
            thread::spawn(move || {
                let raw = format!(
                    "GET /health HTTP/1.1\r\nHost: x\r\nX-Flood-{i}: {}\r\n\r\n",
                    "f".repeat(256 * 1024)
                );
                let got = attack(addr, raw.as_bytes());
                assert!(got.closed, "flood {i}: still open");
                assert_eq!(got.status(), Some(431), "flood {i}: {:?}", got.text());
            })
        })
        .collect();
    for a in attackers {
        a.join().expect("header flood");
    }
    assert_topic_untouched(&relay, &topic);
    baseline.assert_recovered(&relay, 20);
}
