//! `RequestDecoder::decode` on arbitrary bytes, with small limits chosen by the input.
//!
//! Input: `[max_header_bytes, max_headers, max_body_bytes, cut0 (u16 LE), cut1 (u16 LE)]`
//! then the byte stream of one connection.
//!
//! The stream is decoded the way the connection loop does it (decode until `Ok(None)`, drop
//! `consumed` bytes after each request, stop at the first error), three ways: whole, cut into
//! three pieces at the input's cut points, and (short streams) one byte at a time. All three
//! must give the same requests, the same `consumed` values and the same ending. Every request
//! is checked against the limits and the framing it claims, against the line-ending rule (no
//! bare LF in a head), the `Host` rules, and a model of the request target's forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsar_relay::http::{HttpError, Limits, Method, Request, RequestDecoder};

mod split;

/// How a decoding run ended.
#[derive(Debug, PartialEq)]
enum End {
    /// `Ok(None)` with this many unconsumed bytes buffered.
    Incomplete {
        buffered: usize,
    },
    Error(HttpError),
}

type Run = (Vec<(Request, usize)>, End);

fuzz_target!(|data: &[u8]| {
    let Some((config, stream)) = data.split_first_chunk::<7>() else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 8 + usize::from(config[0]) * 4,
        // Mostly small; 60-75 crosses the decoder's 64 stack header slots.
        max_headers: match config[1] {
            n @ 240.. => 60 + usize::from(n - 240),
            n => usize::from(n % 12),
        },
        max_body_bytes: usize::from(config[2]),
    };
    let cuts = split::cuts([config[3], config[4], config[5], config[6]], stream.len());

    let whole = decode(limits, [stream]);
    let pieces = decode(limits, split::pieces(stream, cuts));
    assert_eq!(whole, pieces, "whole vs cut at {cuts:?}");
    if stream.len() <= split::BYTEWISE_MAX {
        let bytewise = decode(limits, stream.chunks(1));
        assert_eq!(whole, bytewise, "whole vs one byte at a time");
    }
});

/// Feeds `pieces` in order to one decoder under the buffer contract.
fn decode<'a>(limits: Limits, pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut decoder = RequestDecoder::new(limits);
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    for piece in pieces {
        // After Ok(None) the next call must see more bytes.
        if piece.is_empty() {
            continue;
        }
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&buf) {
                Ok(Some((request, consumed))) => {
                    check_request(&limits, &buf, &request, consumed);
                    assert!(!decoder.in_body() && !decoder.expects_continue());
                    buf.drain(..consumed);
                    requests.push((request, consumed));
                }
                Ok(None) => {
                    assert!(!decoder.expects_continue() || decoder.in_body());
                    break;
                }
                Err(err) => {
                    check_error(&limits, &err);
                    return (requests, End::Error(err));
                }
            }
        }
    }
    let end = End::Incomplete {
        buffered: buf.len(),
    };
    (requests, end)
}

fn check_request(limits: &Limits, buf: &[u8], req: &Request, consumed: usize) {
    assert!(consumed > 0, "a request consumed nothing");
    assert!(
        consumed <= buf.len(),
        "consumed {consumed} of {}",
        buf.len()
    );
    assert!(
        req.body.len() <= limits.max_body_bytes,
        "body over the limit"
    );
    assert!(
        req.headers.len() <= limits.max_headers,
        "headers over the limit"
    );
    assert!(req.version_minor <= 1);
    assert!(!req.path().contains('?'));
    for (name, value) in req.headers.iter() {
        assert!(!name.is_empty());
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
        assert!(!value.starts_with([' ', '\t']) && !value.ends_with([' ', '\t']));
        assert!(req.header(name).is_some());
        assert!(req.header(&name.to_ascii_uppercase()).is_some());
    }

    // RFC 9112 §9.3: `close` in any Connection header ends the connection; HTTP/1.0 stays
    // open only with `keep-alive`.
    let tokens = || {
        req.headers
            .iter()
            .filter(|(name, _)| *name == "connection")
            .flat_map(|(_, value)| value.split(',').map(|t| t.trim_matches([' ', '\t'])))
    };
    let close = tokens().any(|t| t.eq_ignore_ascii_case("close"));
    let keep_alive = tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"));
    assert_eq!(
        req.keep_alive,
        !close && (req.version_minor == 1 || keep_alive)
    );

    check_head(buf, req, consumed);

    let chunked = req.header("transfer-encoding").is_some();
    if !chunked {
        // Content-Length framing: the body is the last bytes consumed, verbatim, and the
        // head before it fits the header limit.
        let head_len = consumed - req.body.len();
        assert_eq!(&buf[head_len..consumed], req.body.as_slice());
        assert!(
            head_len <= limits.max_header_bytes,
            "head of {head_len} bytes"
        );
        assert!(buf[..head_len].ends_with(b"\n"));
        let declared = req.header("content-length").map(|v| {
            let first = v.split(',').next().unwrap_or_default();
            first.trim_matches([' ', '\t']).parse::<usize>().unwrap()
        });
        assert_eq!(declared.unwrap_or(0), req.body.len());
    } else {
        assert_eq!(req.version_minor, 1, "chunked framing on HTTP/1.0");
        assert!(req.header("content-length").is_none(), "both framings");
        assert!(req.body.len() < consumed);
    }

    if let Some(query) = req.query() {
        // A parameter (a non-empty `&`-separated item) whose name needs no decoding is found
        // under that name.
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            let decoded = req.query_param(key);
            if !key.contains(['%', '+']) {
                assert!(decoded.is_some(), "{key:?} not found in {query:?}");
            }
        }
    }
}

/// The head's line endings, its `Host` fields and its target, each against a rule stated
/// independently of the decoder.
fn check_head(buf: &[u8], req: &Request, consumed: usize) {
    // Leading empty lines are CRLFs; the head then ends at the first empty line.
    let mut start = 0;
    while buf[start..consumed].starts_with(b"\r\n") {
        start += 2;
    }
    let head_end = start
        + buf[start..consumed]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a decoded head ends with an empty line")
        + 4;
    let head = &buf[..head_end];
    for (i, &b) in head.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && head[i - 1] == b'\r'), "bare LF at {i}");
    }

    // RFC 9112 §3.2: one Host on HTTP/1.1, never two, never an invalid one.
    let hosts: Vec<&str> = req
        .headers
        .iter()
        .filter(|(name, _)| *name == "host")
        .map(|(_, value)| value)
        .collect();
    assert!(hosts.len() <= 1, "{hosts:?}");
    assert!(req.version_minor == 0 || hosts.len() == 1, "HTTP/1.1 without Host");
    for host in hosts {
        assert!(plausible_host(host), "{host:?}");
    }

    // The target: a path as sent, or an http(s) URI reduced to its path, or `*` (OPTIONS).
    let line_end = start + head[start..].windows(2).position(|w| w == b"\r\n").unwrap();
    let line = String::from_utf8_lossy(&head[start..line_end]);
    let target = line.split(' ').nth(1).expect("a request line has a target");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let lower = target.to_ascii_lowercase();
    if target.starts_with('/') {
        assert_eq!((req.path(), req.query()), (path, query));
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        let after_scheme = &target[target.find("://").unwrap() + 3..];
        let rest = &after_scheme[after_scheme.find(['/', '?']).unwrap_or(after_scheme.len())..];
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        assert_eq!((req.path(), req.query()), (path, query));
    } else {
        assert_eq!((target, req.method), ("*", Method::Options));
        assert_eq!(req.path(), "*");
    }
}

/// A necessary condition for a valid `Host` (RFC 3986 `host [":" port]`): visible ASCII
/// without user info, path or whitespace; after an IP literal or a name, only `:digits`.
fn plausible_host(value: &str) -> bool {
    if value
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b"@/?#\\\"<>^`{|}".contains(&b))
    {
        return false;
    }
    let port = match value.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((_, port)) => port,
            None => return false,
        },
        None => match value.rfind(':') {
            Some(i) if value[..i].contains(':') => return false,
            Some(i) => &value[i..],
            None => "",
        },
    };
    port.is_empty() || port[1..].bytes().all(|b| b.is_ascii_digit()) && port.starts_with(':')
}

fn check_error(limits: &Limits, err: &HttpError) {
    match err {
        HttpError::HeadersTooLarge { limit } => assert_eq!(*limit, limits.max_header_bytes),
        HttpError::TooManyHeaders { limit } => assert_eq!(*limit, limits.max_headers),
        HttpError::BodyTooLarge { limit } => assert_eq!(*limit, limits.max_body_bytes),
        _ => {}
    }
    assert!(matches!(err.status(), 400 | 413 | 431 | 501 | 505));
    assert!(err.to_string().contains(err.code()));
}
