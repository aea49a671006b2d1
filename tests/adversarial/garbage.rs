//! Garbage on fresh connections and after the WebSocket upgrade: an error or a close, never a hang, and the relay serves on.

use std::time::Instant;

use serde_json::json;
use tungstenite::Message;

use super::common::*;
use super::support::*;

/// A plausible TLS 1.2/1.3 ClientHello record with an SNI extension.
fn tls_client_hello(rng: &mut Rng) -> Vec<u8> {
    let sni = b"relay.test";
    let mut ext = Vec::new();
    // server_name extension
    let list_len = 3 + sni.len();
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0x00);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(sni);
    // supported_versions: TLS 1.3, 1.2
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
    let mut hello = vec![0x03, 0x03];
    hello.extend(rng.bytes(32));
    hello.push(32);
    hello.extend(rng.bytes(32));
    hello.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]);
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend(ext);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn garbage_on_fresh_connections_gets_an_error_or_a_close_never_a_hang() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let mut rng = Rng::new(5);

    // (name, bytes, the exact status and code expected)
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame and a HEADERS frame, as a real HTTP/2 client sends them.
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    h2.extend_from_slice(&[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    let mut nul_in_target = b"GET /hea\0lth HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    nul_in_target.extend(rng.bytes(64));
    let known: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "TLS ClientHello",
            tls_client_hello(&mut rng),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            505,
            "HTTP_VERSION_NOT_SUPPORTED",
        ),
        (
            "HTTP/2 preface and frames",
            h2,
            505,
            "HTTP_VERSION_NOT_SUPPORTED",
        ),
        (
            "HTTP/9.9",
            b"GET /health HTTP/9.9\r\n\r\n".to_vec(),
            505,
            "HTTP_VERSION_NOT_SUPPORTED",
        ),
        (
            "SSH banner",
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "RESP PING",
            b"*1\r\n$4\r\nPING\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        ("NUL bytes", vec![0u8; 1024], 400, "MALFORMED_REQUEST"),
        ("0xFF bytes", vec![0xFFu8; 1024], 400, "MALFORMED_REQUEST"),
        (
            "NUL in the request target",
            nul_in_target,
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "NUL in a header value",
            b"GET /health HTTP/1.1\r\nX-A: a\0b\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "non-UTF-8 header value",
            b"GET /health HTTP/1.1\r\nX-A: \xc3\x28\xff\r\n\r\n".to_vec(),
            400,
            "INVALID_HEADER_VALUE",
        ),
        (
            "endless empty lines",
            b"\r\n".repeat(20_000),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "endless request line",
            [b"GET /".as_slice(), &[b'a'; 64 * 1024]].concat(),
            431,
            "HEADERS_TOO_LARGE",
        ),
    ];
    for (name, bytes, status, code) in known {
        let started = Instant::now();
        let got = attack(relay.addr, &bytes);
        assert!(
            got.closed,
            "{name}: the connection was still open after {PROMPT:?} (got {:?})",
            got.text()
        );
        assert_eq!(got.status(), Some(status), "{name}: got {:?}", got.text());
        assert_eq!(got.json()["code"], code, "{name}: got {:?}", got.text());
        assert!(
            got.text()
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{name}: error response does not announce the close: {:?}",
            got.text()
        );
        assert!(
            started.elapsed() < PROMPT,
            "{name}: answered only after {:?}",
            started.elapsed()
        );
    }

    // Random junk of many sizes: an error response or a plain close, never a hang, and
    // never anything but an error.
    for seed in 0..40u64 {
        let mut rng = Rng::new(1000 + seed);
        let len = 1 + rng.below(8 * 1024) as usize;
        let bytes = rng.bytes(len);
        let got = attack(relay.addr, &bytes);
        assert!(
            got.closed,
            "random junk seed {seed} ({len} bytes): still open after {PROMPT:?}"
        );
        if !got.bytes.is_empty() {
            let status = got.status().unwrap_or(0);
            assert!(
                (400..600).contains(&status),
                "random junk seed {seed}: {:?}",
                got.text()
            );
        }
    }
    // Junk after a valid request on a keep-alive connection: the request is answered, the
    // junk refused.
    let mut stream = connect(relay.addr);
    let mut bytes = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    bytes.extend(tls_client_hello(&mut rng));
    write_ignoring_errors(&mut stream, &bytes);
    let got = read_until_close(&mut stream, PROMPT);
    assert!(got.closed, "junk after a request: still open");
    let text = got.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text:?}");
    assert!(text.contains("HTTP/1.1 400"), "{text:?}");

    baseline.assert_recovered(&relay, 20);
}

#[test]
fn garbage_frames_after_the_websocket_upgrade_close_the_session() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_WS_MESSAGE_BYTES", "65536")]);
    let baseline = Baseline::take(&relay);
    let mut rng = Rng::new(7);

    let mut fragmented_then_new = masked_frame(0x1, b"{\"ty");
    fragmented_then_new[0] &= 0x7F; // not FIN: a fragmented message starts
    fragmented_then_new.extend(masked_frame(0x1, b"{}"));
    let mut unfinished_ping = masked_frame(0x9, b"hi");
    unfinished_ping[0] &= 0x7F;
    let mut unmasked = masked_frame(0x1, b"{\"type\":\"ping\"}");
    unmasked[1] &= 0x7F;
    unmasked.drain(2..6); // no masking key; the payload is still masked, as junk
    let mut rsv = masked_frame(0x1, b"{}");
    rsv[0] |= 0x40;
    let huge_len = [
        &[0x81u8, 0xFF][..],
        &0x8000_0000_0000_0000u64.to_be_bytes(),
        &[1, 2, 3, 4],
    ]
    .concat();
    let over_limit = [
        &[0x82u8, 0xFF][..],
        &(1u64 << 40).to_be_bytes(),
        &[1, 2, 3, 4],
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("reserved bit", rsv, 1002),
        ("reserved data opcode", masked_frame(0x3, b"x"), 1002),
        ("reserved control opcode", masked_frame(0xB, b"x"), 1002),
        ("fragmented ping", unfinished_ping, 1002),
        ("ping over 125 bytes", masked_frame(0x9, &[b'p'; 126]), 1002),
        ("continuation first", masked_frame(0x0, b"{}"), 1002),
        (
            "new message inside a fragmented one",
            fragmented_then_new,
            1002,
        ),
        ("64-bit length with the top bit", huge_len, 1002),
        ("1 TiB frame announced", over_limit, 1009),
        (
            "invalid UTF-8 text",
            masked_frame(0x1, b"{\"a\":\"\xff\xfe\"}"),
            1007,
        ),
        ("one-byte close payload", masked_frame(0x8, &[3]), 1002),
        (
            "close code 1005",
            masked_frame(0x8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            masked_frame(0x8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close reason not UTF-8",
            masked_frame(0x8, &[0x03, 0xE8, 0xff, 0xfe]),
            1007,
        ),
        ("a TLS ClientHello", tls_client_hello(&mut rng), 1002),
        (
            "an HTTP request",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            1002,
        ),
    ];
    let topic = topic_on("violations", 0);
    for (name, bytes, code) in cases {
        let mut ws = relay.ws();
        ws.set_read_timeout(PROMPT);
        // The session works, and holds a subscription, before the junk arrives.
        ws.subscribe(&[&topic], json!({}));
        ws.send_raw(&bytes);
        match ws.sock.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), code, "{name}: {:?}", frame.reason)
            }
            other => panic!("{name}: expected a close frame with {code}, got {other:?}"),
        }
        // Then the relay ends the TCP connection.
        let stream = ws.sock.get_mut();
        let got = read_until_close(stream, PROMPT);
        assert!(
            got.closed,
            "{name}: TCP connection left open after the close"
        );
    }
    // Frames of random junk: a close frame or a plain close, never a hang. The first byte
    // has a reserved bit set, so every one of them is a protocol violation from byte one.
    for seed in 0..20u64 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(4096) as usize;
        let mut junk = rng.bytes(len);
        junk[0] |= 0x20;
        let mut stream = ws_upgrade_raw(relay.addr, &read_token());
        write_ignoring_errors(&mut stream, &junk);
        let got = read_until_close(&mut stream, PROMPT);
        assert!(got.closed, "junk frame seed {seed}: still open");
        assert!(
            got.bytes.starts_with(&[0x88]) && got.bytes[2..4] == 1002u16.to_be_bytes(),
            "junk frame seed {seed}: expected a close frame with 1002, got {:?}",
            got.bytes
        );
    }
    baseline.assert_recovered(&relay, 20);
}
