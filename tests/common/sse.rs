//! A Server-Sent Events client over a plain `TcpStream`: opens `GET /api/v1/sse…`, and
//! reads the stream back as events, comments and `retry:` fields, or the JSON refusal.
//! The relay ends a stream by closing; a proxy in front of it (nginx) re-frames it with
//! `Transfer-Encoding: chunked`, which is decoded here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;

use super::*;

/// One event as an `EventSource` would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

pub struct Sse {
    pub stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    buf: Vec<u8>,
    /// Comment lines seen so far (without the leading `:`), e.g. heartbeats.
    pub comments: Vec<String>,
    /// The last `retry:` value seen.
    pub retry: Option<u64>,
    /// A chunked stream's bytes not yet decoded into `buf`.
    chunked: Option<Vec<u8>>,
    /// A chunked stream's last chunk arrived: the stream ended, the connection stays.
    ended: bool,
}

/// What opening a stream produced.
pub enum SseOpen {
    Stream(Box<Sse>),
    Refused(Response),
}

impl SseOpen {
    #[track_caller]
    pub fn stream(self) -> Sse {
        match self {
            SseOpen::Stream(s) => *s,
            SseOpen::Refused(r) => panic!("SSE refused with {}: {}", r.status, r.text()),
        }
    }

    #[track_caller]
    pub fn refused(self) -> Response {
        match self {
            SseOpen::Refused(r) => r,
            SseOpen::Stream(s) => panic!("SSE opened with {} instead of a refusal", s.status),
        }
    }
}

impl Sse {
    /// `GET {target}` (path and query) with `headers`; a `200` is a stream, anything else
    /// is read as a complete response.
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseOpen {
        let mut http = Http::connect(addr);
        http.send_request("GET", target, headers, b"");
        let mut head_end = None;
        let mut buf = Vec::new();
        while head_end.is_none() {
            let mut chunk = [0u8; 4096];
            let n = http
                .stream
                .read(&mut chunk)
                .expect("read the SSE response head");
            assert!(n > 0, "connection closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
            head_end = http::find(&buf, b"\r\n\r\n");
        }
        let head_end = head_end.unwrap();
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let rest = buf[head_end + 4..].to_vec();
        if status != 200 {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("refusal without Content-Length");
            let mut body = rest;
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = http.stream.read(&mut chunk).expect("read the refusal body");
                assert!(n > 0, "connection closed inside the refusal body");
                body.extend_from_slice(&chunk[..n]);
            }
            return SseOpen::Refused(Response {
                status,
                headers,
                body,
            });
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let mut sse = Sse {
            stream: http.stream,
            status,
            headers,
            buf: Vec::new(),
            comments: Vec::new(),
            retry: None,
            chunked: chunked.then(Vec::new),
            ended: false,
        };
        sse.take_in(&rest);
        SseOpen::Stream(Box::new(sse))
    }

    /// Opens `/api/v1/sse?{query}` with `token` in the query.
    pub fn connect(addr: SocketAddr, token: &str, query: &str) -> Sse {
        Sse::open(addr, &format!("/api/v1/sse?token={token}&{query}"), &[]).stream()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event; `None` when the relay ended the stream. Comments and `retry:`
    /// fields on the way are recorded. Panics when nothing comes within the read timeout.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = http::find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&String::from_utf8_lossy(&block)) {
                    return Some(event);
                }
            }
            if self.ended {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
                Ok(n) => self.take_in(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("timed out waiting for an SSE event")
                }
                Err(e) => panic!("SSE read failed: {e}"),
            }
        }
    }

    /// Bytes read from the connection: the stream itself, or chunks of it.
    fn take_in(&mut self, bytes: &[u8]) {
        let Some(raw) = self.chunked.as_mut() else {
            self.buf.extend_from_slice(bytes);
            return;
        };
        raw.extend_from_slice(bytes);
        while let Some(line_end) = http::find(raw, b"\r\n") {
            let size_text = String::from_utf8_lossy(&raw[..line_end]);
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
            let data_start = line_end + 2;
            if raw.len() < data_start + size + 2 {
                return;
            }
            assert_eq!(&raw[data_start + size..data_start + size + 2], b"\r\n");
            self.buf
                .extend_from_slice(&raw[data_start..data_start + size]);
            raw.drain(..data_start + size + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let mut id = None;
        let mut event = None;
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim_start().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_string()),
                "event" => event = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "retry" => self.retry = Some(value.parse().expect("numeric retry")),
                "" => {}
                other => panic!("unknown SSE field {other:?} in {block:?}"),
            }
        }
        data.map(|data| SseEvent {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data,
        })
    }

    /// The next event, which must be a delivery: `event: message`, its `id` the message ID
    /// of its data. Returns the data.
    #[track_caller]
    pub fn recv_delivery(&mut self) -> Value {
        let event = self
            .next_event()
            .expect("the stream ended before a delivery");
        assert_eq!(event.event, "message", "{event:?}");
        let data = event.json();
        assert_eq!(data["type"], "message", "{event:?}");
        assert_eq!(
            event.id.as_deref(),
            data["message_id"].as_str(),
            "{event:?}"
        );
        data
    }

    /// The next event must be a `relay-error` with `code`, and the stream must end after
    /// it. Returns its message.
    #[track_caller]
    pub fn expect_final_error(&mut self, code: &str) -> String {
        let event = self
            .next_event()
            .expect("the stream ended without an error event");
        assert_eq!(event.event, "relay-error", "{event:?}");
        let data = event.json();
        assert_eq!(data["code"], code, "{event:?}");
        let message = data["message"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "{event:?}");
        assert_eq!(self.next_event(), None, "the stream goes on after {code}");
        message
    }

    /// Sends bytes the relay should ignore.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to relay");
    }
}
