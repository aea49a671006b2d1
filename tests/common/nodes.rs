//! Several relay nodes in cluster mode (issue #16): their settings, producers on every
//! node at once, and the exactly-once, in-order check of what a subscriber got.

use std::collections::HashSet;
use std::thread;

use super::*;

/// A node's settings on top of the harness's: cluster mode, one shard (as a small node),
/// or two to include the owner's hop inside a node.
pub fn node_env(shards: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("PULSAR_CLUSTER_ENABLED", "true"),
        ("PULSAR_SERVER_SHARDS", shards),
    ]
}

/// One WebSocket subscriber to `topic` on each node, live from now on.
pub fn subscribe_on_each(nodes: &[Relay], topic: &str) -> Vec<Ws> {
    nodes
        .iter()
        .map(|node| {
            let mut ws = node.ws();
            ws.subscribe(&[topic], serde_json::json!({}));
            ws
        })
        .collect()
}

/// Publishes `count` messages to `topic` on each node at once; the IDs each producer was
/// given, in its order.
pub fn publish_everywhere(nodes: &[Relay], topic: &str, count: usize) -> Vec<Vec<String>> {
    thread::scope(|scope| {
        let producers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                scope.spawn(move || {
                    let mut http = node.http();
                    (0..count)
                        .map(|i| {
                            let receipt =
                                http.publish(topic, &format!(r#"{{"node":{n},"i":{i}}}"#));
                            id_of(&receipt).to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        producers.into_iter().map(|p| p.join().unwrap()).collect()
    })
}

/// `n` deliveries from `ws`, as IDs.
pub fn delivered(ws: &mut Ws, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| id_of(&ws.recv_delivery()).to_string())
        .collect()
}

/// Each subscriber got every published ID once, in ID order, and each producer's IDs in
/// the order it was given them.
pub fn assert_exactly_once_in_order(seen: &[String], produced: &[Vec<String>]) {
    let parsed: Vec<(u64, u64)> = seen.iter().map(|id| parse_id(id)).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "deliveries out of ID order or repeated: {seen:?}"
    );
    let all: HashSet<&String> = produced.iter().flatten().collect();
    let got: HashSet<&String> = seen.iter().collect();
    assert_eq!(got, all, "delivered IDs differ from the receipts");
    for ids in produced {
        let order: Vec<(u64, u64)> = ids.iter().map(|id| parse_id(id)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
