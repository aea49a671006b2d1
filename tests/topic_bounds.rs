//! The memory topics themselves take is bounded (issues #14 item 3, #15 item 4): entries
//! nothing needs are dropped (subscriptions and polls on new names leave nothing behind),
//! cold topics are dropped within `storage.hot_tier_max_bytes`, topics with a subscriber, a
//! parked poll or a durable consumer stay, a topic that comes back gets higher IDs, and
//! with Valkey a dropped topic's record, history and positions come back from Valkey.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Per-shard hot-tier budget of the flood tests.
const BUDGET: &str = "64KiB";
const BUDGET_BYTES: f64 = 64.0 * 1024.0;

fn topics(relay: &Relay) -> u64 {
    relay.metrics().sum("pulsar_topics") as u64
}

/// Publishes one 1-byte message to each of `prefix-<from..to>` in bulk requests of 1000.
fn flood(http: &mut Http, prefix: &str, from: usize, to: usize) {
    let token = rw_token();
    for start in (from..to).step_by(1000) {
        let messages: Vec<Value> = (start..to.min(start + 1000))
            .map(|i| json!({"topic": format!("{prefix}-{i}"), "payload": 1}))
            .collect();
        let body = json!({ "messages": &messages }).to_string();
        let resp = http.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&token).as_pair()],
            body.as_bytes(),
        );
        let summary = &resp.json()["summary"];
        assert_eq!(summary["accepted"], messages.len(), "{summary}");
    }
}

fn small_relay(extra: &[(&str, &str)]) -> Relay {
    let mut env = vec![("PULSAR_STORAGE_HOT_TIER_MAX_BYTES", BUDGET)];
    env.extend_from_slice(extra);
    Relay::start_with(&env)
}

fn get(relay: &Relay, path: &str, token: &str) -> Response {
    relay.request("GET", path, &[auth_header(token).as_pair()], b"")
}

#[test]
fn publishing_to_many_distinct_topics_stays_within_the_budget() {
    let relay = small_relay(&[]);
    let mut http = relay.http();
    flood(&mut http, "warm", 0, 5_000);
    let warm_rss = relay.rss_kib();
    let after_warm = topics(&relay);
    assert!(
        after_warm < 1_000,
        "{after_warm} topics kept of 5,000 with {BUDGET} per shard"
    );
    flood(&mut http, "many", 0, 30_000);
    let kept = topics(&relay);
    assert!(kept < 1_000, "{kept} topics kept of 35,000");
    assert!(
        relay.metrics().per_shard_max("pulsar_hot_tier_bytes") <= BUDGET_BYTES,
        "a shard is over its budget"
    );
    let dropped = relay.metrics().sum("pulsar_topics_dropped_total") as u64;
    assert_eq!(
        dropped + kept,
        35_000,
        "every topic made was kept or dropped"
    );
    let grown = relay.rss_kib().saturating_sub(warm_rss);
    // Entries that stayed would cost about 1 KiB each: 30,000 more, ~30 MiB.
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB over 30,000 more topics"
    );
    // The newest topics still serve their message.
    let body = get(
        &relay,
        "/api/v1/poll?topics=many-29999&since=earliest&timeout=1",
        &rw_token(),
    )
    .json();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
}

#[test]
fn websocket_subscriptions_to_new_names_leave_nothing_behind() {
    let relay = Relay::start();
    let token = read_token();
    let mut sessions = Vec::new();
    for s in 0..10 {
        let mut ws = Ws::connect(relay.addr, &token);
        let names: Vec<String> = (0..100).map(|i| format!("ws-{s}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ws.subscribe(&names, json!({}));
        sessions.push(ws);
    }
    assert_eq!(topics(&relay), 1_000, "one entry per subscribed name");
    let held = relay.metrics().sum("pulsar_hot_tier_bytes");
    // Unsubscribing half of one session's topics drops those entries at once.
    let names: Vec<String> = (0..50).map(|i| format!("ws-0-{i}")).collect();
    sessions[0].send_json(&json!({"type": "unsubscribe", "topics": names}));
    sessions[0].expect_type("unsubscribed");
    assert!(
        eventually(IO_TIMEOUT, || { topics(&relay) == 950 }),
        "timed out waiting for unsubscribed entries to go"
    );
    for ws in sessions {
        ws.close();
    }
    assert!(
        eventually(IO_TIMEOUT, || { topics(&relay) == 0 }),
        "timed out waiting for the entries of closed sessions to go"
    );
    assert_eq!(relay.metrics().sum("pulsar_subscribed_topics"), 0.0);
    let left = relay.metrics().sum("pulsar_hot_tier_bytes");
    assert!(
        left < held / 4.0,
        "{left} bytes left of {held} (only the topic maps' free slots)"
    );
}

#[test]
fn parked_polls_on_new_names_leave_nothing_when_they_end() {
    let relay = Relay::start();
    let polls: Vec<_> = (0..10)
        .map(|p| {
            let addr = relay.addr;
            thread::spawn(move || {
                let names: Vec<String> = (0..100).map(|i| format!("poll-{p}-{i}")).collect();
                let mut http = Http::connect(addr);
                http.set_read_timeout(Duration::from_secs(10));
                http.request(
                    "GET",
                    &format!("/api/v1/poll?topics={}&timeout=2", names.join(",")),
                    &[auth_header(&read_token()).as_pair()],
                    b"",
                )
            })
        })
        .collect();
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.metrics().sum("pulsar_polls_waiting") == 10.0
        }),
        "timed out waiting for the polls to park"
    );
    assert_eq!(topics(&relay), 1_000, "parked polls hold their topics");
    for poll in polls {
        let resp = poll.join().unwrap();
        resp.assert_status(200);
        assert_eq!(resp.json()["messages"], json!([]));
    }
    assert!(
        eventually(IO_TIMEOUT, || { topics(&relay) == 0 }),
        "timed out waiting for the entries of ended polls to go"
    );
}

#[test]
fn read_only_tokens_leave_no_topics_behind() {
    let relay = Relay::start();
    let token = read_token();
    let names: Vec<String> = (0..100).map(|i| format!("ro-{i}")).collect();
    let mut ws = Ws::connect(relay.addr, &token);
    ws.subscribe(
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        json!({"since": "earliest"}),
    );
    get(
        &relay,
        &format!("/api/v1/poll?topics={}&timeout=1", names.join(",")),
        &token,
    )
    .assert_status(200);
    let compat = json!({"topics": names, "since": {"ro-1": "1-0"}, "timeout": 1});
    relay
        .request(
            "POST",
            "/messages/poll",
            &[auth_header(&token).as_pair()],
            compat.to_string().as_bytes(),
        )
        .assert_status(200);
    for name in &names[..10] {
        let ack = json!({"message_ids": ["1-0"], "client_id": "ro", "topic": name});
        let resp = relay.request(
            "POST",
            "/api/v1/ack",
            &[auth_header(&token).as_pair()],
            ack.to_string().as_bytes(),
        );
        assert_eq!(resp.json()["unknown"], json!(["1-0"]));
        get(&relay, &format!("/api/v1/topics/{name}"), &token).assert_error(404, "TOPIC_NOT_FOUND");
        get(&relay, &format!("/api/v1/topics/{name}/messages"), &token)
            .assert_error(404, "TOPIC_NOT_FOUND");
    }
    ws.close();
    assert!(
        eventually(IO_TIMEOUT, || topics(&relay) == 0),
        "timed out waiting for every entry to go"
    );
}

#[test]
fn durable_consumers_of_many_new_names_stay_within_the_budget() {
    // A read-only token with a client_id pins positions on every name it subscribes to;
    // positions count in the budget, and the coldest offline ones go when nothing else can.
    let relay = Relay::start_with(&[("PULSAR_STORAGE_HOT_TIER_MAX_BYTES", "64KiB")]);
    let token = read_token();
    for s in 0..40 {
        let mut ws = Ws::connect(relay.addr, &token);
        let names: Vec<String> = (0..100).map(|i| format!("durable-{s}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ws.subscribe(&names, json!({"client_id": format!("c{s}")}));
        ws.close();
    }
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.metrics().sum("pulsar_subscribed_topics") == 0.0
        }),
        "timed out waiting for the sessions to end"
    );
    let kept = topics(&relay);
    assert!(kept > 0, "recent durable consumers keep their topics");
    assert!(kept < 4_000, "{kept} of 4,000 position-only topics kept");
    assert!(relay.metrics().per_shard_max("pulsar_hot_tier_bytes") <= 64.0 * 1024.0);
}

#[test]
fn a_topic_that_comes_back_gets_higher_ids() {
    let relay = small_relay(&[]);
    let token = rw_token();
    let first = relay.publish("comeback", "1");
    get(&relay, "/api/v1/topics/comeback", &token).assert_status(200);
    let mut http = relay.http();
    let mut flooded = 0;
    while get(&relay, "/api/v1/topics/comeback", &token).status == 200 {
        flood(&mut http, "push", flooded, flooded + 1_000);
        flooded += 1_000;
        assert!(flooded < 20_000, "the cold topic is never dropped");
    }
    let again = relay.publish("comeback", "2");
    assert!(
        parse_id(id_of(&again)) > parse_id(id_of(&first)),
        "{again} after {first}"
    );
    let record = get(&relay, "/api/v1/topics/comeback", &token).json();
    assert_eq!(
        record["topic_name"], "comeback",
        "it comes back as a new topic"
    );
}

#[test]
fn subscribed_polled_and_durably_consumed_topics_survive_a_flood() {
    let relay = small_relay(&[]);
    let [watched, polled, durable] = ["watched", "polled", "durable"];
    let mut ws = relay.ws();
    ws.subscribe(&[watched], json!({}));
    // A durable consumer that received a message without acknowledging it, then left.
    let mut consumer = relay.ws();
    consumer.subscribe(&[durable], json!({"client_id": "keep"}));
    let unacked = relay.publish(durable, r#""first""#);
    assert_eq!(
        consumer.recv_delivery()["message_id"],
        unacked["message_id"]
    );
    consumer.close();
    let poll = {
        let addr = relay.addr;
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            http.set_read_timeout(Duration::from_secs(30));
            http.request(
                "GET",
                &format!("/api/v1/poll?topics={polled}&timeout=20"),
                &[auth_header(&rw_token()).as_pair()],
                b"",
            )
        })
    };
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.metrics().sum("pulsar_polls_waiting") == 1.0
        }),
        "timed out waiting for the poll to park"
    );

    let mut http = relay.http();
    flood(&mut http, "flood", 0, 10_000);
    assert!(topics(&relay) < 1_000, "the flood itself was dropped");

    let live = relay.publish(watched, r#""live""#);
    assert_eq!(ws.recv_delivery()["message_id"], live["message_id"]);
    let parked = relay.publish(polled, r#""parked""#);
    let answer = poll.join().unwrap().json();
    assert_eq!(answer["messages"][0]["message_id"], parked["message_id"]);
    // The consumer's position survived: a message published while it was away is
    // delivered when it comes back (a new consumer would start after it).
    let missed = relay.publish(durable, r#""missed""#);
    let mut back = relay.ws();
    back.subscribe(&[durable], json!({"client_id": "keep"}));
    assert_eq!(back.recv_delivery()["message_id"], missed["message_id"]);
}

#[test]
fn created_topics_have_their_own_limit_with_the_memory_backend() {
    let relay = Relay::start_with(&[("PULSAR_STORAGE_MAX_TOPIC_RECORDS_PER_SHARD", "2")]);
    let token = rw_token();
    let create = |name: &str| {
        relay.request(
            "POST",
            "/api/v1/topics",
            &[auth_header(&token).as_pair()],
            json!({"topic_name": name}).to_string().as_bytes(),
        )
    };
    let mut created = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let name = format!("made-{i}");
        let resp = create(&name);
        match resp.status {
            201 => created.push(name),
            _ => {
                resp.assert_error(409, "TOPIC_LIMIT_REACHED");
                refused = Some(name);
                break;
            }
        }
    }
    let refused = refused.expect("a third record on one shard is refused");
    assert!((2..=4).contains(&created.len()), "{created:?}");
    get(&relay, &format!("/api/v1/topics/{refused}"), &token).assert_error(404, "TOPIC_NOT_FOUND");
    let before = topics(&relay);
    // Deleting a created topic of the refused one's shard makes room (in the global
    // namespace an owner deletes with a `topics` claim that covers the name).
    let owner = token_with("tester", &["read", "write"], json!({"topics": ["*"]}));
    for name in &created {
        relay
            .request(
                "DELETE",
                &format!("/api/v1/topics/{name}"),
                &[auth_header(&owner).as_pair()],
                b"",
            )
            .assert_status(204);
    }
    assert_eq!(topics(&relay), before - created.len() as u64);
    create(&refused).assert_status(201);
}

// ---------------------------------------------------------------------------------------
// With Valkey: dropped topics live on in Valkey
// ---------------------------------------------------------------------------------------

#[test]
fn with_valkey_a_dropped_topic_comes_back_from_valkey() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_STORAGE_HOT_TIER_MAX_BYTES", BUDGET)]);
    relay.wait_ready(Duration::from_secs(15));
    let token = rw_token();
    let topic = "kept-in-valkey";
    let created = relay.request(
        "POST",
        "/api/v1/topics",
        &[auth_header(&token).as_pair()],
        json!({"topic_name": topic, "description": "mine"})
            .to_string()
            .as_bytes(),
    );
    created.assert_status(201);
    let record = created.json();
    let mut ids: Vec<String> = (0..3)
        .map(|i| id_of(&relay.publish(topic, &i.to_string())).to_string())
        .collect();

    let mut http = relay.http();
    flood(&mut http, "vflood", 0, 5_000);
    // Messages Valkey had not confirmed yet could not be evicted during the burst.
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.metrics().per_shard_max("pulsar_hot_tier_bytes") <= BUDGET_BYTES
        }),
        "timed out waiting for the shards to be within budget"
    );
    assert!(topics(&relay) < 1_000, "{} topics kept", topics(&relay));
    let loads_before = relay.metrics().sum("pulsar_topic_loads_total");

    // Published to again before anything loaded it: the record it had stays.
    let next = relay.publish(topic, "3");
    assert!(
        parse_id(id_of(&next)) > parse_id(&ids[2]),
        "IDs keep growing"
    );
    ids.push(id_of(&next).to_string());
    assert_eq!(
        get(&relay, &format!("/api/v1/topics/{topic}"), &token).json(),
        record
    );
    let page = get(
        &relay,
        &format!("/api/v1/topics/{topic}/messages?order=asc"),
        &token,
    )
    .json();
    let got: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(got, ids, "the history comes back from the stream");
    assert!(relay.metrics().sum("pulsar_topic_loads_total") > loads_before);
    // Listings read every record from Valkey, dropped topics' included.
    let stats = get(&relay, "/api/v1/topics/stats", &admin_token()).json();
    assert!(stats["total_topics"].as_u64().unwrap() > 5_000, "{stats}");
}

#[test]
fn with_valkey_a_dropped_durable_consumer_resumes_from_its_stored_position() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_STORAGE_HOT_TIER_MAX_BYTES", BUDGET)]);
    relay.wait_ready(Duration::from_secs(15));
    let topic = "consumed-in-valkey";
    let mut consumer = relay.ws();
    consumer.subscribe(&[topic], json!({"client_id": "c"}));
    let ids: Vec<String> = (0..3)
        .map(|i| id_of(&relay.publish(topic, &i.to_string())).to_string())
        .collect();
    for id in &ids {
        assert_eq!(consumer.recv_delivery()["message_id"], id.as_str());
    }
    consumer.send_json(&json!({"type": "ack", "message_id": ids[0]}));
    assert!(consumer.collect_until_pong().is_empty());
    consumer.close();

    // Its messages go first (a publish flood), then its position (offline consumers of
    // many more topics, all more recent).
    let mut http = relay.http();
    flood(&mut http, "vflood", 0, 2_000);
    let reader = read_token();
    for s in 0..20 {
        let mut ws = Ws::connect(relay.addr, &reader);
        let names: Vec<String> = (0..100).map(|i| format!("offline-{s}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ws.subscribe(&names, json!({"client_id": "other"}));
        ws.close();
    }
    assert!(
        eventually(IO_TIMEOUT, || {
            relay.metrics().per_shard_max("pulsar_hot_tier_bytes") <= BUDGET_BYTES
        }),
        "timed out waiting for the shards to be within budget"
    );
    assert!(topics(&relay) < 2_000, "{} topics kept", topics(&relay));
    let loads_before = relay.metrics().sum("pulsar_topic_loads_total");

    // The consumer resumes after its ack, from the stream.
    let mut back = relay.ws();
    back.subscribe(&[topic], json!({"client_id": "c"}));
    for id in &ids[1..] {
        assert_eq!(back.recv_delivery()["message_id"], id.as_str());
    }
    assert!(relay.metrics().sum("pulsar_topic_loads_total") > loads_before);
    let live = relay.publish(topic, "3");
    assert_eq!(back.recv_delivery()["message_id"], live["message_id"]);
}

#[test]
fn with_valkey_a_restart_loads_only_what_it_needs() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(15));
    let mut http = relay.http();
    flood(&mut http, "before", 0, 2_000);
    let last = relay.publish("before-last", "1");
    let mut consumer = relay.ws();
    consumer.subscribe(&["consumed"], json!({"client_id": "c"}));
    consumer.close();
    assert!(topics(&relay) > 2_000);
    drop(relay);

    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(15));
    assert_eq!(
        topics(&relay),
        1,
        "only the durable consumer's topic is loaded"
    );
    let after = relay.publish("after", "1");
    assert!(
        parse_id(id_of(&after)) > parse_id(id_of(&last)),
        "IDs continue after the streams' last ones"
    );
    let token = rw_token();
    let record = get(&relay, "/api/v1/topics/before-1999", &token);
    record.assert_status(200);
    assert_eq!(record.json()["topic_name"], "before-1999");
}

fn admin_token() -> String {
    token("admin", pulsar_relay::auth::Permissions::ADMIN)
}
