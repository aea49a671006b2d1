//! A small HTTP/1.1 client over a plain `TcpStream` (or TLS over one, see [`Transport`]):
//! requests on one keep-alive connection, raw bytes when a test needs them, and the
//! responses read back.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::*;

pub struct Header(String, String);

impl Header {
    pub fn as_pair(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

pub fn auth_header(token: &str) -> Header {
    Header("Authorization".into(), format!("Bearer {token}"))
}

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
pub struct Http<S: Transport = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        Http::over(connect_plain(addr))
    }
}

impl<S: Transport> Http<S> {
    /// Speaks HTTP over an open stream (e.g. TLS, see [`connect_tls`]).
    pub fn over(stream: S) -> Http<S> {
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.tcp().set_read_timeout(Some(timeout)).unwrap();
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

/// Sends `requests` (encoded back to back) on a new connection, from a thread of its own,
/// while reading their `count` answers here: a pipelining producer, which never waits for
/// an answer before sending on (and so never stalls on full socket buffers either way).
///
/// Answers may be slow to come (the relay works through thousands of requests), so this
/// connection waits up to a minute for each, not [`IO_TIMEOUT`].
pub fn pipelined(addr: SocketAddr, requests: Vec<u8>, count: usize) -> Vec<Response> {
    let stream = connect_plain(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().expect("clone the connection");
    let sending = std::thread::spawn(move || writer.write_all(&requests));
    let mut http = Http::over(stream);
    let answers = (0..count).map(|_| http.read_response(true)).collect();
    sending
        .join()
        .expect("the sending thread")
        .expect("write the requests");
    answers
}

/// A connected `TcpStream` with the harness's timeouts.
pub fn connect_plain(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to relay");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
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

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
