//! RESP framing and reply reading for the Valkey link.
//!
//! The `redis` crate is our RESP codec: it packs commands and parses reply values. What it
//! cannot tell us from a byte buffer is where one reply ends, which a pipelined reader over
//! our own socket needs; [`frame_len`] answers exactly that, and nothing here builds values.

use redis::Value;

/// Length of the first complete RESP value in `buf`, or `None` if it is not all there yet.
/// `Err` for bytes that are not RESP at all (the link then reconnects).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    value_end(buf, 0, 0)
}

const MAX_DEPTH: usize = 64;

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn parse_len(line: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad RESP length")
}

fn value_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, &'static str> {
    if depth > MAX_DEPTH {
        return Err("RESP nesting too deep");
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(eol) = line_end(buf, at + 1) else {
        return Ok(None);
    };
    let after_line = eol + 2;
    match kind {
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Ok(Some(after_line)),
        b'$' | b'=' | b'!' => {
            let len = parse_len(&buf[at + 1..eol])?;
            if len < 0 {
                return Ok(Some(after_line));
            }
            let end = after_line + len as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = parse_len(&buf[at + 1..eol])?;
            if count < 0 {
                return Ok(Some(after_line));
            }
            let items = if matches!(kind, b'%' | b'|') {
                count * 2
            } else {
                count
            };
            let mut pos = after_line;
            for _ in 0..items {
                match value_end(buf, pos, depth + 1)? {
                    Some(next) => pos = next,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err("unknown RESP type byte"),
    }
}

/// A bulk or simple string reply as bytes.
pub fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The text of a server error reply.
pub fn server_error(value: &Value) -> Option<String> {
    match value {
        Value::ServerError(e) => Some(match e.details() {
            Some(detail) => format!("{} {detail}", e.code()),
            None => e.code().to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_each_reply_kind() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR nope\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*-1\r\n",
            b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n",
            b"%1\r\n+k\r\n:1\r\n",
        ];
        for case in cases {
            assert_eq!(
                frame_len(case),
                Ok(Some(case.len())),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            // Every strict prefix is incomplete.
            for cut in 0..case.len() {
                assert_eq!(
                    frame_len(&case[..cut]),
                    Ok(None),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(case)
                );
            }
            // A following reply is not part of this one.
            let mut two = case.to_vec();
            two.extend_from_slice(b"+OK\r\n");
            assert_eq!(frame_len(&two), Ok(Some(case.len())));
        }
    }

    #[test]
    fn rejects_non_resp() {
        assert!(frame_len(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
    }

    #[test]
    fn parsed_by_the_redis_crate() {
        let reply = b"*2\r\n$3\r\n1-0\r\n$-1\r\n";
        let n = frame_len(reply).unwrap().unwrap();
        let value = redis::parse_redis_value(&reply[..n]).unwrap();
        let Value::Array(items) = value else {
            panic!("array")
        };
        assert_eq!(bytes(&items[0]), Some(&b"1-0"[..]));
        assert_eq!(items[1], Value::Nil);
    }
}
