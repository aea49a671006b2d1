//! Server-Sent Events encoding: the `text/event-stream` format (WHATWG HTML, "Server-sent
//! events") and the head of a response whose body is such a stream.
//!
//! Owns only the bytes: events (`id:`, `event:`, `data:` lines, then a blank line),
//! comments (heartbeats) and the `retry:` field. Appends to caller-owned buffers and does no
//! I/O; what an event means and when to send it is the SSE session's business (`api::sse`).

use super::response::{push_cached_date, push_header};

pub const CONTENT_TYPE: &str = "text/event-stream";

/// The head of a `200` whose body is an event stream: no `Content-Length` (the body ends
/// when the connection does, so it says `Connection: close`), no caching, and a hint to
/// buffering proxies (nginx) to pass events on at once. `headers` follow (CORS, say).
pub fn head(headers: &[(&'static str, String)], out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
    push_cached_date(out);
    out.extend_from_slice(b"\r\n");
    push_header(out, "Content-Type", CONTENT_TYPE);
    out.extend_from_slice(
        b"Cache-Control: no-cache, no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n",
    );
    for (name, value) in headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one event. `id` and `event` must not contain line breaks (the caller's IDs and
/// event names never do); `data` may: each of its lines becomes a `data:` line, which a
/// client joins back with `\n` (a `\r\n` or lone `\r` in `data` arrives as `\n`).
pub fn event(out: &mut Vec<u8>, id: &[u8], event: &str, data: &[u8]) {
    out.reserve(data.len() + id.len() + event.len() + 24);
    if !id.is_empty() {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id);
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
            Some(at) => {
                out.extend_from_slice(&rest[..at]);
                out.push(b'\n');
                let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
                rest = &rest[at + 1 + usize::from(crlf)..];
            }
        }
    }
    out.push(b'\n');
}

/// The size [`event`] gives an event whose `data` has no line break: a queue's estimate.
pub fn event_len(id_len: usize, event: &str, data_len: usize) -> usize {
    let id = if id_len == 0 { 0 } else { id_len + 5 };
    id + event.len() + 8 + data_len + 7 + 1
}

/// Appends a comment line (`: text`), which clients ignore: a heartbeat that keeps proxies
/// and the client's idea of the connection alive. `text` must not contain line breaks.
pub fn comment(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends a `retry:` field: how long a client waits before reconnecting, in milliseconds.
pub fn retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(b"retry: ");
    crate::text::push_decimal(out, millis);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_event_has_id_event_and_data_lines_and_ends_with_a_blank_line() {
        let data = br#"{"type":"message","message_id":"17-0"}"#;
        let got = text(|o| event(o, b"17-0", "message", data));
        assert_eq!(
            got,
            "id: 17-0\nevent: message\ndata: {\"type\":\"message\",\"message_id\":\"17-0\"}\n\n"
        );
        assert_eq!(event_len(4, "message", data.len()), got.len());
        assert_eq!(
            event_len(0, "error", 3),
            text(|o| event(o, b"", "error", b"abc")).len()
        );
    }

    #[test]
    fn line_breaks_in_data_become_data_lines_a_client_joins_with_newlines() {
        let got = text(|o| event(o, b"", "message", b"{\n  \"a\": 1,\r\n  \"b\": 2\r}\n"));
        assert_eq!(
            got,
            "event: message\ndata: {\ndata:   \"a\": 1,\ndata:   \"b\": 2\ndata: }\ndata: \n\n"
        );
        // What an EventSource does with it: the data lines joined with \n.
        let joined: Vec<&str> = got
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(joined.join("\n"), "{\n  \"a\": 1,\n  \"b\": 2\n}\n");
    }

    #[test]
    fn comments_retry_and_the_head() {
        assert_eq!(text(|o| comment(o, "heartbeat")), ": heartbeat\n\n");
        assert_eq!(text(|o| retry(o, 2500)), "retry: 2500\n\n");
        let head = text(|o| head(&[("Access-Control-Allow-Origin", "*".into())], o));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert!(
            head.ends_with("\r\nAccess-Control-Allow-Origin: *\r\n\r\n"),
            "{head}"
        );
    }
}
