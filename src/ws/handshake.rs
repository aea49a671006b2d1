//! The WebSocket opening handshake, server side (RFC 6455 §4.2): validating an upgrade
//! request's headers, computing `Sec-WebSocket-Accept`, and writing the 101 response.
//!
//! Owns: the handshake rules and bytes. The accept key comes from
//! `tungstenite::handshake::derive_accept_key`.
//! Must not touch: authentication or subprotocol choice (the route layer picks a protocol
//! from [`requested_protocols`] and checks tokens), sockets, or the HTTP request decoding
//! (it receives the already-decoded headers).

use std::fmt;

use crate::http::response::{error_body, push_header, Response};
use crate::http::Fields;

/// Why an upgrade request was refused. Every variant is answered with [`status`](Self::status)
/// and the headers in [`response`](Self::response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    NotGet,
    /// The upgrade request is HTTP/1.0: RFC 6455 §4.1 requires HTTP/1.1 or later.
    HttpVersion,
    /// No `Upgrade` header with the `websocket` token.
    MissingUpgrade,
    /// No `Connection` header with the `upgrade` token.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13; answered with 426 so the client learns
    /// which version to use (RFC 6455 §4.4).
    UnsupportedVersion,
    MissingKey,
    /// `Sec-WebSocket-Key` repeated, or not the base64 form of 16 bytes.
    InvalidKey,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::NotGet => "WS_METHOD_NOT_GET",
            HandshakeError::HttpVersion => "WS_HTTP_VERSION",
            HandshakeError::MissingUpgrade => "WS_MISSING_UPGRADE",
            HandshakeError::MissingConnectionUpgrade => "WS_MISSING_CONNECTION_UPGRADE",
            HandshakeError::UnsupportedVersion => "WS_UNSUPPORTED_VERSION",
            HandshakeError::MissingKey => "WS_MISSING_KEY",
            HandshakeError::InvalidKey => "WS_INVALID_KEY",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            HandshakeError::NotGet => "a WebSocket upgrade must use GET",
            HandshakeError::HttpVersion => "a WebSocket upgrade must use HTTP/1.1",
            HandshakeError::MissingUpgrade => "missing \"Upgrade: websocket\"",
            HandshakeError::MissingConnectionUpgrade => "missing \"Connection: upgrade\"",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::MissingKey => "missing Sec-WebSocket-Key",
            HandshakeError::InvalidKey => {
                "Sec-WebSocket-Key must appear once, as base64 of 16 bytes"
            }
        }
        .to_owned()
    }

    /// The complete error response: JSON error body, plus `Sec-WebSocket-Version: 13` on 426.
    pub fn response(&self) -> Response {
        let response = Response::json(self.status(), error_body(self.code(), &self.detail()));
        match self {
            HandshakeError::UnsupportedVersion => {
                response.with_header("Sec-WebSocket-Version", "13")
            }
            _ => response,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.detail())
    }
}

impl std::error::Error for HandshakeError {}

fn values<'a>(headers: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Whether any `name` header holds `token` in its comma-separated list.
fn has_token(headers: &Fields, name: &str, token: &str) -> bool {
    values(headers, name)
        .flat_map(|value| value.split(','))
        .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
}

/// Base64 (standard alphabet, padded) of exactly 16 bytes: 22 symbols then `==`. The last
/// symbol carries only 2 data bits, so its 4 low bits must be zero (one of `AQgw`).
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let [symbols @ .., last, b'=', b'='] = bytes else {
        return false;
    };
    symbols.len() == 21
        && symbols
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && matches!(last, b'A' | b'Q' | b'g' | b'w')
}

/// Validates an upgrade request (method GET over HTTP/1.1, `Upgrade: websocket`,
/// `Connection` with the `upgrade` token, `Sec-WebSocket-Version: 13`, one
/// `Sec-WebSocket-Key` that is base64 of 16 bytes) and returns the `Sec-WebSocket-Accept`
/// value.
pub fn accept(
    headers: &Fields,
    method_is_get: bool,
    http_version_minor: u8,
) -> Result<String, HandshakeError> {
    if !method_is_get {
        return Err(HandshakeError::NotGet);
    }
    if http_version_minor < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !has_token(headers, "upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, "connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    let mut versions = values(headers, "sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.trim_matches([' ', '\t']) == "13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let mut keys = values(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HandshakeError::MissingKey),
        (Some(key), None) => key.trim_matches([' ', '\t']),
        (Some(_), Some(_)) => return Err(HandshakeError::InvalidKey),
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::InvalidKey);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Every subprotocol the client offered, in order: all `Sec-WebSocket-Protocol` headers,
/// split on commas, trimmed, empty entries dropped.
pub fn requested_protocols(headers: &Fields) -> Vec<String> {
    values(headers, "sec-websocket-protocol")
        .flat_map(|value| value.split(','))
        .map(|p| p.trim_matches([' ', '\t']))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Appends the `101 Switching Protocols` response; `protocol` adds `Sec-WebSocket-Protocol`
/// (it must be one the client offered).
pub fn switching_protocols(accept_key: &str, protocol: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(out, "Sec-WebSocket-Accept", accept_key);
    if let Some(protocol) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", protocol);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from RFC 6455 §1.3.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn headers(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().copied().collect()
    }

    fn valid() -> Fields {
        headers(&[
            ("Host", "relay"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", KEY),
        ])
    }

    fn replace(name: &str, value: Option<&str>) -> Fields {
        let valid = valid();
        valid
            .iter()
            .filter(|(n, _)| *n != name)
            .chain(value.map(|v| (name, v)))
            .collect()
    }

    #[test]
    fn accepts_the_rfc_example() {
        assert_eq!(accept(&valid(), true, 1), Ok(ACCEPT.to_owned()));
    }

    #[test]
    fn tokens_are_case_insensitive_and_may_be_in_lists() {
        let h = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, UPGRADE"),
            ("sec-websocket-version", " 13"),
            ("sec-websocket-key", KEY),
        ]);
        assert_eq!(accept(&h, true, 1), Ok(ACCEPT.to_owned()));
        // Header names are matched case-insensitively too.
        let valid = valid();
        let upper: Vec<(String, &str)> = valid
            .iter()
            .map(|(n, v)| (n.to_ascii_uppercase(), v))
            .collect();
        let h: Fields = upper.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(accept(&h, true, 1), Ok(ACCEPT.to_owned()));
    }

    #[test]
    fn method_must_be_get() {
        let err = accept(&valid(), false, 1).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::NotGet, 400));
    }

    #[test]
    fn http_1_0_cannot_upgrade() {
        let err = accept(&valid(), true, 0).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::HttpVersion, 400));
        assert_eq!(err.code(), "WS_HTTP_VERSION");
    }

    #[test]
    fn upgrade_must_name_websocket() {
        for h in [replace("upgrade", None), replace("upgrade", Some("h2c"))] {
            let err = accept(&h, true, 1).unwrap_err();
            assert_eq!((err, err.status()), (HandshakeError::MissingUpgrade, 400));
        }
    }

    #[test]
    fn connection_must_carry_upgrade() {
        for h in [
            replace("connection", None),
            replace("connection", Some("keep-alive")),
            replace("connection", Some("upgraded")),
        ] {
            let err = accept(&h, true, 1).unwrap_err();
            assert_eq!(
                (err, err.status()),
                (HandshakeError::MissingConnectionUpgrade, 400)
            );
        }
    }

    #[test]
    fn version_must_be_13() {
        let mut twice = valid();
        twice.push("sec-websocket-version", "8");
        for h in [
            replace("sec-websocket-version", None),
            replace("sec-websocket-version", Some("8")),
            replace("sec-websocket-version", Some("13, 8")),
            twice,
        ] {
            let err = accept(&h, true, 1).unwrap_err();
            assert_eq!(
                (err, err.status()),
                (HandshakeError::UnsupportedVersion, 426)
            );
        }
    }

    #[test]
    fn key_must_be_present() {
        let err = accept(&replace("sec-websocket-key", None), true, 1).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::MissingKey, 400));
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        let bad = [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",     // unpadded
            "dGhlIHNhbXBsZSBub25jZQ=",    // short padding
            "dGhlIHNhbXBsZSBub25jZR==",   // non-zero trailing bits
            "dGhlIHNhbXBsZSBub25j*Q==",   // outside the alphabet
            "dGhlIHNhbXBsZSBub25jZSE=",   // 17 bytes
            "dGhlIHNhbXBsZSBub25jZQ==AA", // trailing data
            "dGhlIHNhbXBsZSBub25=ZQ==",   // padding inside
        ];
        for key in bad {
            let err = accept(&replace("sec-websocket-key", Some(key)), true, 1).unwrap_err();
            assert_eq!(
                (err, err.status()),
                (HandshakeError::InvalidKey, 400),
                "{key}"
            );
        }
        for key in [
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
            "+/+/+/+/+/+/+/+/+/+/+g==",
        ] {
            assert!(
                accept(&replace("sec-websocket-key", Some(key)), true, 1).is_ok(),
                "{key}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut h = valid();
        h.push("sec-websocket-key", KEY);
        assert_eq!(accept(&h, true, 1), Err(HandshakeError::InvalidKey));
    }

    #[test]
    fn requested_protocols_from_every_header() {
        let h = headers(&[
            ("Sec-WebSocket-Protocol", "bearer, bearer.abc.def"),
            ("Host", "x"),
            ("sec-websocket-protocol", " json ,, v2 "),
        ]);
        assert_eq!(
            requested_protocols(&h),
            ["bearer", "bearer.abc.def", "json", "v2"]
        );
        assert!(requested_protocols(&valid()).is_empty());
    }

    #[test]
    fn switching_protocols_response_bytes() {
        let mut out = Vec::new();
        switching_protocols(ACCEPT, None, &mut out);
        assert_eq!(
            out,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            )
            .as_bytes()
        );
        out.clear();
        switching_protocols(ACCEPT, Some("bearer"), &mut out);
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut slots);
        assert_eq!(
            parsed.parse(&out),
            Ok(httparse::Status::Complete(out.len()))
        );
        assert_eq!(parsed.code, Some(101));
        let protocol = parsed
            .headers
            .iter()
            .find(|h| h.name == "Sec-WebSocket-Protocol")
            .map(|h| h.value);
        assert_eq!(protocol, Some(&b"bearer"[..]));
    }

    #[test]
    fn error_responses() {
        let errors = [
            HandshakeError::NotGet,
            HandshakeError::MissingUpgrade,
            HandshakeError::MissingConnectionUpgrade,
            HandshakeError::UnsupportedVersion,
            HandshakeError::MissingKey,
            HandshakeError::InvalidKey,
        ];
        let mut codes: Vec<_> = errors.iter().map(HandshakeError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len(), "codes must be distinct");
        for err in errors {
            let response = err.response();
            assert_eq!(response.status, err.status());
            let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(body["code"], err.code());
            assert_eq!(body["detail"], err.detail());
            assert!(err.to_string().contains(err.code()));
            let version_header = response
                .headers
                .iter()
                .any(|(n, v)| *n == "Sec-WebSocket-Version" && v == "13");
            assert_eq!(version_header, err == HandshakeError::UnsupportedVersion);
        }
    }
}
