//! Several relay processes serving as one over a shared Valkey (`cluster.enabled`, issue
//! #16): publishes made on every node reach the subscribers of every node once, in ID
//! order, with the IDs their producers were given, on a standalone Valkey and on the 3+3
//! Valkey Cluster; history is the same from every node; a durable consumer acknowledges on
//! one node and resumes on another; an Idempotency-Key retry on another node gets the first
//! answer; the pub/sub connection killed under load loses and repeats nothing; a node
//! killed while its clients move elsewhere loses nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Three nodes on one standalone Valkey; the last has two shards.
fn nodes_on(valkey: &Valkey) -> Vec<Relay> {
    ["1", "1", "2"]
        .into_iter()
        .map(|shards| {
            let node = Relay::start_on_valkey(valkey, &node_env(shards));
            node.wait_ready(READY_TIMEOUT);
            node
        })
        .collect()
}

fn publishes_reach_every_node(nodes: &[Relay], topic: &str) {
    let mut subscribers = subscribe_on_each(nodes, topic);
    let produced = publish_everywhere(nodes, topic, 60);
    let total = produced.iter().map(Vec::len).sum();
    let mut first: Option<Vec<String>> = None;
    for ws in &mut subscribers {
        let seen = delivered(ws, total);
        assert_exactly_once_in_order(&seen, &produced);
        assert!(ws.collect_until_pong().is_empty(), "more than published");
        match &first {
            Some(first) => assert_eq!(&seen, first, "nodes delivered different orders"),
            None => first = Some(seen),
        }
    }
    let first = first.unwrap();
    for node in nodes {
        assert_eq!(
            replayed(node, topic),
            first,
            "history differs between nodes"
        );
        let heard = node
            .metrics()
            .sum("pulsar_cluster_announce_lag_seconds_count");
        assert!(heard >= total as f64, "{heard} announcements heard");
    }
}

#[test]
fn publishes_on_every_node_reach_every_nodes_subscribers_once_in_order() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    publishes_reach_every_node(&nodes, "orders");
}

#[test]
fn publishes_on_every_node_reach_every_node_on_a_valkey_cluster() {
    let cluster = ValkeyCluster::start();
    let nodes: Vec<Relay> = ["1", "1", "2"]
        .into_iter()
        .map(|shards| {
            let node = Relay::start_on_cluster(&cluster, &node_env(shards));
            node.wait_ready(READY_TIMEOUT);
            node
        })
        .collect();
    // Topics whose keys live on different primaries.
    for topic in ["alpha", "beta", "gamma"] {
        publishes_reach_every_node(&nodes, topic);
    }
}

#[test]
fn sse_streams_and_long_polls_on_one_node_get_what_another_node_published() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let topic = "news";
    let mut sse = Sse::connect(nodes[1].addr, &rw_token(), &format!("topics={topic}"));
    let poller = {
        let addr = nodes[2].addr;
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            http.set_read_timeout(Duration::from_secs(20));
            http.request(
                "GET",
                &format!("/api/v1/poll?topics={topic}&timeout=15"),
                &[auth_header(&rw_token()).as_pair()],
                b"",
            )
        })
    };
    // The poll is parked (and its node listens) before the publish.
    assert!(eventually(Duration::from_secs(5), || {
        nodes[2].metrics().sum("pulsar_polls_waiting") >= 1.0
    }));
    let receipt = nodes[0].publish(topic, r#"{"headline":1}"#);
    assert_eq!(id_of(&sse.recv_delivery()), id_of(&receipt));
    let polled = poller.join().unwrap();
    polled.assert_status(200);
    assert_eq!(ids_in(&polled.json()["messages"]), [id_of(&receipt)]);
}

#[test]
fn a_topic_deleted_on_one_node_is_gone_from_every_node() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let topic = "drafts";
    // Node B listens to the topic, so its ring holds the messages.
    let mut watcher = nodes[1].ws();
    watcher.subscribe(&[topic], json!({}));
    for i in 0..3 {
        nodes[0].publish(topic, &i.to_string());
    }
    delivered(&mut watcher, 3);
    let admin = token(
        "root",
        Permissions::READ | Permissions::WRITE | Permissions::ADMIN,
    );
    let auth = auth_header(&admin);
    nodes[0]
        .request(
            "DELETE",
            &format!("/api/v1/topics/{topic}"),
            &[auth.as_pair()],
            b"",
        )
        .assert_status(204);
    assert!(eventually(Duration::from_secs(5), || {
        replayed(&nodes[1], topic).is_empty()
    }));
    let after = nodes[0].publish(topic, "\"again\"");
    assert_eq!(id_of(&watcher.recv_delivery()), id_of(&after));
    for node in &nodes {
        assert_eq!(replayed(node, topic), [id_of(&after)]);
    }
}

/// A topic deleted on one node while another, which published to it before, has no
/// subscriber for it (so it does not hear the deletion): the other node's next publish
/// makes its record again, as a first publish does, seen from every node.
#[test]
fn a_publish_after_a_deletion_elsewhere_makes_the_record_again() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let topic = "reborn";
    let admin = token(
        "root",
        Permissions::READ | Permissions::WRITE | Permissions::ADMIN,
    );
    let auth = auth_header(&admin);
    let path = format!("/api/v1/topics/{topic}");
    let record = |node: &Relay| node.request("GET", &path, &[auth.as_pair()], b"");
    nodes[0].publish(topic, "1");
    record(&nodes[0]).assert_status(200);
    nodes[1]
        .request("DELETE", &path, &[auth.as_pair()], b"")
        .assert_status(204);
    for node in &nodes {
        record(node).assert_error(404, "TOPIC_NOT_FOUND");
    }
    let again = nodes[0].publish(topic, "2");
    for node in &nodes {
        let resp = record(node);
        resp.assert_status(200);
        assert_eq!(resp.json()["topic_name"], topic, "{}", resp.text());
        assert_eq!(replayed(node, topic), [id_of(&again)]);
    }
}

#[test]
fn a_durable_consumer_acknowledges_on_one_node_and_resumes_on_another() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let topic = "jobs";
    // A live subscriber keeps the topic in node C's memory the whole time, so node C must
    // not answer the consumer from what it knew before the ack on node A.
    let mut watcher = nodes[2].ws();
    watcher.subscribe(&[topic], json!({}));
    let mut consumer = nodes[0].ws();
    consumer.subscribe(&[topic], json!({"client_id": "worker"}));
    let first: Vec<String> = (0..10)
        .map(|i| id_of(&nodes[1].publish(topic, &format!("{i}"))).to_string())
        .collect();
    assert_eq!(delivered(&mut consumer, 10), first);
    assert_eq!(delivered(&mut watcher, 10), first);
    let mut resumed = nodes[2].ws();
    resumed.subscribe(&[topic], json!({"client_id": "worker"}));
    // Before the ack on A, C replays from where the consumer started.
    assert_eq!(delivered(&mut resumed, 10), first);
    resumed.close();
    consumer.send_json(&json!({"type": "ack", "message_id": first[5], "topic": topic}));
    assert!(consumer.collect_until_pong().is_empty());
    consumer.close();
    let mut resumed = nodes[2].ws();
    resumed.subscribe(&[topic], json!({"client_id": "worker"}));
    assert_eq!(delivered(&mut resumed, 4), first[6..]);
    assert!(resumed.collect_until_pong().is_empty());
}

#[test]
fn an_idempotency_retry_on_another_node_gets_the_first_answer() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let body = json!({"topic": "payments", "payload": {"amount": 5}}).to_string();
    let auth = auth_header(&rw_token());
    let headers = [auth.as_pair(), ("Idempotency-Key", "pay-1")];
    let send = |node: &Relay| node.request("POST", "/api/v1/messages", &headers, body.as_bytes());
    let first = send(&nodes[0]);
    first.assert_status(201);
    for node in &nodes[1..] {
        let retry = send(node);
        retry.assert_status(201);
        assert_eq!(id_of(&retry.json()), id_of(&first.json()));
    }
    assert_eq!(replayed(&nodes[2], "payments").len(), 1);
}

#[test]
fn the_same_idempotency_key_on_two_nodes_at_once_publishes_once() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let body = json!({"topic": "refunds", "payload": {"amount": 7}}).to_string();
    let auth = auth_header(&rw_token());
    let headers = [auth.as_pair(), ("Idempotency-Key", "refund-1")];
    // Writes held back, so that both requests reach Valkey before either is answered.
    valkey.command(&["CLIENT", "PAUSE", "700", "WRITE"]);
    let answers: Vec<Response> = thread::scope(|scope| {
        let sends: Vec<_> = nodes[..2]
            .iter()
            .map(|node| {
                let (body, headers) = (&body, &headers);
                scope.spawn(move || {
                    node.request("POST", "/api/v1/messages", headers, body.as_bytes())
                })
            })
            .collect();
        sends.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for answer in &answers {
        answer.assert_status(201);
    }
    assert_eq!(id_of(&answers[0].json()), id_of(&answers[1].json()));
    assert_eq!(replayed(&nodes[2], "refunds").len(), 1);
}

/// A bulk publish of which Valkey wrote some messages and refused one (its topic's stream
/// key holds a string: `WRONGTYPE`): the 207 gives the written ones their IDs and the
/// refused one `STORE_REJECTED`, and the key stays bound to that answer, so a retry on any
/// node replays it and publishes nothing twice.
#[test]
fn a_bulk_that_valkey_partly_refused_keeps_its_key_bound_to_what_was_written() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    valkey.command(&["SET", &stream_key("refused"), "not a stream"]);
    let body = json!({"messages": [
        {"topic": "written-a", "payload": 1},
        {"topic": "refused", "payload": 2},
        {"topic": "written-b", "payload": 3},
    ]})
    .to_string();
    let auth = auth_header(&rw_token());
    let headers = [auth.as_pair(), ("Idempotency-Key", "bulk-partly")];
    let send =
        |node: &Relay| node.request("POST", "/api/v1/messages/bulk", &headers, body.as_bytes());
    let first = send(&nodes[0]);
    first.assert_status(207);
    let answer = first.json();
    let results = &answer["results"];
    assert_eq!(results[0]["status"], "accepted", "{answer}");
    assert_eq!(results[1]["error"]["code"], "STORE_REJECTED", "{answer}");
    assert_eq!(results[2]["status"], "accepted", "{answer}");
    for node in [&nodes[1], &nodes[2], &nodes[0]] {
        let retry = send(node);
        retry.assert_status(207);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.json(), answer);
    }
    for (topic, result) in [("written-a", &results[0]), ("written-b", &results[2])] {
        assert_eq!(replayed(&nodes[1], topic), [id_of(result)], "{topic}");
    }
}

#[test]
fn the_pubsub_connection_killed_under_load_loses_and_repeats_nothing() {
    let valkey = Valkey::start();
    let nodes = nodes_on(&valkey);
    let topic = "ticks";
    let mut subscriber = nodes[1].ws();
    subscriber.subscribe(&[topic], json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (addr, stop) = (nodes[0].addr, Arc::clone(&stop));
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) || ids.len() < 200 {
                ids.push(id_of(&http.publish(topic, &ids.len().to_string())).to_string());
            }
            ids
        })
    };
    thread::sleep(Duration::from_millis(300));
    // Every pub/sub connection (each node's listener): what is published until they are
    // back is not announced to them.
    for _ in 0..3 {
        valkey.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    let seen = delivered(&mut subscriber, produced.len());
    assert_exactly_once_in_order(&seen, &[produced]);
    assert!(
        subscriber.collect_until_pong().is_empty(),
        "repeated deliveries"
    );
    assert!(nodes[1].metrics().sum("pulsar_cluster_resumes_total") >= 1.0);
}

#[test]
fn a_killed_nodes_clients_resume_on_another_node_without_loss() {
    let valkey = Valkey::start();
    let mut nodes = nodes_on(&valkey);
    let topic = "feed";
    let mut subscriber = nodes[0].ws();
    subscriber.subscribe(&[topic], json!({}));
    let before: Vec<String> = (0..20)
        .map(|i| id_of(&nodes[2].publish(topic, &i.to_string())).to_string())
        .collect();
    let seen = delivered(&mut subscriber, 10);
    nodes[0].kill9();
    // Published while the client has no node: it resumes on another from its last ID.
    let during: Vec<String> = (20..40)
        .map(|i| id_of(&nodes[2].publish(topic, &i.to_string())).to_string())
        .collect();
    let mut resumed = nodes[1].ws();
    resumed.subscribe(&[topic], json!({"since": seen.last().unwrap()}));
    let rest = delivered(&mut resumed, 30);
    let expected: Vec<String> = before[10..].iter().chain(&during).cloned().collect();
    assert_eq!(rest, expected);
    assert!(resumed.collect_until_pong().is_empty());
}

/// A subscription made while the node cannot listen to its topic (Valkey down) is refused
/// with an error frame and leaves nothing behind: made again once Valkey is back, it
/// delivers.
#[test]
fn a_subscription_refused_while_valkey_is_down_can_be_made_again() {
    let mut valkey = Valkey::start();
    let node = Relay::start_on_valkey(&valkey, &node_env("2"));
    node.wait_ready(READY_TIMEOUT);
    let topic = "refused";
    valkey.kill9();
    node.wait_not_ready(Duration::from_secs(5));
    let mut ws = node.ws();
    ws.subscribe(&[topic], json!({}));
    ws.expect_error("STORE_UNAVAILABLE");
    valkey.restart_same_dir();
    node.wait_ready(READY_TIMEOUT);
    ws.subscribe(&[topic], json!({}));
    let receipt = node.publish(topic, "1");
    assert_eq!(id_of(&ws.recv_delivery()), id_of(&receipt));
}

/// `/ready` answers 503 while only the node's pub/sub connection is down, its command link
/// up (here Valkey refuses the node's subscriptions, so the listener cannot come back);
/// once it may subscribe again the node is ready and delivers what was published meanwhile.
#[test]
fn ready_is_503_while_only_the_pubsub_connection_is_down() {
    let valkey = Valkey::start();
    let node = Relay::start_on_valkey(&valkey, &node_env("1"));
    node.wait_ready(READY_TIMEOUT);
    let topic = "watched";
    let mut ws = node.ws();
    ws.subscribe(&[topic], json!({}));
    valkey.command(&["ACL", "SETUSER", "default", "-subscribe"]);
    valkey.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    node.wait_not_ready(Duration::from_secs(5));
    let during = node.publish(topic, "7");
    assert!(
        ws.collect_until_pong().is_empty(),
        "nothing heard without pub/sub"
    );
    valkey.command(&["ACL", "SETUSER", "default", "+subscribe"]);
    node.wait_ready(READY_TIMEOUT);
    assert_eq!(id_of(&ws.recv_delivery()), id_of(&during));
}
