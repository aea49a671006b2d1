//! `GET /api/v1/stats`: who may read it, and that its numbers follow real traffic
//! (sessions, rates, latency percentiles, the busiest topics with their subscribers, the
//! Valkey link), against the real binary.

mod common;

use std::time::Duration;

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

fn admin_token() -> String {
    token("operator", Permissions::ADMIN)
}

fn stats(relay: &Relay, query: &str) -> Value {
    let resp = relay.request(
        "GET",
        &format!("/api/v1/stats{query}"),
        &[auth_header(&admin_token()).as_pair()],
        b"",
    );
    resp.assert_status(200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

#[test]
fn only_administrators_read_it() {
    let relay = Relay::start();
    relay
        .request("GET", "/api/v1/stats", &[], b"")
        .assert_error(401, "AUTH_REQUIRED");
    relay
        .request(
            "GET",
            "/api/v1/stats",
            &[auth_header(&rw_token()).as_pair()],
            b"",
        )
        .assert_error(403, "PERMISSION_DENIED");
    relay
        .request(
            "GET",
            "/api/v1/stats?topics=0",
            &[auth_header(&admin_token()).as_pair()],
            b"",
        )
        .assert_error(422, "INVALID_LIMIT");
}

#[test]
fn numbers_follow_the_traffic() {
    let relay = Relay::start();
    let idle = stats(&relay, "");
    assert_eq!(idle["shards"], SHARDS);
    assert_eq!(idle["backend"], "memory");
    assert_eq!(idle["valkey"], Value::Null);
    assert_eq!(idle["topics"], json!([]));
    assert_eq!(idle["latency_ms"]["publish"], Value::Null);

    let [busy, quiet] = [topic_on("stats-busy", 0), topic_on("stats-quiet", 1)];
    let mut ws = relay.ws();
    ws.subscribe(&[&busy], json!({}));
    let _sse = Sse::connect(relay.addr, &read_token(), &format!("topics={busy},{quiet}"));
    let mut http = relay.http();
    for i in 0..40 {
        http.publish(&busy, &i.to_string());
        ws.recv_delivery();
    }
    http.publish(&quiet, "1");
    // The topics come from the rings and the subscriber index: exact at once. The SSE
    // stream's deliveries count once written, a moment after the publishes.
    let mut now = Value::Null;
    let written = eventually(IO_TIMEOUT, || {
        now = stats(&relay, "");
        now["messages"]["delivered_total"].as_u64() >= Some(40 + 41)
    });
    assert!(written, "WebSocket and SSE deliveries: {now}");
    assert_eq!(now["websocket_sessions"], 1, "{now}");
    assert_eq!(now["sse_sessions"], 1, "{now}");
    assert!(now["connections"].as_u64() >= Some(2), "{now}");
    assert_eq!(now["messages"]["published_total"], 41, "{now}");
    let shards = now["shard_load"].as_array().unwrap();
    assert_eq!(shards.len(), SHARDS);
    assert_eq!(
        shards
            .iter()
            .map(|s| s["topics"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "{now}"
    );
    // The busiest topic first: 40 messages in the 10 s window, two subscribers.
    assert_eq!(
        now["topics"][0],
        json!({"topic": busy, "per_second": 4.0, "subscribers": 2, "retained": 40}),
        "{now}"
    );
    assert_eq!(
        now["topics"][1],
        json!({"topic": quiet, "per_second": 0.1, "subscribers": 1, "retained": 1}),
        "{now}"
    );

    // Rates and latencies are those of the last sampled second: under steady traffic
    // one soon has publishes and deliveries in it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (addr, topic, stop) = (relay.addr, busy.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut http = Http::connect(addr);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                http.publish(&topic, "1");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut last = Value::Null;
    let seen = eventually(Duration::from_secs(10), || {
        last = stats(&relay, "");
        last["messages"]["in_per_second"].as_f64() > Some(0.0)
            && last["messages"]["out_per_second"].as_f64() > Some(0.0)
            && last["latency_ms"]["publish"]["count"].as_u64() > Some(0)
            && last["latency_ms"]["delivery"]["count"].as_u64() > Some(0)
    });
    stop.store(true, std::sync::atomic::Ordering::Release);
    publisher.join().unwrap();
    assert!(seen, "no rates or latencies under traffic: {last}");
    assert!(
        last["latency_ms"]["window_seconds"].as_f64() >= Some(1.0),
        "{last}"
    );
    for kind in ["publish", "delivery"] {
        let l = &last["latency_ms"][kind];
        assert!(l["p50"].as_f64() > Some(0.0), "{last}");
        assert!(l["p50"].as_f64() <= l["p99"].as_f64(), "{last}");
        assert!(l["p99"].as_f64() <= l["max"].as_f64(), "{last}");
    }
    let top_one = stats(&relay, "?topics=1");
    assert_eq!(top_one["topics"].as_array().unwrap().len(), 1);
    assert_eq!(top_one["topics"][0]["topic"], busy.as_str());
}

#[test]
fn the_valkey_link_is_reported() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(10));
    relay.publish("stats-persisted", "1");
    let mut last = Value::Null;
    assert!(eventually(Duration::from_secs(5), || {
        last = stats(&relay, "");
        last["valkey"]["writes_total"].as_u64() > Some(0)
    }));
    assert_eq!(last["backend"], "valkey");
    assert_eq!(last["valkey"]["up"], true, "{last}");
    assert_eq!(last["valkey"]["shards_up"], SHARDS, "{last}");
    assert_eq!(last["shard_load"][0]["valkey_up"], true, "{last}");
}
