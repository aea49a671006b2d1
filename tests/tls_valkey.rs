//! TLS between the relay and Valkey (`valkey.use_tls`, `ca_path`, `tls_server_name`, the
//! client certificate of mutual TLS), against a real `redis-server` speaking TLS only
//! (Debian's build; `tools/test.sh` installs it), with certificates made by the test with
//! `openssl`: publish, persist and replay over TLS, mutual TLS, and the certificate
//! problems that stop the relay at start with the host and the reason.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The links' reconnect backoff is capped at 5 s, plus jitter.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The environment of a relay on `redis` with TLS, in the original relay's variables
/// (`PULSAR_VALKEY_USE_TLS=1`, `PULSAR_VALKEY_CA_PATH`), plus `extra`.
fn tls_env(redis: &TlsRedis, ca: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PULSAR_STORAGE_BACKEND".to_owned(), "valkey".to_owned()),
        ("PULSAR_VALKEY_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PULSAR_VALKEY_PORT".to_owned(), redis.port.to_string()),
        ("PULSAR_VALKEY_USE_TLS".to_owned(), "1".to_owned()),
        ("PULSAR_VALKEY_CA_PATH".to_owned(), ca.to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn start_relay(env: &[(String, String)]) -> Relay {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = Relay::start_with(&env);
    relay.wait_ready(READY_TIMEOUT);
    relay
}

/// Runs the relay expecting it to stop at start; returns its stderr.
fn refused_at_start(env: &[(String, String)]) -> String {
    let mut all: Vec<(&str, &str)> = vec![("PULSAR_SERVER_HTTP_PORT", "0")];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (status, stdout, stderr) = run_binary(&[], &all);
    assert_eq!(
        status.code(),
        Some(1),
        "the relay did not stop with exit 1\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("listening on"),
        "it started serving first: {stdout}"
    );
    stderr
}

fn ids(poll: &Value) -> Vec<String> {
    poll["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {poll}"))
        .iter()
        .map(|m| id_of(m).to_owned())
        .collect()
}

#[test]
fn publish_persists_over_tls_and_replays_after_relay_and_valkey_restarts() {
    let pki = Pki::new();
    let mut redis = TlsRedis::start(&pki, false);
    let env = tls_env(
        &redis,
        &pki.path("ca.crt"),
        &[("PULSAR_STORAGE_ACK", "persisted")],
    );
    let relay = start_relay(&env);
    let published: Vec<String> = (0..5)
        .map(|i| id_of(&relay.publish("vault", &format!(r#"{{"n":{i}}}"#))).to_owned())
        .collect();
    // Acknowledged as persisted: the entries are in Valkey, read back here over TLS.
    assert_eq!(redis.stream_ids(&stream_key("vault")), published);
    drop(relay);

    // A new relay has an empty hot tier: the replay comes from Valkey, over TLS.
    let relay = start_relay(&env);
    let resp = relay.poll("topics=vault&since=earliest");
    resp.assert_status(200);
    assert_eq!(ids(&resp.json()), published);

    // Valkey restarts: the shards' links reconnect with a new TLS session each, and
    // persisted publishes are acknowledged again.
    redis.restart();
    relay.wait_ready(RECONNECT_TIMEOUT);
    let after = id_of(&relay.publish("vault", r#"{"n":5}"#)).to_owned();
    let mut all = published;
    all.push(after);
    assert_eq!(redis.stream_ids(&stream_key("vault")), all);
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, true);
    let cert = pki.path("client.crt");
    let key = pki.path("client.key");
    let env = tls_env(
        &redis,
        &pki.path("ca.crt"),
        &[
            ("PULSAR_VALKEY_TLS_CERT_FILE", &cert),
            ("PULSAR_VALKEY_TLS_KEY_FILE", &key),
            ("PULSAR_STORAGE_ACK", "persisted"),
        ],
    );
    let relay = start_relay(&env);
    let receipt = relay.publish("mutual", r#"{"ok":true}"#);
    assert_eq!(
        redis.stream_ids(&stream_key("mutual")),
        vec![id_of(&receipt).to_owned()]
    );

    // Without the client certificate Valkey ends the session, and the relay says so.
    let stderr = refused_at_start(&tls_env(&redis, &pki.path("ca.crt"), &[]));
    let addr = format!("127.0.0.1:{}", redis.port);
    assert!(
        stderr.contains(&addr) && stderr.contains("CertificateRequired"),
        "{stderr}"
    );
}

#[test]
fn a_certificate_valkey_cannot_prove_stops_the_relay_at_start() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    let addr = format!("127.0.0.1:{}", redis.port);

    // Trusting another CA.
    let stderr = refused_at_start(&tls_env(&redis, &pki.path("other-ca.crt"), &[]));
    assert!(
        stderr.contains(&addr) && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert!(stderr.contains("valkey.ca_path"), "{stderr}");

    // A name the certificate is not valid for.
    let stderr = refused_at_start(&tls_env(
        &redis,
        &pki.path("ca.crt"),
        &[("PULSAR_VALKEY_TLS_SERVER_NAME", "valkey.internal")],
    ));
    assert!(
        stderr.contains(&addr)
            && stderr.contains("valkey.internal")
            && stderr.contains("not valid for name"),
        "{stderr}"
    );

    // The CA file itself unusable.
    let stderr = refused_at_start(&tls_env(&redis, &pki.path("nothing-here.crt"), &[]));
    assert!(
        stderr.contains(&addr) && stderr.contains("nothing-here.crt"),
        "{stderr}"
    );

    // And the right CA with the name in the certificate is accepted.
    let relay = start_relay(&tls_env(
        &redis,
        &pki.path("ca.crt"),
        &[("PULSAR_VALKEY_TLS_SERVER_NAME", "localhost")],
    ));
    relay.publish("named", r#"{"ok":true}"#);
}

#[test]
fn tls_to_a_valkey_without_tls_stops_the_relay_at_start() {
    let pki = Pki::new();
    let plain = Valkey::start();
    let env = vec![
        ("PULSAR_STORAGE_BACKEND".to_owned(), "valkey".to_owned()),
        ("PULSAR_VALKEY_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PULSAR_VALKEY_PORT".to_owned(), plain.port.to_string()),
        ("PULSAR_VALKEY_USE_TLS".to_owned(), "true".to_owned()),
        ("PULSAR_VALKEY_CA_PATH".to_owned(), pki.path("ca.crt")),
    ];
    let stderr = refused_at_start(&env);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", plain.port))
            && stderr.contains("no TLS handshake answer"),
        "{stderr}"
    );
}
