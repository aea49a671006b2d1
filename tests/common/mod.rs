//! Shared harness for the integration tests: a real relay process on an ephemeral port
//! ([`relay`]), a small HTTP/1.1 client over `std::net::TcpStream` ([`http`]), a WebSocket
//! client with tungstenite ([`ws`]), a Server-Sent Events client ([`sse`]), a headless
//! Chromium driven over the DevTools protocol ([`browser`]), a real valkey-server per test
//! ([`valkey`]) or a real 6-node Valkey Cluster ([`valkey_cluster`]), several relay nodes in
//! cluster mode ([`nodes`]), TLS certificates,
//! clients and a TLS redis-server ([`tls`]), and the tokens, topics and waiting every test
//! file uses (here).
//!
//! Every test spawns its own relay (`PULSAR_SERVER_HTTP_PORT=0`, two shards), so tests can
//! run in parallel. Nothing is mocked: bytes go through the kernel to the real binary.

// Each test crate uses a different subset of the helpers.
#![allow(dead_code)]

mod browser;
mod health;
mod http;
mod nodes;
mod relay;
mod sse;
mod tls;
mod valkey;
mod valkey_cluster;
mod ws;

use std::thread;
use std::time::{Duration, Instant};

use pulsar_relay::auth::{Authenticator, Permissions};
use serde_json::{json, Value};

// Only the browser suite drives Chromium.
#[allow(unused_imports)]
pub use browser::*;
// Only the attack and fault suites measure health.
#[allow(unused_imports)]
pub use health::*;
pub use http::*;
// Only the cluster-mode suites run several nodes.
#[allow(unused_imports)]
pub use nodes::*;
pub use relay::*;
// Only the SSE and browser suites read event streams.
#[allow(unused_imports)]
pub use sse::*;
pub use tls::*;
pub use valkey::*;
// Only the cluster suite starts a cluster.
#[allow(unused_imports)]
pub use valkey_cluster::*;
pub use ws::*;

/// The HS256 secret every test relay is started with (32+ bytes).
pub const SECRET: &str = "pulsar-relay-integration-test-secret-0123456789abcdef";

/// Generous timeout for anything the relay should answer "at once".
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pulsar-relay");

/// The number of shards every test relay runs.
pub const SHARDS: usize = 2;

/// Polls `check` every 20 ms until it returns true; false once `timeout` passed. What
/// travels between shards or to Valkey (a released slot, a confirmed write, a gauge) shows
/// a moment after the request that caused it; tests wait for it here, never with a sleep.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Tokens and topics
// ---------------------------------------------------------------------------------------

pub fn token(sub: &str, perms: Permissions) -> String {
    Authenticator::from_secret(SECRET.as_bytes())
        .mint(sub, perms, Duration::from_secs(3600))
        .expect("mint")
}

/// An HS256 token for `sub` with `permissions`, valid for an hour, plus `extra` claims
/// (`topics`, `jti`, ...).
pub fn token_with(sub: &str, permissions: &[&str], extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "sub": sub,
        "permissions": permissions,
        "iat": now,
        "exp": now + 3600,
    });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            claims[k] = v;
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Subject "tester" with read and write.
pub fn rw_token() -> String {
    token("tester", Permissions::READ | Permissions::WRITE)
}

pub fn read_token() -> String {
    token("reader", Permissions::READ)
}

pub fn write_token() -> String {
    token("writer", Permissions::WRITE)
}

/// An HS256 token signed with the test secret whose `exp` is an hour ago (beyond any
/// leeway).
pub fn expired_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "tester",
        "permissions": ["read", "write"],
        "iat": now - 7200,
        "exp": now - 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A valid-looking token signed with another secret.
pub fn foreign_token() -> String {
    Authenticator::from_secret(b"another-secret-another-secret-another-secret")
        .mint(
            "tester",
            Permissions::READ | Permissions::WRITE,
            Duration::from_secs(3600),
        )
        .unwrap()
}

/// A topic name starting with `prefix` that `owner_of` assigns to `shard`.
pub fn topic_on(prefix: &str, shard: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|t| pulsar_relay::topic::owner_of(t, SHARDS) == shard)
        .expect("some topic hashes to every shard")
}

/// One topic per shard: `[owned by shard 0, owned by shard 1]`.
pub fn topics_on_each_shard(prefix: &str) -> Vec<String> {
    (0..SHARDS).map(|s| topic_on(prefix, s)).collect()
}

/// Parses `<ms>-<seq>` for ordering comparisons.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("message id {id:?} is not <ms>-<seq>"));
    (
        ms.parse().unwrap_or_else(|_| panic!("bad ms in {id:?}")),
        seq.parse().unwrap_or_else(|_| panic!("bad seq in {id:?}")),
    )
}

pub fn id_of(v: &Value) -> &str {
    v["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message_id in {v}"))
}
