//! Shared harness for the integration tests: a real relay process on an ephemeral port, a
//! small HTTP/1.1 client over `std::net::TcpStream`, and a WebSocket client (tungstenite).
//!
//! Every test spawns its own relay (`PULSAR_SERVER_HTTP_PORT=0`, two shards), so tests can
//! run in parallel. Nothing is mocked: bytes go through the kernel to the real binary.

// Each test crate uses a different subset of the helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pulsar_relay::auth::{Authenticator, Permissions};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// The HS256 secret every test relay is started with (32+ bytes).
pub const SECRET: &str = "pulsar-relay-integration-test-secret-0123456789abcdef";

/// Generous timeout for anything the relay should answer "at once".
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pulsar-relay");

/// The number of shards every test relay runs.
pub const SHARDS: usize = 2;

// ---------------------------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------------------------

pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

/// A `Command` for the binary with every inherited `PULSAR_*` variable removed, so the
/// developer's environment cannot change what a test runs.
pub fn relay_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("PULSAR_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl Relay {
    pub fn start() -> Relay {
        Relay::start_with(&[])
    }

    /// Starts the relay with the test defaults plus `env` (later entries win).
    pub fn start_with(env: &[(&str, &str)]) -> Relay {
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
            .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
            .env("PULSAR_JWT_SECRET_KEY", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Relay::spawn(cmd)
    }

    /// Starts the relay from `cmd` (e.g. a [`relay_command`] with a `pre_exec` hook) and
    /// waits for its listening line.
    pub fn spawn(mut cmd: Command) -> Relay {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot spawn pulsar-relay");

        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str("[stderr] ");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = parse_listening_line(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str("[stdout] ");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => Relay {
                child,
                addr,
                output,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Give the reader threads a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "pulsar-relay did not print its listening line within 10 s (exit: {status:?})\n{}",
                    output.lock().unwrap()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay printed so far (stdout and stderr), for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn http(&self) -> Http {
        Http::connect(self.addr)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.http().request(method, path, headers, body)
    }

    /// Publishes `payload` (raw JSON text) to `topic` with a read-write token and returns
    /// the 201 receipt.
    pub fn publish(&self, topic: &str, payload: &str) -> Value {
        self.http().publish(topic, payload)
    }

    pub fn ws(&self) -> Ws {
        Ws::connect(self.addr, &rw_token())
    }

    /// Long-polls with a read-write token; `query` is appended after `?`.
    pub fn poll(&self, query: &str) -> Response {
        let mut http = self.http();
        http.set_read_timeout(Duration::from_secs(75));
        http.request(
            "GET",
            &format!("/api/v1/poll?{query}"),
            &[auth_header(&rw_token()).as_pair()],
            b"",
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("pulsar-relay listening on http://")?;
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok()
}

/// Runs the binary to completion (it must exit within 10 s) and returns its exit status,
/// stdout and stderr. `env` is applied on top of a `PULSAR_*`-free environment.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = relay_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot spawn pulsar-relay");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pulsar-relay {args:?} with {env:?} did not exit within 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out_thread.join().unwrap(),
        err_thread.join().unwrap(),
    )
}

impl Relay {
    /// Starts the relay (test defaults plus `env`) with stdout and stderr on a pipe whose
    /// reading end is already closed, as under `pulsar-relay 2>&1 | head -1` once `head`
    /// is gone or a log shipper that stopped: every line it writes fails (EPIPE). Its
    /// address cannot be read from the banner, so it gets a port that was free a moment
    /// ago; returns once `/health` answers.
    pub fn start_with_closed_output(env: &[(&str, &str)]) -> Relay {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port");
        let (reader, writer) = std::io::pipe().expect("cannot make a pipe");
        drop(reader);
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", addr.port().to_string())
            .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
            .env("PULSAR_JWT_SECRET_KEY", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(writer.try_clone().expect("cannot duplicate the pipe"))
            .stderr(writer);
        let mut relay = Relay {
            child: cmd.spawn().expect("cannot spawn pulsar-relay"),
            addr,
            output: Arc::new(Mutex::new(
                "(no output: stdout and stderr were closed)\n".to_owned(),
            )),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = relay.child.try_wait().expect("try_wait") {
                panic!("pulsar-relay exited at start-up with its output closed: {status}");
            }
            if let Ok(mut stream) = TcpStream::connect(addr) {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let request = encode_request("GET", "/health", &[], b"");
                let mut answer = [0u8; 12];
                if stream.write_all(&request).is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && answer.ends_with(b"200")
                {
                    return relay;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-relay with its output closed did not answer /health within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tokens and topics
// ---------------------------------------------------------------------------------------

pub fn token(sub: &str, perms: Permissions) -> String {
    Authenticator::from_secret(SECRET.as_bytes())
        .mint(sub, perms, Duration::from_secs(3600))
        .expect("mint")
}

/// An HS256 token for `sub` with `permissions`, valid for an hour, plus `extra` claims
/// (`topics`, `jti`, ...).
pub fn token_with(sub: &str, permissions: &[&str], extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "sub": sub,
        "permissions": permissions,
        "iat": now,
        "exp": now + 3600,
    });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            claims[k] = v;
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Subject "tester" with read and write.
pub fn rw_token() -> String {
    token("tester", Permissions::READ | Permissions::WRITE)
}

pub fn read_token() -> String {
    token("reader", Permissions::READ)
}

pub fn write_token() -> String {
    token("writer", Permissions::WRITE)
}

/// An HS256 token signed with the test secret whose `exp` is an hour ago (beyond any
/// leeway).
pub fn expired_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "tester",
        "permissions": ["read", "write"],
        "iat": now - 7200,
        "exp": now - 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A valid-looking token signed with another secret.
pub fn foreign_token() -> String {
    Authenticator::from_secret(b"another-secret-another-secret-another-secret")
        .mint(
            "tester",
            Permissions::READ | Permissions::WRITE,
            Duration::from_secs(3600),
        )
        .unwrap()
}

pub struct Header(String, String);

impl Header {
    pub fn as_pair(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

pub fn auth_header(token: &str) -> Header {
    Header("Authorization".into(), format!("Bearer {token}"))
}

/// A topic name starting with `prefix` that `owner_of` assigns to `shard`.
pub fn topic_on(prefix: &str, shard: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|t| pulsar_relay::topic::owner_of(t, SHARDS) == shard)
        .expect("some topic hashes to every shard")
}

/// One topic per shard: `[owned by shard 0, owned by shard 1]`.
pub fn topics_on_each_shard(prefix: &str) -> Vec<String> {
    (0..SHARDS).map(|s| topic_on(prefix, s)).collect()
}

/// Parses `<ms>-<seq>` for ordering comparisons.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("message id {id:?} is not <ms>-<seq>"));
    (
        ms.parse().unwrap_or_else(|_| panic!("bad ms in {id:?}")),
        seq.parse().unwrap_or_else(|_| panic!("bad seq in {id:?}")),
    )
}

pub fn id_of(v: &Value) -> &str {
    v["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message_id in {v}"))
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The `code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in error body {:?}", self.text()))
            .to_string()
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }

    /// Asserts an error response: status, JSON body with this `code` and a `detail`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        self.assert_status(status);
        let body = self.json();
        assert_eq!(body["code"], code, "error body: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "error body has no detail: {body}"
        );
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect to relay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to relay");
    }

    /// Writes a request (with `Host` and, when there is a body, `Content-Length`).
    pub fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        self.send_raw(&encode_request(method, path, headers, body));
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send_request(method, path, headers, body);
        self.read_response(method != "HEAD")
    }

    /// POST /api/v1/messages with a read-write token; asserts 201 and returns the receipt.
    pub fn publish(&mut self, topic: &str, payload: &str) -> Value {
        let body = format!(r#"{{"topic":"{topic}","payload":{payload}}}"#);
        self.publish_body(&body)
    }

    pub fn publish_body(&mut self, body: &str) -> Value {
        let token = rw_token();
        let resp = self.request(
            "POST",
            "/api/v1/messages",
            &[
                auth_header(&token).as_pair(),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 201, "publish {body} failed: {}", resp.text());
        resp.json()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response (skipping 1xx interim responses). `has_body` is false for the
    /// answer to a HEAD request.
    pub fn read_response(&mut self, has_body: bool) -> Response {
        self.try_read_response(has_body)
            .unwrap_or_else(|e| panic!("reading a response failed: {e}"))
    }

    pub fn try_read_response(&mut self, has_body: bool) -> Result<Response, String> {
        loop {
            let head_end = loop {
                if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                    break pos;
                }
                match self.fill() {
                    Ok(0) => {
                        return Err(format!(
                            "connection closed before a complete response head (got {:?})",
                            String::from_utf8_lossy(&self.buf)
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error: {e}")),
                }
            };
            let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
            self.buf.drain(..head_end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            if version != "HTTP/1.1" {
                return Err(format!("bad status line {status_line:?}"));
            }
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line {status_line:?}"))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            if (100..200).contains(&status) {
                continue;
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
            let body = if has_body && status != 204 && status != 304 {
                let len = len.ok_or("response without Content-Length")?;
                while self.buf.len() < len {
                    match self.fill() {
                        Ok(0) => return Err("connection closed inside a response body".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read error in body: {e}")),
                    }
                }
                self.buf.drain(..len).collect()
            } else {
                Vec::new()
            };
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    /// True when the peer closes the connection (EOF or reset) within the read timeout with
    /// no further bytes; panics if bytes arrive or the connection stays open.
    pub fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected extra bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected the relay to close the connection, got more bytes"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the relay to close the connection, got {e}"),
        }
    }

    /// Bytes buffered but not yet consumed by a response read.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

pub fn encode_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: relay.test\r\n");
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && (!body.is_empty() || method == "POST") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

pub type WsSocket = tungstenite::WebSocket<TcpStream>;

pub struct Ws {
    pub sock: WsSocket,
    /// The handshake response (for the negotiated subprotocol).
    pub handshake: tungstenite::handshake::client::Response,
}

/// What a WebSocket upgrade produced: a session, or the HTTP status of a refusal.
pub enum WsConnect {
    Open(Box<Ws>),
    Refused(u16),
}

impl Ws {
    /// Connects to `/ws?token=…`.
    pub fn connect(addr: SocketAddr, token: &str) -> Ws {
        let req = format!("ws://{addr}/ws?token={token}")
            .into_client_request()
            .unwrap();
        match Ws::connect_request(addr, req) {
            WsConnect::Open(ws) => *ws,
            WsConnect::Refused(status) => panic!("WebSocket upgrade refused with {status}"),
        }
    }

    pub fn connect_request(
        addr: SocketAddr,
        req: tungstenite::handshake::client::Request,
    ) -> WsConnect {
        let stream = TcpStream::connect(addr).expect("connect to relay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        match tungstenite::client::client(req, stream) {
            Ok((sock, handshake)) => WsConnect::Open(Box::new(Ws { sock, handshake })),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                WsConnect::Refused(resp.status().as_u16())
            }
            Err(e) => panic!("WebSocket handshake failed: {e}"),
        }
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.sock.get_mut().set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.sock
            .send(Message::text(text))
            .expect("send WebSocket text frame");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Writes raw bytes to the socket, bypassing the WebSocket codec.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.get_mut().write_all(bytes).expect("raw write");
    }

    /// The next frame that is not a ping or pong (control frames answered by tungstenite).
    pub fn next_message(&mut self) -> Message {
        loop {
            match self.sock.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(msg) => return msg,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("timed out waiting for a WebSocket frame")
                }
                Err(e) => panic!("WebSocket read failed: {e}"),
            }
        }
    }

    /// The next text frame's raw text.
    pub fn recv_text(&mut self) -> String {
        match self.next_message() {
            Message::Text(text) => text.as_str().to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub fn recv_json(&mut self) -> Value {
        let text = self.recv_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
    }

    /// The next frame, which must have `"type": kind`.
    #[track_caller]
    pub fn expect_type(&mut self, kind: &str) -> Value {
        let v = self.recv_json();
        assert_eq!(v["type"], kind, "expected a {kind} frame, got {v}");
        v
    }

    /// The next frame must be a `message` delivery.
    #[track_caller]
    pub fn recv_delivery(&mut self) -> Value {
        self.expect_type("message")
    }

    /// The next frame must be an `error` frame with `code`.
    #[track_caller]
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect_type("error");
        assert_eq!(v["code"], code, "error frame: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error frame without message: {v}"
        );
        v
    }

    /// Sends a subscribe command and returns the `subscribed` reply.
    #[track_caller]
    pub fn subscribe(&mut self, topics: &[&str], extra: Value) -> Value {
        let mut cmd = serde_json::json!({"type": "subscribe", "topics": topics});
        if let Value::Object(map) = extra {
            for (k, v) in map {
                cmd[k] = v;
            }
        }
        self.send_json(&cmd);
        let reply = self.expect_type("subscribed");
        assert_eq!(reply["topics"], serde_json::json!(topics), "{reply}");
        reply
    }

    /// Sends a `ping` command and collects every frame before the `pong`. Frames the
    /// session queued while handling earlier commands (replays, errors) come first.
    pub fn collect_until_pong(&mut self) -> Vec<Value> {
        self.send_json(&serde_json::json!({"type": "ping"}));
        let mut frames = Vec::new();
        loop {
            let v = self.recv_json();
            if v["type"] == "pong" {
                return frames;
            }
            frames.push(v);
        }
    }

    /// The next frame must be a close frame with `code`; returns its reason.
    #[track_caller]
    pub fn expect_close(&mut self, code: u16) -> String {
        match self.next_message() {
            Message::Close(Some(frame)) => {
                assert_eq!(
                    u16::from(frame.code),
                    code,
                    "close frame with reason {:?}",
                    frame.reason
                );
                frame.reason.as_str().to_string()
            }
            other => panic!("expected a close frame with code {code}, got {other:?}"),
        }
    }

    pub fn close(mut self) {
        let _ = self.sock.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.sock.flush();
    }
}

/// A masked client frame with FIN set (`opcode` 0x1 text, 0x2 binary, ...).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Publishes through a fresh connection and checks the relay is still serving normally:
/// a WebSocket subscriber on a new connection receives the message.
pub fn assert_relay_still_serves(relay: &Relay) {
    for topic in topics_on_each_shard("still-serving") {
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], serde_json::json!({}));
        let receipt = relay.publish(&topic, r#"{"alive":true}"#);
        let got = ws.recv_delivery();
        assert_eq!(got["message_id"], receipt["message_id"]);
        assert_eq!(got["payload"], serde_json::json!({"alive": true}));
    }
}

/// Runs `poll` while another connection publishes `payload` to `topic` every 100 ms (from
/// 200 ms on) until the poll answered; returns the answer and the IDs published.
pub fn poll_while_publishing(
    relay: &Relay,
    topic: &str,
    payload: &str,
    poll: impl FnOnce() -> Response,
) -> (Response, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let addr = relay.addr;
        let topic = topic.to_string();
        let payload = payload.to_string();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            let mut published = Vec::new();
            thread::sleep(Duration::from_millis(200));
            while !stop.load(Ordering::Acquire) && published.len() < 100 {
                published.push(id_of(&http.publish(&topic, &payload)).to_string());
                thread::sleep(Duration::from_millis(100));
            }
            published
        })
    };
    let resp = poll();
    stop.store(true, Ordering::Release);
    (resp, publisher.join().unwrap())
}

// ---------------------------------------------------------------------------------------
// Relay additions for the persistence tests
// ---------------------------------------------------------------------------------------

impl Relay {
    /// Starts a relay whose persistent tier is `valkey`, plus `env` (later entries win).
    pub fn start_on_valkey(valkey: &Valkey, env: &[(&str, &str)]) -> Relay {
        Relay::start_on_valkey_port(valkey.port, env)
    }

    /// Starts a relay whose persistent tier is whatever listens on `port` of 127.0.0.1
    /// (a Valkey, or a fault proxy in front of one), plus `env`.
    pub fn start_on_valkey_port(port: u16, env: &[(&str, &str)]) -> Relay {
        let port = port.to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_VALKEY_HOST", "127.0.0.1"),
            ("PULSAR_VALKEY_PORT", &port),
        ];
        all.extend_from_slice(env);
        Relay::start_with(&all)
    }

    /// Sends SIGKILL (no shutdown sequence at all) and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the relay wrote to stderr so far, one line each.
    pub fn stderr(&self) -> String {
        self.output()
            .lines()
            .filter_map(|l| l.strip_prefix("[stderr] "))
            .fold(String::new(), |mut out, l| {
                out.push_str(l);
                out.push('\n');
                out
            })
    }

    /// `GET /ready` on a fresh connection.
    pub fn ready(&self) -> Response {
        self.request("GET", "/ready", &[], b"")
    }

    /// Polls `GET /ready` until it answers 200; panics after `timeout`.
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_ready_status(200, timeout);
    }

    /// Polls `GET /ready` until it answers 503 and returns that response; panics after
    /// `timeout`.
    #[track_caller]
    pub fn wait_not_ready(&self, timeout: Duration) -> Response {
        self.wait_ready_status(503, timeout)
    }

    #[track_caller]
    fn wait_ready_status(&self, status: u16, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            // A relay starting up on a loaded machine may answer one probe late; only the
            // deadline decides.
            let mut http = self.http();
            http.send_request("GET", "/ready", &[], b"");
            let last = match http.try_read_response(true) {
                Ok(resp) if resp.status == status => return resp,
                Ok(resp) => format!("{}: {}", resp.status, resp.text()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "/ready is not {status} after {timeout:?} (last: {last})\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Valkey: a real valkey-server (or redis-server) per test
// ---------------------------------------------------------------------------------------

/// The server binary: `$PULSAR_TEST_VALKEY_SERVER` (exported by `tools/test.sh`), else
/// `valkey-server` or `redis-server` on `PATH`.
pub fn valkey_server_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PULSAR_TEST_VALKEY_SERVER").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        assert!(
            path.is_file(),
            "PULSAR_TEST_VALKEY_SERVER={} does not exist; run ./tools/test.sh, which provisions one",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["valkey-server", "redis-server"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the persistence tests need a real valkey-server: none in PULSAR_TEST_VALKEY_SERVER, \
         and neither valkey-server nor redis-server is on PATH. Run ./tools/test.sh (it \
         provisions one and exports PULSAR_TEST_VALKEY_SERVER), or set that variable to a \
         valkey-server binary."
    )
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Simple and bulk strings as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            Resp::Array(None) => &[],
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// One entry of `XRANGE`: ID and its field/value pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal blocking RESP client (one command at a time).
pub struct RespClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespClient {
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<RespClient> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn command(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "Valkey closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_reply(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let bad = || std::io::Error::new(ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let len = len as usize;
                    while self.buf.len() < len + 2 {
                        self.fill()?;
                    }
                    let data = self.buf[..len].to_vec();
                    self.buf.drain(..len + 2);
                    Resp::Bulk(Some(data))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_reply()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }
}

static VALKEY_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `valkey-server` on its own ephemeral port and its own data directory, with AOF and
/// `appendfsync always` (so every acknowledged write is on disk). Killed with SIGKILL and
/// its directory removed on drop.
pub struct Valkey {
    child: Option<Child>,
    pub port: u16,
    /// Holds `data/` (the server's `--dir`) and `valkey.log` (its output, all runs).
    root: std::path::PathBuf,
    extra: Vec<String>,
    password: Option<String>,
}

impl Valkey {
    pub fn start() -> Valkey {
        Valkey::start_with(&[])
    }

    /// Starts one with extra command-line arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Valkey {
        let root = std::env::temp_dir().join(format!(
            "pulsar-test-valkey-{}-{}-{}",
            std::process::id(),
            VALKEY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(root.join("data")).expect("create the Valkey directory");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let password = extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra.get(i + 1).cloned());
        let mut valkey = Valkey {
            child: None,
            port: 0,
            root,
            extra,
            password,
        };
        // The port is free when we look, but another process may take it before the server
        // binds it: then try another one.
        for attempt in 0..5 {
            valkey.port = free_port();
            match valkey.spawn_and_wait() {
                Ok(()) => return valkey,
                Err(e) if attempt < 4 => eprintln!("valkey-server did not start ({e}); retrying"),
                Err(e) => panic!("valkey-server did not start: {e}\n{}", valkey.log()),
            }
        }
        unreachable!()
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.root.join("data")
    }

    /// The server's output so far (every run), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("valkey.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("valkey.log"))
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(valkey_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.data_dir())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {:?}: {e}", valkey_server_binary()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("valkey-server exited with {status}"));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no PONG within 10 s".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fresh connection, authenticated when the server has a password.
    fn client(&self) -> std::io::Result<RespClient> {
        let mut client = RespClient::connect(self.port, IO_TIMEOUT)?;
        if let Some(pw) = &self.password {
            match client.command(&["AUTH", pw])? {
                Resp::Simple(ok) if ok == "OK" => {}
                other => {
                    return Err(std::io::Error::other(format!("AUTH failed: {other:?}")));
                }
            }
        }
        Ok(client)
    }

    /// True when the server answers `PING` with `PONG` (not `-LOADING`, not refused).
    fn ping(&self) -> bool {
        self.client()
            .and_then(|mut c| c.command(&["PING"]))
            .is_ok_and(|r| r == Resp::Simple("PONG".into()))
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs one command on a fresh connection; panics if Valkey cannot be reached.
    #[track_caller]
    pub fn command(&self, args: &[&str]) -> Resp {
        self.client()
            .and_then(|mut c| c.command(args))
            .unwrap_or_else(|e| panic!("Valkey command {args:?} failed: {e}"))
    }

    /// `XLEN key`.
    pub fn xlen(&self, key: &str) -> i64 {
        self.command(&["XLEN", key]).int()
    }

    /// `XRANGE key - +`, every entry.
    pub fn xrange(&self, key: &str) -> Vec<StreamEntry> {
        self.command(&["XRANGE", key, "-", "+"])
            .items()
            .iter()
            .map(|entry| {
                let parts = entry.items();
                let id = parts[0].text().expect("entry ID");
                let kv = parts[1].items();
                let fields = kv
                    .chunks(2)
                    .map(|p| (p[0].text().unwrap(), p[1].text().unwrap()))
                    .collect();
                StreamEntry { id, fields }
            })
            .collect()
    }

    /// The IDs of `XRANGE key - +`, in stream order.
    pub fn stream_ids(&self, key: &str) -> Vec<String> {
        self.xrange(key).into_iter().map(|e| e.id).collect()
    }

    /// SIGKILL: no shutdown, no final fsync beyond what `appendfsync always` already did.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (after [`kill9`]).
    ///
    /// [`kill9`]: Valkey::kill9
    pub fn restart_same_dir(&mut self) {
        assert!(
            self.child.is_none(),
            "restart_same_dir: the server is running"
        );
        // The port was free a moment ago; a transient bind failure is retried.
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "valkey-server did not restart on port {}: {last}\n{}",
            self.port,
            self.log()
        );
    }

    /// Deletes everything in the data directory (the server must be stopped).
    pub fn wipe_data(&self) {
        assert!(self.child.is_none(), "wipe_data: the server is running");
        let dir = self.data_dir();
        for entry in std::fs::read_dir(&dir).expect("read the Valkey directory") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The stream key of `topic` (default key prefix).
pub fn stream_key(topic: &str) -> String {
    format!("pulsar:{{{topic}}}:s")
}

/// The consumer-positions hash key of `topic` (default key prefix).
pub fn positions_key(topic: &str) -> String {
    format!("pulsar:{{{topic}}}:c")
}

// ---------------------------------------------------------------------------------------
// The relay's health after an attack or a fault: connections, memory
// ---------------------------------------------------------------------------------------

/// How long a quiet relay may take to settle before a baseline is measured.
const SETTLE: Duration = Duration::from_secs(10);

/// The sum of every series of `name` (all label sets) in `/metrics`.
pub fn metric_sum(relay: &Relay, name: &str) -> f64 {
    let resp = relay.request("GET", "/metrics", &[], b"");
    resp.assert_status(200);
    let text = resp.text();
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once(' ').map(|(_, v)| v)
        } else {
            rest.strip_prefix(' ')
        };
        if let Some(v) = value {
            sum += v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample {line:?}"));
            found = true;
        }
    }
    assert!(found, "no series {name} in /metrics:\n{text}");
    sum
}

/// Open client connections over all shards. The scrape's own connection is included, so a
/// quiet relay reports 1.
pub fn connections(relay: &Relay) -> u64 {
    metric_sum(relay, "pulsar_connections") as u64
}

/// Resident memory of the relay process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(relay: &Relay) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid()))
        .expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Polls `check` every 50 ms until it returns true; false after `timeout`.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The state an attack must leave behind: measured on a warmed-up, quiet relay.
pub struct Baseline {
    pub connections: u64,
    pub websockets: u64,
    pub rss_kib: u64,
}

impl Baseline {
    /// Warms the relay up with ordinary traffic (so allocator arenas and lazily created
    /// state exist), waits until it is quiet, and measures.
    pub fn take(relay: &Relay) -> Baseline {
        assert_relay_still_serves(relay);
        for _ in 0..20 {
            relay.request("GET", "/health", &[], b"").assert_status(200);
        }
        let mut connections = 0;
        assert!(
            eventually(SETTLE, || {
                connections = self::connections(relay);
                connections <= 1
            }),
            "a quiet relay does not settle at (at most) the scrape's connection: {connections}"
        );
        Baseline {
            connections,
            websockets: metric_sum(relay, "pulsar_websocket_connections") as u64,
            rss_kib: rss_kib(relay),
        }
    }

    /// The relay serves normal traffic, its connection gauges come back to the baseline
    /// within a few seconds, and its RSS settles within `rss_slack_mib` of the baseline.
    #[track_caller]
    pub fn assert_recovered(&self, relay: &Relay, rss_slack_mib: u64) {
        let mut open = 0;
        let settled = eventually(Duration::from_secs(10), || {
            open = connections(relay);
            open == self.connections
        });
        assert!(
            settled,
            "pulsar_connections is {open}, baseline {}: connections leaked\n{}",
            self.connections,
            relay.output()
        );
        let ws = metric_sum(relay, "pulsar_websocket_connections") as u64;
        assert_eq!(ws, self.websockets, "pulsar_websocket_connections leaked");
        assert_relay_still_serves(relay);
        self.assert_memory_near(relay, rss_slack_mib);
    }

    #[track_caller]
    pub fn assert_memory_near(&self, relay: &Relay, slack_mib: u64) {
        let limit = self.rss_kib + slack_mib * 1024;
        let mut now = 0;
        let ok = eventually(Duration::from_secs(5), || {
            now = rss_kib(relay);
            now <= limit
        });
        eprintln!(
            "relay RSS {now} KiB, baseline {} KiB (allowed +{slack_mib} MiB)",
            self.rss_kib
        );
        assert!(
            ok,
            "relay RSS {now} KiB is more than {slack_mib} MiB over the baseline {} KiB",
            self.rss_kib
        );
    }
}
