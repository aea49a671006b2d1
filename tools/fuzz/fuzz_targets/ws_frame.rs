//! `FrameDecoder::decode` on client frames, with a small maximum message size.
//!
//! Input: `[max_message_bytes, cut0 (u16 LE), cut1 (u16 LE), mode]` then the rest. With an
//! even `mode` the rest is the raw byte stream; with an odd one it is a list of frame
//! records `[fin|opcode, payload_len, mask (4 bytes), payload...]` that the target encodes as
//! well-formed masked frames, so fragmentation and control frames are reached quickly.
//!
//! The stream is decoded whole, cut into three pieces and (short streams) one byte at a time;
//! all three must give the same messages, `consumed` values and ending, and that must match
//! an independent byte-wise reference decoder written from RFC 6455 and the decoder's
//! documented contract. Decoded messages respect the size limit, text is UTF-8, and the
//! relay's frame encoders produce frames the decoder reads back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsar_relay::ws::frame::{
    close_frame, ping_frame, pong_frame, text_frame, FrameDecoder, Incoming, WsError,
};

mod client_frame;
mod split;

/// How a decoding run ended.
#[derive(Debug, PartialEq)]
enum End {
    /// `Ok(None)` with this many unconsumed bytes buffered.
    Incomplete {
        buffered: usize,
    },
    Error(WsError),
}

type Run = (Vec<(Incoming, usize)>, End);

const OPCODES: [u8; 6] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA];

fuzz_target!(|data: &[u8]| {
    let Some((config, rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let max = usize::from(config[0]);
    let built;
    let stream = if config[5] & 1 == 0 {
        rest
    } else {
        built = encode_records(rest);
        &built
    };
    let cuts = split::cuts([config[1], config[2], config[3], config[4]], stream.len());

    let whole = decode(max, [stream]);
    assert_eq!(whole, reference(max, stream), "decoder vs reference");
    let pieces = decode(max, split::pieces(stream, cuts));
    assert_eq!(whole, pieces, "whole vs cut at {cuts:?}");
    if stream.len() <= split::BYTEWISE_MAX {
        let bytewise = decode(max, stream.chunks(1));
        assert_eq!(whole, bytewise, "whole vs one byte at a time");
    }
    for (message, _) in &whole.0 {
        check_reencoding(message);
    }
});

/// Well-formed masked frames (minimal length encoding, no reserved bits) from records
/// `[fin|opcode, payload_len, mask (4 bytes), payload...]`; the opcode is picked from the
/// six defined ones by the low nibble, and a short last payload is cut to what is left.
fn encode_records(mut spec: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(([first, len, m0, m1, m2, m3], tail)) = spec.split_first_chunk::<6>() {
        let len = usize::from(*len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        let mask = [*m0, *m1, *m2, *m3];
        out.push((first & 0x80) | OPCODES[usize::from(first & 0x0F) % OPCODES.len()]);
        if len <= 125 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        spec = tail;
    }
    out
}

/// Feeds `pieces` in order to one decoder under the buffer contract.
fn decode<'a>(max: usize, pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut decoder = FrameDecoder::new(max);
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    for piece in pieces {
        // After Ok(None) the next call must see more bytes.
        if piece.is_empty() {
            continue;
        }
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&buf) {
                Ok(Some((message, consumed))) => {
                    assert!(consumed > 0, "a message consumed nothing");
                    assert!(
                        consumed <= buf.len(),
                        "consumed {consumed} of {}",
                        buf.len()
                    );
                    check_message(max, &message);
                    buf.drain(..consumed);
                    messages.push((message, consumed));
                }
                Ok(None) => break,
                Err(err) => {
                    assert!(matches!(err.close_code(), 1002 | 1007 | 1009));
                    assert!(!err.reason().is_empty() && err.reason().len() <= 123);
                    return (messages, End::Error(err));
                }
            }
        }
    }
    let end = End::Incomplete {
        buffered: buf.len(),
    };
    (messages, end)
}

fn check_message(max: usize, message: &Incoming) {
    match message {
        Incoming::Text(text) => {
            assert!(text.len() <= max, "text of {} bytes", text.len());
            assert!(std::str::from_utf8(text).is_ok(), "text is not UTF-8");
        }
        Incoming::Binary(data) => assert!(data.len() <= max, "binary of {} bytes", data.len()),
        Incoming::Ping(payload) => assert!(payload.len() <= 125),
        Incoming::Pong => {}
        Incoming::Close { code, reason } => {
            assert!(reason.len() <= 123);
            assert!(code.is_some() || reason.is_empty());
            if let Some(code) = code {
                assert!(valid_close_code(*code), "close code {code}");
            }
        }
    }
}

/// RFC 6455 §7.4: the codes a peer may send.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What the server would send back for `message`, masked as a client would send it, decodes
/// to the expected message.
fn check_reencoding(message: &Incoming) {
    const MASK: [u8; 4] = [0xA5, 0x01, 0x7E, 0xC3];
    let (frame, expected) = match message {
        Incoming::Text(text) => (text_frame(text), message.clone()),
        Incoming::Ping(payload) => {
            let pong = client_frame::masked(&pong_frame(payload), MASK);
            assert_eq!(read_one(&pong), Incoming::Pong);
            (ping_frame(payload), message.clone())
        }
        Incoming::Close {
            code: Some(code),
            reason,
        } => (close_frame(*code, reason), message.clone()),
        Incoming::Binary(_) | Incoming::Pong | Incoming::Close { code: None, .. } => return,
    };
    assert_eq!(read_one(&client_frame::masked(&frame, MASK)), expected);
}

fn read_one(frame: &[u8]) -> Incoming {
    match FrameDecoder::new(frame.len()).decode(frame) {
        Ok(Some((message, consumed))) if consumed == frame.len() => message,
        other => panic!("re-encoded frame decoded as {other:?}"),
    }
}

/// An independent decoder: parses the whole stream frame by frame, unmasks byte by byte and
/// applies the checks in the documented order (first-two-byte checks, then the length, then
/// sequencing and size from the complete header, then the payload).
fn reference(max: usize, stream: &[u8]) -> Run {
    let mut messages = Vec::new();
    // Start of the next frame, and of the bytes not yet returned as part of a message.
    let (mut pos, mut start) = (0usize, 0usize);
    let mut fragmented: Option<(bool, Vec<u8>)> = None;
    loop {
        let rest = &stream[pos..];
        let incomplete = End::Incomplete {
            buffered: stream.len() - start,
        };
        let [first, second, ..] = *rest else {
            return (messages, incomplete);
        };
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
        if first & 0x70 != 0 {
            return (messages, End::Error(WsError::ReservedBits));
        }
        if !OPCODES.contains(&opcode) {
            return (messages, End::Error(WsError::UnknownOpcode(opcode)));
        }
        if second & 0x80 == 0 {
            return (messages, End::Error(WsError::Unmasked));
        }
        let (len, mask_at) = match second & 0x7F {
            126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()), 10),
            126 | 127 => return (messages, incomplete),
            n => (u64::from(n), 2),
        };
        if len >= 1 << 63 {
            return (messages, End::Error(WsError::LengthOverflow));
        }
        let Some(mask) = rest.get(mask_at..mask_at + 4) else {
            return (messages, incomplete);
        };
        let control = opcode >= 0x8;
        if control && !fin {
            return (messages, End::Error(WsError::FragmentedControl));
        }
        if control && len > 125 {
            return (messages, End::Error(WsError::ControlTooLong));
        }
        if !control {
            match (opcode, &fragmented) {
                (0x0, None) => return (messages, End::Error(WsError::UnexpectedContinuation)),
                (0x1 | 0x2, Some(_)) => {
                    return (messages, End::Error(WsError::ExpectedContinuation))
                }
                _ => {}
            }
            let buffered = fragmented.as_ref().map_or(0, |(_, data)| data.len());
            if len > max.saturating_sub(buffered) as u64 {
                return (messages, End::Error(WsError::TooBig));
            }
        }
        let payload_at = mask_at + 4;
        let Some(payload) = rest.get(payload_at..payload_at + len as usize) else {
            return (messages, incomplete);
        };
        let payload: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        pos += payload_at + len as usize;

        let message = match opcode {
            0x8 => match payload.as_slice() {
                [] => Some(Incoming::Close {
                    code: None,
                    reason: String::new(),
                }),
                [_] => return (messages, End::Error(WsError::BadClosePayload)),
                [hi, lo, reason @ ..] => {
                    let code = u16::from(*hi) << 8 | u16::from(*lo);
                    if !valid_close_code(code) {
                        return (messages, End::Error(WsError::InvalidCloseCode(code)));
                    }
                    let Ok(reason) = String::from_utf8(reason.to_vec()) else {
                        return (messages, End::Error(WsError::InvalidCloseReason));
                    };
                    Some(Incoming::Close {
                        code: Some(code),
                        reason,
                    })
                }
            },
            0x9 => Some(Incoming::Ping(payload)),
            0xA => Some(Incoming::Pong),
            _ => {
                let (text, data) = match (opcode, fragmented.take()) {
                    (0x0, Some((text, mut data))) => {
                        data.extend_from_slice(&payload);
                        (text, data)
                    }
                    (_, _) => (opcode == 0x1, payload),
                };
                if !fin {
                    fragmented = Some((text, data));
                    None
                } else if !text {
                    Some(Incoming::Binary(data))
                } else if std::str::from_utf8(&data).is_err() {
                    return (messages, End::Error(WsError::InvalidUtf8));
                } else {
                    Some(Incoming::Text(data))
                }
            }
        };
        if let Some(message) = message {
            messages.push((message, pos - start));
            start = pos;
        }
    }
}
