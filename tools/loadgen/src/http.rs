//! The HTTP/1.1 client side: the relay's address, and a non-blocking keep-alive connection
//! that queues request bytes and frames responses by Content-Length.
//!
//! Requests are written by the callers straight into the connection's output buffer, so a
//! steady run allocates nothing per request. Responses are parsed in place. Pipelining
//! falls out of it: queue several requests, the responses come back in order.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::RawFd;
use std::time::Duration;

pub use crate::buf::Fill;
use crate::buf::ReadBuf;
use crate::tls::{Stream, Tls};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the relay listens, from `--url http://host:port` (or `https://` with `--tls-ca`).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header value (host and port as given).
    pub host: String,
    /// For `https://`: how to speak TLS to it.
    pub tls: Option<Tls>,
}

impl Target {
    /// `tls_ca`: the CA file an `https://` URL needs (`--tls-ca`).
    pub fn parse(url: &str, tls_ca: Option<&str>) -> Result<Target, String> {
        let (rest, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(format!("--url {url:?}: give an http:// or https:// URL")),
        };
        match (secure, tls_ca) {
            (true, None) => {
                return Err(format!(
                    "--url {url:?}: https needs --tls-ca FILE (the CA of the relay's certificate)"
                ))
            }
            (false, Some(_)) => return Err("--tls-ca goes with an https:// --url".into()),
            _ => {}
        }
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "--url {url:?}: give only the scheme, host and port, like http://127.0.0.1:8080"
            ));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else if secure {
            format!("{host}:443")
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url {url:?}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url:?}: {with_port} has no address"))?;
        let tls = match tls_ca {
            Some(ca) => {
                let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
                Some(Tls::new(
                    ca,
                    name.trim_start_matches('[').trim_end_matches(']'),
                )?)
            }
            None => None,
        };
        Ok(Target {
            addr,
            host: host.to_string(),
            tls,
        })
    }

    /// Runs the TLS handshake on a connected, still blocking socket when the target is
    /// `https://`.
    pub fn secure(&self, tcp: TcpStream) -> io::Result<Stream> {
        match &self.tls {
            Some(tls) => tls.connect(tcp),
            None => Ok(Stream::Plain(tcp)),
        }
    }
}

/// The start of every request this run sends with `method` and `path`: request line,
/// `Host`, bearer token. Callers add their own headers and the blank line.
pub fn request_head(method: &str, path: &str, target: &Target, token: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n",
        target.host
    )
    .into_bytes()
}

/// Appends a JSON POST: `head` (from [`request_head`]), then the body produced by `body`
/// (which appends to the buffer it is given), with its Content-Length.
pub fn push_json_post(
    out: &mut Vec<u8>,
    head: &[u8],
    body_len: usize,
    body: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(head);
    out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
    push_decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\n\r\n");
    let before = out.len();
    body(out);
    debug_assert_eq!(out.len() - before, body_len, "Content-Length mismatch");
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A non-blocking keep-alive connection with its buffers.
pub struct HttpConn {
    stream: Stream,
    out: Vec<u8>,
    written: usize,
    input: ReadBuf,
}

/// One parsed response; the body borrows the connection's buffer.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl HttpConn {
    /// Connects (blocking, bounded; the TLS handshake too) and switches the socket to
    /// non-blocking.
    pub fn connect(target: &Target) -> io::Result<HttpConn> {
        let tcp = TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let stream = target.secure(tcp)?;
        stream.tcp().set_nonblocking(true)?;
        Ok(HttpConn {
            stream,
            out: Vec::with_capacity(16 * 1024),
            written: 0,
            input: ReadBuf::new(64 * 1024),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.fd()
    }

    /// The output queue; append whole requests, then [`HttpConn::flush`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn has_output(&self) -> bool {
        self.written < self.out.len() || self.stream.pending()
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.push()?;
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        self.stream.push()
    }

    /// Reads everything available into the input buffer.
    pub fn fill(&mut self) -> io::Result<Fill> {
        self.input.fill(&mut self.stream)
    }

    /// Takes the next complete response from the input buffer, if there is one.
    pub fn next_response(&mut self) -> Result<Option<Response<'_>>, String> {
        let data = self.input.data();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(data) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("malformed HTTP response: {e}")),
        };
        let mut body_len = None;
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked HTTP responses are not supported".into());
            }
        }
        let status = parsed.code.unwrap_or(0);
        let body_len = body_len.ok_or("HTTP response without Content-Length")?;
        if data.len() < head_len + body_len {
            return Ok(None);
        }
        let whole = self.input.take(head_len + body_len);
        Ok(Some(Response {
            status,
            body: &whole[head_len..],
        }))
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` (like `"t_ns":`) in a JSON text.
pub fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers_in_json() {
        let frame = br#"{"type":"message","payload":{"t_ns":1700000000123456789,"seq":4}}"#;
        assert_eq!(
            number_after(frame, br#""t_ns":"#),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(number_after(frame, br#""seq":"#), Some(4));
        assert_eq!(number_after(frame, br#""nope":"#), None);
        assert_eq!(number_after(br#"{"accepted":x}"#, br#""accepted":"#), None);
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:9000/", None).unwrap();
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(t.host, "127.0.0.1:9000");
        assert!(t.tls.is_none());
        let err = Target::parse("https://127.0.0.1:9000", None).unwrap_err();
        assert!(err.contains("--tls-ca"), "{err}");
        assert!(Target::parse("http://127.0.0.1:9000", Some("ca.pem")).is_err());
        assert!(Target::parse("http://127.0.0.1:9000/api", None).is_err());
    }
}
