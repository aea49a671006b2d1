//! Shared by the `ws_frame` and `publish_json` targets with `mod client_frame;`.

/// Turns an unmasked server frame (as the relay's encoders write it) into the masked client
/// frame carrying the same payload, so the relay's decoder can read it back.
pub fn masked(server_frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert_eq!(server_frame[1] & 0x80, 0, "server frames are unmasked");
    let header_len = match server_frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = server_frame[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        server_frame[header_len..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    out
}
