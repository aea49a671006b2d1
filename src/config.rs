//! Configuration: the YAML file, its `PULSAR_<SECTION>_<KEY>` environment overrides, the
//! duration and size syntax, and the checks that stop a bad value at start-up with its key
//! named.
//!
//! This module owns `Config` and its sections, and `config.example.yaml` beside `Cargo.toml`
//! (a test keeps that file equal to the defaults). It only describes settings: binding,
//! connecting, generating secrets and minting tokens belong to the modules that act on them,
//! and it must not reach into them.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

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
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// 0 asks the OS for a free port (tests use it).
    pub http_port: u16,
    /// 0 = one shard per available CPU; see [`Config::shard_count`].
    pub shards: usize,
    /// Deadline for a whole request, head and body, counted from its first byte.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// `GET /metrics` without a token; otherwise it needs the `admin` permission.
    pub metrics_public: bool,
    /// Whether topic names are shared by every token or scoped per token subject.
    pub topic_namespace: TopicNamespace,
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
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            metrics_public: true,
            topic_namespace: TopicNamespace::Global,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValkeyConfig {
    pub host: String,
    pub port: u16,
    /// Empty = the default user.
    pub username: String,
    pub password: String,
    pub db: u32,
    /// Accepted so that configs written for the original relay still load; each shard keeps
    /// one pipelined connection of its own, so nothing reads it.
    pub pool_size: usize,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    pub key_prefix: String,
}

impl Default for ValkeyConfig {
    fn default() -> Self {
        ValkeyConfig {
            host: "localhost".to_owned(),
            port: 6379,
            username: String::new(),
            password: String::new(),
            db: 0,
            pool_size: 100,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            key_prefix: "pulsar".to_owned(),
        }
    }
}

// Written by hand so that logging the configuration cannot leak the password.
impl fmt::Debug for ValkeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
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
    /// Once the message is in the hot tier.
    Memory,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// `None` = persisted with Valkey, memory otherwise; see [`Config::ack_mode`].
    pub ack: Option<AckMode>,
    pub hot_tier_messages_per_topic: usize,
    /// Byte budget of the hot tier, per shard.
    #[serde(with = "size")]
    pub hot_tier_max_bytes: u64,
    pub max_messages_per_topic: u64,
    #[serde(with = "duration")]
    pub persistent_tier_retention: Duration,
    pub max_pending_writes: usize,
    /// With the memory backend: topic records created or changed through the Topics API
    /// that each shard keeps (they are never evicted).
    pub max_topic_records_per_shard: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Memory,
            ack: None,
            hot_tier_messages_per_topic: 10_000,
            hot_tier_max_bytes: 256 << 20,
            max_messages_per_topic: 1_000_000,
            persistent_tier_retention: Duration::from_secs(24 * 3600),
            max_pending_writes: 100_000,
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
    #[serde(with = "duration")]
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
    #[serde(with = "size")]
    pub max_body_bytes: usize,
    #[serde(with = "size")]
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_bulk_messages: usize,
    pub max_topics_per_request: usize,
    #[serde(with = "size")]
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
    #[serde(with = "size")]
    pub publish_bytes_rate: usize,
    /// Frames per second one WebSocket client may send; 0 = unlimited.
    pub ws_frame_rate: u64,
    /// Deepest JSON nesting accepted in a payload or metadata.
    pub max_json_depth: usize,
    /// How long a publish's `Idempotency-Key` keeps answering retries with the first answer.
    #[serde(with = "duration")]
    pub idempotency_window: Duration,
    /// How long a duplicate waits for the first request with its key before a 503.
    #[serde(with = "duration")]
    pub idempotency_wait: Duration,
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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Per connection; a consumer that falls further behind is cut off.
    #[serde(with = "size")]
    pub max_outbound_bytes: usize,
    #[serde(with = "duration")]
    pub ws_ping_interval: Duration,
    /// A peer silent for this long is closed.
    #[serde(with = "duration")]
    pub ws_pong_timeout: Duration,
    #[serde(with = "duration")]
    pub max_poll_timeout: Duration,
    /// What happens to a WebSocket consumer over `max_outbound_bytes`.
    pub slow_consumer: SlowConsumer,
}

/// User accounts and the tokens `/auth/login` issues (the original relay's auth API).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Lifetime of access tokens from `/auth/login` and `/auth/token/refresh`.
    #[serde(with = "duration")]
    pub access_token_ttl: Duration,
    /// Lifetime of each refresh token from its issue; the token a refresh returns starts a
    /// fresh one, so only a chain left unused this long ends.
    #[serde(with = "duration")]
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

    fn whole(message: impl Into<String>) -> Self {
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
    fn blame(mut self, overrides: &[Override]) -> Self {
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

/// How an environment variable's text becomes a YAML value.
#[derive(Clone, Copy)]
enum EnvKind {
    /// Kept verbatim, so that `PULSAR_JWT_SECRET_KEY=12345` stays a string.
    Text,
    /// Comma-separated, since an environment variable cannot hold a YAML list comfortably.
    List,
    /// Read as a YAML scalar, as the same text would be in the file.
    Scalar,
}

use EnvKind::{List, Scalar, Text};

/// Every key, per section: an environment override needs its key's kind, and a variable
/// naming no key is answered with the keys there are. A test keeps this table equal to the
/// structs' fields and to `config.example.yaml`.
const SECTIONS: &[(&str, &[(&str, EnvKind)])] = &[
    (
        "server",
        &[
            ("host", Text),
            ("http_port", Scalar),
            ("shards", Scalar),
            ("read_timeout", Scalar),
            ("write_timeout", Scalar),
            ("idle_timeout", Scalar),
            ("shutdown_grace", Scalar),
            ("allowed_origins", List),
            ("metrics_public", Scalar),
            ("topic_namespace", Scalar),
        ],
    ),
    (
        "valkey",
        &[
            ("host", Text),
            ("port", Scalar),
            ("username", Text),
            ("password", Text),
            ("db", Scalar),
            ("pool_size", Scalar),
            ("connect_timeout", Scalar),
            ("command_timeout", Scalar),
            ("key_prefix", Text),
        ],
    ),
    (
        "storage",
        &[
            ("backend", Scalar),
            ("ack", Scalar),
            ("hot_tier_messages_per_topic", Scalar),
            ("hot_tier_max_bytes", Scalar),
            ("max_messages_per_topic", Scalar),
            ("persistent_tier_retention", Scalar),
            ("max_pending_writes", Scalar),
            ("max_topic_records_per_shard", Scalar),
        ],
    ),
    (
        "jwt",
        &[
            ("secret_key", Text),
            ("algorithm", Text),
            ("public_key_file", Text),
            ("leeway", Scalar),
            ("issuer", Text),
            ("audience", Text),
        ],
    ),
    (
        "limits",
        &[
            ("max_body_bytes", Scalar),
            ("max_header_bytes", Scalar),
            ("max_headers", Scalar),
            ("max_bulk_messages", Scalar),
            ("max_topics_per_request", Scalar),
            ("max_ws_message_bytes", Scalar),
            ("max_connections", Scalar),
            ("max_connections_per_ip", Scalar),
            ("max_websockets_per_subject", Scalar),
            ("publish_rate", Scalar),
            ("publish_bytes_rate", Scalar),
            ("ws_frame_rate", Scalar),
            ("max_json_depth", Scalar),
            ("idempotency_window", Scalar),
            ("idempotency_wait", Scalar),
        ],
    ),
    (
        "delivery",
        &[
            ("max_outbound_bytes", Scalar),
            ("ws_ping_interval", Scalar),
            ("ws_pong_timeout", Scalar),
            ("max_poll_timeout", Scalar),
            ("slow_consumer", Scalar),
        ],
    ),
    (
        "accounts",
        &[
            ("access_token_ttl", Scalar),
            ("refresh_token_ttl", Scalar),
            ("login_rate", Scalar),
        ],
    ),
    (
        "bootstrap",
        &[
            ("admin_username", Text),
            ("admin_password", Text),
            ("admin_email", Text),
        ],
    ),
];

/// A `PULSAR_<SECTION>_<KEY>` variable, checked against [`SECTIONS`].
struct Override {
    section: &'static str,
    name: &'static str,
    /// `section.name`, as error keys spell it.
    key: String,
    var: String,
    value: Value,
}

/// Placeholder secrets that were published as examples and so protect nothing: the
/// original relay's example settings (configs carried over from it must not go live with
/// it), and this project's documentation (`PULSAR_JWT_SECRET_KEY=...`).
const PLACEHOLDER_SECRETS: [&str; 2] = ["your-secret-key-here-change-in-production", "..."];

/// HS256 secrets shorter than this can be guessed offline from any token they signed.
pub const MIN_SECRET_BYTES: usize = 32;

const MAX_BULK_MESSAGES: usize = 100_000;

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

    /// Refuses a listener reachable from other hosts without a real token secret. Separate
    /// from [`Config::load`] because a loopback run with no secret is allowed: the binary
    /// generates a random one for it.
    pub fn check_bind_security(&self) -> Result<(), ConfigError> {
        let host = &self.server.host;
        // A public key has no secret to guess; `load` already checked it is configured.
        if is_loopback(host) || self.jwt.algorithm != "HS256" {
            return Ok(());
        }
        let secret = &self.jwt.secret_key;
        if secret.is_empty() {
            return Err(ConfigError::at(
                "jwt.secret_key",
                format!(
                    "must be set when server.host `{host}` is not a loopback address; \
                     the random development secret is for loopback runs only"
                ),
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::at(
                "jwt.secret_key",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes when server.host `{host}` is not \
                     a loopback address (it has {}): a short HS256 secret can be guessed \
                     offline from any token",
                    secret.len()
                ),
            ));
        }
        Ok(())
    }

    /// A warning for an HS256 secret too short to resist an offline guess, for the runs
    /// that may still use one: loopback (see [`Config::check_bind_security`]) and `token`.
    pub fn weak_secret_warning(&self) -> Option<String> {
        let len = self.jwt.secret_key.len();
        (self.jwt.algorithm == "HS256" && len > 0 && len < MIN_SECRET_BYTES).then(|| {
            format!(
                "WARNING: jwt.secret_key is only {len} byte{} long; anyone holding a token \
                 can guess a secret this short offline and then forge tokens. Use \
                 {MIN_SECRET_BYTES} bytes or more, e.g. \
                 PULSAR_JWT_SECRET_KEY=\"$(head -c 32 /dev/urandom | base64)\" (a relay \
                 listening beyond loopback refuses it)",
                if len == 1 { "" } else { "s" }
            )
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::at("server.host", "must not be empty"));
        }
        // Zero here would spin a timer or close every connection at once.
        let timers = [
            ("server.read_timeout", self.server.read_timeout),
            ("server.write_timeout", self.server.write_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("valkey.connect_timeout", self.valkey.connect_timeout),
            ("valkey.command_timeout", self.valkey.command_timeout),
            (
                "storage.persistent_tier_retention",
                self.storage.persistent_tier_retention,
            ),
            ("delivery.ws_ping_interval", self.delivery.ws_ping_interval),
            ("delivery.ws_pong_timeout", self.delivery.ws_pong_timeout),
            ("limits.idempotency_window", self.limits.idempotency_window),
            ("limits.idempotency_wait", self.limits.idempotency_wait),
        ];
        if let Some((key, _)) = timers.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::at(*key, "must be longer than zero"));
        }
        // Zero here would refuse every request or message rather than mean "unlimited".
        let counts = [
            ("valkey.port", self.valkey.port == 0),
            (
                "storage.hot_tier_messages_per_topic",
                self.storage.hot_tier_messages_per_topic == 0,
            ),
            (
                "storage.hot_tier_max_bytes",
                self.storage.hot_tier_max_bytes == 0,
            ),
            (
                "storage.max_messages_per_topic",
                self.storage.max_messages_per_topic == 0,
            ),
            (
                "storage.max_pending_writes",
                self.storage.max_pending_writes == 0,
            ),
            (
                "storage.max_topic_records_per_shard",
                self.storage.max_topic_records_per_shard == 0,
            ),
            ("limits.max_body_bytes", self.limits.max_body_bytes == 0),
            ("limits.max_header_bytes", self.limits.max_header_bytes == 0),
            ("limits.max_headers", self.limits.max_headers == 0),
            (
                "limits.max_topics_per_request",
                self.limits.max_topics_per_request == 0,
            ),
            (
                "limits.max_ws_message_bytes",
                self.limits.max_ws_message_bytes == 0,
            ),
            (
                "delivery.max_outbound_bytes",
                self.delivery.max_outbound_bytes == 0,
            ),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::at(*key, "must be at least 1"));
        }
        if !(1..=MAX_BULK_MESSAGES).contains(&self.limits.max_bulk_messages) {
            return Err(ConfigError::at(
                "limits.max_bulk_messages",
                format!(
                    "must be between 1 and {MAX_BULK_MESSAGES} (it is {})",
                    self.limits.max_bulk_messages
                ),
            ));
        }
        if self.delivery.ws_pong_timeout <= self.delivery.ws_ping_interval {
            return Err(ConfigError::at(
                "delivery.ws_pong_timeout",
                format!(
                    "must be longer than delivery.ws_ping_interval ({:?}), or a peer that \
                     answers every ping is still cut off between two pings",
                    self.delivery.ws_ping_interval
                ),
            ));
        }
        self.validate_accounts()?;
        if self.storage.ack == Some(AckMode::Persisted) && self.storage.backend == Backend::Memory {
            return Err(ConfigError::at(
                "storage.ack",
                "`persisted` needs storage.backend `valkey`; the memory backend persists nothing",
            ));
        }
        match self.jwt.algorithm.as_str() {
            "HS256" if PLACEHOLDER_SECRETS.contains(&self.jwt.secret_key.as_str()) => {
                Err(ConfigError::at(
                    "jwt.secret_key",
                    format!(
                        "`{}` is a published placeholder, not a secret; set one of your own, \
                         e.g. PULSAR_JWT_SECRET_KEY=\"$(head -c 32 /dev/urandom | base64)\"",
                        self.jwt.secret_key
                    ),
                ))
            }
            "HS256" => Ok(()),
            "RS256" | "ES256" if self.jwt.public_key_file.is_empty() => Err(ConfigError::at(
                "jwt.public_key_file",
                format!(
                    "must name a PEM public key file when jwt.algorithm is {}",
                    self.jwt.algorithm
                ),
            )),
            "RS256" | "ES256" => Ok(()),
            other => Err(ConfigError::at(
                "jwt.algorithm",
                format!("unsupported algorithm `{other}`; expected HS256, RS256 or ES256"),
            )),
        }
    }
}

impl Config {
    fn validate_accounts(&self) -> Result<(), ConfigError> {
        if self.accounts.access_token_ttl < Duration::from_secs(60) {
            return Err(ConfigError::at(
                "accounts.access_token_ttl",
                "must be at least 1m (the Python client renews tokens with less than 5 minutes left)",
            ));
        }
        if self.accounts.refresh_token_ttl < self.accounts.access_token_ttl {
            return Err(ConfigError::at(
                "accounts.refresh_token_ttl",
                "must be at least accounts.access_token_ttl",
            ));
        }
        let b = &self.bootstrap;
        match (b.admin_username.is_empty(), b.admin_password.is_empty()) {
            (true, true) => return Ok(()),
            (false, true) => {
                return Err(ConfigError::at(
                    "bootstrap.admin_password",
                    "is required with bootstrap.admin_username (PULSAR_BOOTSTRAP_ADMIN_PASSWORD)",
                ))
            }
            (true, false) => {
                return Err(ConfigError::at(
                    "bootstrap.admin_username",
                    "is required with bootstrap.admin_password (PULSAR_BOOTSTRAP_ADMIN_USERNAME)",
                ))
            }
            (false, false) => {}
        }
        // What the name and the password must be is the accounts' rule
        // (`account::credentials::check_bootstrap`, run at start-up).
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads the `PULSAR_<SECTION>_<KEY>` variables. Those whose section is not one of ours
/// belong to someone else (`PULSAR_LOG`, the original relay's `PULSAR_RATE_LIMIT_STORAGE_URI`) and are skipped.
fn read_env(env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Override>, ConfigError> {
    let mut overrides: Vec<Override> = Vec::new();
    for (var, raw) in env {
        let lower = var.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("pulsar_") else {
            continue;
        };
        let (section_name, key_name) = rest.split_once('_').unwrap_or((rest, ""));
        let Some(&(section, keys)) = SECTIONS.iter().find(|(name, _)| *name == section_name) else {
            continue;
        };
        let Some(&(name, kind)) = keys.iter().find(|(name, _)| *name == key_name) else {
            let names: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
            let what = if key_name.is_empty() {
                "names no key".to_owned()
            } else {
                format!("names unknown key `{key_name}`")
            };
            return Err(ConfigError::at(
                var,
                format!(
                    "{what} in section `{section}`; its keys are {}",
                    names.join(", ")
                ),
            ));
        };
        let key = format!("{section}.{name}");
        if let Some(earlier) = overrides.iter().find(|o| o.key == key) {
            return Err(ConfigError::at(
                var,
                format!("sets `{key}`, which {} sets too", earlier.var),
            ));
        }
        let value = match kind {
            Text => Value::String(raw),
            List => Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            ),
            Scalar => scalar(raw),
        };
        overrides.push(Override {
            section,
            name,
            key,
            var,
            value,
        });
    }
    Ok(overrides)
}

/// Applies `overrides` on top of `config`. Going through YAML text rather than deserializing
/// the tree is what makes serde_yaml report the path of a bad value, which names the key.
fn apply_env(config: &Config, overrides: &[Override]) -> Result<Config, ConfigError> {
    let unexpected = |err: serde_yaml::Error| ConfigError::whole(err.to_string());
    let mut tree = serde_yaml::to_value(config).map_err(unexpected)?;
    for o in overrides {
        // A serialized `Config` is a mapping of section mappings, so this indexing cannot
        // panic.
        tree[o.section][o.name] = o.value.clone();
    }
    let text = serde_yaml::to_string(&tree).map_err(unexpected)?;
    serde_yaml::from_str(&text).map_err(|err| deserialize_error(&err, true).blame(overrides))
}

/// Reads `raw` as a YAML scalar; anything else (a list, a mapping, broken YAML) stays text so
/// that the key's own type reports it.
fn scalar(raw: String) -> Value {
    match serde_yaml::from_str::<Value>(&raw) {
        Ok(value @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => value,
        _ => Value::String(raw),
    }
}

/// Turns serde_yaml's message into a key and a message. serde_yaml 0.9 (final, deprecated)
/// exposes the path of a bad value only as a `path: ` prefix of its text; the paths here are
/// made of our section and key names, which tells such a prefix from message text.
/// `generated`: the YAML was written by [`apply_env`], so its line numbers mean nothing to
/// the user and are dropped.
fn deserialize_error(err: &serde_yaml::Error, generated: bool) -> ConfigError {
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

/// `serde(with)` for durations: `500ms`, `30s`, `5m`, `24h`, `1d`, or a bare integer meaning
/// seconds. Written back as milliseconds, which is exact for anything parsed.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 30s, 5m, 24h, 1d, or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {secs}: must not be negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            super::parse_duration(text).map_err(E::custom)
        }
    }
}

/// Parses the duration syntax of the config file (`500ms`, `30s`, `5m`, `24h`, `1d`, or a
/// bare number of seconds), for other inputs that should read the same way.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = split_number(text).and_then(|(number, unit)| {
        let secs_per_unit = match unit {
            "ms" => return Some(Duration::from_millis(number)),
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        number.checked_mul(secs_per_unit).map(Duration::from_secs)
    });
    parsed.ok_or_else(|| {
        format!(
            "invalid duration `{text}`: expected a whole number with a unit of ms, s, m, h or d \
             (500ms, 30s, 5m, 24h, 1d), or a bare number of seconds"
        )
    })
}

/// `serde(with)` for byte sizes: an integer, or one with a unit of B, KB, MB, GB (powers of
/// 1000) or KiB, MiB, GiB (powers of 1024). Written back as a plain integer.
mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let bytes = deserializer.deserialize_any(SizeVisitor)?;
        T::try_from(bytes)
            .map_err(|_| de::Error::custom(format!("size {bytes} is too large for this platform")))
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as 65536, 64KiB, 1MiB, 2GiB or 10MB")
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes)
                .map_err(|_| E::custom(format!("invalid size {bytes}: must not be negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            super::parse_size(text).ok_or_else(|| {
                E::custom(format!(
                    "invalid size `{text}`: expected a whole number of bytes, optionally with a \
                     unit of B, KB, MB, GB, KiB, MiB or GiB (64KiB, 1MiB, 10MB)"
                ))
            })
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Splits `30s` into `(30, "s")`; `None` without leading digits or when they overflow.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..end].parse().ok()?;
    Some((number, text[end..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.yaml");

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Vec::new())
    }

    fn from_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml("", env(vars))
    }

    fn key_of(result: Result<Config, ConfigError>) -> String {
        let err = result.expect_err("expected a config error");
        err.key
            .unwrap_or_else(|| panic!("error names no key: {}", err.message))
    }

    #[test]
    fn example_file_equals_defaults() {
        assert_eq!(from_yaml(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn example_file_loads_from_disk() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
        assert_eq!(
            Config::load(Some(&path), Vec::new()).unwrap(),
            Config::default()
        );
    }

    /// The field names serde expects, read from its message about an unknown key.
    fn expected_fields(yaml: &str) -> Vec<String> {
        let err = from_yaml(yaml).unwrap_err();
        let (_, list) = err
            .message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("unexpected message: {}", err.message));
        let list = list.split(" at line ").next().unwrap_or_default();
        list.split(", ")
            .map(|name| name.trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn key_table_matches_structs_and_example() {
        let example: Value = serde_yaml::from_str(EXAMPLE).unwrap();
        let example = example.as_mapping().unwrap();
        let example_sections: Vec<&str> = example.keys().filter_map(Value::as_str).collect();
        let table_sections: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(example_sections, table_sections);
        assert_eq!(expected_fields("zz_not_a_section: 1\n"), table_sections);
        for (section, keys) in SECTIONS {
            let table_keys: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
            assert_eq!(
                expected_fields(&format!("{section}:\n  zz_not_a_key: 1\n")),
                table_keys,
                "struct of `{section}`"
            );
            let documented: Vec<&str> = example[*section]
                .as_mapping()
                .unwrap()
                .keys()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                documented, table_keys,
                "config.example.yaml section `{section}`"
            );
        }
    }

    #[test]
    fn empty_and_comment_only_files_are_defaults() {
        assert_eq!(from_yaml("").unwrap(), Config::default());
        assert_eq!(from_yaml("# nothing\n").unwrap(), Config::default());
        assert_eq!(Config::load(None, Vec::new()).unwrap(), Config::default());
    }

    #[test]
    fn empty_section_is_defaults() {
        assert_eq!(from_yaml("server:\n").unwrap(), Config::default());
    }

    #[test]
    fn file_values_are_read() {
        let config = from_yaml(
            "server:\n  host: 0.0.0.0\n  http_port: 9000\n  allowed_origins: [https://a.example]\n\
             storage:\n  backend: valkey\n  hot_tier_max_bytes: 64KiB\n\
             delivery:\n  ws_ping_interval: 500ms\n  ws_pong_timeout: 1d\n",
        )
        .unwrap();
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.server.http_port, 9000);
        assert_eq!(config.server.allowed_origins, vec!["https://a.example"]);
        assert_eq!(config.storage.backend, Backend::Valkey);
        assert_eq!(config.storage.hot_tier_max_bytes, 64 * 1024);
        assert_eq!(config.delivery.ws_ping_interval, Duration::from_millis(500));
        assert_eq!(config.delivery.ws_pong_timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn text_keys_keep_their_exact_spelling() {
        let yaml = "valkey:\n  password: 0x1F\njwt:\n  secret_key: 1234567890123456789012345678901234567890\n  issuer: 1.50\n";
        for vars in [&[][..], &[("PULSAR_SERVER_HTTP_PORT", "9000")][..]] {
            let config = Config::from_yaml(yaml, env(vars)).unwrap();
            assert_eq!(config.valkey.password, "0x1F", "{vars:?}");
            assert_eq!(
                config.jwt.secret_key, "1234567890123456789012345678901234567890",
                "{vars:?}"
            );
            assert_eq!(config.jwt.issuer, "1.50", "{vars:?}");
        }
    }

    #[test]
    fn file_values_survive_an_env_override() {
        let yaml = "server:\n  allowed_origins: [https://a.example]\n  shutdown_grace: 1500ms\n\
                    storage:\n  backend: valkey\n  ack: memory\n  hot_tier_max_bytes: 3MiB\n";
        let plain = Config::from_yaml(yaml, Vec::new()).unwrap();
        let overridden =
            Config::from_yaml(yaml, env(&[("PULSAR_SERVER_HTTP_PORT", "8080")])).unwrap();
        assert_eq!(plain, overridden);
        assert_eq!(plain.server.shutdown_grace, Duration::from_millis(1500));
    }

    #[test]
    fn seed_readme_layout_loads() {
        let config = from_yaml(
            "server:\n  http_port: 8080\n  read_timeout: 30s\n  write_timeout: 30s\n\
             valkey:\n  host: localhost\n  port: 6379\n  password: \"\"\n  db: 0\n  pool_size: 100\n\
             storage:\n  persistent_tier_retention: 24h\n  max_messages_per_topic: 1000000\n",
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err =
            Config::load(Some(Path::new("/nonexistent/pulsar.yaml")), Vec::new()).unwrap_err();
        assert_eq!(err.key, None);
        assert!(err.message.contains("/nonexistent/pulsar.yaml"), "{err}");
    }

    #[test]
    fn syntax_error_keeps_its_line() {
        let err = from_yaml("server:\n  host: a\n\tport: 1\n").unwrap_err();
        assert_eq!(err.key, None);
        assert!(err.message.contains("line 3"), "{err}");
    }

    #[test]
    fn non_mapping_file_is_an_error() {
        let err = from_yaml("- a\n- b\n").unwrap_err();
        assert_eq!(err.key, None);
        assert!(err.message.contains("invalid type: sequence"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = from_yaml("server:\n  htp_port: 1\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.htp_port"));
        assert!(err.message.contains("unknown field `htp_port`"), "{err}");
        assert!(err.message.ends_with(" at line 2 column 3"), "{err}");
        assert_eq!(
            err.to_string(),
            format!("config error at `server.htp_port`: {}", err.message)
        );
    }

    #[test]
    fn unknown_section_names_the_section() {
        assert_eq!(key_of(from_yaml("auth:\n  secret_key: x\n")), "auth");
    }

    #[test]
    fn wrong_type_names_the_key() {
        assert_eq!(
            key_of(from_yaml("server:\n  http_port: 70000\n")),
            "server.http_port"
        );
        assert_eq!(
            key_of(from_yaml("server:\n  allowed_origins: nope\n")),
            "server.allowed_origins"
        );
        assert_eq!(
            key_of(from_yaml("storage:\n  backend: redis\n")),
            "storage.backend"
        );
        assert_eq!(
            key_of(from_yaml("storage:\n  ack: sometimes\n")),
            "storage.ack"
        );
        assert_eq!(key_of(from_yaml("server: 5\n")), "server");
    }

    #[test]
    fn durations_parse() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
            ("1d", Duration::from_secs(86_400)),
            ("45", Duration::from_secs(45)),
            ("\"45\"", Duration::from_secs(45)),
            ("0", Duration::ZERO),
        ];
        for (text, expected) in cases {
            let config = from_yaml(&format!("server:\n  shutdown_grace: {text}\n")).unwrap();
            assert_eq!(config.server.shutdown_grace, expected, "{text}");
        }
    }

    #[test]
    fn parse_duration_is_public_and_strict() {
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        let err = parse_duration("2 weeks").unwrap_err();
        assert!(err.contains("invalid duration `2 weeks`"), "{err}");
    }

    #[test]
    fn bad_durations_name_the_key() {
        for text in [
            "30x",
            "1.5s",
            "-3",
            "s",
            "\"\"",
            "30 seconds",
            "99999999999999999999s",
            "999999999999999999d",
            "[1]",
        ] {
            let err = from_yaml(&format!("server:\n  read_timeout: {text}\n")).unwrap_err();
            assert_eq!(
                err.key.as_deref(),
                Some("server.read_timeout"),
                "{text}: {err}"
            );
        }
        let err = from_yaml("server:\n  read_timeout: 30x\n").unwrap_err();
        assert!(err.message.contains("invalid duration `30x`"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        let cases = [
            ("2048", 2048),
            ("64KiB", 64 << 10),
            ("1MiB", 1 << 20),
            ("2GiB", 2 << 30),
            ("10MB", 10_000_000),
            ("3KB", 3000),
            ("1GB", 1_000_000_000),
            ("512B", 512),
        ];
        for (text, expected) in cases {
            let config = from_yaml(&format!("limits:\n  max_body_bytes: {text}\n")).unwrap();
            assert_eq!(config.limits.max_body_bytes, expected, "{text}");
        }
    }

    #[test]
    fn bad_sizes_name_the_key() {
        for text in [
            "1.5MiB",
            "10mb",
            "-1",
            "MiB",
            "1TiB",
            "99999999999GiB",
            "lots",
        ] {
            let err = from_yaml(&format!("delivery:\n  max_outbound_bytes: {text}\n")).unwrap_err();
            assert_eq!(
                err.key.as_deref(),
                Some("delivery.max_outbound_bytes"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn env_overrides_each_kind() {
        let config = from_env(&[
            ("PULSAR_SERVER_HOST", "0.0.0.0"),
            ("PULSAR_SERVER_HTTP_PORT", "9001"),
            ("PULSAR_SERVER_SHARDS", "3"),
            ("PULSAR_SERVER_READ_TIMEOUT", "5m"),
            ("PULSAR_SERVER_IDLE_TIMEOUT", "7"),
            (
                "PULSAR_SERVER_ALLOWED_ORIGINS",
                "https://a.example, https://b.example,",
            ),
            ("PULSAR_VALKEY_DB", "4"),
            ("PULSAR_VALKEY_PASSWORD", "007"),
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_STORAGE_ACK", "memory"),
            ("PULSAR_STORAGE_HOT_TIER_MAX_BYTES", "2GiB"),
            ("PULSAR_STORAGE_MAX_MESSAGES_PER_TOPIC", "123"),
            ("PULSAR_JWT_SECRET_KEY", "12345"),
            ("PULSAR_JWT_LEEWAY", "0"),
            ("PULSAR_LIMITS_MAX_BODY_BYTES", "64KiB"),
            ("PULSAR_DELIVERY_WS_PONG_TIMEOUT", "2m"),
        ])
        .unwrap();
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.server.http_port, 9001);
        assert_eq!(config.server.shards, 3);
        assert_eq!(config.server.read_timeout, Duration::from_secs(300));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(7));
        assert_eq!(
            config.server.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(config.valkey.db, 4);
        assert_eq!(config.valkey.password, "007");
        assert_eq!(config.storage.backend, Backend::Valkey);
        assert_eq!(config.storage.ack, Some(AckMode::Memory));
        assert_eq!(config.storage.hot_tier_max_bytes, 2 << 30);
        assert_eq!(config.storage.max_messages_per_topic, 123);
        assert_eq!(config.jwt.secret_key, "12345");
        assert_eq!(config.jwt.leeway, Duration::ZERO);
        assert_eq!(config.limits.max_body_bytes, 64 << 10);
        assert_eq!(config.delivery.ws_pong_timeout, Duration::from_secs(120));
    }

    #[test]
    fn every_text_key_keeps_env_text_verbatim() {
        for (section, keys) in SECTIONS {
            for (key, kind) in *keys {
                // `algorithm` is a text key too, but validation allows only three names.
                if !matches!(kind, Text) || *key == "algorithm" {
                    continue;
                }
                let var = format!("PULSAR_{section}_{key}").to_ascii_uppercase();
                // Long enough for a bootstrap password, short enough for a username.
                let text = "0x1F-0x1F";
                let mut env = vec![(var, text.to_owned())];
                // The bootstrap name and password go together.
                if *section == "bootstrap" {
                    for partner in ["admin_username", "admin_password"] {
                        if partner != *key {
                            let var = format!("PULSAR_BOOTSTRAP_{partner}").to_ascii_uppercase();
                            env.push((var, "partner-value".to_owned()));
                        }
                    }
                }
                let config = Config::from_yaml("", env)
                    .unwrap_or_else(|err| panic!("{section}.{key}: {err}"));
                let tree = serde_yaml::to_value(&config).unwrap();
                assert_eq!(tree[*section][*key], Value::from(text), "{section}.{key}");
            }
        }
    }

    #[test]
    fn env_wins_over_file_and_section_case_is_ignored() {
        let config = Config::from_yaml(
            "server:\n  http_port: 1000\n",
            env(&[("pulsar_Server_HTTP_PORT", "2000")]),
        )
        .unwrap();
        assert_eq!(config.server.http_port, 2000);
    }

    #[test]
    fn env_empty_list_and_unset_ack() {
        let config = Config::from_yaml(
            "server:\n  allowed_origins: [https://a.example]\nstorage:\n  ack: memory\n",
            env(&[
                ("PULSAR_SERVER_ALLOWED_ORIGINS", ""),
                ("PULSAR_STORAGE_ACK", ""),
            ]),
        )
        .unwrap();
        assert!(config.server.allowed_origins.is_empty());
        assert_eq!(config.storage.ack, None);
    }

    #[test]
    fn env_unknown_key_names_the_variable() {
        let err = from_env(&[("PULSAR_SERVER_HTTP_PROT", "1")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("PULSAR_SERVER_HTTP_PROT"));
        assert!(err.message.contains("`http_prot`"), "{err}");
        assert!(err.message.contains("http_port"), "{err}");
        let err = from_env(&[("PULSAR_JWT", "x")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("PULSAR_JWT"));
    }

    #[test]
    fn bootstrap_admin_comes_from_the_original_relays_variables() {
        let config = from_env(&[
            ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
            ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "s3cret-pass"),
            ("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user"),
        ])
        .unwrap();
        assert_eq!(config.bootstrap.admin_username, "admin");
        assert_eq!(config.bootstrap.admin_password, "s3cret-pass");
        assert_eq!(config.server.topic_namespace, TopicNamespace::PerUser);
        assert!(!format!("{config:?}").contains("s3cret-pass"));
    }

    #[test]
    fn env_outside_our_sections_is_ignored() {
        let config = from_env(&[
            ("PULSAR_RATE_LIMIT_STORAGE_URI", "memory://"),
            ("PULSAR_LOG", "debug"),
            ("PULSAR", "x"),
            ("HOME", "/root"),
            ("SERVER_HTTP_PORT", "1"),
        ])
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn env_bad_value_names_key_and_variable() {
        let err = from_env(&[("PULSAR_SERVER_HTTP_PORT", "eighty")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.http_port"));
        assert!(err.message.contains("PULSAR_SERVER_HTTP_PORT"), "{err}");
        // The position would be in generated text, so it is left out.
        assert!(!err.message.contains("line"), "{err}");
        let err = from_env(&[("PULSAR_DELIVERY_MAX_POLL_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("delivery.max_poll_timeout"));
        assert!(err.message.contains("invalid duration `soon`"), "{err}");
        assert!(
            err.message.contains("PULSAR_DELIVERY_MAX_POLL_TIMEOUT"),
            "{err}"
        );
        let err = from_env(&[("PULSAR_LIMITS_MAX_BODY_BYTES", "0")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("limits.max_body_bytes"));
        assert!(
            err.message.contains("PULSAR_LIMITS_MAX_BODY_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn numbers_out_of_range_say_what_the_key_takes() {
        for port in ["notaport", "70000", "-1", "80.5"] {
            let err = from_env(&[("PULSAR_SERVER_HTTP_PORT", port)]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("server.http_port"));
            assert!(
                err.message.contains("a port number from 1 to 65535"),
                "{port}: {err}"
            );
            assert!(!err.message.contains("u16"), "{port}: {err}");
        }
        let err = from_yaml("valkey:\n  port: 70000\n").unwrap_err();
        assert_eq!(
            err.message,
            "expected a port number from 1 to 65535, got integer `70000` at line 2 column 9"
        );
        let err = from_env(&[("PULSAR_SERVER_SHARDS", "many")]).unwrap_err();
        assert!(err.message.contains("a whole number, 0 or more"), "{err}");
        assert!(!err.message.contains("usize"), "{err}");
        let err = from_env(&[("PULSAR_VALKEY_DB", "-2")]).unwrap_err();
        assert!(err.message.contains("a whole number from 0 to"), "{err}");
    }

    #[test]
    fn env_set_twice_is_an_error() {
        let err =
            from_env(&[("PULSAR_SERVER_HOST", "a"), ("pulsar_server_host", "b")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("pulsar_server_host"));
        assert!(err.message.contains("PULSAR_SERVER_HOST"), "{err}");
    }

    #[test]
    fn env_into_a_scalar_section_is_an_error() {
        let err =
            Config::from_yaml("server: 5\n", env(&[("PULSAR_SERVER_HOST", "a")])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server"));
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("limits:\n  max_body_bytes: 0\n", "limits.max_body_bytes"),
            (
                "storage:\n  hot_tier_messages_per_topic: 0\n",
                "storage.hot_tier_messages_per_topic",
            ),
            (
                "limits:\n  max_bulk_messages: 0\n",
                "limits.max_bulk_messages",
            ),
            (
                "limits:\n  max_bulk_messages: 100001\n",
                "limits.max_bulk_messages",
            ),
            ("jwt:\n  algorithm: HS512\n", "jwt.algorithm"),
            ("jwt:\n  algorithm: none\n", "jwt.algorithm"),
            ("jwt:\n  algorithm: RS256\n", "jwt.public_key_file"),
            ("jwt:\n  algorithm: ES256\n", "jwt.public_key_file"),
            ("server:\n  host: \"\"\n", "server.host"),
            ("server:\n  read_timeout: 0\n", "server.read_timeout"),
            ("valkey:\n  port: 0\n", "valkey.port"),
            (
                "delivery:\n  ws_ping_interval: 0s\n",
                "delivery.ws_ping_interval",
            ),
            (
                "delivery:\n  ws_pong_timeout: 30s\n",
                "delivery.ws_pong_timeout",
            ),
            ("storage:\n  ack: persisted\n", "storage.ack"),
        ];
        for (yaml, key) in cases {
            assert_eq!(key_of(from_yaml(yaml)), key, "{yaml}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_cannot_work() {
        let keys = [
            "server.read_timeout",
            "server.write_timeout",
            "server.idle_timeout",
            "valkey.port",
            "valkey.connect_timeout",
            "valkey.command_timeout",
            "storage.hot_tier_messages_per_topic",
            "storage.hot_tier_max_bytes",
            "storage.max_messages_per_topic",
            "storage.persistent_tier_retention",
            "storage.max_pending_writes",
            "storage.max_topic_records_per_shard",
            "limits.max_body_bytes",
            "limits.max_header_bytes",
            "limits.max_headers",
            "limits.max_bulk_messages",
            "limits.max_topics_per_request",
            "limits.max_ws_message_bytes",
            "delivery.max_outbound_bytes",
            "delivery.ws_ping_interval",
            "delivery.ws_pong_timeout",
        ];
        for key in keys {
            let (section, name) = key.split_once('.').unwrap();
            let yaml = format!("{section}:\n  {name}: 0\n");
            assert_eq!(key_of(from_yaml(&yaml)), key);
        }
        // Zero means "none" or "automatic" here.
        let yaml = "server:\n  http_port: 0\n  shards: 0\n  shutdown_grace: 0\n\
                    valkey:\n  db: 0\n  pool_size: 0\n\
                    jwt:\n  leeway: 0\n\
                    limits:\n  max_connections: 0\n\
                    delivery:\n  max_poll_timeout: 0\n";
        assert!(from_yaml(yaml).is_ok());
    }

    #[test]
    fn validation_accepts_the_edges() {
        let config = from_yaml(
            "server:\n  http_port: 0\nlimits:\n  max_body_bytes: 1\n  max_bulk_messages: 100000\n\
             jwt:\n  algorithm: RS256\n  public_key_file: /etc/pulsar/jwt.pub\n",
        )
        .unwrap();
        assert_eq!(config.server.http_port, 0);
        assert_eq!(config.limits.max_bulk_messages, 100_000);
    }

    #[test]
    fn ack_mode_follows_backend() {
        assert_eq!(Config::default().ack_mode(), AckMode::Memory);
        let valkey = from_yaml("storage:\n  backend: valkey\n").unwrap();
        assert_eq!(valkey.ack_mode(), AckMode::Persisted);
        let explicit = from_yaml("storage:\n  backend: valkey\n  ack: memory\n").unwrap();
        assert_eq!(explicit.ack_mode(), AckMode::Memory);
    }

    #[test]
    fn shard_count_resolves_zero() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::default().shard_count(), cpus);
        let fixed = from_yaml("server:\n  shards: 3\n").unwrap();
        assert_eq!(fixed.shard_count(), 3);
    }

    fn bind(host: &str, secret: &str) -> Result<(), ConfigError> {
        let mut config = Config::default();
        config.server.host = host.to_owned();
        config.jwt.secret_key = secret.to_owned();
        config.check_bind_security()
    }

    #[test]
    fn bind_security() {
        let strong = "0123456789abcdef0123456789abcdef";
        for loopback in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert_eq!(bind(loopback, ""), Ok(()), "{loopback}");
            assert_eq!(bind(loopback, "short"), Ok(()), "{loopback}");
        }
        for public in ["0.0.0.0", "::", "10.0.0.1", "relay.example.com"] {
            assert_eq!(bind(public, strong), Ok(()), "{public}");
            for weak in ["", "short", &strong[1..]] {
                let err = bind(public, weak).unwrap_err();
                assert_eq!(
                    err.key.as_deref(),
                    Some("jwt.secret_key"),
                    "{public} {weak}"
                );
            }
        }
        let mut public_key = Config::default();
        public_key.server.host = "0.0.0.0".to_owned();
        public_key.jwt.algorithm = "ES256".to_owned();
        public_key.jwt.public_key_file = "/etc/pulsar/jwt.pub".to_owned();
        assert_eq!(public_key.check_bind_security(), Ok(()));
    }

    #[test]
    fn published_placeholder_secrets_are_refused_wherever_the_relay_listens() {
        for placeholder in PLACEHOLDER_SECRETS {
            for host in ["127.0.0.1", "0.0.0.0"] {
                let err = from_env(&[
                    ("PULSAR_JWT_SECRET_KEY", placeholder),
                    ("PULSAR_SERVER_HOST", host),
                ])
                .unwrap_err();
                assert_eq!(err.key.as_deref(), Some("jwt.secret_key"), "{err}");
                assert!(err.message.contains("placeholder"), "{err}");
            }
        }
        // Only the whole secret: one that merely contains the dots is the user's own.
        assert!(from_env(&[("PULSAR_JWT_SECRET_KEY", "....")]).is_ok());
    }

    #[test]
    fn short_secrets_get_a_warning() {
        let warning = |secret: &str| {
            let mut config = Config::default();
            config.jwt.secret_key = secret.to_owned();
            config.weak_secret_warning()
        };
        let five = warning("12345").expect("a 5-byte secret is weak");
        assert!(
            five.contains("only 5 bytes") && five.contains("32 bytes"),
            "{five}"
        );
        assert!(warning(&"k".repeat(31)).is_some());
        assert_eq!(warning(&"k".repeat(32)), None);
        // No secret (a random one is made) and public-key algorithms have nothing to warn of.
        assert_eq!(warning(""), None);
        let mut es256 = Config::default();
        es256.jwt.algorithm = "ES256".to_owned();
        es256.jwt.secret_key = "short".to_owned();
        assert_eq!(es256.weak_secret_warning(), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let config = from_env(&[
            ("PULSAR_JWT_SECRET_KEY", "hunter2-jwt"),
            ("PULSAR_VALKEY_PASSWORD", "hunter2-valkey"),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn error_without_key_displays_plainly() {
        let err = ConfigError::whole("boom");
        assert_eq!(err.to_string(), "config error: boom");
    }
}
