//! Cutting a stream into pieces for the incremental-decoding checks (shared by the
//! `http_request` and `ws_frame` targets with `mod split;`; not a target itself).

/// Two cut points read from four input bytes, clamped to `len` and sorted.
pub fn cuts(bytes: [u8; 4], len: usize) -> [usize; 2] {
    let a = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % (len + 1);
    let b = usize::from(u16::from_le_bytes([bytes[2], bytes[3]])) % (len + 1);
    [a.min(b), a.max(b)]
}

/// `stream` cut into three pieces (some may be empty) at `cuts`.
pub fn pieces(stream: &[u8], [a, b]: [usize; 2]) -> [&[u8]; 3] {
    [&stream[..a], &stream[a..b], &stream[b..]]
}

/// Streams up to this long are also fed one byte at a time (every split point at once).
pub const BYTEWISE_MAX: usize = 256;
