//! `GET /metrics`: Prometheus text that promtool accepts, with counters that follow the
//! traffic, merged over both shards.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

fn promtool() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    found.expect(
        "promtool not found: run ./tools/test.sh (it installs Debian's `prometheus` package) \
         or install promtool",
    )
}

#[test]
fn metrics_follow_traffic_and_pass_promtool() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("metrics");
    let mut ws = relay.ws();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    ws.subscribe(&names, json!({}));
    let mut http = relay.http();
    for topic in &topics {
        for i in 0..3 {
            http.publish(topic, &i.to_string());
        }
    }
    for _ in 0..6 {
        ws.recv_delivery();
    }
    let bad = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        br#"{"topic":"a b","payload":1}"#,
    );
    bad.assert_status(422);

    let metrics = relay.metrics();
    assert_eq!(metrics.value("pulsar_messages_published_total"), 6.0);
    assert_eq!(metrics.value("pulsar_messages_delivered_total"), 6.0);
    assert_eq!(
        metrics.value(r#"pulsar_http_requests_total{route="publish",status="201"}"#),
        6.0
    );
    assert_eq!(
        metrics.value(r#"pulsar_http_requests_total{route="publish",status="422"}"#),
        1.0
    );
    assert_eq!(
        metrics.value("pulsar_publish_latency_seconds_count"),
        6.0,
        "one latency sample per acknowledged publish"
    );
    assert_eq!(metrics.value("pulsar_delivery_latency_seconds_count"), 6.0);
    let sessions = metrics.value(r#"pulsar_websocket_connections{shard="0"}"#)
        + metrics.value(r#"pulsar_websocket_connections{shard="1"}"#);
    assert_eq!(sessions, 1.0);
    let topics_known =
        metrics.value(r#"pulsar_topics{shard="0"}"#) + metrics.value(r#"pulsar_topics{shard="1"}"#);
    assert_eq!(topics_known, 2.0);
    assert!(metrics.value("pulsar_bytes_received_total") > 0.0);
    assert!(
        !metrics.text.contains("pulsar_valkey"),
        "memory backend: no Valkey series"
    );

    promtool_accepts(&metrics.text);
}

/// `promtool check metrics` passes `text` (lint included).
#[track_caller]
fn promtool_accepts(text: &str) {
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn valkey_series_follow_writes_and_pass_promtool() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(std::time::Duration::from_secs(10));
    let mut http = relay.http();
    let topics = topics_on_each_shard("persisted");
    let writes = |metrics: &Metrics| {
        (
            metrics.value("pulsar_valkey_writes_total"),
            metrics.value("pulsar_valkey_write_latency_seconds_count"),
            metrics.value("pulsar_valkey_errors_total"),
        )
    };
    // With persisted acks a 201 waits for its writes, so each round is counted in full
    // when it is answered.
    let before = writes(&relay.metrics());
    // A topic's first message: its XADD, its stream's first XTRIM by age, its record.
    for topic in &topics {
        http.publish(topic, "1");
    }
    let first = writes(&relay.metrics());
    assert_eq!(first.0 - before.0, 6.0, "first messages of two topics");
    // Later ones (within the 10 s between trims): the XADD alone.
    for topic in &topics {
        http.publish(topic, "2");
    }
    let metrics = relay.metrics();
    let second = writes(&metrics);
    assert_eq!(
        second.0 - first.0,
        2.0,
        "one stream write per message:\n{}",
        metrics.text
    );
    // Every confirmed write is timed once, and none failed.
    assert_eq!(second.1 - before.1, second.0 - before.0, "{}", metrics.text);
    assert_eq!(second.2, before.2, "{}", metrics.text);
    assert_eq!(metrics.value(r#"pulsar_valkey_up{shard="0"}"#), 1.0);
    assert_eq!(metrics.value(r#"pulsar_valkey_up{shard="1"}"#), 1.0);
    promtool_accepts(&metrics.text);
}

/// Cluster mode's series (pub/sub link, gaps, the account log) pass promtool too, each
/// with its help text; a node counts its start-up load of the account state.
#[test]
fn cluster_mode_series_pass_promtool() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_CLUSTER_ENABLED", "true")]);
    relay.wait_ready(std::time::Duration::from_secs(10));
    let metrics = relay.metrics();
    for name in [
        "pulsar_cluster_gaps_total",
        "pulsar_cluster_account_log_entries_total",
        "pulsar_cluster_account_reloads_total",
        "pulsar_cluster_account_commits_refused_total",
    ] {
        assert!(
            metrics.text.contains(&format!("# HELP {name} ")),
            "no help for {name}:\n{}",
            metrics.text
        );
    }
    assert_eq!(metrics.value("pulsar_cluster_account_reloads_total"), 1.0);
    promtool_accepts(&metrics.text);
}

#[test]
fn metrics_can_require_an_admin_token() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_METRICS_PUBLIC", "false")]);
    relay
        .request("GET", "/metrics", &[], b"")
        .assert_error(401, "AUTH_REQUIRED");
    relay
        .request(
            "GET",
            "/metrics",
            &[auth_header(&rw_token()).as_pair()],
            b"",
        )
        .assert_error(403, "PERMISSION_DENIED");
    let admin = token("ops", pulsar_relay::auth::Permissions::ADMIN);
    relay
        .request("GET", "/metrics", &[auth_header(&admin).as_pair()], b"")
        .assert_status(200);
}
