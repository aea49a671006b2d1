//! HTTP/1.1 request decoding: turns the bytes at the front of a connection's read buffer into
//! [`Request`]s, one at a time, so keep-alive and pipelining work.
//!
//! Owns: request heads (parsed by `httparse`), body framing (Content-Length and chunked),
//! the size limits, the framing rules that defend against request smuggling, keep-alive and
//! `Expect: 100-continue` detection, and query-string decoding.
//! Must not touch: sockets or the caller's buffer (it only reads a `&[u8]`), routing,
//! authentication. On any [`HttpError`] the caller answers with its status and closes the
//! connection: after an error the framing of the stream is unknown, so the decoder is not
//! meant to be reused.
//!
//! Choices the route layer can rely on:
//! - A version other than HTTP/1.0 or HTTP/1.1 (including the HTTP/2 preface) is
//!   505 `HTTP_VERSION_NOT_SUPPORTED`; a request line that is not HTTP at all is 400.
//! - Every line of a head, of a chunked body and of its trailers ends with CRLF: a bare LF
//!   is 400 everywhere (RFC 9112 §2.2 allows either rule; one rule for all parts means no two
//!   readers of the stream can disagree on where a line ends).
//! - `path` starts with `/` (or is `*` for OPTIONS): an absolute-form target
//!   (`http://host/path`) is reduced to its path; other forms are 400 `INVALID_TARGET`
//!   (`target`).
//! - An HTTP/1.1 request has exactly one `Host` field, and no request has two or an invalid
//!   one: 400 `INVALID_HOST` otherwise (RFC 9112 §3.2).
//! - A request with neither Content-Length nor Transfer-Encoding has an empty body
//!   (RFC 9112 §6.3), so there is no 411: the route layer rejects a missing body itself.
//! - Transfer-Encoding on an HTTP/1.0 request is 400 (RFC 9112 §6.1 calls its framing faulty).

use std::borrow::Cow;
use std::fmt;

use super::fields::Fields;

/// Size limits applied while decoding; every one is checked before the bytes it guards are
/// buffered in full, so a client cannot make the server hold more than the limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header section, and (for chunked bodies) that plus the trailers.
    pub max_header_bytes: usize,
    /// Header fields, trailers included.
    pub max_headers: usize,
    /// Decoded body bytes.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other method; the route layer answers 405 or 501.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        // Method names are case-sensitive (RFC 9110 §9.1): `get` is not GET.
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method's name as it appears on the wire (`Other` has none of its own).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, then the query (one allocation for both).
    target: String,
    path_len: usize,
    has_query: bool,
    pub headers: Fields,
    /// De-chunked.
    pub body: Vec<u8>,
    pub keep_alive: bool,
    pub version_minor: u8,
}

impl Request {
    /// The request target up to `?`, not percent-decoded.
    pub fn path(&self) -> &str {
        &self.target[..self.path_len]
    }

    /// The raw text after the first `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.has_query.then(|| &self.target[self.path_len..])
    }

    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The first query parameter with this (decoded) name, percent-decoded with `+` as space.
    /// Invalid UTF-8 after decoding is replaced with U+FFFD: callers validate values anyway.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_pairs(self.query()?)
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// The decoded `name=value` pairs of a query string or an
/// `application/x-www-form-urlencoded` body, in order.
pub fn form_pairs(text: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    text.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key, true), percent_decode(value, true))
    })
}

/// One segment of a request path (the text between two `/`), percent-decoded; `+` stays
/// itself, as it does in paths. Split the path first: an encoded `/` (`%2F`) is data.
/// Invalid UTF-8 after decoding is replaced with U+FFFD, as for query parameters.
pub fn decode_path_segment(segment: &str) -> Cow<'_, str> {
    percent_decode(segment, false)
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (query strings).
fn percent_decode(text: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !text
        .bytes()
        .any(|b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
                let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    // A stray `%` is kept literally, as browsers do.
                    _ => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(err) => Cow::Owned(String::from_utf8_lossy(err.as_bytes()).into_owned()),
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The header section (or head plus trailers) exceeds `max_header_bytes`.
    HeadersTooLarge {
        limit: usize,
    },
    /// More header fields (trailers included) than `max_headers`.
    TooManyHeaders {
        limit: usize,
    },
    /// The declared or decoded body exceeds `max_body_bytes`.
    BodyTooLarge {
        limit: usize,
    },
    /// The request line or header syntax is not HTTP.
    Malformed(&'static str),
    /// A header value is not valid UTF-8; carries the lower-cased header name.
    InvalidHeaderValue(String),
    /// Content-Length is not a decimal number, or repeated with different values.
    InvalidContentLength,
    /// Both Transfer-Encoding and Content-Length: the classic request-smuggling shape.
    AmbiguousLength,
    /// Transfer codings we do not implement before a final `chunked` (`gzip, chunked`).
    UnsupportedTransferEncoding,
    /// Transfer-Encoding whose last coding is not `chunked`, or with `chunked` twice: the
    /// body length cannot be determined (RFC 9112 §6.3).
    BadTransferEncoding(&'static str),
    /// A request target that is neither origin-form, absolute-form (http/https) nor `*`
    /// for OPTIONS.
    InvalidTarget(&'static str),
    /// `Host` missing on HTTP/1.1, repeated, or not `host[:port]`.
    InvalidHost(&'static str),
    BadChunkedEncoding(&'static str),
    /// An HTTP version other than 1.0 and 1.1, e.g. the HTTP/2 connection preface.
    VersionNotSupported,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::Malformed(_)
            | HttpError::InvalidHeaderValue(_)
            | HttpError::InvalidContentLength
            | HttpError::AmbiguousLength
            | HttpError::BadTransferEncoding(_)
            | HttpError::InvalidTarget(_)
            | HttpError::InvalidHost(_)
            | HttpError::BadChunkedEncoding(_) => 400,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            HttpError::TooManyHeaders { .. } => "TOO_MANY_HEADERS",
            HttpError::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            HttpError::Malformed(_) => "MALFORMED_REQUEST",
            HttpError::InvalidHeaderValue(_) => "INVALID_HEADER_VALUE",
            HttpError::InvalidContentLength => "INVALID_CONTENT_LENGTH",
            HttpError::AmbiguousLength => "AMBIGUOUS_LENGTH",
            HttpError::UnsupportedTransferEncoding => "UNSUPPORTED_TRANSFER_ENCODING",
            HttpError::BadTransferEncoding(_) => "BAD_TRANSFER_ENCODING",
            HttpError::InvalidTarget(_) => "INVALID_TARGET",
            HttpError::InvalidHost(_) => "INVALID_HOST",
            HttpError::BadChunkedEncoding(_) => "BAD_CHUNKED_ENCODING",
            HttpError::VersionNotSupported => "HTTP_VERSION_NOT_SUPPORTED",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            HttpError::HeadersTooLarge { limit } => {
                format!("request header section exceeds {limit} bytes")
            }
            HttpError::TooManyHeaders { limit } => {
                format!("request has more than {limit} header fields")
            }
            HttpError::BodyTooLarge { limit } => format!("request body exceeds {limit} bytes"),
            HttpError::Malformed(why) => format!("malformed request: {why}"),
            HttpError::InvalidHeaderValue(name) => {
                format!("header {name:?} has a value that is not valid UTF-8")
            }
            HttpError::InvalidContentLength => {
                "Content-Length is not a decimal number or has conflicting values".to_owned()
            }
            HttpError::AmbiguousLength => {
                "request has both Transfer-Encoding and Content-Length".to_owned()
            }
            HttpError::UnsupportedTransferEncoding => {
                "only Transfer-Encoding: chunked is supported".to_owned()
            }
            HttpError::BadTransferEncoding(why) => format!("bad Transfer-Encoding: {why}"),
            HttpError::InvalidTarget(why) => format!("invalid request target: {why}"),
            HttpError::InvalidHost(why) => format!("invalid Host: {why}"),
            HttpError::BadChunkedEncoding(why) => format!("bad chunked encoding: {why}"),
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported".to_owned(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.detail())
    }
}

impl std::error::Error for HttpError {}

/// A chunk-size line is a few hex digits plus extensions we ignore; this bounds how long we
/// wait for its CRLF, so an endless extension cannot hold the connection's buffer hostage.
const MAX_CHUNK_LINE: usize = 4096;

/// Header slots for `httparse` live on the stack up to this count, so the common
/// configuration parses without a heap allocation.
const STACK_HEADER_SLOTS: usize = 64;

/// Decodes requests one after another from the front of a connection buffer.
///
/// Buffer contract: after `decode` returns `Ok(None)`, the next call must pass a buffer that
/// starts with the same bytes (more may be appended). The decoder remembers how far into the
/// body it has read, so large bodies are not re-scanned. After `Ok(Some((_, consumed)))` the
/// caller drops `consumed` bytes from the front and the decoder starts on the next request.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    /// `Some` once a head has been parsed and its body is still incomplete.
    pending: Option<PendingBody>,
}

#[derive(Debug)]
struct Head {
    method: Method,
    target: String,
    path_len: usize,
    has_query: bool,
    headers: Fields,
    keep_alive: bool,
    version_minor: u8,
    expects_continue: bool,
}

#[derive(Debug)]
struct PendingBody {
    head: Head,
    head_len: usize,
    framing: Framing,
    /// Offset in the caller's buffer of the first byte not yet decoded.
    pos: usize,
    body: Vec<u8>,
}

#[derive(Debug)]
enum Framing {
    Length(usize),
    Chunked(Chunk),
}

#[derive(Debug)]
enum Chunk {
    SizeLine,
    Data { remaining: usize },
    DataEnd,
    Trailers,
}

impl RequestDecoder {
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            pending: None,
        }
    }

    /// Decodes one request from the front of `buf`: `Ok(Some((request, consumed)))` when it is
    /// complete, `Ok(None)` when more bytes are needed (everything so far is within limits),
    /// `Err` on a violation. See the type docs for the buffer contract.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        let mut pending = match self.pending.take() {
            Some(pending) => pending,
            None => match parse_head(buf, &self.limits)? {
                Some(pending) => pending,
                None => return Ok(None),
            },
        };
        match pending.advance(buf, &self.limits)? {
            Some(consumed) => Ok(Some((pending.into_request(), consumed))),
            None => {
                self.pending = Some(pending);
                Ok(None)
            }
        }
    }

    /// True once a head has been parsed and its body is still incomplete.
    pub fn in_body(&self) -> bool {
        self.pending.is_some()
    }

    /// True while waiting for the body of an HTTP/1.1 request that sent
    /// `Expect: 100-continue`: the caller sends `100 Continue` once before reading on.
    /// A body that is refused from the head alone (413) is an error instead, so the client
    /// never gets a 100 for it.
    pub fn expects_continue(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.head.expects_continue)
    }
}

/// Runs `parse` with `count` empty header slots, on the stack when they fit.
fn with_header_slots<'b, R>(
    count: usize,
    parse: impl FnOnce(&mut [httparse::Header<'b>]) -> R,
) -> R {
    if count <= STACK_HEADER_SLOTS {
        let mut slots: [httparse::Header<'b>; STACK_HEADER_SLOTS] =
            [httparse::EMPTY_HEADER; STACK_HEADER_SLOTS];
        parse(&mut slots[..count])
    } else {
        let mut slots: Vec<httparse::Header<'b>> = vec![httparse::EMPTY_HEADER; count];
        parse(&mut slots)
    }
}

fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<PendingBody>, HttpError> {
    // Never hand httparse more than the limit: a head still incomplete at the limit is too
    // large, and this bounds the work of re-parsing a head that arrives in pieces.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    with_header_slots(limits.max_headers, |slots| {
        let mut parsed = httparse::Request::new(slots);
        match parsed.parse(window) {
            Ok(httparse::Status::Complete(head_len)) => {
                if has_bare_lf(&window[..head_len]) {
                    return Err(HttpError::Malformed(
                        "bare LF in the head (lines end with CRLF)",
                    ));
                }
                build_head(&parsed, head_len, limits).map(Some)
            }
            Ok(httparse::Status::Partial) if buf.len() >= limits.max_header_bytes => {
                Err(HttpError::HeadersTooLarge {
                    limit: limits.max_header_bytes,
                })
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders {
                limit: limits.max_headers,
            }),
            Err(httparse::Error::Version) => Err(version_error(window)),
            Err(err) => Err(HttpError::Malformed(httparse_reason(err))),
        }
    })
}

/// httparse reports any bad version token the same way; only something that claims to be
/// HTTP (`HTTP/2.0`, `HTTP/1.2`) deserves 505, anything else is not HTTP at all.
fn version_error(head: &[u8]) -> HttpError {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = head[start..]
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let version = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
    if version.starts_with(b"HTTP/") {
        HttpError::VersionNotSupported
    } else {
        HttpError::Malformed("invalid HTTP version")
    }
}

fn httparse_reason(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid byte in header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Whether a line in `bytes` ends with LF alone. httparse accepts that in heads (RFC 9112
/// §2.2 allows it); this decoder does not, anywhere.
fn has_bare_lf(bytes: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'\n' && previous != b'\r' {
            return true;
        }
        previous = b;
    }
    false
}

/// The header fields the decoder reads itself (framing, keep-alive, Host).
enum Framed {
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Host,
    Other,
}

impl Framed {
    fn of(name: &str) -> Framed {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        if is("content-length") {
            Framed::ContentLength
        } else if is("transfer-encoding") {
            Framed::TransferEncoding
        } else if is("connection") {
            Framed::Connection
        } else if is("expect") {
            Framed::Expect
        } else if is("host") {
            Framed::Host
        } else {
            Framed::Other
        }
    }
}

fn build_head(
    parsed: &httparse::Request<'_, '_>,
    head_len: usize,
    limits: &Limits,
) -> Result<PendingBody, HttpError> {
    let method = Method::from_token(parsed.method.unwrap_or_default());
    let (path, query) =
        super::target::path_and_query(parsed.path.unwrap_or_default(), method == Method::Options)
            .map_err(HttpError::InvalidTarget)?;
    let version_minor = parsed.version.unwrap_or(1);

    let mut headers = Fields::with_capacity(head_len, parsed.headers.len());
    let mut content_length: Option<u64> = None;
    let mut content_length_invalid = false;
    let mut transfer_encoding = false;
    let mut codings = 0usize;
    let mut chunked_codings = 0usize;
    let mut last_coding_chunked = false;
    let mut hosts = 0usize;
    let mut host_valid = true;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;

    for header in parsed.headers.iter() {
        let name = header.name;
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(HttpError::InvalidHeaderValue(name.to_ascii_lowercase()));
        };
        let value = value.trim_matches([' ', '\t']);
        match Framed::of(name) {
            Framed::ContentLength => {
                // A list of identical values ("5, 5") is what some proxies send when they
                // merge duplicates; RFC 9110 §8.6 lets us accept it, but not differing ones.
                for part in value.split(',') {
                    match (
                        parse_decimal(part.trim_matches([' ', '\t'])),
                        content_length,
                    ) {
                        (None, _) => content_length_invalid = true,
                        (Some(n), Some(seen)) if n != seen => content_length_invalid = true,
                        (Some(n), _) => content_length = Some(n),
                    }
                }
            }
            Framed::TransferEncoding => {
                transfer_encoding = true;
                for coding in value.split(',').map(|c| c.trim_matches([' ', '\t'])) {
                    if !coding.is_empty() {
                        codings += 1;
                        last_coding_chunked = coding.eq_ignore_ascii_case("chunked");
                        chunked_codings += usize::from(last_coding_chunked);
                    }
                }
            }
            Framed::Connection => {
                for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
                    connection_close |= token.eq_ignore_ascii_case("close");
                    connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            Framed::Expect => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            Framed::Host => {
                hosts += 1;
                host_valid &= super::target::valid_host(value);
            }
            Framed::Other => {}
        }
        headers.push(name, value);
    }

    // Framing is decided in this order so that every smuggling shape is refused before any
    // body byte is interpreted.
    if transfer_encoding && (content_length.is_some() || content_length_invalid) {
        return Err(HttpError::AmbiguousLength);
    }
    if content_length_invalid {
        return Err(HttpError::InvalidContentLength);
    }
    let framing = if transfer_encoding {
        if !last_coding_chunked {
            return Err(HttpError::BadTransferEncoding(
                "chunked must be the final transfer coding",
            ));
        }
        if chunked_codings > 1 {
            return Err(HttpError::BadTransferEncoding(
                "chunked is applied more than once",
            ));
        }
        if codings > 1 {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        if version_minor == 0 {
            return Err(HttpError::Malformed(
                "Transfer-Encoding is not allowed in HTTP/1.0",
            ));
        }
        Framing::Chunked(Chunk::SizeLine)
    } else {
        let declared = content_length.unwrap_or(0);
        let too_large = HttpError::BodyTooLarge {
            limit: limits.max_body_bytes,
        };
        if declared > limits.max_body_bytes as u64 {
            return Err(too_large);
        }
        Framing::Length(usize::try_from(declared).map_err(|_| too_large)?)
    };

    if hosts > 1 {
        return Err(HttpError::InvalidHost("more than one Host field"));
    }
    if !host_valid {
        return Err(HttpError::InvalidHost("the value is not host[:port]"));
    }
    if hosts == 0 && version_minor == 1 {
        return Err(HttpError::InvalidHost(
            "an HTTP/1.1 request needs a Host field",
        ));
    }

    let keep_alive = if version_minor == 0 {
        connection_keep_alive && !connection_close
    } else {
        !connection_close
    };
    Ok(PendingBody {
        head: Head {
            method,
            target: [path, query.unwrap_or_default()].concat(),
            path_len: path.len(),
            has_query: query.is_some(),
            headers,
            keep_alive,
            version_minor,
            // RFC 9110 §10.1.1: a 100-continue from an HTTP/1.0 client is ignored.
            expects_continue: expect_continue && version_minor >= 1,
        },
        head_len,
        framing,
        pos: head_len,
        body: Vec::new(),
    })
}

/// Non-empty ASCII digits only (no sign, no spaces). Overflow saturates: such a length is
/// syntactically valid and simply larger than any limit.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

enum ChunkLine {
    Incomplete,
    /// Line length including CRLF, and the chunk size.
    Size(usize, u64),
}

/// `chunk-size [ BWS ; chunk-ext ] CRLF`, strictly: a bare LF or CR is refused because
/// lenient line endings are how one hop's chunk boundary becomes another hop's smuggled
/// request.
fn parse_chunk_line(rest: &[u8]) -> Result<ChunkLine, HttpError> {
    let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return if rest.is_empty() {
            Ok(ChunkLine::Incomplete)
        } else {
            Err(HttpError::BadChunkedEncoding(
                "chunk size is not hexadecimal",
            ))
        };
    }
    let mut size = 0u64;
    for &b in &rest[..digits] {
        let digit = hex_value(b).map_or(0, u64::from);
        size = size.saturating_mul(16).saturating_add(digit);
    }
    let mut in_extension = false;
    for (i, &b) in rest.iter().enumerate().skip(digits) {
        match b {
            b'\r' => {
                return match rest.get(i + 1) {
                    Some(b'\n') => Ok(ChunkLine::Size(i + 2, size)),
                    Some(_) => Err(HttpError::BadChunkedEncoding("CR without LF")),
                    None => Ok(ChunkLine::Incomplete),
                };
            }
            b';' => in_extension = true,
            b' ' | b'\t' => {}
            b'\n' => return Err(HttpError::BadChunkedEncoding("bare LF in chunk line")),
            0..=0x1f | 0x7f => {
                return Err(HttpError::BadChunkedEncoding("control byte in chunk line"))
            }
            _ if in_extension => {}
            _ => return Err(HttpError::BadChunkedEncoding("garbage after chunk size")),
        }
    }
    if rest.len() > MAX_CHUNK_LINE {
        return Err(HttpError::BadChunkedEncoding("chunk line too long"));
    }
    Ok(ChunkLine::Incomplete)
}

impl PendingBody {
    fn into_request(self) -> Request {
        let PendingBody { head, body, .. } = self;
        Request {
            method: head.method,
            target: head.target,
            path_len: head.path_len,
            has_query: head.has_query,
            headers: head.headers,
            body,
            keep_alive: head.keep_alive,
            version_minor: head.version_minor,
        }
    }

    /// Decodes as much of the body as `buf` holds; returns the request's total length in the
    /// buffer once the body is complete.
    fn advance(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        let state = match &mut self.framing {
            Framing::Length(len) => {
                let end = self.pos.saturating_add(*len);
                return Ok(buf.get(self.pos..end).map(|body| {
                    self.body = body.to_vec();
                    end
                }));
            }
            Framing::Chunked(state) => state,
        };
        loop {
            let rest = buf.get(self.pos..).unwrap_or_default();
            match state {
                Chunk::SizeLine => {
                    let ChunkLine::Size(line_len, size) = parse_chunk_line(rest)? else {
                        return Ok(None);
                    };
                    // Decided from the size line, before any of the chunk is buffered.
                    let room = limits.max_body_bytes.saturating_sub(self.body.len());
                    if size > room as u64 {
                        return Err(HttpError::BodyTooLarge {
                            limit: limits.max_body_bytes,
                        });
                    }
                    self.pos += line_len;
                    *state = match usize::try_from(size) {
                        Ok(0) => Chunk::Trailers,
                        Ok(remaining) => Chunk::Data { remaining },
                        Err(_) => {
                            return Err(HttpError::BodyTooLarge {
                                limit: limits.max_body_bytes,
                            })
                        }
                    };
                }
                Chunk::Data { remaining } => {
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let (data, _) = rest.split_at((*remaining).min(rest.len()));
                    self.body.extend_from_slice(data);
                    self.pos += data.len();
                    *remaining -= data.len();
                    if *remaining == 0 {
                        *state = Chunk::DataEnd;
                    }
                }
                Chunk::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.pos += 2;
                        *state = Chunk::SizeLine;
                    }
                    [] | [b'\r'] => return Ok(None),
                    _ => {
                        return Err(HttpError::BadChunkedEncoding(
                            "chunk data not followed by CRLF",
                        ))
                    }
                },
                Chunk::Trailers => return self.parse_trailers(rest, limits),
            }
        }
    }

    /// Trailers are validated and discarded; they count against the header limits so they
    /// cannot be used to smuggle an unbounded header section past them.
    fn parse_trailers(&self, rest: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        // The blank line that ends the trailer section is not charged: a body without
        // trailers must always be able to finish, even after a head right at the limit.
        let byte_budget = limits.max_header_bytes.saturating_sub(self.head_len) + 2;
        let slot_budget = limits.max_headers.saturating_sub(self.head.headers.len());
        let window = &rest[..rest.len().min(byte_budget)];
        with_header_slots(slot_budget, |slots| {
            match httparse::parse_headers(window, slots) {
                Ok(httparse::Status::Complete((len, _))) if has_bare_lf(&window[..len]) => Err(
                    HttpError::BadChunkedEncoding("bare LF in the trailer section"),
                ),
                Ok(httparse::Status::Complete((len, _))) => Ok(Some(self.pos + len)),
                Ok(httparse::Status::Partial) if rest.len() >= byte_budget => {
                    Err(HttpError::HeadersTooLarge {
                        limit: limits.max_header_bytes,
                    })
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders {
                    limit: limits.max_headers,
                }),
                Err(_) => Err(HttpError::BadChunkedEncoding("malformed trailer section")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_body_bytes: 64,
    };

    fn decoder() -> RequestDecoder {
        RequestDecoder::new(LIMITS)
    }

    /// Decodes a buffer that must hold one complete request.
    fn decode_one(limits: Limits, raw: &[u8]) -> (Request, usize) {
        match RequestDecoder::new(limits).decode(raw) {
            Ok(Some(done)) => done,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn decode_err(limits: Limits, raw: &[u8]) -> HttpError {
        match RequestDecoder::new(limits).decode(raw) {
            Err(err) => err,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Feeds every prefix of `raw` to one decoder, as a connection reading one byte at a time
    /// would; every strict prefix must ask for more.
    fn feed_bytewise(decoder: &mut RequestDecoder, raw: &[u8]) -> (Request, usize) {
        for end in 0..raw.len() {
            match decoder.decode(&raw[..end]) {
                Ok(None) => {}
                other => panic!("prefix of {end} bytes gave {other:?}"),
            }
        }
        match decoder.decode(raw) {
            Ok(Some(done)) => done,
            other => panic!("full request gave {other:?}"),
        }
    }

    #[test]
    fn decodes_a_simple_get() {
        let raw =
            b"GET /api/v1/poll?topics=a,b&timeout=30 HTTP/1.1\r\nHost: x\r\nX-Thing:  v  \r\n\r\n";
        let (req, consumed) = decode_one(LIMITS, raw);
        assert_eq!(consumed, raw.len());
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path(), "/api/v1/poll");
        assert_eq!(req.query(), Some("topics=a,b&timeout=30"));
        assert_eq!(
            req.headers.iter().collect::<Vec<_>>(),
            vec![("host", "x"), ("x-thing", "v")]
        );
        assert!(req.body.is_empty());
        assert!(req.keep_alive);
        assert_eq!(req.version_minor, 1);
    }

    #[test]
    fn path_is_not_percent_decoded_and_query_is_optional() {
        let (req, _) = decode_one(LIMITS, b"GET /a%20b HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(req.path(), "/a%20b");
        assert_eq!(req.query(), None);
        assert_eq!(req.query_param("a"), None);
        let (req, _) = decode_one(LIMITS, b"GET /x? HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(req.query(), Some(""));
    }

    #[test]
    fn methods_are_mapped_case_sensitively() {
        let cases = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("PATCH", Method::Patch),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
        ];
        for (token, method) in cases {
            let raw = format!("{token} / HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(
                decode_one(LIMITS, raw.as_bytes()).0.method,
                method,
                "{token}"
            );
        }
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_returns_the_first() {
        let (req, _) = decode_one(
            LIMITS,
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\nx-a: two\r\nAuthorization: Bearer t\r\n\r\n",
        );
        assert_eq!(req.header("X-A"), Some("one"));
        assert_eq!(req.header("authorization"), Some("Bearer t"));
        assert_eq!(req.header("AUTHORIZATION"), Some("Bearer t"));
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn utf8_header_values_are_kept() {
        let (req, _) = decode_one(
            LIMITS,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Name: café\r\n\r\n".as_bytes(),
        );
        assert_eq!(req.header("x-name"), Some("café"));
    }

    #[test]
    fn query_params_are_decoded() {
        let (req, _) = decode_one(
            LIMITS,
            b"GET /p?a=1&b=x+y%20z&a=2&c&d=%zz%4&e=%E2%82%AC&f%5Fg=ok&bad=%FF HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("b").as_deref(), Some("x y z"));
        assert_eq!(req.query_param("c").as_deref(), Some(""));
        assert_eq!(req.query_param("d").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("e").as_deref(), Some("€"));
        assert_eq!(req.query_param("f_g").as_deref(), Some("ok"));
        assert_eq!(req.query_param("bad").as_deref(), Some("\u{FFFD}"));
        assert_eq!(req.query_param("zzz"), None);
    }

    #[test]
    fn path_segments_are_decoded_without_plus_as_space() {
        assert_eq!(decode_path_segment("jobs%3Aa"), "jobs:a");
        assert_eq!(decode_path_segment("a+b"), "a+b");
        assert_eq!(decode_path_segment("a%2Fb"), "a/b");
        assert_eq!(decode_path_segment("%zz"), "%zz");
        assert!(matches!(decode_path_segment("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn head_split_at_every_byte_is_decoded_once_complete() {
        let raw = b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n";
        let mut dec = decoder();
        let (req, consumed) = feed_bytewise(&mut dec, raw);
        assert_eq!(consumed, raw.len());
        assert_eq!(req.path(), "/x");
        assert!(!dec.in_body());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (req, consumed) = decode_one(LIMITS, raw);
        assert_eq!(consumed, raw.len());
        assert_eq!(req.method, Method::Get);
    }

    #[test]
    fn content_length_body_split_at_every_byte() {
        let raw = b"POST /m HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
        let head_len = raw.len() - 11;
        let mut dec = decoder();
        for end in 0..raw.len() {
            assert_eq!(dec.decode(&raw[..end]), Ok(None), "prefix {end}");
            assert_eq!(dec.in_body(), end >= head_len, "in_body at {end}");
        }
        let (req, consumed) = dec.decode(raw).unwrap().unwrap();
        assert_eq!(consumed, raw.len());
        assert_eq!(req.body, b"hello world");
        assert!(!dec.in_body());
    }

    #[test]
    fn pipelined_requests_are_decoded_in_turn() {
        let raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\nPOST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nGET /d";
        let mut dec = decoder();
        let mut buf: &[u8] = raw;
        let mut seen = Vec::new();
        while let Some((req, consumed)) = dec.decode(buf).unwrap() {
            seen.push((req.path().to_owned(), req.body));
            buf = &buf[consumed..];
        }
        assert_eq!(
            seen,
            vec![
                ("/a".to_owned(), b"abc".to_vec()),
                ("/b".to_owned(), Vec::new()),
                ("/c".to_owned(), b"xy".to_vec()),
            ]
        );
        assert_eq!(buf, b"GET /d");
    }

    const CHUNKED: &[u8] = b"POST /m HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1 ; ext\r\n,\r\n00A\r\n world!!!!\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn chunked_body_split_at_every_byte() {
        let mut dec = decoder();
        let (req, consumed) = feed_bytewise(&mut dec, CHUNKED);
        assert_eq!(consumed, CHUNKED.len());
        assert_eq!(req.body, b"hello, world!!!!");
        // Trailers are discarded, not merged into the headers.
        assert_eq!(req.header("x-trailer"), None);
        assert!(!dec.in_body());
    }

    #[test]
    fn chunked_body_in_one_piece_is_followed_by_the_next_request() {
        let mut raw = CHUNKED.to_vec();
        raw.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut dec = decoder();
        let (req, consumed) = dec.decode(&raw).unwrap().unwrap();
        assert_eq!(consumed, CHUNKED.len());
        assert_eq!(req.body, b"hello, world!!!!");
        let (next, _) = dec.decode(&raw[consumed..]).unwrap().unwrap();
        assert_eq!(next.path(), "/next");
    }

    #[test]
    fn chunked_body_without_trailers() {
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (req, consumed) = decode_one(LIMITS, raw);
        assert_eq!(consumed, raw.len());
        assert_eq!(req.body, b"abc");
    }

    #[test]
    fn decoded_body_bytes_are_not_rescanned() {
        // Once chunk data has been copied out, the decoder resumes from where it stopped:
        // overwriting the already-decoded bytes must not change the result.
        let head_and_first =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n";
        let mut dec = decoder();
        assert_eq!(dec.decode(head_and_first), Ok(None));
        let mut raw = vec![b'#'; head_and_first.len()];
        raw.extend_from_slice(b"2\r\nef\r\n0\r\n\r\n");
        let (req, consumed) = dec.decode(&raw).unwrap().unwrap();
        assert_eq!(req.body, b"abcdef");
        assert_eq!(consumed, raw.len());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let cases: [(&[u8], bool); 7] = [
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for (raw, keep_alive) in cases {
            let (req, _) = decode_one(LIMITS, raw);
            assert_eq!(
                req.keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            decode_one(LIMITS, b"GET / HTTP/1.0\r\n\r\n")
                .0
                .version_minor,
            0
        );
    }

    #[test]
    fn expect_continue_is_reported_while_waiting_for_the_body() {
        let mut dec = decoder();
        let head =
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        assert!(!dec.expects_continue());
        assert_eq!(dec.decode(head), Ok(None));
        assert!(dec.expects_continue());
        let mut raw = head.to_vec();
        raw.extend_from_slice(b"ok");
        assert!(dec.decode(&raw).unwrap().is_some());
        assert!(!dec.expects_continue());

        let mut dec = decoder();
        assert_eq!(
            dec.decode(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"),
            Ok(None)
        );
        assert!(!dec.expects_continue());

        let mut dec = decoder();
        let http10 = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(dec.decode(http10), Ok(None));
        assert!(!dec.expects_continue());
    }

    #[test]
    fn header_section_at_the_limit_is_accepted() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        raw.resize(LIMITS.max_header_bytes - 4, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), LIMITS.max_header_bytes);
        assert_eq!(decode_one(LIMITS, &raw).1, raw.len());
    }

    #[test]
    fn header_section_over_the_limit_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        raw.resize(LIMITS.max_header_bytes - 3, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        let err = decode_err(LIMITS, &raw);
        assert_eq!(err, HttpError::HeadersTooLarge { limit: 1024 });
        assert_eq!((err.status(), err.code()), (431, "HEADERS_TOO_LARGE"));
    }

    #[test]
    fn incomplete_header_section_over_the_limit_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        raw.resize(LIMITS.max_header_bytes - 1, b'a');
        let mut dec = decoder();
        assert_eq!(dec.decode(&raw), Ok(None));
        raw.push(b'a');
        assert_eq!(
            dec.decode(&raw),
            Err(HttpError::HeadersTooLarge { limit: 1024 })
        );
    }

    /// A GET with `count` header fields, `Host` included.
    fn with_headers(count: usize) -> Vec<u8> {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..count {
            raw.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    #[test]
    fn header_count_is_limited() {
        assert_eq!(decode_one(LIMITS, &with_headers(16)).0.headers.len(), 16);
        let err = decode_err(LIMITS, &with_headers(17));
        assert_eq!(err, HttpError::TooManyHeaders { limit: 16 });
        assert_eq!((err.status(), err.code()), (431, "TOO_MANY_HEADERS"));
    }

    #[test]
    fn header_limits_above_the_stack_slots_work() {
        let limits = Limits {
            max_header_bytes: 8192,
            max_headers: 100,
            ..LIMITS
        };
        assert_eq!(decode_one(limits, &with_headers(100)).0.headers.len(), 100);
        assert_eq!(
            decode_err(limits, &with_headers(101)),
            HttpError::TooManyHeaders { limit: 100 }
        );
    }

    #[test]
    fn content_length_over_the_limit_is_refused_from_the_head() {
        let mut dec = decoder();
        let err = dec
            .decode(
                b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 65\r\n\r\n",
            )
            .unwrap_err();
        assert_eq!(err, HttpError::BodyTooLarge { limit: 64 });
        assert_eq!((err.status(), err.code()), (413, "BODY_TOO_LARGE"));
        assert!(!dec.expects_continue());
        let raw =
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert_eq!(
            decode_err(LIMITS, raw),
            HttpError::BodyTooLarge { limit: 64 }
        );
        let body = [b'x'; 64];
        let mut raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 64\r\n\r\n".to_vec();
        raw.extend_from_slice(&body);
        assert_eq!(decode_one(LIMITS, &raw).0.body, body);
    }

    #[test]
    fn chunked_total_over_the_limit_is_413_before_the_chunk_arrives() {
        let mut dec = decoder();
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n";
        assert_eq!(dec.decode(raw), Ok(None));
        let mut raw = raw.to_vec();
        raw.extend_from_slice(&[b'x'; 32]);
        raw.extend_from_slice(b"\r\n21\r\n");
        assert_eq!(dec.decode(&raw), Err(HttpError::BodyTooLarge { limit: 64 }));

        let huge = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n";
        assert_eq!(
            decode_err(LIMITS, huge),
            HttpError::BodyTooLarge { limit: 64 }
        );
    }

    #[test]
    fn invalid_content_length_is_400() {
        for value in ["abc", "-1", "+5", "", "5 5", "0x10", "5,", "5, 6"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {value}\r\n\r\n");
            let err = decode_err(LIMITS, raw.as_bytes());
            assert_eq!(err, HttpError::InvalidContentLength, "{value:?}");
            assert_eq!((err.status(), err.code()), (400, "INVALID_CONTENT_LENGTH"));
        }
        let differing =
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(
            decode_err(LIMITS, differing),
            HttpError::InvalidContentLength
        );
    }

    #[test]
    fn identical_duplicate_content_lengths_are_accepted() {
        let raw =
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\n\r\nabc";
        let (req, consumed) = decode_one(LIMITS, raw);
        assert_eq!((req.body.as_slice(), consumed), (&b"abc"[..], raw.len()));
    }

    #[test]
    fn transfer_encoding_with_content_length_is_ambiguous() {
        let both = [
            &b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\n",
        ];
        for raw in both {
            let err = decode_err(LIMITS, raw);
            assert_eq!(err, HttpError::AmbiguousLength);
            assert_eq!((err.status(), err.code()), (400, "AMBIGUOUS_LENGTH"));
        }
    }

    #[test]
    fn transfer_codings_before_chunked_are_501() {
        let err = decode_err(
            LIMITS,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        );
        assert_eq!(err, HttpError::UnsupportedTransferEncoding);
        assert_eq!(
            (err.status(), err.code()),
            (501, "UNSUPPORTED_TRANSFER_ENCODING")
        );
    }

    #[test]
    fn chunked_not_last_or_repeated_is_400() {
        let raws = [
            &b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n",
        ];
        for raw in raws {
            let err = decode_err(LIMITS, raw);
            assert!(matches!(err, HttpError::BadTransferEncoding(_)), "{err:?}");
            assert_eq!((err.status(), err.code()), (400, "BAD_TRANSFER_ENCODING"));
        }
    }

    #[test]
    fn host_is_required_on_http_1_1_once_and_valid() {
        for (raw, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "needs a Host"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                "more than one",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                "more than one",
            ),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "not host[:port]"),
            (b"GET / HTTP/1.0\r\nHost: a@b\r\n\r\n", "not host[:port]"),
        ] {
            let err = decode_err(LIMITS, raw);
            assert!(matches!(err, HttpError::InvalidHost(_)), "{err:?}");
            assert_eq!((err.status(), err.code()), (400, "INVALID_HOST"));
            assert!(err.detail().contains(why), "{err}");
        }
        let (req, _) = decode_one(LIMITS, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(req.header("host"), None, "HTTP/1.0 needs none");
        let (req, _) = decode_one(LIMITS, b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
        assert_eq!(req.header("host"), Some(""), "empty is valid");
    }

    #[test]
    fn absolute_form_targets_become_their_path() {
        let raw = b"POST http://relay.test:8080/api/v1/messages?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let (req, _) = decode_one(LIMITS, raw);
        assert_eq!(req.path(), "/api/v1/messages");
        assert_eq!(req.query(), Some("x=1"));
        for raw in [
            &b"GET ftp://relay.test/ HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET relay.test:80 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            let err = decode_err(LIMITS, raw);
            assert_eq!((err.status(), err.code()), (400, "INVALID_TARGET"), "{err}");
        }
        let (req, _) = decode_one(LIMITS, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(req.path(), "*");
    }

    #[test]
    fn a_bare_lf_is_refused_in_heads_and_trailers_as_in_chunk_lines() {
        for raw in [
            &b"GET / HTTP/1.1\nHost: h\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            let err = decode_err(LIMITS, raw);
            assert_eq!(
                (err.status(), err.code()),
                (400, "MALFORMED_REQUEST"),
                "{raw:?}"
            );
            assert!(err.detail().contains("bare LF"), "{err}");
        }
        let trailer =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\n\r\n";
        let err = decode_err(LIMITS, trailer);
        assert_eq!(
            err,
            HttpError::BadChunkedEncoding("bare LF in the trailer section")
        );
    }

    #[test]
    fn transfer_encoding_on_http10_is_refused() {
        let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let err = decode_err(LIMITS, raw);
        assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn bad_chunked_encoding_is_400() {
        let cases: [&[u8]; 10] = [
            b"zz\r\n",
            b"4;ext\n",
            b"\r\n",
            b"4\nabcd\r\n0\r\n\r\n",
            b"4\r\nabcdX\r\n0\r\n\r\n",
            b"4\r\nabcd\n0\r\n\r\n",
            b"4\rx",
            b"4 x\r\n",
            b"4;ext\x00\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ];
        for body in cases {
            let mut raw =
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(body);
            let err = decode_err(LIMITS, &raw);
            assert!(
                matches!(err, HttpError::BadChunkedEncoding(_)),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!((err.status(), err.code()), (400, "BAD_CHUNKED_ENCODING"));
        }
    }

    #[test]
    fn endless_chunk_extension_is_refused() {
        let mut raw =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        let mut dec = decoder();
        raw.resize(raw.len() + MAX_CHUNK_LINE - 2, b'e');
        assert_eq!(dec.decode(&raw), Ok(None));
        raw.push(b'e');
        assert!(matches!(
            dec.decode(&raw),
            Err(HttpError::BadChunkedEncoding(_))
        ));
    }

    #[test]
    fn trailers_count_against_the_header_limits() {
        let limits = Limits {
            max_headers: 4,
            ..LIMITS
        };
        let head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n0\r\n";
        let mut ok = head.to_vec();
        ok.extend_from_slice(b"T: 1\r\n\r\n");
        assert_eq!(decode_one(limits, &ok).1, ok.len());
        let mut too_many = head.to_vec();
        too_many.extend_from_slice(b"T: 1\r\nU: 2\r\n\r\n");
        assert_eq!(
            decode_err(limits, &too_many),
            HttpError::TooManyHeaders { limit: 4 }
        );

        let limits = Limits {
            max_header_bytes: head.len() + 8,
            ..LIMITS
        };
        let mut dec = RequestDecoder::new(limits);
        let mut too_large = head.to_vec();
        too_large.extend_from_slice(b"Trailer: long value\r\n\r\n");
        assert_eq!(
            dec.decode(&too_large),
            Err(HttpError::HeadersTooLarge {
                limit: limits.max_header_bytes
            })
        );
    }

    #[test]
    fn garbage_request_lines_are_malformed() {
        let raws: [&[u8]; 6] = [
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        ];
        for raw in raws {
            let err = decode_err(LIMITS, raw);
            assert!(
                matches!(err, HttpError::Malformed(_)),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!((err.status(), err.code()), (400, "MALFORMED_REQUEST"));
        }
    }

    #[test]
    fn non_utf8_header_value_is_400() {
        let err = decode_err(
            LIMITS,
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Bin: \xff\xfe\r\n\r\n",
        );
        assert_eq!(err, HttpError::InvalidHeaderValue("x-bin".to_owned()));
        assert_eq!((err.status(), err.code()), (400, "INVALID_HEADER_VALUE"));
    }

    #[test]
    fn other_http_versions_are_505() {
        let raws: [&[u8]; 4] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/3",
            b"\r\nGET / HTTP/2",
        ];
        for raw in raws {
            let err = decode_err(LIMITS, raw);
            assert_eq!(err, HttpError::VersionNotSupported);
            assert_eq!(
                (err.status(), err.code()),
                (505, "HTTP_VERSION_NOT_SUPPORTED")
            );
        }
    }

    #[test]
    fn every_error_has_a_detail_and_display() {
        let errors = [
            HttpError::HeadersTooLarge { limit: 7 },
            HttpError::TooManyHeaders { limit: 7 },
            HttpError::BodyTooLarge { limit: 7 },
            HttpError::Malformed("why"),
            HttpError::InvalidHeaderValue("x".to_owned()),
            HttpError::InvalidContentLength,
            HttpError::AmbiguousLength,
            HttpError::UnsupportedTransferEncoding,
            HttpError::BadChunkedEncoding("why"),
            HttpError::VersionNotSupported,
        ];
        let mut codes: Vec<_> = errors.iter().map(HttpError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len(), "codes must be distinct");
        for err in &errors {
            let detail = err.detail();
            assert!(!detail.is_empty());
            assert!(err.to_string().contains(&detail));
            assert!(err
                .code()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        assert!(errors[0].detail().contains('7'));
        assert!(errors[3].detail().contains("why"));
    }
}
