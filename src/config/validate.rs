//! The checks that stop a bad value at start-up with its key named: ranges, values that
//! cannot work (a zero timer), combinations, and the token secret a listener needs.

use std::net::IpAddr;
use std::time::Duration;

use super::{AckMode, Backend, Config, ConfigError, ValkeyMode};

/// Placeholder secrets that were published as examples and so protect nothing: the
/// original relay's example settings (configs carried over from it must not go live with
/// it), and this project's documentation (`PULSAR_JWT_SECRET_KEY=...`).
pub(crate) const PLACEHOLDER_SECRETS: [&str; 2] =
    ["your-secret-key-here-change-in-production", "..."];

/// HS256 secrets shorter than this can be guessed offline from any token they signed.
pub const MIN_SECRET_BYTES: usize = 32;

const MAX_BULK_MESSAGES: usize = 100_000;

impl Config {
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

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
            (
                "delivery.sse_heartbeat_interval",
                self.delivery.sse_heartbeat_interval,
            ),
            ("delivery.sse_retry", self.delivery.sse_retry),
            ("limits.idempotency_window", self.limits.idempotency_window),
            ("limits.idempotency_wait", self.limits.idempotency_wait),
            ("storage.ack_timeout", self.storage.ack_timeout),
            // WAIT with a timeout of 0 blocks until the replicas answer, however long.
            ("storage.replica_timeout", self.storage.replica_timeout),
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
                "storage.max_pending_bytes",
                self.storage.max_pending_bytes == 0,
            ),
            (
                "storage.max_topic_records_per_shard",
                self.storage.max_topic_records_per_shard == 0,
            ),
            ("storage.min_replicas", self.storage.min_replicas == 0),
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
        self.validate_acks()?;
        self.validate_cluster()?;
        self.validate_valkey_nodes()?;
        self.validate_tls()?;
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
    fn validate_acks(&self) -> Result<(), ConfigError> {
        let mode = match self.storage.ack {
            Some(AckMode::Persisted) => "persisted",
            Some(AckMode::Replicated) => "replicated",
            _ => return Ok(()),
        };
        if self.storage.backend == Backend::Memory {
            return Err(ConfigError::at(
                "storage.ack",
                format!(
                    "`{mode}` needs storage.backend `valkey`; the memory backend persists nothing"
                ),
            ));
        }
        if mode == "replicated" && self.storage.replica_timeout >= self.storage.ack_timeout {
            return Err(ConfigError::at(
                "storage.replica_timeout",
                format!(
                    "must be shorter than storage.ack_timeout ({:?}), or a publish times out \
                     before its replicas are counted",
                    self.storage.ack_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Nodes agree on IDs, acknowledgements and tokens only through Valkey and shared
    /// settings: a node whose messages live in its own memory, or whose tokens only it can
    /// verify, would break the promise that any node serves any client.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if !self.cluster.enabled {
            return Ok(());
        }
        if self.storage.backend != Backend::Valkey {
            return Err(ConfigError::at(
                "cluster.enabled",
                "needs storage.backend `valkey`: the nodes share messages, positions and \
                 accounts only through Valkey",
            ));
        }
        if self.ack_mode() == AckMode::Memory {
            return Err(ConfigError::at(
                "storage.ack",
                "`memory` cannot be used with cluster.enabled: a message's ID is assigned by \
                 its Valkey stream, so nothing can be acknowledged before Valkey has it",
            ));
        }
        if self.jwt.algorithm == "HS256" && self.jwt.secret_key.is_empty() {
            return Err(ConfigError::at(
                "jwt.secret_key",
                "must be set with cluster.enabled: every node needs the same secret, or a \
                 token issued by one node is refused by the others",
            ));
        }
        Ok(())
    }

    /// Cluster seeds are `host:port`; a Cluster has only database 0.
    fn validate_valkey_nodes(&self) -> Result<(), ConfigError> {
        for node in &self.valkey.nodes {
            let port = node.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then(|| port.parse::<u16>().ok().filter(|&p| p != 0))?
            });
            if port.is_none() {
                return Err(ConfigError::at(
                    "valkey.nodes",
                    format!("`{node}` is not host:port (a port from 1 to 65535)"),
                ));
            }
        }
        if self.valkey.mode == ValkeyMode::Cluster && self.valkey.db != 0 {
            return Err(ConfigError::at(
                "valkey.db",
                "must be 0 in cluster mode: a Valkey Cluster has only database 0",
            ));
        }
        Ok(())
    }

    /// Certificate files come in pairs, and the Valkey TLS keys mean nothing without
    /// `valkey.use_tls`: a CA file that is silently ignored would look like encryption.
    /// Whether the files are good is checked when the relay loads them (`tls`).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let pairs = [
            (
                "server.tls_cert_file",
                &self.server.tls_cert_file,
                "server.tls_key_file",
                &self.server.tls_key_file,
            ),
            (
                "valkey.tls_cert_file",
                &self.valkey.tls_cert_file,
                "valkey.tls_key_file",
                &self.valkey.tls_key_file,
            ),
        ];
        for (cert_key, cert, key_key, key) in pairs {
            match (cert.is_empty(), key.is_empty()) {
                (false, true) => {
                    return Err(ConfigError::at(
                        key_key,
                        format!("is required with {cert_key}"),
                    ))
                }
                (true, false) => {
                    return Err(ConfigError::at(
                        cert_key,
                        format!("is required with {key_key}"),
                    ))
                }
                _ => {}
            }
        }
        let v = &self.valkey;
        if !v.use_tls {
            let set = [
                ("valkey.ca_path", &v.ca_path),
                ("valkey.tls_server_name", &v.tls_server_name),
                ("valkey.tls_cert_file", &v.tls_cert_file),
            ];
            if let Some((key, _)) = set.iter().find(|(_, value)| !value.is_empty()) {
                return Err(ConfigError::at(
                    *key,
                    "is set but valkey.use_tls is false, so it would be ignored and the link \
                     would run in clear text; set valkey.use_tls (PULSAR_VALKEY_USE_TLS=true) \
                     or remove it",
                ));
            }
        }
        Ok(())
    }

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
