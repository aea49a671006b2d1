//! Cluster mode on a Valkey Cluster uses sharded pub/sub (issue #16): each node subscribes
//! to a topic's channel with SSUBSCRIBE at the primary that serves the topic's slot, and
//! the publish script announces with SPUBLISH, called by its digest (EVALSHA). Checked on
//! the real 3+3 Valkey Cluster with three relay nodes: the subscriptions are where they
//! should be (and nowhere classic), a slot migrated and a primary failed over under load
//! lose and repeat nothing and the subscriptions follow the slot, so does a lost pub/sub
//! connection, and a Valkey that lost
//! its script cache still takes the next publish once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn nodes_on_cluster(cluster: &ValkeyCluster) -> Vec<Relay> {
    (0..3)
        .map(|_| {
            let node = Relay::start_on_cluster(cluster, &node_env("1"));
            node.wait_ready(READY_TIMEOUT);
            node
        })
        .collect()
}

fn channel(topic: &str) -> String {
    format!("pulsar:{{{topic}}}:n")
}

/// `PUBSUB SHARDNUMSUB` (sharded) or `PUBSUB NUMSUB` (classic) of `channel` on one node.
fn subscribers(port: u16, kind: &str, channel: &str) -> i64 {
    let reply = cluster_command(port, &["PUBSUB", kind, channel]);
    reply.items()[1].int()
}

/// The primary (index in `cluster.nodes`) serving `topic`'s slot now.
fn primary_of(cluster: &ValkeyCluster, topic: &str) -> usize {
    cluster.owner_of(cluster.slot_of(&channel(topic)))
}

/// Waits until the primary serving `topic` counts one sharded subscription per node, and
/// no other node (primary or replica) counts any, sharded or classic.
#[track_caller]
fn assert_subscribed_at_primary(cluster: &ValkeyCluster, topic: &str, nodes: usize) {
    let channel = channel(topic);
    let placed = eventually(Duration::from_secs(10), || {
        let primary = primary_of(cluster, topic);
        cluster.nodes.iter().enumerate().all(|(i, node)| {
            let want = if i == primary { nodes as i64 } else { 0 };
            subscribers(node.port, "SHARDNUMSUB", &channel) == want
        })
    });
    let counts: Vec<(u16, i64, i64)> = cluster
        .nodes
        .iter()
        .map(|n| {
            (
                n.port,
                subscribers(n.port, "SHARDNUMSUB", &channel),
                subscribers(n.port, "NUMSUB", &channel),
            )
        })
        .collect();
    assert!(
        placed,
        "{channel} should have {nodes} sharded subscriptions on its primary {} only; \
         (port, sharded, classic): {counts:?}",
        cluster.nodes[primary_of(cluster, topic)].port
    );
    assert!(
        counts.iter().all(|&(_, _, classic)| classic == 0),
        "classic subscriptions: {counts:?}"
    );
}

/// Publishes to `topic` on `node` until `stop` (and at least `least` messages); each
/// publish carries an Idempotency-Key and is retried with it while the cluster cannot
/// take it (a failover's moments), so each message is published once. The IDs, in order.
fn produce(
    node: &Relay,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    least: usize,
) -> thread::JoinHandle<Vec<String>> {
    let addr = node.addr;
    thread::spawn(move || {
        let mut http = Http::connect(addr);
        let auth = auth_header(&rw_token());
        let mut ids = Vec::new();
        while !stop.load(Ordering::Relaxed) || ids.len() < least {
            let n = ids.len();
            let body = json!({"topic": topic, "payload": {"n": n}}).to_string();
            let key = format!("{topic}-{n}");
            let headers = [auth.as_pair(), ("Idempotency-Key", key.as_str())];
            let mut answer = None;
            for _ in 0..100 {
                let resp = http.request("POST", "/api/v1/messages", &headers, body.as_bytes());
                if resp.status == 201 {
                    answer = Some(resp);
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let answer = answer.unwrap_or_else(|| panic!("publish {n} never answered 201"));
            ids.push(id_of(&answer.json()).to_string());
        }
        ids
    })
}

#[test]
fn subscriptions_are_sharded_and_publishes_reach_every_node_once_in_order() {
    let cluster = ValkeyCluster::start();
    let nodes = nodes_on_cluster(&cluster);
    // One topic per primary; every subscriber stays until the end.
    let topics: Vec<String> = (0..3)
        .map(|primary| {
            (0..)
                .map(|i| format!("t{i}"))
                .find(|t| primary_of(&cluster, t) == primary)
                .unwrap()
        })
        .collect();
    let mut all = Vec::new();
    for topic in &topics {
        let topic = topic.as_str();
        let mut subscribers = subscribe_on_each(&nodes, topic);
        assert_subscribed_at_primary(&cluster, topic, nodes.len());
        let produced = publish_everywhere(&nodes, topic, 30);
        let total = produced.iter().map(Vec::len).sum();
        for ws in &mut subscribers {
            let seen = delivered(ws, total);
            assert_exactly_once_in_order(&seen, &produced);
            assert!(ws.collect_until_pong().is_empty(), "more than published");
        }
        all.push(subscribers);
    }
    let metrics = nodes[0].metrics();
    assert_eq!(metrics.sum("pulsar_cluster_pubsub_up"), 1.0);
    // One shard, one topic per primary: a connection to each, one channel on each.
    assert_eq!(metrics.sum("pulsar_cluster_pubsub_node_up"), 3.0);
    assert_eq!(metrics.sum("pulsar_cluster_pubsub_node_channels"), 3.0);
}

/// Lets the producer run a little longer, stops it, and checks that every watcher got
/// what it published exactly once, in order, and that each watching node resumed.
fn stop_and_check(
    stop: &AtomicBool,
    producer: thread::JoinHandle<Vec<String>>,
    watchers: &mut [Ws],
    watching: &[Relay],
) {
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    for ws in watchers {
        let seen = delivered(ws, produced.len());
        assert_exactly_once_in_order(&seen, std::slice::from_ref(&produced));
        assert!(ws.collect_until_pong().is_empty(), "repeated deliveries");
    }
    for node in watching {
        assert!(node.metrics().sum("pulsar_cluster_resumes_total") >= 1.0);
    }
}

#[test]
fn a_slot_migrated_while_publishing_loses_and_repeats_nothing() {
    let cluster = ValkeyCluster::start();
    let nodes = nodes_on_cluster(&cluster);
    let topic = "moving";
    let mut watchers = subscribe_on_each(&nodes[1..], topic);
    assert_subscribed_at_primary(&cluster, topic, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&nodes[0], topic, Arc::clone(&stop), 100);
    thread::sleep(Duration::from_millis(300));
    let slot = cluster.slot_of(&channel(topic));
    let from = cluster.owner_of(slot);
    let to = (from + 1) % 3;
    cluster.migrate_slot(slot, to, Duration::from_millis(50));
    // Valkey ended the subscriptions at the old primary; each node made them again at the
    // new one.
    assert_subscribed_at_primary(&cluster, topic, 2);
    assert_eq!(primary_of(&cluster, topic), to);
    stop_and_check(&stop, producer, &mut watchers, &nodes[1..]);
}

#[test]
fn a_primary_failover_under_load_loses_and_repeats_nothing() {
    let cluster = ValkeyCluster::start();
    let nodes = nodes_on_cluster(&cluster);
    let topic = "steady";
    let mut watchers = subscribe_on_each(&nodes[1..], topic);
    assert_subscribed_at_primary(&cluster, topic, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&nodes[0], topic, Arc::clone(&stop), 100);
    thread::sleep(Duration::from_millis(300));
    let primary = primary_of(&cluster, topic);
    let replica = primary + 3;
    let answer = cluster_command(cluster.nodes[replica].port, &["CLUSTER", "FAILOVER"]);
    assert_eq!(answer, Resp::Simple("OK".into()), "{}", cluster.logs());
    assert!(
        eventually(Duration::from_secs(10), || primary_of(&cluster, topic)
            == replica),
        "the replica did not take over:\n{}",
        cluster.logs()
    );
    assert_subscribed_at_primary(&cluster, topic, 2);
    stop_and_check(&stop, producer, &mut watchers, &nodes[1..]);
}

/// A lost pub/sub connection (one primary's): the node subscribes again there and reads
/// back only the topics whose channels were on it.
#[test]
fn pubsub_connections_killed_under_load_lose_and_repeat_nothing() {
    let cluster = ValkeyCluster::start();
    let nodes = nodes_on_cluster(&cluster);
    let topic = "ticks";
    let mut watcher = nodes[1].ws();
    watcher.subscribe(&[topic], json!({}));
    assert_subscribed_at_primary(&cluster, topic, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&nodes[0], topic, Arc::clone(&stop), 200);
    thread::sleep(Duration::from_millis(300));
    let primary = cluster.nodes[primary_of(&cluster, topic)].port;
    for _ in 0..3 {
        cluster_command(primary, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    let seen = delivered(&mut watcher, produced.len());
    assert_exactly_once_in_order(&seen, std::slice::from_ref(&produced));
    assert!(
        watcher.collect_until_pong().is_empty(),
        "repeated deliveries"
    );
    assert!(nodes[1].metrics().sum("pulsar_cluster_resumes_total") >= 1.0);
    assert_subscribed_at_primary(&cluster, topic, 1);
}

#[test]
fn a_valkey_that_lost_its_scripts_still_takes_the_next_publish_once() {
    let cluster = ValkeyCluster::start();
    let nodes = nodes_on_cluster(&cluster);
    let topic = "scripted";
    let mut watcher = nodes[1].ws();
    watcher.subscribe(&[topic], json!({}));
    assert_subscribed_at_primary(&cluster, topic, 1);
    let primary = cluster.nodes[primary_of(&cluster, topic)].port;
    let evals = |name: &str| {
        let stats = cluster_command(primary, &["INFO", "commandstats"])
            .text()
            .unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .map_or(0, |rest| {
                rest.split(',').next().unwrap().parse::<u64>().unwrap()
            })
    };
    let mut produced = Vec::new();
    for round in 0..3 {
        for node in &cluster.nodes[..3] {
            assert_eq!(
                cluster_command(node.port, &["SCRIPT", "FLUSH"]),
                Resp::Simple("OK".into())
            );
        }
        let (eval_before, evalsha_before) = (evals("eval"), evals("evalsha"));
        for i in 0..5 {
            let receipt = nodes[0].publish(topic, &format!(r#"{{"round":{round},"i":{i}}}"#));
            produced.push(id_of(&receipt).to_string());
        }
        // The first publish after the flush was refused (NOSCRIPT) and sent again with the
        // script's text; the others went by digest.
        assert_eq!(evals("eval") - eval_before, 1, "round {round}");
        // (A NOSCRIPT answer may count as a call of its own.)
        let by_digest = evals("evalsha") - evalsha_before;
        assert!((5..=6).contains(&by_digest), "round {round}: {by_digest}");
    }
    let seen = delivered(&mut watcher, produced.len());
    assert_eq!(seen, produced);
    assert!(
        watcher.collect_until_pong().is_empty(),
        "repeated deliveries"
    );
    assert_eq!(replayed(&nodes[2], topic), produced);
}
