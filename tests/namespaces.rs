//! `server.topic_namespace: per_user` against the real binary: each token subject has its
//! own topics, everything on the wire shows bare names, and with Valkey the streams are
//! kept per namespace. (The topic API and `/messages/poll` test their own scoping.)

mod common;

use std::time::Duration;

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

const PER_USER: (&str, &str) = ("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user");

fn publish(relay: &Relay, token: &str, topic: &str, n: u64) -> Value {
    let auth = auth_header(token);
    let resp = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth.as_pair()],
        json!({"topic": topic, "payload": {"n": n}})
            .to_string()
            .as_bytes(),
    );
    resp.assert_status(201);
    resp.json()
}

#[test]
fn each_subject_has_its_own_topics_with_bare_names() {
    let relay = Relay::start_with(&[PER_USER]);
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let bob = token("bob", Permissions::READ | Permissions::WRITE);
    // Topics on both shards, so both the local and the cross-shard paths are covered.
    for topic in topics_on_each_shard("jobs") {
        let mut ws = Ws::connect(relay.addr, &alice);
        ws.subscribe(&[&topic], Value::Null);
        let receipt = publish(&relay, &bob, &topic, 1);
        assert_eq!(
            receipt["topic"],
            topic.as_str(),
            "receipts show the bare name"
        );
        let mine = publish(&relay, &alice, &topic, 2);
        let got = ws.recv_delivery();
        assert_eq!(
            got["payload"]["n"], 2,
            "bob's message is in bob's topic: {got}"
        );
        assert_eq!(got["topic"], topic.as_str());
        assert_eq!(got["message_id"], mine["message_id"]);

        let bulk = relay.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&bob).as_pair()],
            json!({"messages": [{"topic": topic, "payload": {"n": 3}}]})
                .to_string()
                .as_bytes(),
        );
        bulk.assert_status(207);
        assert_eq!(bulk.json()["results"][0]["topic"], topic.as_str());
        let unsubscribed = {
            ws.send_json(&json!({"type": "unsubscribe", "topics": [topic]}));
            ws.expect_type("unsubscribed")
        };
        assert_eq!(unsubscribed["topics"], json!([topic]));
        assert!(
            ws.collect_until_pong().is_empty(),
            "bob's bulk never reached alice"
        );
    }
}

#[test]
fn long_polls_read_their_own_namespace() {
    let relay = Relay::start_with(&[PER_USER]);
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let bob = token("bob", Permissions::READ | Permissions::WRITE);
    publish(&relay, &bob, "jobs", 1);
    publish(&relay, &alice, "jobs", 2);
    let resp = relay.request(
        "GET",
        "/api/v1/poll?topics=jobs&since=earliest&timeout=1",
        &[auth_header(&alice).as_pair()],
        b"",
    );
    resp.assert_status(200);
    let messages = resp.json()["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 1, "{messages}");
    assert_eq!(messages[0]["payload"]["n"], 2);
    assert_eq!(messages[0]["topic"], "jobs");
}

#[test]
fn global_namespace_shares_topics() {
    let relay = Relay::start();
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let bob = token("bob", Permissions::READ | Permissions::WRITE);
    let mut ws = Ws::connect(relay.addr, &alice);
    ws.subscribe(&["shared"], Value::Null);
    publish(&relay, &bob, "shared", 7);
    assert_eq!(ws.recv_delivery()["payload"]["n"], 7);
}

#[test]
fn subjects_that_cannot_name_a_namespace_are_refused() {
    let relay = Relay::start_with(&[PER_USER]);
    let odd = token("team{a}", Permissions::WRITE);
    let resp = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&odd).as_pair()],
        br#"{"topic":"jobs","payload":{}}"#,
    );
    resp.assert_error(403, "INVALID_SUBJECT");
}

#[test]
fn namespaced_streams_survive_a_restart() {
    let valkey = Valkey::start();
    let mut relay = Relay::start_on_valkey(&valkey, &[PER_USER]);
    relay.wait_ready(Duration::from_secs(10));
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let bob = token("bob", Permissions::READ | Permissions::WRITE);
    let first = publish(&relay, &alice, "jobs", 1);
    publish(&relay, &bob, "jobs", 2);
    assert_eq!(valkey.command(&["XLEN", "pulsar:{alice/jobs}:s"]).int(), 1);
    assert_eq!(valkey.command(&["XLEN", "pulsar:{bob/jobs}:s"]).int(), 1);
    relay.kill9();

    let relay = Relay::start_on_valkey(&valkey, &[PER_USER]);
    relay.wait_ready(Duration::from_secs(10));
    let second = publish(&relay, &alice, "jobs", 3);
    let (a, b) = (parse_id(id_of(&first)), parse_id(id_of(&second)));
    assert!(
        b > a,
        "IDs continue after the recovered namespaced topic: {a:?} then {b:?}"
    );
    let mut ws = Ws::connect(relay.addr, &alice);
    ws.subscribe(&["jobs"], json!({"since": "earliest"}));
    let replayed: Vec<u64> = (0..2)
        .map(|_| ws.recv_delivery()["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, [1, 3], "only alice's messages, in order");
}

#[test]
fn acks_name_topics_in_their_own_namespace() {
    let relay = Relay::start_with(&[PER_USER]);
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let get = |query: &str| {
        let resp = relay.request(
            "GET",
            &format!("/api/v1/poll?{query}"),
            &[auth_header(&alice).as_pair()],
            b"",
        );
        resp.assert_status(200);
        resp.json()["messages"].as_array().unwrap().clone()
    };
    let first = publish(&relay, &alice, "jobs", 1);
    publish(&relay, &alice, "jobs", 2);
    assert_eq!(
        get("topics=jobs&client_id=c1&since=earliest&timeout=1").len(),
        2
    );
    let ack = relay.request(
        "POST",
        "/api/v1/ack",
        &[auth_header(&alice).as_pair()],
        json!({"message_ids": [id_of(&first)], "client_id": "c1", "topic": "jobs"})
            .to_string()
            .as_bytes(),
    );
    ack.assert_status(200);
    assert_eq!(ack.json()["acknowledged"], 1, "{}", ack.text());
    let rest = get("topics=jobs&client_id=c1&timeout=1");
    assert_eq!(
        rest.len(),
        1,
        "the ack moved alice's position in alice's jobs"
    );
    assert_eq!(rest[0]["payload"]["n"], 2);
}
