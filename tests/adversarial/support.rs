//! What every attack family uses: raw sockets that misbehave on purpose, hand-made JWTs,
//! and the state a relay must be back in after an attack (connections, WebSocket
//! sessions, memory).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use socket2::{Domain, SockRef, Socket, Type};
use tungstenite::client::IntoClientRequest;

use super::common::*;

/// Deadline for anything the relay must answer "at once", generous for a loaded machine.
/// The relay's own read timeout is 30 s by default, so an answer within this bound cannot
/// be a read-timeout 408 in disguise.
pub const PROMPT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------

/// A small deterministic PRNG (xorshift64*), so a failing input can be reproduced.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to relay");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects with a small `SO_RCVBUF` set before the handshake, so the kernel absorbs
/// little of what the relay sends to a client that does not read.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect(&addr.into()).expect("connect to relay");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Drops the connection with a TCP RST (`SO_LINGER` 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Writes as much as the peer takes; the relay may refuse and close before the attacker
/// has finished writing, which is fine.
pub fn write_ignoring_errors(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// What the relay sent before closing the connection.
pub struct Reaction {
    pub bytes: Vec<u8>,
    /// False when the connection was still open at the deadline: a hang.
    pub closed: bool,
}

impl Reaction {
    pub fn status(&self) -> Option<u16> {
        let head = self.bytes.strip_prefix(b"HTTP/1.1 ")?;
        std::str::from_utf8(head.get(..3)?).ok()?.parse().ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The JSON body of a single response.
    pub fn json(&self) -> Value {
        let text = self.text();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"))
    }
}

/// Reads until the relay closes (EOF or reset) or `deadline` passes.
pub fn read_until_close(stream: &mut TcpStream, deadline: Duration) -> Reaction {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Reaction {
                    bytes,
                    closed: true,
                }
            }
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if started.elapsed() >= deadline {
                    return Reaction {
                        bytes,
                        closed: false,
                    };
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the relay closed with unread input: still a close.
            Err(_) => {
                return Reaction {
                    bytes,
                    closed: true,
                }
            }
        }
    }
}

/// Sends `bytes` on a fresh connection and returns what the relay answered before closing.
pub fn attack(addr: SocketAddr, bytes: &[u8]) -> Reaction {
    let mut stream = connect(addr);
    write_ignoring_errors(&mut stream, bytes);
    read_until_close(&mut stream, PROMPT)
}

/// A raw WebSocket upgrade with a bearer header; returns the socket after the 101.
pub fn ws_upgrade_raw(addr: SocketAddr, token: &str) -> TcpStream {
    let mut stream = connect(addr);
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "upgrade response cut short ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {:?}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A tungstenite session over a socket with a small receive buffer.
pub fn ws_small_rcvbuf(relay: &Relay, rcvbuf: usize) -> Ws {
    let stream = connect_small_rcvbuf(relay.addr, rcvbuf);
    let req = format!("ws://{}/ws?token={}", relay.addr, read_token())
        .into_client_request()
        .unwrap();
    let (sock, handshake) = tungstenite::client::client(req, stream).expect("handshake");
    Ws { sock, handshake }
}

pub fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}

// ---------------------------------------------------------------------------------------
// Hand-made tokens
// ---------------------------------------------------------------------------------------

pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `base64url(header).base64url(claims)`, the signing input of a JWT.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A JWT with any header, HMAC-signed with `alg` and `secret` whatever the header says.
pub fn jwt_hmac(
    header: &Value,
    claims: &Value,
    alg: jsonwebtoken::Algorithm,
    secret: &[u8],
) -> String {
    let input = signing_input(header, claims);
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        alg,
    )
    .unwrap();
    format!("{input}.{sig}")
}

/// Claims the relay accepts (read and write, valid for an hour), with `patch` applied;
/// a `null` in `patch` removes the claim.
pub fn claims(patch: Value) -> Value {
    let now = now_secs();
    let mut c = json!({
        "sub": "mallory",
        "permissions": ["read", "write"],
        "iat": now,
        "exp": now + 3600,
    });
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn hs256(claims: &Value) -> String {
    jwt_hmac(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        jsonwebtoken::Algorithm::HS256,
        SECRET.as_bytes(),
    )
}

/// Proves that nothing was published to `topic`: after a sentinel is published, a replay
/// from the very beginning holds the sentinel and nothing else.
#[track_caller]
pub fn assert_topic_untouched(relay: &Relay, topic: &str) {
    let receipt = relay.publish(topic, r#""sentinel""#);
    let resp = relay.poll(&format!(
        "topics={topic}&since=earliest&timeout=1&limit=1000"
    ));
    resp.assert_status(200);
    let body = resp.json();
    let messages = body["messages"].as_array().expect("messages array");
    assert_eq!(
        messages.len(),
        1,
        "topic {topic} holds messages nobody legitimately published: {body}"
    );
    assert_eq!(messages[0]["message_id"], receipt["message_id"], "{body}");
}

/// A complete, valid publish request (what a smuggler would try to sneak through).
pub fn publish_request(topic: &str, token: &str, payload: &str) -> String {
    let body = format!(r#"{{"topic":"{topic}","payload":{payload}}}"#);
    format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[track_caller]
pub fn assert_refused(resp: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    assert_eq!(resp.code(), code, "{what}: {}", resp.text());
    if status == 401 {
        assert!(
            resp.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}: 401 without WWW-Authenticate: Bearer"
        );
    }
}
