//! Environment overrides: every `PULSAR_<SECTION>_<KEY>` variable, the kind of text each
//! key takes, and how the overrides are laid over the file's values (so that a bad value
//! still names its key, and the variable it came from).

use serde_yaml::Value;

use super::{deserialize_error, Config, ConfigError};

/// How an environment variable's text becomes a YAML value.
#[derive(Clone, Copy)]
pub(crate) enum EnvKind {
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
pub(crate) const SECTIONS: &[(&str, &[(&str, EnvKind)])] = &[
    (
        "server",
        &[
            ("host", Text),
            ("http_port", Scalar),
            ("shards", Scalar),
            ("cores", Scalar),
            ("read_timeout", Scalar),
            ("write_timeout", Scalar),
            ("idle_timeout", Scalar),
            ("shutdown_grace", Scalar),
            ("allowed_origins", List),
            ("metrics_public", Scalar),
            ("topic_namespace", Scalar),
            ("tls_cert_file", Text),
            ("tls_key_file", Text),
        ],
    ),
    (
        "valkey",
        &[
            ("mode", Scalar),
            ("host", Text),
            ("port", Scalar),
            ("nodes", List),
            ("username", Text),
            ("password", Text),
            ("db", Scalar),
            ("pool_size", Scalar),
            ("connect_timeout", Scalar),
            ("command_timeout", Scalar),
            ("key_prefix", Text),
            ("use_tls", Scalar),
            ("ca_path", Text),
            ("tls_server_name", Text),
            ("tls_cert_file", Text),
            ("tls_key_file", Text),
        ],
    ),
    (
        "storage",
        &[
            ("backend", Scalar),
            ("ack", Scalar),
            ("ack_timeout", Scalar),
            ("min_replicas", Scalar),
            ("replica_timeout", Scalar),
            ("hot_tier_messages_per_topic", Scalar),
            ("hot_tier_max_bytes", Scalar),
            ("max_messages_per_topic", Scalar),
            ("persistent_tier_retention", Scalar),
            ("max_pending_writes", Scalar),
            ("max_pending_bytes", Scalar),
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
            ("max_queue_delay", Scalar),
        ],
    ),
    (
        "delivery",
        &[
            ("max_outbound_bytes", Scalar),
            ("ws_ping_interval", Scalar),
            ("ws_pong_timeout", Scalar),
            ("max_poll_timeout", Scalar),
            ("sse_heartbeat_interval", Scalar),
            ("sse_retry", Scalar),
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
    ("cluster", &[("enabled", Scalar)]),
];

/// A `PULSAR_<SECTION>_<KEY>` variable, checked against [`SECTIONS`].
pub(crate) struct Override {
    section: &'static str,
    name: &'static str,
    /// `section.name`, as error keys spell it.
    pub(crate) key: String,
    pub(crate) var: String,
    value: Value,
}

/// Reads the `PULSAR_<SECTION>_<KEY>` variables. Those whose section is not one of ours
/// belong to someone else (`PULSAR_LOG`, the original relay's `PULSAR_RATE_LIMIT_STORAGE_URI`) and are skipped.
pub(crate) fn read_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
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
pub(crate) fn apply_env(config: &Config, overrides: &[Override]) -> Result<Config, ConfigError> {
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
