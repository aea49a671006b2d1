//! Minting the run's JWT from `--secret`: HS256 with the claims the relay checks.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    permissions: [&'a str; 2],
}

/// A read+write token valid for `valid_for` (the whole run and some margin).
pub fn mint(secret: &str, valid_for: Duration) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("the system clock is before 1970: {e}"))?
        .as_secs();
    let claims = Claims {
        sub: "pulsar-loadgen",
        iat: now,
        exp: now + valid_for.as_secs(),
        permissions: ["read", "write"],
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint a token: {e}"))
}
