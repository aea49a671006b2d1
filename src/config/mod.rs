//! Configuration: the YAML file and its sections (here), its `PULSAR_<SECTION>_<KEY>`
//! environment overrides ([`env`]), the checks that stop a bad value at start-up with its
//! key named ([`validate`]), and the duration and size syntax ([`units`]).
//!
//! This module owns `Config` and its sections, and `config.example.yaml` beside `Cargo.toml`
//! (a test keeps that file equal to the defaults). It only describes settings: binding,
//! connecting, generating secrets and minting tokens belong to the modules that act on them,
//! and it imports none of them. (Rules another module owns, such as what a username may
//! be, are checked by that module at start-up: `account::credentials`.)

mod env;
#[cfg(test)]
mod tests;
mod units;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use env::{apply_env, read_env, Override, SECTIONS};
pub use units::parse_duration;
pub use validate::MIN_SECRET_BYTES;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(deserialize_with = "section")]
    pub server: ServerConfig,
    #[serde(deserialize_with = "section")]
    pub valkey: ValkeyConfig,
    #[serde(deserialize_with = "section")]
    pub storage: StorageConfig,
    #[serde(deserialize_with = "section")]
    pub jwt: JwtConfig,
    #[serde(deserialize_with = "section")]
    pub limits: LimitsConfig,
    #[serde(deserialize_with = "section")]
    pub delivery: DeliveryConfig,
    #[serde(deserialize_with = "section")]
    pub accounts: AccountsConfig,
    #[serde(deserialize_with = "section")]
    pub bootstrap: BootstrapConfig,
    #[serde(deserialize_with = "section")]
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// 0 asks the OS for a free port (tests use it).
    pub http_port: u16,
    /// 0 = one shard per available CPU; see [`Config::shard_count`].
    pub shards: usize,
    /// Whether the relay's CPUs run other work too (shards float) or only the relay's
    /// (shard *i* pinned to CPU *i*).
    pub cores: Cores,
    /// Deadline for a whole request, head and body, counted from its first byte.
    #[serde(with = "units::duration")]
    pub read_timeout: Duration,
    #[serde(with = "units::duration")]
    pub write_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
    /// Empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// `GET /metrics` without a token; otherwise it needs the `admin` permission.
    pub metrics_public: bool,
    /// Whether topic names are shared by every token or scoped per token subject.
    pub topic_namespace: TopicNamespace,
    /// PEM certificate chain; with `tls_key_file` the listener speaks HTTPS/WSS only.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

/// Whom the CPUs the shards run on belong to, the Seastar/ScyllaDB `--overprovisioned`
/// choice. Neither spins while idle: measured on a shared 2-core host, spinning before
/// parking cost more CPU per message than it saved (issue #18).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cores {
    /// Other processes (clients, sidecars, a load generator, a laptop's desktop) use the
    /// same CPUs: shard threads are not pinned, so the kernel can run a shard next to the
    /// process it is waking instead of sending an interrupt to a fixed CPU.
    #[default]
    Shared,
    /// The CPUs are the relay's alone: shard *i* is pinned to the *i*-th CPU of the
    /// process's CPU set and stays next to its caches.
    Dedicated,
}

/// How bare topic names map to topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicNamespace {
    /// One topic per name, whoever publishes or subscribes.
    #[default]
    Global,
    /// Each token subject (user account) has its own topics, as in the original Python relay:
    /// `jobs` of one account and `jobs` of another are different topics.
    PerUser,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".to_owned(),
            http_port: 8080,
            shards: 0,
            cores: Cores::Shared,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            metrics_public: true,
            topic_namespace: TopicNamespace::Global,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValkeyConfig {
    /// One server, or a Valkey Cluster reached through seed nodes.
    pub mode: ValkeyMode,
    pub host: String,
    pub port: u16,
    /// Cluster seeds, `host:port` each; `host`/`port` is one more.
    pub nodes: Vec<String>,
    /// Empty = the default user.
    pub username: String,
    pub password: String,
    pub db: u32,
    /// Accepted so that configs written for the original relay still load; each shard keeps
    /// one pipelined connection of its own, so nothing reads it.
    pub pool_size: usize,
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    #[serde(with = "units::duration")]
    pub command_timeout: Duration,
    pub key_prefix: String,
    /// The original relay's switch and syntax (`PULSAR_VALKEY_USE_TLS=1`).
    #[serde(with = "units::flag")]
    pub use_tls: bool,
    /// PEM trust anchors for Valkey's certificate; empty = the system's CA bundle.
    pub ca_path: String,
    /// The name Valkey's certificate must be valid for; empty = `host`.
    pub tls_server_name: String,
    /// Client certificate and key for mutual TLS; empty = none.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for ValkeyConfig {
    fn default() -> Self {
        ValkeyConfig {
            mode: ValkeyMode::Standalone,
            host: "localhost".to_owned(),
            port: 6379,
            nodes: Vec::new(),
            username: String::new(),
            password: String::new(),
            db: 0,
            pool_size: 100,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            key_prefix: "pulsar".to_owned(),
            use_tls: false,
            ca_path: String::new(),
            tls_server_name: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

// Written by hand so that logging the configuration cannot leak the password.
impl fmt::Debug for ValkeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyConfig")
            .field("mode", &self.mode)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("use_tls", &self.use_tls)
            .field("ca_path", &self.ca_path)
            .field("tls_server_name", &self.tls_server_name)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// How the relay reaches Valkey.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValkeyMode {
    /// One server (a primary; replicas and failover are the operator's).
    #[default]
    Standalone,
    /// A Valkey Cluster: commands go to the primary of their key's hash slot.
    Cluster,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Memory,
    Valkey,
}

/// When a publish is acknowledged to its producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the persistent tier confirmed the write.
    Persisted,
    /// After the persistent tier confirmed the write and `WAIT` reported at least
    /// `storage.min_replicas` replicas have it.
    Replicated,
    /// Once the message is in the hot tier.
    Memory,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// `None` = persisted with Valkey, memory otherwise; see [`Config::ack_mode`].
    pub ack: Option<AckMode>,
    /// Longest a publish (or any request that waits for a write) waits for Valkey's
    /// confirmation before it is answered 503 `PERSIST_TIMEOUT`.
    #[serde(with = "units::duration")]
    pub ack_timeout: Duration,
    /// With `ack: replicated`: replicas that must have a write before it is acknowledged.
    pub min_replicas: u32,
    /// With `ack: replicated`: the timeout of each `WAIT`.
    #[serde(with = "units::duration")]
    pub replica_timeout: Duration,
    pub hot_tier_messages_per_topic: usize,
    /// Byte budget of the hot tier, per shard.
    #[serde(with = "units::size")]
    pub hot_tier_max_bytes: u64,
    pub max_messages_per_topic: u64,
    #[serde(with = "units::duration")]
    pub persistent_tier_retention: Duration,
    pub max_pending_writes: usize,
    /// Bytes of the writes waiting for Valkey (each holds its message), per shard.
    #[serde(with = "units::size")]
    pub max_pending_bytes: u64,
    /// With the memory backend: topic records created or changed through the Topics API
    /// that each shard keeps (they are never evicted).
    pub max_topic_records_per_shard: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Memory,
            ack: None,
            ack_timeout: Duration::from_secs(10),
            min_replicas: 1,
            replica_timeout: Duration::from_secs(2),
            hot_tier_messages_per_topic: 10_000,
            hot_tier_max_bytes: 256 << 20,
            max_messages_per_topic: 1_000_000,
            persistent_tier_retention: Duration::from_secs(24 * 3600),
            max_pending_writes: 100_000,
            max_pending_bytes: 64 << 20,
            max_topic_records_per_shard: 10_000,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Empty = none configured.
    pub secret_key: String,
    /// HS256, RS256 or ES256.
    pub algorithm: String,
    /// PEM public key for RS256/ES256.
    pub public_key_file: String,
    #[serde(with = "units::duration")]
    pub leeway: Duration,
    /// Empty = not checked.
    pub issuer: String,
    /// Empty = a token carrying an `aud` claim is refused.
    pub audience: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret_key: String::new(),
            algorithm: "HS256".to_owned(),
            public_key_file: String::new(),
            leeway: Duration::from_secs(30),
            issuer: String::new(),
            audience: String::new(),
        }
    }
}

// Written by hand so that logging the configuration cannot leak the signing secret.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret_key", &redacted(&self.secret_key))
            .field("algorithm", &self.algorithm)
            .field("public_key_file", &self.public_key_file)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(with = "units::size")]
    pub max_body_bytes: usize,
    #[serde(with = "units::size")]
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_bulk_messages: usize,
    pub max_topics_per_request: usize,
    #[serde(with = "units::size")]
    pub max_ws_message_bytes: usize,
    /// 0 = only the OS file limit.
    pub max_connections: usize,
    /// Open connections one source IP may hold; 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// WebSocket sessions one token subject may hold; 0 = unlimited.
    pub max_websockets_per_subject: u32,
    /// Messages per second one token subject may publish (per shard); 0 = unlimited.
    pub publish_rate: u64,
    /// Request-body bytes per second one token subject may publish (per shard); 0 = unlimited.
    #[serde(with = "units::size")]
    pub publish_bytes_rate: usize,
    /// Frames per second one WebSocket client may send; 0 = unlimited.
    pub ws_frame_rate: u64,
    /// Deepest JSON nesting accepted in a payload or metadata.
    pub max_json_depth: usize,
    /// How long a publish's `Idempotency-Key` keeps answering retries with the first answer.
    #[serde(with = "units::duration")]
    pub idempotency_window: Duration,
    /// How long a duplicate waits for the first request with its key before a 503.
    #[serde(with = "units::duration")]
    pub idempotency_wait: Duration,
    /// A publish that waited longer than this since it was read, or arrives while its
    /// shard's executor runs this late, is refused with 503 `OVERLOADED`; 0 = never.
    #[serde(with = "units::duration")]
    pub max_queue_delay: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_bulk_messages: 1000,
            max_topics_per_request: 100,
            max_ws_message_bytes: 1 << 20,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_websockets_per_subject: 0,
            publish_rate: 0,
            publish_bytes_rate: 0,
            ws_frame_rate: 200,
            max_json_depth: 64,
            idempotency_window: Duration::from_secs(600),
            idempotency_wait: Duration::from_secs(10),
            max_queue_delay: Duration::from_millis(200),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Per connection; a consumer that falls further behind is cut off.
    #[serde(with = "units::size")]
    pub max_outbound_bytes: usize,
    #[serde(with = "units::duration")]
    pub ws_ping_interval: Duration,
    /// A peer silent for this long is closed.
    #[serde(with = "units::duration")]
    pub ws_pong_timeout: Duration,
    #[serde(with = "units::duration")]
    pub max_poll_timeout: Duration,
    /// How often an idle Server-Sent Events stream gets a heartbeat comment.
    #[serde(with = "units::duration")]
    pub sse_heartbeat_interval: Duration,
    /// The `retry:` an SSE stream starts with: how long a client waits to reconnect.
    #[serde(with = "units::duration")]
    pub sse_retry: Duration,
    /// What happens to a WebSocket or SSE consumer over `max_outbound_bytes`.
    pub slow_consumer: SlowConsumer,
}

/// User accounts and the tokens `/auth/login` issues (the original relay's auth API).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Lifetime of access tokens from `/auth/login` and `/auth/token/refresh`.
    #[serde(with = "units::duration")]
    pub access_token_ttl: Duration,
    /// Lifetime of each refresh token from its issue; the token a refresh returns starts a
    /// fresh one, so only a chain left unused this long ends.
    #[serde(with = "units::duration")]
    pub refresh_token_ttl: Duration,
    /// `/auth/login` and `/auth/token/refresh` attempts per minute per client address and
    /// shard; 0 = unlimited.
    pub login_rate: u32,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            access_token_ttl: Duration::from_secs(600),
            refresh_token_ttl: Duration::from_secs(90 * 24 * 3600),
            login_rate: 5,
        }
    }
}

/// The administrator account created (or whose password is reset) at start-up; usually set
/// through `PULSAR_BOOTSTRAP_ADMIN_USERNAME` / `_PASSWORD` / `_EMAIL`, as for the original relay.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    pub admin_username: String,
    pub admin_password: String,
    pub admin_email: String,
}

impl fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("admin_username", &self.admin_username)
            .field("admin_password", &"<redacted>")
            .field("admin_email", &self.admin_email)
            .finish()
    }
}

/// Several relay nodes serving as one over a shared Valkey (README "Running several nodes").
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Message IDs come from Valkey and every publish is announced to the other nodes.
    pub enabled: bool,
}

/// What the relay does with a WebSocket consumer that falls `max_outbound_bytes` behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Close it with code 4000 (it can reconnect and resume with `since` / `client_id`).
    #[default]
    Disconnect,
    /// Drop its oldest queued messages and tell it with a `MESSAGES_DROPPED` error frame.
    DropOldest,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_outbound_bytes: 8 << 20,
            ws_ping_interval: Duration::from_secs(30),
            ws_pong_timeout: Duration::from_secs(60),
            max_poll_timeout: Duration::from_secs(60),
            sse_heartbeat_interval: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            slow_consumer: SlowConsumer::Disconnect,
        }
    }
}

/// A configuration problem. `key` is the dotted key (`server.http_port`), or the environment
/// variable when the problem is the variable itself; `None` for the file as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: Some(key.into()),
            message: message.into(),
        }
    }

    pub(crate) fn whole(message: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            message: message.into(),
        }
    }

    /// Names the environment variable of `env` that set the bad value, if one did (for
    /// checks made after loading).
    pub fn blame_env(self, env: &[(String, String)]) -> Self {
        match read_env(env.iter().cloned()) {
            Ok(overrides) => self.blame(&overrides),
            Err(_) => self,
        }
    }

    /// Names the environment variable when the bad value came from one, since the file then
    /// shows a different (overridden) value.
    pub(crate) fn blame(mut self, overrides: &[Override]) -> Self {
        if let Some(set) = overrides.iter().find(|o| self.key.as_ref() == Some(&o.key)) {
            self.message = format!("{} (from environment variable {})", self.message, set.var);
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "config error at `{key}`: {}", self.message),
            None => write!(f, "config error: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the YAML file (if given), then applies `PULSAR_*` environment overrides from
    /// `env`, then validates.
    ///
    /// Pass the process environment as
    /// `std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))`:
    /// `std::env::vars()` panics on a variable that is not UTF-8.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|err| {
                ConfigError::whole(format!("cannot read {}: {err}", path.display()))
            })?,
            None => String::new(),
        };
        Self::from_yaml(&text, env)
    }

    fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Straight from the text: a text key keeps its exact spelling (a YAML tree would turn
        // a secret of `0x1F` into 31), and an error keeps its line.
        let from_file = serde_yaml::from_str::<Option<Config>>(text)
            .map_err(|err| deserialize_error(&err, false))?
            .unwrap_or_default();
        let overrides = read_env(env)?;
        let config = if overrides.is_empty() {
            from_file
        } else {
            apply_env(&from_file, &overrides)?
        };
        config.validate().map_err(|err| err.blame(&overrides))?;
        Ok(config)
    }

    /// The number of shards to run: `server.shards`, or one per available CPU when it is 0.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn ack_mode(&self) -> AckMode {
        self.storage.ack.unwrap_or(match self.storage.backend {
            Backend::Valkey => AckMode::Persisted,
            Backend::Memory => AckMode::Memory,
        })
    }
}

/// Turns serde_yaml's message into a key and a message. serde_yaml 0.9 (final, deprecated)
/// exposes the path of a bad value only as a `path: ` prefix of its text; the paths here are
/// made of our section and key names, which tells such a prefix from message text.
/// `generated`: the YAML was written by [`apply_env`], so its line numbers mean nothing to
/// the user and are dropped.
pub(crate) fn deserialize_error(err: &serde_yaml::Error, generated: bool) -> ConfigError {
    let text = err.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) if generated && is_position(&text[at + " at line ".len()..]) => &text[..at],
        _ => text.as_str(),
    };
    let (path, message) = match text.split_once(": ") {
        Some((path, message)) if is_config_path(path) => (Some(path), message),
        _ => (None, text),
    };
    // serde names an unknown key in the message and reports it at its parent's path.
    let key = match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((field, _)) => Some(match path {
            Some(path) => format!("{path}.{field}"),
            None => field.to_owned(),
        }),
        None => path.map(str::to_owned),
    };
    let message = plain_expectation(key.as_deref(), message);
    ConfigError { key, message }
}

/// serde names the Rust type a number failed to fit (`expected u16`), which means nothing to
/// whoever edits the file; say what the key takes, keeping the position when there is one.
fn plain_expectation(key: Option<&str>, message: &str) -> String {
    let (body, position) = match message.rfind(" at line ") {
        Some(at) if is_position(&message[at + " at line ".len()..]) => message.split_at(at),
        _ => (message, ""),
    };
    let Some((found, rust_type)) = body.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let wanted = match (key, rust_type) {
        (Some("server.http_port"), _) => "a port number from 1 to 65535 (0 picks a free one)",
        (Some("valkey.port"), _) => "a port number from 1 to 65535",
        (_, "u16") => "a whole number from 0 to 65535",
        (_, "u32") => "a whole number from 0 to 4294967295",
        (_, "u64" | "usize") => "a whole number, 0 or more",
        _ => return message.to_owned(),
    };
    let found = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| found.strip_prefix(prefix))
        .unwrap_or(found);
    format!("expected {wanted}, got {found}{position}")
}

/// `12 column 5`
fn is_position(text: &str) -> bool {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once(" column ")
        .is_some_and(|(line, column)| all_digits(line) && all_digits(column))
}

/// `server`, `server.http_port`, `server.allowed_origins[0]`.
fn is_config_path(text: &str) -> bool {
    let section = text.split(['.', '[']).next().unwrap_or_default();
    SECTIONS.iter().any(|(name, _)| *name == section)
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.[]".contains(&b))
}

/// `server:` with nothing under it means the defaults, as a missing section does.
fn section<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
