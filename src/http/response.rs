//! HTTP/1.1 response encoding: status line, the standard headers every response carries, and
//! the JSON error body shape the whole API uses.
//!
//! Owns: the bytes of a response head and body, the reason-phrase table, IMF-fixdate
//! formatting and its per-thread cache.
//! Must not touch: sockets (it appends to a caller-owned `Vec<u8>`), routing, or what a
//! response means: the route layer picks status, headers and body.
//!
//! Deviation from "always Content-Length": 1xx and 204 responses never carry Content-Length
//! (RFC 9110 §8.6 forbids it), and 1xx, 204 and 304 never carry a body.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::text::{civil_from_days, push_decimal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// 100..=999; anything else is sent as 500 so the status line always parses.
    pub status: u16,
    /// Extra headers, written after the standard ones in this order.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub content_type: Option<&'static str>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body,
            content_type: Some("application/json"),
        }
    }

    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            content_type: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Appends the encoded response to `out`: status line with the standard reason phrase,
/// `Date`, `Content-Length` (also for HEAD, whose body is then omitted), `Content-Type` when
/// set, `Connection: close` when `!keep_alive`, then the extra headers and the body.
pub fn encode(resp: &Response, head_only: bool, keep_alive: bool, out: &mut Vec<u8>) {
    let status = if (100..=999).contains(&resp.status) {
        resp.status
    } else {
        500
    };
    let informational_or_no_content = status < 200 || status == 204;
    let send_body = !head_only && !informational_or_no_content && status != 304;
    let body_len = if send_body { resp.body.len() } else { 0 };
    out.reserve(160 + body_len);

    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    push_cached_date(out);
    out.extend_from_slice(b"\r\n");
    if !informational_or_no_content {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(content_type) = resp.content_type {
        push_header(out, "Content-Type", content_type);
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in &resp.headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    if send_body {
        out.extend_from_slice(&resp.body);
    }
}

/// Writes `name: value\r\n`. Values may echo client input (an idempotency key, a chosen
/// subprotocol), so CR and LF become spaces: one of them would let that input add headers
/// or split the response.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        out.extend(value.bytes().map(|b| match b {
            b'\r' | b'\n' => b' ',
            _ => b,
        }));
    } else {
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

const IMF_FIXDATE_LEN: usize = 29;

thread_local! {
    // Each shard is one thread, so a per-thread cache needs no synchronisation; formatting
    // once per second instead of once per response keeps it off the hot path.
    static DATE_CACHE: Cell<(u64, [u8; IMF_FIXDATE_LEN])> =
        const { Cell::new((u64::MAX, [0; IMF_FIXDATE_LEN])) };
}

fn push_cached_date(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let text = DATE_CACHE.with(|cache| {
        let (cached_secs, cached_text) = cache.get();
        if cached_secs == now {
            return cached_text;
        }
        let text = format_imf_fixdate(now);
        cache.set((now, text));
        text
    });
    out.extend_from_slice(&text);
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`. Times past the end
/// of year 9999 are clamped to it, since the format has a four-digit year.
pub fn http_date(unix_secs: u64) -> String {
    format_imf_fixdate(unix_secs)
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

fn format_imf_fixdate(unix_secs: u64) -> [u8; IMF_FIXDATE_LEN] {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    const WEEKDAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let secs = unix_secs.min(LAST_SECOND_OF_9999);
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];

    let mut text = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    text[0..3].copy_from_slice(weekday);
    put_two_digits(&mut text[5..7], day);
    text[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    put_two_digits(&mut text[12..14], year / 100);
    put_two_digits(&mut text[14..16], year % 100);
    put_two_digits(&mut text[17..19], second_of_day / 3600);
    put_two_digits(&mut text[20..22], second_of_day / 60 % 60);
    put_two_digits(&mut text[23..25], second_of_day % 60);
    text
}

fn put_two_digits(slot: &mut [u8], n: u64) {
    slot[0] = b'0' + (n / 10 % 10) as u8;
    slot[1] = b'0' + (n % 10) as u8;
}

/// The standard reason phrase, or `""` for a code without one (an empty reason phrase is
/// valid HTTP/1.1).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// The JSON error body used by every error response: `{"detail":"…","code":"…"}`.
pub fn error_body(code: &str, detail: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        detail: &'a str,
        code: &'a str,
    }
    // Serialising two strings into a Vec cannot fail; the fallback only keeps this total.
    serde_json::to_vec(&ErrorBody { detail, code })
        .unwrap_or_else(|_| br#"{"detail":"internal error","code":"INTERNAL"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Parsed {
        status: u16,
        reason: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// Parses our own output with httparse, so the encoding is checked by an independent
    /// HTTP parser rather than by string comparison alone.
    fn parse(raw: &[u8]) -> Parsed {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut slots);
        let head_len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("unparseable response {other:?}: {raw:?}"),
        };
        Parsed {
            status: resp.code.unwrap(),
            reason: resp.reason.unwrap().to_owned(),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect(),
            body: raw[head_len..].to_vec(),
        }
    }

    fn names(parsed: &Parsed) -> Vec<&str> {
        parsed.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn value<'a>(parsed: &'a Parsed, name: &str) -> Option<&'a str> {
        parsed
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn json_response_has_the_standard_headers_in_order() {
        let resp = Response::json(201, br#"{"ok":true}"#.to_vec()).with_header("X-Id", "7");
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        let parsed = parse(&out);
        assert_eq!(parsed.status, 201);
        assert_eq!(parsed.reason, "Created");
        assert_eq!(
            names(&parsed),
            ["Date", "Content-Length", "Content-Type", "X-Id"]
        );
        assert_eq!(value(&parsed, "Content-Length"), Some("11"));
        assert_eq!(value(&parsed, "Content-Type"), Some("application/json"));
        assert_eq!(value(&parsed, "X-Id"), Some("7"));
        assert_eq!(parsed.body, br#"{"ok":true}"#);
        assert!(out.starts_with(b"HTTP/1.1 201 Created\r\nDate: "));
    }

    #[test]
    fn date_header_is_the_current_imf_fixdate() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut out = Vec::new();
        encode(&Response::empty(200), false, true, &mut out);
        encode(&Response::empty(200), false, true, &mut out);
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let date = value(&parse(&out), "Date").unwrap().to_owned();
        assert!(
            (before..=after).any(|secs| http_date(secs) == date),
            "{date} not within [{before}, {after}]"
        );
    }

    #[test]
    fn head_only_keeps_content_length_but_drops_the_body() {
        let resp = Response::json(200, b"[1,2,3]".to_vec());
        let mut out = Vec::new();
        encode(&resp, true, true, &mut out);
        let parsed = parse(&out);
        assert_eq!(value(&parsed, "Content-Length"), Some("7"));
        assert!(parsed.body.is_empty());
        assert!(out.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn connection_close_only_when_not_keeping_alive() {
        let mut out = Vec::new();
        encode(&Response::empty(200), false, false, &mut out);
        assert_eq!(value(&parse(&out), "Connection"), Some("close"));
        out.clear();
        encode(&Response::empty(200), false, true, &mut out);
        assert_eq!(value(&parse(&out), "Connection"), None);
    }

    #[test]
    fn empty_response_has_zero_length_and_no_content_type() {
        let mut out = Vec::new();
        encode(&Response::empty(404), false, true, &mut out);
        let parsed = parse(&out);
        assert_eq!((parsed.status, parsed.reason.as_str()), (404, "Not Found"));
        assert_eq!(value(&parsed, "Content-Length"), Some("0"));
        assert_eq!(value(&parsed, "Content-Type"), None);
        assert!(parsed.body.is_empty());
    }

    #[test]
    fn no_content_and_informational_responses_have_no_length_or_body() {
        for status in [100, 204] {
            let mut resp = Response::empty(status);
            resp.body = b"ignored".to_vec();
            let mut out = Vec::new();
            encode(&resp, false, true, &mut out);
            let parsed = parse(&out);
            assert_eq!(parsed.status, status);
            assert_eq!(value(&parsed, "Content-Length"), None, "{status}");
            assert!(parsed.body.is_empty(), "{status}");
        }
        let mut resp = Response::empty(304);
        resp.body = b"ignored".to_vec();
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        assert!(parse(&out).body.is_empty());
    }

    #[test]
    fn out_of_range_status_is_sent_as_500() {
        for status in [0, 99, 1000, u16::MAX] {
            let mut out = Vec::new();
            encode(&Response::empty(status), false, true, &mut out);
            assert_eq!(parse(&out).status, 500, "{status}");
        }
        let mut out = Vec::new();
        encode(&Response::empty(599), false, true, &mut out);
        let parsed = parse(&out);
        assert_eq!((parsed.status, parsed.reason.as_str()), (599, ""));
    }

    #[test]
    fn extra_headers_keep_their_order_and_cannot_inject_lines() {
        let resp = Response::empty(200)
            .with_header("Retry-After", "5")
            .with_header("X-Echo", "a\r\nSet-Cookie: evil\nb")
            .with_header("Retry-After", String::from("6"));
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        let parsed = parse(&out);
        assert_eq!(
            names(&parsed),
            [
                "Date",
                "Content-Length",
                "Retry-After",
                "X-Echo",
                "Retry-After"
            ]
        );
        assert_eq!(value(&parsed, "X-Echo"), Some("a  Set-Cookie: evil b"));
        assert_eq!(value(&parsed, "Set-Cookie"), None);
    }

    #[test]
    fn encode_appends_to_existing_output() {
        let mut out = b"previous".to_vec();
        encode(&Response::json(200, b"{}".to_vec()), false, true, &mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 200 OK\r\n"));
        assert!(out.ends_with(b"\r\n\r\n{}"));
    }

    #[test]
    fn large_content_length_is_written_in_full() {
        let resp = Response::json(200, vec![b' '; 1_234_567]);
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        let parsed = parse(&out);
        assert_eq!(value(&parsed, "Content-Length"), Some("1234567"));
        assert_eq!(parsed.body.len(), 1_234_567);
    }

    #[test]
    fn reason_phrases() {
        let cases = [
            (101, "Switching Protocols"),
            (200, "OK"),
            (204, "No Content"),
            (207, "Multi-Status"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
            (299, ""),
        ];
        for (status, reason) in cases {
            assert_eq!(reason_phrase(status), reason, "{status}");
        }
    }

    #[test]
    fn http_date_known_values() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT"),
            (1_709_210_096, "Thu, 29 Feb 2024 12:34:56 GMT"),
            (4_133_980_799, "Fri, 31 Dec 2100 23:59:59 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (u64::MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, text) in cases {
            assert_eq!(http_date(secs), text, "{secs}");
        }
    }

    #[test]
    fn http_date_agrees_with_a_day_by_day_calendar() {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        let (mut year, mut month, mut day) = (1970u64, 1u64, 1u64);
        for days in 0..(500 * 366) {
            let expected = format!(
                "{}, {day:02} {} {year:04} 00:00:00 GMT",
                WEEKDAYS[days % 7],
                MONTHS[month as usize - 1]
            );
            assert_eq!(http_date(days as u64 * 86_400), expected);
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_len = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn error_body_is_escaped_json_with_detail_first() {
        let body = error_body(
            "BAD_\"CODE",
            "quote \" backslash \\ newline \n tab \t ctl \u{1} é",
        );
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.starts_with(r#"{"detail":"#), "{text}");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value["detail"],
            "quote \" backslash \\ newline \n tab \t ctl \u{1} é"
        );
        assert_eq!(value["code"], "BAD_\"CODE");
        assert_eq!(value.as_object().unwrap().len(), 2);
        assert_eq!(
            error_body("NOT_FOUND", "no such topic"),
            br#"{"detail":"no such topic","code":"NOT_FOUND"}"#
        );
    }

    #[test]
    fn builders_set_the_fields() {
        let resp = Response::json(200, b"{}".to_vec()).with_header("X-A", "1");
        assert_eq!(resp.content_type, Some("application/json"));
        assert_eq!(resp.headers, vec![("X-A", "1".to_owned())]);
        let resp = Response::empty(204);
        assert_eq!(
            (resp.status, resp.content_type, resp.body.is_empty()),
            (204, None, true)
        );
    }
}
