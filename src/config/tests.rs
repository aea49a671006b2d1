//! The configuration's tests: the file, the environment, the units and the checks, against
//! `config.example.yaml` too.

use super::env::EnvKind::Text;
use super::validate::PLACEHOLDER_SECRETS;
use super::*;
use serde_yaml::Value;

const EXAMPLE: &str = include_str!("../../config.example.yaml");

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
    // serde says "expected `a`" for a struct of one field, "expected one of …" otherwise.
    let (_, list) = err
        .message
        .split_once("expected one of ")
        .or_else(|| err.message.split_once("expected "))
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
    let overridden = Config::from_yaml(yaml, env(&[("PULSAR_SERVER_HTTP_PORT", "8080")])).unwrap();
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
    let err = Config::load(Some(Path::new("/nonexistent/pulsar.yaml")), Vec::new()).unwrap_err();
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
            // So do a certificate and its key, and the Valkey TLS keys need TLS on.
            for (partner, value) in [
                ("tls_cert_file", "partner.pem"),
                ("tls_key_file", "partner.pem"),
            ] {
                if key.starts_with("tls_") && partner != *key {
                    let var = format!("PULSAR_{section}_{partner}").to_ascii_uppercase();
                    env.push((var, value.to_owned()));
                }
            }
            if *section == "valkey" {
                env.push(("PULSAR_VALKEY_USE_TLS".to_owned(), "true".to_owned()));
            }
            let config =
                Config::from_yaml("", env).unwrap_or_else(|err| panic!("{section}.{key}: {err}"));
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
fn cores_default_to_shared_and_take_dedicated() {
    assert_eq!(Config::default().server.cores, Cores::Shared);
    let config = from_env(&[("PULSAR_SERVER_CORES", "dedicated")]).unwrap();
    assert_eq!(config.server.cores, Cores::Dedicated);
    let err = from_env(&[("PULSAR_SERVER_CORES", "isolated")]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("server.cores"));
    assert!(
        err.message.contains("shared") && err.message.contains("dedicated"),
        "{err}"
    );
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
    let err = from_env(&[("PULSAR_SERVER_HOST", "a"), ("pulsar_server_host", "b")]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("pulsar_server_host"));
    assert!(err.message.contains("PULSAR_SERVER_HOST"), "{err}");
}

#[test]
fn env_into_a_scalar_section_is_an_error() {
    let err = Config::from_yaml("server: 5\n", env(&[("PULSAR_SERVER_HOST", "a")])).unwrap_err();
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
        ("storage:\n  ack: replicated\n", "storage.ack"),
        (
            "storage:\n  backend: valkey\n  ack: replicated\n  ack_timeout: 2s\n  \
             replica_timeout: 2s\n",
            "storage.replica_timeout",
        ),
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
        "storage.max_pending_bytes",
        "storage.max_topic_records_per_shard",
        "storage.ack_timeout",
        "storage.min_replicas",
        "storage.replica_timeout",
        "limits.max_body_bytes",
        "limits.max_header_bytes",
        "limits.max_headers",
        "limits.max_bulk_messages",
        "limits.max_topics_per_request",
        "limits.max_ws_message_bytes",
        "delivery.max_outbound_bytes",
        "delivery.ws_ping_interval",
        "delivery.ws_pong_timeout",
        "delivery.sse_heartbeat_interval",
        "delivery.sse_retry",
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
    let replicated = from_env(&[
        ("PULSAR_STORAGE_BACKEND", "valkey"),
        ("PULSAR_STORAGE_ACK", "replicated"),
        ("PULSAR_STORAGE_MIN_REPLICAS", "2"),
        ("PULSAR_STORAGE_REPLICA_TIMEOUT", "500ms"),
        ("PULSAR_STORAGE_ACK_TIMEOUT", "3s"),
    ])
    .unwrap();
    assert_eq!(replicated.ack_mode(), AckMode::Replicated);
    assert_eq!(replicated.storage.min_replicas, 2);
    assert_eq!(
        replicated.storage.replica_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(replicated.storage.ack_timeout, Duration::from_secs(3));
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

#[test]
fn valkey_cluster_mode_and_seeds_from_env() {
    let config = from_env(&[
        ("PULSAR_VALKEY_MODE", "cluster"),
        ("PULSAR_VALKEY_NODES", "10.0.0.1:7000, 10.0.0.2:7001"),
    ])
    .unwrap();
    assert_eq!(config.valkey.mode, super::ValkeyMode::Cluster);
    assert_eq!(config.valkey.nodes, ["10.0.0.1:7000", "10.0.0.2:7001"]);
    assert_eq!(
        from_yaml("").unwrap().valkey.mode,
        super::ValkeyMode::Standalone
    );
    for bad in ["10.0.0.1", "10.0.0.1:0", ":7000", "h:port"] {
        let vars = [("PULSAR_VALKEY_NODES", bad)];
        assert_eq!(key_of(from_env(&vars)), "valkey.nodes", "{bad}");
    }
    let db = [("PULSAR_VALKEY_MODE", "cluster"), ("PULSAR_VALKEY_DB", "1")];
    assert_eq!(key_of(from_env(&db)), "valkey.db");
    assert_eq!(
        key_of(from_env(&[("PULSAR_VALKEY_MODE", "sharded")])),
        "valkey.mode"
    );
}

#[test]
fn valkey_use_tls_reads_the_original_relays_switches() {
    for (text, expected) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
    ] {
        let config = Config::from_yaml("", env(&[("PULSAR_VALKEY_USE_TLS", text)]))
            .unwrap_or_else(|e| panic!("PULSAR_VALKEY_USE_TLS={text}: {e}"));
        assert_eq!(
            config.valkey.use_tls, expected,
            "PULSAR_VALKEY_USE_TLS={text}"
        );
    }
    let config = from_yaml("valkey:\n  use_tls: yes\n").unwrap();
    assert!(config.valkey.use_tls);
    let err = Config::from_yaml("", env(&[("PULSAR_VALKEY_USE_TLS", "maybe")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("PULSAR_VALKEY_USE_TLS") && text.contains("invalid switch"),
        "{text}"
    );
}

#[test]
fn the_original_relays_tls_variables_load() {
    let config = Config::from_yaml(
        "",
        env(&[
            ("PULSAR_VALKEY_USE_TLS", "true"),
            ("PULSAR_VALKEY_CA_PATH", "/etc/valkey/ca.pem"),
        ]),
    )
    .unwrap();
    assert!(config.valkey.use_tls);
    assert_eq!(config.valkey.ca_path, "/etc/valkey/ca.pem");
}

#[test]
fn tls_files_come_in_pairs_and_valkey_tls_keys_need_use_tls() {
    let err = from_yaml("server:\n  tls_cert_file: cert.pem\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("`server.tls_key_file`: is required with server.tls_cert_file"),
        "{err}"
    );
    let err = from_yaml("valkey:\n  use_tls: true\n  tls_key_file: key.pem\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("`valkey.tls_cert_file`: is required with valkey.tls_key_file"),
        "{err}"
    );
    let err = Config::from_yaml("", env(&[("PULSAR_VALKEY_CA_PATH", "/ca.pem")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("valkey.ca_path") && text.contains("valkey.use_tls is false"),
        "{text}"
    );
    from_yaml("server:\n  tls_cert_file: c.pem\n  tls_key_file: k.pem\n").unwrap();
    from_yaml("valkey:\n  use_tls: true\n  ca_path: ca.pem\n  tls_server_name: valkey\n").unwrap();
}

#[test]
fn cluster_mode_needs_valkey_persisted_acks_and_a_shared_secret() {
    let secret = ("PULSAR_JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef");
    let valkey = ("PULSAR_STORAGE_BACKEND", "valkey");
    let on = ("PULSAR_CLUSTER_ENABLED", "true");
    let config = from_env(&[on, valkey, secret]).unwrap();
    assert!(config.cluster.enabled);
    assert_eq!(config.ack_mode(), AckMode::Persisted);
    assert!(!from_yaml("").unwrap().cluster.enabled);
    assert_eq!(key_of(from_env(&[on, secret])), "cluster.enabled");
    let memory_acks = ("PULSAR_STORAGE_ACK", "memory");
    assert_eq!(
        key_of(from_env(&[on, valkey, secret, memory_acks])),
        "storage.ack"
    );
    assert_eq!(key_of(from_env(&[on, valkey])), "jwt.secret_key");
    let replicated = ("PULSAR_STORAGE_ACK", "replicated");
    assert!(from_env(&[on, valkey, secret, replicated]).is_ok());
}
