//! WebSocket frames, server side: encoding the unmasked frames the server sends and decoding
//! (validating, unmasking, reassembling) the masked frames clients send.
//!
//! Owns: the RFC 6455 §5 frame format and the protocol rules checked on input.
//! Must not touch: sockets, queues or the meaning of messages. On any [`WsError`] the caller
//! sends [`close_frame`] with [`WsError::close_code`] and closes the connection; the decoder
//! is not meant to be used after an error.
//!
//! The header is hand-written rather than built on `tungstenite::protocol::frame::FrameHeader`:
//! that type parses from a `Cursor` and formats through `io::Write` with an `io::Result`,
//! which suits a stream but not an incremental decoder over a borrowed slice or an
//! infallible encoder into a `Vec`. The tests check both directions against tungstenite.

use std::fmt;

use super::{INVALID_PAYLOAD, PROTOCOL_ERROR, TOO_BIG};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends a final (FIN) unmasked frame header. Server frames are never masked, so one
/// encoded frame can be shared by every client: this is the hot path of fan-out.
pub fn encode_header(opcode: OpCode, payload_len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode.bits());
    match payload_len {
        0..=125 => out.push(payload_len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
}

fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    encode_header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A text frame with exactly the capacity it needs, since it may be queued on thousands of
/// connections. The caller guarantees `payload` is UTF-8 (it is serialised JSON).
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    frame(OpCode::Text, payload)
}

/// Payloads over 125 bytes are truncated so the frame stays a valid control frame.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    frame(
        OpCode::Ping,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// Payloads over 125 bytes are truncated so the frame stays a valid control frame.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    frame(
        OpCode::Pong,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// A close frame; `reason` is cut on a character boundary so code plus reason fit in 125
/// bytes and the reason stays valid UTF-8.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    encode_header(OpCode::Close, 2 + reason.len(), &mut out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A complete message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Reassembled and validated as UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// Its payload, to echo in the pong.
    Ping(Vec<u8>),
    Pong,
    /// `code` is `None` for an empty close payload.
    Close {
        code: Option<u16>,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// Client frames must be masked (RFC 6455 §5.1).
    Unmasked,
    /// RSV1-3 set; no extension is negotiated.
    ReservedBits,
    UnknownOpcode(u8),
    FragmentedControl,
    ControlTooLong,
    /// A continuation frame with no fragmented message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    ExpectedContinuation,
    /// A 64-bit payload length with the most significant bit set.
    LengthOverflow,
    /// A frame or reassembled message over the configured maximum.
    TooBig,
    InvalidUtf8,
    /// A close payload of exactly one byte.
    BadClosePayload,
    InvalidCloseCode(u16),
    InvalidCloseReason,
}

impl WsError {
    /// The code to close the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig => TOO_BIG,
            WsError::InvalidUtf8 | WsError::InvalidCloseReason => INVALID_PAYLOAD,
            WsError::Unmasked
            | WsError::ReservedBits
            | WsError::UnknownOpcode(_)
            | WsError::FragmentedControl
            | WsError::ControlTooLong
            | WsError::UnexpectedContinuation
            | WsError::ExpectedContinuation
            | WsError::LengthOverflow
            | WsError::BadClosePayload
            | WsError::InvalidCloseCode(_) => PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame (well under the 123 bytes it allows).
    pub fn reason(&self) -> &'static str {
        match self {
            WsError::Unmasked => "client frames must be masked",
            WsError::ReservedBits => "reserved bits set",
            WsError::UnknownOpcode(_) => "unknown opcode",
            WsError::FragmentedControl => "fragmented control frame",
            WsError::ControlTooLong => "control frame payload over 125 bytes",
            WsError::UnexpectedContinuation => "continuation frame without a message to continue",
            WsError::ExpectedContinuation => "new message before the fragmented one finished",
            WsError::LengthOverflow => "payload length has the most significant bit set",
            WsError::TooBig => "message too big",
            WsError::InvalidUtf8 => "text message is not valid UTF-8",
            WsError::BadClosePayload => "close payload of one byte",
            WsError::InvalidCloseCode(_) => "invalid close code",
            WsError::InvalidCloseReason => "close reason is not valid UTF-8",
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.close_code())?;
        match self {
            WsError::UnknownOpcode(op) => write!(f, ": {op:#x}"),
            WsError::InvalidCloseCode(code) => write!(f, ": {code}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for WsError {}

struct FrameHeader {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload_len: u64,
}

/// `N` bytes of `bytes` starting at `at`, if present.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses a client frame header. The checks that need only the first two bytes run first, so
/// a violation is reported as early as possible.
fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    let Some([first, second]) = array_at::<2>(buf, 0) else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(WsError::UnknownOpcode(first & 0x0F))?;
    if second & 0x80 == 0 {
        return Err(WsError::Unmasked);
    }
    let (payload_len, mask_at) = match second & 0x7F {
        126 => match array_at::<2>(buf, 2) {
            Some(len) => (u64::from(u16::from_be_bytes(len)), 4),
            None => return Ok(None),
        },
        127 => match array_at::<8>(buf, 2) {
            Some(len) => (u64::from_be_bytes(len), 10),
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if payload_len >> 63 != 0 {
        return Err(WsError::LengthOverflow);
    }
    let Some(mask) = array_at::<4>(buf, mask_at) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin: first & 0x80 != 0,
        opcode,
        mask,
        len: mask_at + 4,
        payload_len,
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the mask starts again at its first byte.
    for (byte, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

fn unmasked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut data = payload.to_vec();
    unmask(&mut data, mask);
    data
}

struct Fragmented {
    text: bool,
    data: Vec<u8>,
}

/// Decodes client frames from the front of a connection buffer into complete messages.
///
/// Buffer contract: after `decode` returns `Ok(None)`, the next call must pass a buffer that
/// starts with the same bytes (more may be appended). Fragments of a message are copied out
/// as they complete and not scanned again; `consumed` in `Ok(Some(..))` covers them too, so
/// the caller drops that many bytes from the front. A control frame arriving in the middle of
/// a fragmented message is returned at once; the fragments before it are then part of its
/// `consumed`, and the message keeps reassembling inside the decoder.
pub struct FrameDecoder {
    max_message_bytes: usize,
    /// Bytes at the front of the caller's buffer already copied into `fragmented`.
    absorbed: usize,
    fragmented: Option<Fragmented>,
}

impl FrameDecoder {
    pub fn new(max_message_bytes: usize) -> Self {
        FrameDecoder {
            max_message_bytes,
            absorbed: 0,
            fragmented: None,
        }
    }

    /// Decodes one complete message or control frame from the front of `buf`:
    /// `Ok(Some((message, consumed)))`, `Ok(None)` when more bytes are needed, `Err` on a
    /// protocol violation. See the type docs for the buffer contract.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Incoming, usize)>, WsError> {
        loop {
            let rest = buf.get(self.absorbed..).unwrap_or_default();
            let Some(header) = parse_header(rest)? else {
                return Ok(None);
            };
            // Decided from the header alone, before waiting for (or buffering) the payload.
            let payload_len = self.check(&header)?;
            let frame_len = header.len.saturating_add(payload_len);
            let Some(frame) = rest.get(..frame_len) else {
                return Ok(None);
            };
            let payload = &frame[header.len..];

            let message = match header.opcode {
                OpCode::Close | OpCode::Ping | OpCode::Pong => {
                    Some(control_message(header.opcode, payload, header.mask)?)
                }
                OpCode::Text | OpCode::Binary if header.fin => Some(data_message(
                    header.opcode == OpCode::Text,
                    unmasked(payload, header.mask),
                )?),
                OpCode::Text | OpCode::Binary => {
                    self.fragmented = Some(Fragmented {
                        text: header.opcode == OpCode::Text,
                        data: unmasked(payload, header.mask),
                    });
                    None
                }
                OpCode::Continuation => {
                    let Some(fragmented) = &mut self.fragmented else {
                        return Err(WsError::UnexpectedContinuation);
                    };
                    let start = fragmented.data.len();
                    fragmented.data.extend_from_slice(payload);
                    unmask(&mut fragmented.data[start..], header.mask);
                    match self.fragmented.take() {
                        Some(done) if header.fin => Some(data_message(done.text, done.data)?),
                        still_open => {
                            self.fragmented = still_open;
                            None
                        }
                    }
                }
            };
            let consumed = self.absorbed + frame_len;
            match message {
                Some(message) => {
                    self.absorbed = 0;
                    return Ok(Some((message, consumed)));
                }
                None => self.absorbed = consumed,
            }
        }
    }

    /// Checks sequencing and size rules; returns the payload length as a `usize`.
    fn check(&self, header: &FrameHeader) -> Result<usize, WsError> {
        let limit = if header.opcode.is_control() {
            if !header.fin {
                return Err(WsError::FragmentedControl);
            }
            if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::ControlTooLong);
            }
            MAX_CONTROL_PAYLOAD
        } else {
            match (header.opcode, &self.fragmented) {
                (OpCode::Continuation, None) => return Err(WsError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(WsError::ExpectedContinuation)
                }
                _ => {}
            }
            let buffered = self.fragmented.as_ref().map_or(0, |f| f.data.len());
            self.max_message_bytes.saturating_sub(buffered)
        };
        match usize::try_from(header.payload_len) {
            Ok(len) if len <= limit => Ok(len),
            _ => Err(WsError::TooBig),
        }
    }
}

fn data_message(text: bool, data: Vec<u8>) -> Result<Incoming, WsError> {
    if !text {
        return Ok(Incoming::Binary(data));
    }
    if std::str::from_utf8(&data).is_err() {
        return Err(WsError::InvalidUtf8);
    }
    Ok(Incoming::Text(data))
}

fn control_message(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Result<Incoming, WsError> {
    match opcode {
        OpCode::Ping => Ok(Incoming::Ping(unmasked(payload, mask))),
        OpCode::Close => close_message(unmasked(payload, mask)),
        _ => Ok(Incoming::Pong),
    }
}

fn close_message(payload: Vec<u8>) -> Result<Incoming, WsError> {
    let (code, reason) = match payload.as_slice() {
        [] => {
            return Ok(Incoming::Close {
                code: None,
                reason: String::new(),
            })
        }
        [_] => return Err(WsError::BadClosePayload),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    // RFC 6455 §7.4: codes a peer may send; 1004-1006 and 1015 are reserved for local use,
    // 1016-2999 for future protocol revisions.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(WsError::InvalidCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidCloseReason)?;
    Ok(Incoming::Close {
        code: Some(code),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TOpCode};
    use tungstenite::protocol::frame::FrameHeader as TFrameHeader;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn t_opcode(opcode: OpCode) -> TOpCode {
        match opcode {
            OpCode::Continuation => TOpCode::Data(Data::Continue),
            OpCode::Text => TOpCode::Data(Data::Text),
            OpCode::Binary => TOpCode::Data(Data::Binary),
            OpCode::Close => TOpCode::Control(Control::Close),
            OpCode::Ping => TOpCode::Control(Control::Ping),
            OpCode::Pong => TOpCode::Control(Control::Pong),
        }
    }

    /// A masked client frame, with the header written by tungstenite so the decoder is tested
    /// against an independent encoder.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = TFrameHeader {
            is_final: fin,
            opcode: t_opcode(opcode),
            mask: Some(MASK),
            ..TFrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let start = out.len();
        out.extend_from_slice(payload);
        for (i, byte) in out[start..].iter_mut().enumerate() {
            *byte ^= MASK[i % 4];
        }
        out
    }

    fn decode_all(decoder: &mut FrameDecoder, buf: &[u8]) -> Vec<Incoming> {
        let mut messages = Vec::new();
        let mut rest = buf;
        while let Some((message, consumed)) = decoder.decode(rest).unwrap() {
            messages.push(message);
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty(), "{} bytes left over", rest.len());
        messages
    }

    fn decode_err(buf: &[u8]) -> WsError {
        match FrameDecoder::new(1 << 20).decode(buf) {
            Err(err) => err,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Feeds a growing buffer one byte at a time, draining what is consumed, like a
    /// connection would, and collects every message.
    fn decode_bytewise(decoder: &mut FrameDecoder, stream: &[u8]) -> Vec<Incoming> {
        let mut buffer = Vec::new();
        let mut messages = Vec::new();
        for &byte in stream {
            buffer.push(byte);
            while let Some((message, consumed)) = decoder.decode(&buffer).unwrap() {
                messages.push(message);
                buffer.drain(..consumed);
            }
        }
        assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
        messages
    }

    #[test]
    fn encoded_headers_match_tungstenite_for_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 0xFFFF, 0x10000, 1 << 20] {
            let mut out = Vec::new();
            encode_header(OpCode::Binary, len, &mut out);
            assert_eq!(out.len(), header_len(len), "{len}");
            let mut cursor = Cursor::new(&out);
            let (header, parsed_len) = TFrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(parsed_len, len as u64);
            assert!(header.is_final);
            assert_eq!(header.mask, None);
            assert_eq!(header.opcode, TOpCode::Data(Data::Binary));
            assert_eq!(cursor.position() as usize, out.len());
        }
        let mut out = Vec::new();
        encode_header(OpCode::Text, 126, &mut out);
        assert_eq!(out, [0x81, 126, 0, 126]);
    }

    #[test]
    fn every_opcode_is_encoded() {
        for opcode in [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ] {
            let mut out = Vec::new();
            encode_header(opcode, 3, &mut out);
            let (header, _) = TFrameHeader::parse(&mut Cursor::new(&out))
                .unwrap()
                .unwrap();
            assert_eq!(header.opcode, t_opcode(opcode));
            assert_eq!(OpCode::from_bits(opcode.bits()), Some(opcode));
        }
    }

    #[test]
    fn text_frame_has_exact_capacity() {
        for len in [0, 5, 125, 126, 70_000] {
            let payload = vec![b'a'; len];
            let frame = text_frame(&payload);
            assert_eq!(frame.len(), frame.capacity(), "{len}");
            assert_eq!(frame.len(), header_len(len) + len);
            assert_eq!(frame[0], 0x81);
            assert!(frame.ends_with(&payload));
        }
    }

    #[test]
    fn ping_and_pong_frames_stay_valid_control_frames() {
        assert_eq!(ping_frame(b"hi"), [0x89, 2, b'h', b'i']);
        assert_eq!(pong_frame(b"hi"), [0x8A, 2, b'h', b'i']);
        let long = [b'x'; 200];
        let pong = pong_frame(&long);
        assert_eq!(pong[..2], [0x8A, 125]);
        assert_eq!(pong.len(), 127);
        assert_eq!(ping_frame(&long)[..2], [0x89, 125]);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        assert_eq!(
            close_frame(4000, "slow"),
            [0x88, 6, 0x0F, 0xA0, b's', b'l', b'o', b'w']
        );
        assert_eq!(close_frame(1000, ""), [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        // 122 ASCII bytes then a 2-byte char: it would end at byte 124 > 123, so it goes.
        let reason = format!("{}é tail", "a".repeat(122));
        let frame = close_frame(1008, &reason);
        assert_eq!(frame[1], 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        let exact = "b".repeat(123);
        assert_eq!(close_frame(1008, &exact)[1], 125);
        let multibyte = "€".repeat(60);
        let frame = close_frame(1008, &multibyte);
        assert_eq!(frame[1], 2 + 123);
        assert_eq!(std::str::from_utf8(&frame[4..]).unwrap(), "€".repeat(41));
    }

    #[test]
    fn decodes_masked_text_and_binary() {
        let mut stream = client_frame(OpCode::Text, true, "héllo".as_bytes());
        stream.extend(client_frame(OpCode::Binary, true, &[0, 255, 7]));
        stream.extend(client_frame(OpCode::Text, true, b""));
        let messages = decode_all(&mut FrameDecoder::new(1024), &stream);
        assert_eq!(
            messages,
            [
                Incoming::Text("héllo".as_bytes().to_vec()),
                Incoming::Binary(vec![0, 255, 7]),
                Incoming::Text(Vec::new()),
            ]
        );
    }

    #[test]
    fn frames_split_at_every_byte_for_each_length_form() {
        for len in [3usize, 125, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let stream = client_frame(OpCode::Binary, true, &payload);
            let mut decoder = FrameDecoder::new(1 << 20);
            for end in 0..stream.len() {
                assert_eq!(decoder.decode(&stream[..end]), Ok(None), "{len}: {end}");
            }
            assert_eq!(
                decoder.decode(&stream),
                Ok(Some((Incoming::Binary(payload), stream.len())))
            );
        }
    }

    fn fragmented_stream() -> Vec<u8> {
        // "€" is split across two fragments: only the reassembled message must be UTF-8.
        let euro = "€".as_bytes();
        let mut stream = client_frame(OpCode::Text, false, b"ab");
        stream.extend(client_frame(OpCode::Continuation, false, &euro[..1]));
        stream.extend(client_frame(OpCode::Ping, true, b"p"));
        stream.extend(client_frame(OpCode::Continuation, false, &euro[1..]));
        stream.extend(client_frame(OpCode::Pong, true, b"ignored"));
        stream.extend(client_frame(OpCode::Continuation, true, b"cd"));
        stream.extend(client_frame(OpCode::Binary, true, b"next"));
        stream
    }

    fn fragmented_expected() -> Vec<Incoming> {
        vec![
            Incoming::Ping(b"p".to_vec()),
            Incoming::Pong,
            Incoming::Text("ab€cd".as_bytes().to_vec()),
            Incoming::Binary(b"next".to_vec()),
        ]
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        let stream = fragmented_stream();
        let mut decoder = FrameDecoder::new(1024);
        let messages = decode_all(&mut decoder, &stream);
        assert_eq!(messages, fragmented_expected());
    }

    #[test]
    fn fragmented_message_split_at_every_byte() {
        let stream = fragmented_stream();
        let mut decoder = FrameDecoder::new(1024);
        assert_eq!(
            decode_bytewise(&mut decoder, &stream),
            fragmented_expected()
        );
    }

    #[test]
    fn consumed_covers_absorbed_fragments() {
        let first = client_frame(OpCode::Binary, false, b"12");
        let ping = client_frame(OpCode::Ping, true, b"");
        let mut stream = first.clone();
        stream.extend(&ping);
        let mut decoder = FrameDecoder::new(1024);
        assert_eq!(
            decoder.decode(&stream),
            Ok(Some((Incoming::Ping(Vec::new()), first.len() + ping.len())))
        );
        let last = client_frame(OpCode::Continuation, true, b"34");
        assert_eq!(
            decoder.decode(&last),
            Ok(Some((Incoming::Binary(b"1234".to_vec()), last.len())))
        );
    }

    #[test]
    fn absorbed_fragments_are_not_rescanned() {
        let first = client_frame(OpCode::Binary, false, b"12");
        let mut decoder = FrameDecoder::new(1024);
        assert_eq!(decoder.decode(&first), Ok(None));
        // The first fragment was copied out: garbage in its place must not matter.
        let mut stream = vec![0xFF; first.len()];
        let last = client_frame(OpCode::Continuation, true, b"34");
        stream.extend(&last);
        assert_eq!(
            decoder.decode(&stream),
            Ok(Some((Incoming::Binary(b"1234".to_vec()), stream.len())))
        );
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        for len in 0..40 {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = payload.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(fast, slow, "{len}");
        }
    }

    #[test]
    fn close_frames_are_decoded() {
        let mut decoder = FrameDecoder::new(1024);
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let mut stream = client_frame(OpCode::Close, true, &payload);
        stream.extend(client_frame(OpCode::Close, true, b""));
        assert_eq!(
            decode_all(&mut decoder, &stream),
            [
                Incoming::Close {
                    code: Some(1001),
                    reason: "bye ✓".to_owned()
                },
                Incoming::Close {
                    code: None,
                    reason: String::new()
                },
            ]
        );
    }

    #[test]
    fn close_codes_are_validated() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999,
        ] {
            let frame = client_frame(OpCode::Close, true, &code.to_be_bytes());
            let got = FrameDecoder::new(1024).decode(&frame);
            assert!(
                matches!(got, Ok(Some((Incoming::Close { code: Some(c), .. }, _))) if c == code),
                "{code}: {got:?}"
            );
        }
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let err = decode_err(&client_frame(OpCode::Close, true, &code.to_be_bytes()));
            assert_eq!(err, WsError::InvalidCloseCode(code));
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn one_byte_close_payload_is_a_protocol_error() {
        let err = decode_err(&client_frame(OpCode::Close, true, &[3]));
        assert_eq!((err, err.close_code()), (WsError::BadClosePayload, 1002));
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let err = decode_err(&client_frame(OpCode::Close, true, &[0x03, 0xE8, 0xC3]));
        assert_eq!((err, err.close_code()), (WsError::InvalidCloseReason, 1007));
    }

    #[test]
    fn unmasked_client_frame_is_rejected() {
        let err = decode_err(&text_frame(b"hi"));
        assert_eq!((err, err.close_code()), (WsError::Unmasked, 1002));
    }

    #[test]
    fn reserved_bits_are_rejected() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut frame = client_frame(OpCode::Text, true, b"hi");
            frame[0] |= bit;
            let err = decode_err(&frame);
            assert_eq!((err, err.close_code()), (WsError::ReservedBits, 1002));
        }
    }

    #[test]
    fn unknown_opcodes_are_rejected() {
        for op in [0x3u8, 0x7, 0xB, 0xF] {
            let err = decode_err(&[0x80 | op, 0x80]);
            assert_eq!((err, err.close_code()), (WsError::UnknownOpcode(op), 1002));
        }
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        let err = decode_err(&client_frame(OpCode::Ping, false, b""));
        assert_eq!((err, err.close_code()), (WsError::FragmentedControl, 1002));
        // Rejected from the header alone, without the 126 payload bytes.
        let header = &client_frame(OpCode::Ping, true, &[0; 126])[..8];
        let err = decode_err(header);
        assert_eq!((err, err.close_code()), (WsError::ControlTooLong, 1002));
        let max = client_frame(OpCode::Ping, true, &[1; 125]);
        assert_eq!(
            FrameDecoder::new(1024).decode(&max),
            Ok(Some((Incoming::Ping(vec![1; 125]), max.len())))
        );
    }

    #[test]
    fn continuation_without_a_message_is_rejected() {
        let err = decode_err(&client_frame(OpCode::Continuation, true, b"x"));
        assert_eq!(
            (err, err.close_code()),
            (WsError::UnexpectedContinuation, 1002)
        );
    }

    #[test]
    fn new_message_during_a_fragmented_one_is_rejected() {
        for opcode in [OpCode::Text, OpCode::Binary] {
            let mut stream = client_frame(OpCode::Text, false, b"a");
            stream.extend(client_frame(opcode, true, b"b"));
            let err = decode_err(&stream);
            assert_eq!(
                (err, err.close_code()),
                (WsError::ExpectedContinuation, 1002)
            );
        }
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_header() {
        let mut decoder = FrameDecoder::new(100);
        let header = &client_frame(OpCode::Binary, true, &[0; 101])[..8];
        assert_eq!(decoder.decode(header), Err(WsError::TooBig));
        assert_eq!(WsError::TooBig.close_code(), 1009);
        let exact = client_frame(OpCode::Binary, true, &[0; 100]);
        assert!(FrameDecoder::new(100).decode(&exact).unwrap().is_some());
        // A huge 64-bit length never reaches an allocation.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(FrameDecoder::new(100).decode(&huge), Err(WsError::TooBig));
    }

    #[test]
    fn oversized_reassembled_message_is_rejected() {
        let mut stream = client_frame(OpCode::Text, false, &[b'a'; 60]);
        stream.extend(client_frame(OpCode::Continuation, false, &[b'a'; 40]));
        stream.extend(&client_frame(OpCode::Continuation, true, &[b'a'; 1])[..6]);
        assert_eq!(FrameDecoder::new(100).decode(&stream), Err(WsError::TooBig));
        let mut fits = client_frame(OpCode::Text, false, &[b'a'; 60]);
        fits.extend(client_frame(OpCode::Continuation, true, &[b'a'; 40]));
        assert_eq!(
            FrameDecoder::new(100).decode(&fits),
            Ok(Some((Incoming::Text(vec![b'a'; 100]), fits.len())))
        );
    }

    #[test]
    fn length_with_the_high_bit_set_is_rejected() {
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let err = decode_err(&frame);
        assert_eq!((err, err.close_code()), (WsError::LengthOverflow, 1002));
    }

    #[test]
    fn invalid_utf8_text_is_rejected() {
        let err = decode_err(&client_frame(OpCode::Text, true, &[b'a', 0xFF]));
        assert_eq!((err, err.close_code()), (WsError::InvalidUtf8, 1007));
        let mut stream = client_frame(OpCode::Text, false, "€".as_bytes());
        stream.extend(client_frame(OpCode::Continuation, true, &[0xE2, 0x82]));
        assert_eq!(decode_err(&stream), WsError::InvalidUtf8);
        // Binary messages carry arbitrary bytes.
        let binary = client_frame(OpCode::Binary, true, &[0xFF]);
        assert!(FrameDecoder::new(8).decode(&binary).unwrap().is_some());
    }

    #[test]
    fn every_error_has_a_reason_that_fits_a_close_frame() {
        let errors = [
            WsError::Unmasked,
            WsError::ReservedBits,
            WsError::UnknownOpcode(3),
            WsError::FragmentedControl,
            WsError::ControlTooLong,
            WsError::UnexpectedContinuation,
            WsError::ExpectedContinuation,
            WsError::LengthOverflow,
            WsError::TooBig,
            WsError::InvalidUtf8,
            WsError::BadClosePayload,
            WsError::InvalidCloseCode(5),
            WsError::InvalidCloseReason,
        ];
        for err in errors {
            assert!(!err.reason().is_empty());
            assert!(err.reason().len() <= 123);
            assert!(err.to_string().contains(err.reason()));
            assert!(matches!(err.close_code(), 1002 | 1007 | 1009));
        }
        assert!(WsError::UnknownOpcode(0xB).to_string().ends_with("0xb"));
        assert!(WsError::InvalidCloseCode(999).to_string().ends_with("999"));
    }
}
