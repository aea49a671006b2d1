//! A blocking HTTP/1.1 client for the soak's few, slow, fault-prone requests: one request
//! at a time per connection, with a deadline, the answer's status, body and the headers
//! the soak reads. The throughput scenarios use the non-blocking `http` module instead;
//! here clarity beats speed.
//!
//! Must not: retry. What a failed request means is the caller's decision.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::clock::now_ns;
use crate::http::{Target, CONNECT_TIMEOUT};

pub struct Client {
    stream: TcpStream,
    /// When the connection was established (the checker's proof of one relay process).
    pub opened_at: u64,
    input: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// The body's `code`, for error answers.
    pub fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        format!("HTTP {}: {body}", self.status)
    }
}

impl Client {
    /// Connects to the relay, from `source` (a loopback address) when given.
    pub fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<Client> {
        let socket = Socket::new(Domain::for_address(target.addr), Type::STREAM, None)?;
        if let Some(ip) = source {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.connect_timeout(&target.addr.into(), CONNECT_TIMEOUT)?;
        socket.set_nodelay(true)?;
        Ok(Client {
            stream: socket.into(),
            opened_at: now_ns(),
            input: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads its answer within `timeout`.
    pub fn call(&mut self, request: &[u8], timeout: Duration) -> io::Result<Answer> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(request)?;
        self.receive(timeout)
    }

    fn receive(&mut self, timeout: Duration) -> io::Result<Answer> {
        let deadline = now_ns() + timeout.as_nanos() as u64;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((answer, used)) = parse(&self.input)? {
                self.input.drain(..used);
                return Ok(answer);
            }
            let left = deadline.saturating_sub(now_ns());
            if left == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            }
            self.stream
                .set_read_timeout(Some(Duration::from_nanos(left.max(1_000_000))))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the relay closed the connection",
                    ))
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A complete response at the start of `data`, and its length.
fn parse(data: &[u8]) -> io::Result<Option<(Answer, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed HTTP response: {e}"),
            ))
        }
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let status = response.code.unwrap_or(0);
    let length: usize = match header("content-length").and_then(|v| v.parse().ok()) {
        Some(n) => n,
        // RFC 9110 §8.6: these have no content, whatever the headers say.
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no Content-Length",
            ));
        }
    };
    if data.len() < head + length {
        return Ok(None);
    }
    let answer = Answer {
        status,
        body: data[head..head + length].to_vec(),
        retry_after: header("retry-after").and_then(|v| v.parse().ok()),
    };
    Ok(Some((answer, head + length)))
}

/// A request with the bearer token (when given), `extra` header lines (each ending in
/// CRLF) and a body of `content_type`.
pub fn request(
    method: &str,
    path: &str,
    target: &Target,
    token: Option<&str>,
    extra: &str,
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", target.host);
    if let Some(token) = token {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    out.push_str(extra);
    let mut out = out.into_bytes();
    match body {
        Some((content_type, body)) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_content_length() {
        let data = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\n{}HTTP/1.1";
        let (answer, used) = parse(data).unwrap().unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, b"{}");
        assert_eq!(answer.retry_after, Some(1));
        assert_eq!(&data[used..], b"HTTP/1.1");
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}")
            .unwrap()
            .is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let (answer, used) = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!((answer.status, answer.body.len(), used), (204, 0, 27));
    }
}
