//! The relay on a real Valkey Cluster (`valkey.mode: cluster`): 3 primaries and 3 replicas
//! started and joined by the harness ([`ValkeyCluster`]). Publishing, replay, history,
//! consumer positions, idempotency answers and accounts across a relay restart; a topic's
//! slot migrated while producers publish; the primary holding a topic killed while
//! producers publish; replicated acks waiting for each primary's replica.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A topic named `<prefix>-<i>` owned by relay shard `shard` whose keys live on cluster
/// primary `primary` (0, 1 or 2).
fn topic_on_primary(cluster: &ValkeyCluster, prefix: &str, shard: usize, primary: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|t| pulsar_relay::topic::owner_of(t, SHARDS) == shard)
        .find(|t| cluster.owner_of(cluster.slot_of(&stream_key(t))) == primary)
        .expect("some topic lands on every primary")
}

fn ready_relay(cluster: &ValkeyCluster, env: &[(&str, &str)]) -> Relay {
    let relay = Relay::start_on_cluster(cluster, env);
    relay.wait_ready(READY_TIMEOUT);
    relay
}

fn idempotent_publish(relay: &Relay, key: &str, body: &str) -> Response {
    let token = rw_token();
    relay.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&token).as_pair(),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        body.as_bytes(),
    )
}

#[test]
fn publishing_replay_history_positions_idempotency_and_accounts_live_on_the_cluster() {
    let cluster = ValkeyCluster::start();
    let admin_env = [
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-1"),
        ("PULSAR_ACCOUNTS_LOGIN_RATE", "0"),
    ];
    let mut relay = ready_relay(&cluster, &admin_env);
    // One topic per (primary, relay shard): every primary holds streams of both shards.
    let topics: Vec<String> = (0..3)
        .flat_map(|p| (0..SHARDS).map(move |s| (p, s)))
        .map(|(p, s)| topic_on_primary(&cluster, "cl", s, p))
        .collect();
    let mut http = relay.http();
    let published: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            (0..5)
                .map(|i| id_of(&http.publish(t, &format!(r#"{{"n":{i}}}"#))).to_string())
                .collect()
        })
        .collect();
    for (topic, sent) in topics.iter().zip(&published) {
        assert_eq!(
            &cluster.stream_ids(&stream_key(topic)),
            sent,
            "{topic}: the stream on its primary holds every acknowledged message"
        );
    }

    // A durable consumer per transport, each acknowledging its third message.
    let mut ws = relay.ws();
    ws.subscribe(
        &[&topics[0]],
        json!({"client_id": "c-ws", "since": "earliest"}),
    );
    let got: Vec<String> = (0..5)
        .map(|_| id_of(&ws.recv_delivery()).to_string())
        .collect();
    assert_eq!(got, published[0]);
    ws.send_json(&json!({"type": "ack", "message_id": published[0][2]}));
    assert!(ws.collect_until_pong().is_empty(), "the ack was refused");
    let acked = relay.call(
        "POST",
        "/api/v1/ack",
        &rw_token(),
        &json!({"message_ids": [published[5][2]], "client_id": "c-poll", "topic": topics[5]}),
    );
    acked.assert_status(200);
    let positions_on_cluster = || {
        let held = |topic: &str, client: &str| {
            cluster
                .command(
                    &positions_key(topic),
                    &["HGET", &positions_key(topic), &format!("tester\0{client}")],
                )
                .text()
        };
        held(&topics[0], "c-ws").as_ref() == Some(&published[0][2])
            && held(&topics[5], "c-poll").as_ref() == Some(&published[5][2])
    };
    assert!(
        eventually(IO_TIMEOUT, positions_on_cluster),
        "positions written to the cluster"
    );
    drop(ws);

    // An idempotent publish, and an account.
    let idem_key = format!("{:032x}", 0x0c1u128);
    let idem_body = json!({"topic": topics[2], "payload": {"idem": true}}).to_string();
    let first = idempotent_publish(&relay, &idem_key, &idem_body);
    first.assert_status(201);
    let answer_key = format!("pulsar:idem:{{tester}}:single:{idem_key}");
    assert!(cluster
        .command(&answer_key, &["GET", &answer_key])
        .text()
        .is_some_and(|v| v.ends_with(&first.text())));
    let admin = relay.form_login("admin", "admin-password-1");
    admin.assert_status(200);
    let admin_token = admin.json()["access_token"].as_str().unwrap().to_string();
    relay
        .call(
            "POST",
            "/auth/register",
            &admin_token,
            &json!({"username": "bob", "password": "pw-bob-123", "email": null,
                "permissions": ["read"]}),
        )
        .assert_status(201);

    relay.kill9();
    let relay = ready_relay(&cluster, &admin_env);

    // Everything comes back from the cluster: replay, history, records, positions.
    let mut want = published.clone();
    want[2].push(id_of(&first.json()).to_string());
    for (topic, sent) in topics.iter().zip(&want) {
        assert_eq!(&replayed(&relay, topic), sent, "{topic}: long-poll replay");
        let history = relay.call(
            "GET",
            &format!("/api/v1/topics/{topic}/messages?order=asc&limit=100"),
            &rw_token(),
            &Value::Null,
        );
        history.assert_status(200);
        assert_eq!(
            &ids_in(&history.json()["messages"]),
            sent,
            "{topic}: history"
        );
    }
    let listed = relay.call("GET", "/api/v1/topics", &rw_token(), &Value::Null);
    listed.assert_status(200);
    let names: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["topic_name"].as_str().map(str::to_string))
        .collect();
    for topic in &topics {
        assert!(
            names.contains(topic),
            "the topic listing scans every primary: {topic} missing from {names:?}"
        );
    }
    let mut ws = relay.ws();
    ws.subscribe(&[&topics[0]], json!({"client_id": "c-ws"}));
    let resumed: Vec<String> = ws
        .collect_until_pong()
        .iter()
        .map(|f| id_of(f).to_string())
        .collect();
    assert_eq!(
        resumed,
        published[0][3..],
        "the WebSocket consumer resumes after its ack"
    );
    let resp = relay.poll(&format!("topics={}&client_id=c-poll&timeout=1", topics[5]));
    resp.assert_status(200);
    assert_eq!(ids_in(&resp.json()["messages"]), published[5][3..]);

    // The idempotency answer and the account were read back from the cluster.
    let again = idempotent_publish(&relay, &idem_key, &idem_body);
    again.assert_status(201);
    assert_eq!(
        again.json(),
        first.json(),
        "the retry gets the first answer"
    );
    relay.form_login("bob", "pw-bob-123").assert_status(200);

    let metrics = relay.metrics();
    for port in cluster.nodes[..3].iter().map(|n| n.port) {
        for shard in 0..SHARDS {
            let series = format!(
                "pulsar_valkey_primary_up{{shard=\"{shard}\",primary=\"127.0.0.1:{port}\"}}"
            );
            assert_eq!(metrics.value(&series), 1.0, "{series}");
        }
    }
    assert!(metrics.sum("pulsar_valkey_slot_map_refreshes_total") >= SHARDS as f64);
}

/// What one producer thread saw: acknowledged IDs in order, and any other answers.
#[derive(Default)]
struct Produced {
    acked: Vec<String>,
    /// Answers other than 201, as `status code`.
    refused: Vec<String>,
    /// When each acknowledgement arrived, with the time its request was sent.
    times: Vec<(Instant, Instant)>,
}

/// Publishes `{"n": i}` to `topic` back to back until `stop`, `bulk` messages per request
/// (a single POST for 1, else one bulk POST, so several writes of the topic are queued at
/// once), on one connection (a new one after a failed read), with `timeout` per answer.
fn producer(
    relay: &Relay,
    topic: &str,
    bulk: usize,
    stop: &Arc<AtomicBool>,
    timeout: Duration,
) -> thread::JoinHandle<Produced> {
    let (addr, topic, stop) = (relay.addr, topic.to_string(), Arc::clone(stop));
    thread::spawn(move || {
        let mut seen = Produced::default();
        let token = rw_token();
        let mut http = Http::connect(addr);
        http.set_read_timeout(timeout);
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let (path, body) = if bulk == 1 {
                let body = json!({"topic": topic, "payload": {"n": n}});
                ("/api/v1/messages", body)
            } else {
                let messages: Vec<Value> = (0..bulk as u64)
                    .map(|i| json!({"topic": topic, "payload": {"n": n + i}}))
                    .collect();
                ("/api/v1/messages/bulk", json!({ "messages": messages }))
            };
            n += bulk as u64;
            let sent = Instant::now();
            http.send_request(
                "POST",
                path,
                &[
                    auth_header(&token).as_pair(),
                    ("Content-Type", "application/json"),
                ],
                body.to_string().as_bytes(),
            );
            match http.try_read_response(true) {
                Ok(resp) if resp.status == 201 => {
                    seen.acked.push(id_of(&resp.json()).to_string());
                    seen.times.push((sent, Instant::now()));
                }
                Ok(resp) if resp.status == 207 => {
                    for item in resp.json()["results"].as_array().expect("results") {
                        match item["message_id"].as_str() {
                            Some(id) => {
                                seen.acked.push(id.to_string());
                                seen.times.push((sent, Instant::now()));
                            }
                            None => seen.refused.push(format!("503 {}", item["error"]["code"])),
                        }
                    }
                }
                Ok(resp) => {
                    seen.refused
                        .push(format!("{} {}", resp.status, resp.code()));
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    seen.refused.push(format!("no answer: {e}"));
                    http = Http::connect(addr);
                    http.set_read_timeout(timeout);
                }
            }
        }
        seen
    })
}

/// Refusals a producer may retry (the relay said so: 503, and not because Valkey refused
/// the write); anything else fails the test.
fn assert_retryable(topic: &str, seen: &Produced) {
    for refusal in &seen.refused {
        assert!(
            refusal.starts_with("503 ") && !refusal.contains("STORE_REJECTED"),
            "{topic}: a publish was refused in a way a producer cannot retry: {refusal}"
        );
    }
}

#[test]
fn a_slot_migrated_while_producers_publish_loses_no_acknowledged_message() {
    let cluster = ValkeyCluster::start();
    let relay = ready_relay(&cluster, &[]);
    let topics = [
        topic_on_primary(&cluster, "mig", 0, 0),
        topic_on_primary(&cluster, "mig", 1, 1),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    // Per topic, a bulk producer and a single one: several writes of one topic are queued
    // or in flight at every moment, so their order through the redirections matters.
    let producers: Vec<Vec<_>> = topics
        .iter()
        .map(|t| {
            [10, 10, 10, 1]
                .iter()
                .map(|&bulk| producer(&relay, t, bulk, &stop, Duration::from_secs(10)))
                .collect()
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // Each topic's slot moves to the next primary, key by key with pauses in between, so
    // that the relay meets ASK (key moved, slot still migrating) and then MOVED.
    let mut moved_to = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let slot = cluster.slot_of(&stream_key(topic));
        let to = (i + 1) % 3;
        cluster.migrate_slot(slot, to, Duration::from_millis(100));
        moved_to.push((slot, to));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let produced: Vec<Produced> = producers
        .into_iter()
        .map(|per_topic| {
            let mut all = Produced::default();
            for p in per_topic {
                let seen = p.join().unwrap();
                all.acked.extend(seen.acked);
                all.refused.extend(seen.refused);
            }
            // IDs grow in the order the topic's owner accepted the messages.
            all.acked.sort_by_key(|id| parse_id(id));
            all
        })
        .collect();

    for ((topic, seen), (slot, to)) in topics.iter().zip(&produced).zip(moved_to) {
        assert_eq!(cluster.owner_of(slot), to, "slot {slot} moved");
        assert_retryable(topic, seen);
        assert!(
            seen.acked.len() > 10,
            "{topic}: only {} publishes acknowledged",
            seen.acked.len()
        );
        let stored = cluster.stream_ids(&stream_key(topic));
        assert_eq!(
            stored, seen.acked,
            "{topic}: the stream on its new primary holds exactly the acknowledged messages, in order"
        );
        assert_eq!(replayed(&relay, topic), seen.acked, "{topic}: replay");
        eprintln!(
            "{topic}: {} acknowledged, {} refused during the migration",
            seen.acked.len(),
            seen.refused.len()
        );
    }
    let metrics = relay.metrics();
    let moved = metrics.value("pulsar_valkey_redirects_total{kind=\"moved\"}");
    let asked = metrics.value("pulsar_valkey_redirects_total{kind=\"ask\"}");
    eprintln!("redirects followed: {moved} MOVED, {asked} ASK");
    assert!(moved >= 1.0, "the relay followed MOVED ({moved})");
}

#[test]
fn the_primary_of_a_topic_killed_while_producers_publish_is_followed_to_its_replica() {
    let mut cluster = ValkeyCluster::start();
    let relay = ready_relay(&cluster, &[]);
    // Both relay shards write to the primary that dies; a third topic is on another one.
    let topics = [
        topic_on_primary(&cluster, "fo", 0, 0),
        topic_on_primary(&cluster, "fo", 1, 0),
        topic_on_primary(&cluster, "fo", 0, 2),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    // Per topic, a bulk producer and a single one (several writes queued at the kill).
    let producers: Vec<(&String, _)> = topics
        .iter()
        .flat_map(|t| [10, 1].map(|bulk| (t, bulk)))
        .map(|(t, bulk)| (t, producer(&relay, t, bulk, &stop, Duration::from_secs(30))))
        .collect();
    thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    cluster.kill9(0);
    let replica = cluster
        .wait_promoted(0, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no replica took over\n{}", cluster.logs()));
    let promoted_after = killed_at.elapsed();
    // The producers go on for a while after the takeover; each must be acknowledged
    // again (checked below) well within 15 s of the kill.
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let produced: Vec<(&String, Produced)> = producers
        .into_iter()
        .map(|(t, p)| (t, p.join().unwrap()))
        .collect();

    for (topic, seen) in &produced {
        assert_retryable(topic, seen);
        let first_after = seen
            .times
            .iter()
            .find(|(sent, _)| *sent > killed_at)
            .map(|(_, answered)| answered.duration_since(killed_at));
        let first_after =
            first_after.unwrap_or_else(|| panic!("{topic}: nothing acknowledged after the kill"));
        assert!(
            first_after < Duration::from_secs(15),
            "{topic}: publishing resumed only {first_after:?} after the kill"
        );
        // `persisted` acknowledges what the primary applied; Valkey replicates
        // asynchronously, so what the old primary acknowledged in its last moments may be
        // missing on the promoted replica (the README says so). Everything acknowledged
        // well before the kill, and everything after the takeover, must be there.
        let stored = cluster.stream_ids(&stream_key(topic));
        let missing: Vec<(usize, &String)> = seen
            .acked
            .iter()
            .enumerate()
            .filter(|(_, id)| !stored.contains(id))
            .collect();
        // Only a write the old primary applied can be lost: sent before the kill, and
        // acknowledged within moments of it (the reply may reach the producer just after).
        let window = Duration::from_millis(500);
        for &(i, id) in &missing {
            let (sent, answered) = seen.times[i];
            assert!(
                sent < killed_at && answered + window > killed_at && answered < killed_at + window,
                "{topic}: {id} is missing from the promoted replica: sent {:?} before the \
                 kill, acknowledged {:?} after it",
                killed_at.saturating_duration_since(sent),
                answered.saturating_duration_since(killed_at),
            );
        }
        let mut in_order = stored.clone();
        in_order.sort_by_key(|id| parse_id(id));
        in_order.dedup();
        assert_eq!(in_order, stored, "{topic}: stream in order, no duplicate");
        eprintln!(
            "{topic}: {} acknowledged, {} missing after the failover, first acknowledgement \
             {first_after:?} after the kill, {} refused",
            seen.acked.len(),
            missing.len(),
            seen.refused.len()
        );
    }
    eprintln!(
        "replica {} promoted {promoted_after:?} after the kill",
        cluster.nodes[replica].port
    );
    let metrics = relay.metrics();
    let dead = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let now_primary = format!("127.0.0.1:{}", cluster.nodes[replica].port);
    assert!(
        eventually(Duration::from_secs(10), || {
            let text = relay.request("GET", "/metrics", &[], b"").text();
            !text.contains(&format!("primary=\"{dead}\""))
                && text.contains(&format!("primary=\"{now_primary}\"}} 1"))
        }),
        "the metrics follow the promoted replica: {}",
        metrics.value("pulsar_valkey_slot_map_refreshes_total")
    );
}

#[test]
fn replicated_acks_wait_for_each_primarys_replica_and_are_refused_without_it() {
    let mut cluster = ValkeyCluster::start();
    let relay = ready_relay(
        &cluster,
        &[
            ("PULSAR_STORAGE_ACK", "replicated"),
            ("PULSAR_STORAGE_MIN_REPLICAS", "1"),
            ("PULSAR_STORAGE_REPLICA_TIMEOUT", "500ms"),
            ("PULSAR_STORAGE_ACK_TIMEOUT", "3s"),
        ],
    );
    // One topic on each primary, both relay shards among them.
    let topics: Vec<String> = (0..3)
        .map(|p| topic_on_primary(&cluster, "rep", p % SHARDS, p))
        .collect();
    let mut http = relay.http();
    for topic in &topics {
        let receipt = http.publish(topic, r#"{"n":1}"#);
        // Acknowledged only once the primary's replica has it: the replica holds it now.
        let primary = cluster.owner_of(cluster.slot_of(&stream_key(topic)));
        let replica_port = cluster.nodes[primary + 3].port;
        let mut replica = RespClient::connect(replica_port, IO_TIMEOUT).unwrap();
        replica.command(&["READONLY"]).unwrap();
        let held = replica
            .command(&["XRANGE", &stream_key(topic), "-", "+"])
            .unwrap();
        assert_eq!(
            held.items().len(),
            1,
            "{topic}: the replica holds the message"
        );
        assert!(receipt["message_id"].is_string(), "{receipt}");
    }
    assert_eq!(
        relay.metrics().sum("pulsar_valkey_replica_timeouts_total"),
        0.0
    );

    // Primary 0 loses its replica: its topic's publishes are refused with the retryable
    // code within the replica timeout; the other primaries' topics are still acknowledged.
    cluster.kill9(3);
    let started = Instant::now();
    let refused = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        format!(r#"{{"topic":"{}","payload":2}}"#, topics[0]).as_bytes(),
    );
    refused.assert_error(503, "REPLICATION_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(relay.metrics().sum("pulsar_valkey_replica_timeouts_total") >= 1.0);
    for topic in &topics[1..] {
        relay.publish(topic, r#"{"n":3}"#);
    }
}

/// Item 4 of issue #12 in cluster mode: the primary holding some topics drops every relay
/// connection (`CLIENT KILL TYPE normal`, as a restart or an idle timeout does); the very
/// next history page and replay of each topic answer 200 with every message. The ring
/// holds one message per topic, so the rest comes from Valkey over connections that are
/// closed, and each read comes on a fresh HTTP connection (so on either shard): a closed
/// connection must be retried on a fresh one, not reported to the client. Several rounds,
/// a kill before each, so that every shard meets a killed connection.
#[test]
fn reads_right_after_a_primary_dropped_the_relays_connections_succeed_on_every_shard() {
    let cluster = ValkeyCluster::start();
    let relay = ready_relay(
        &cluster,
        &[
            ("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "1"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "1s"),
        ],
    );
    let topics: Vec<String> = (0..SHARDS)
        .map(|s| topic_on_primary(&cluster, "killed", s, 0))
        .collect();
    let published: Vec<Vec<String>> = topics
        .iter()
        .map(|topic| {
            (0..4)
                .map(|n| id_of(&relay.publish(topic, &format!(r#"{{"n":{n}}}"#))).to_string())
                .collect()
        })
        .collect();
    let token = rw_token();
    let primary = cluster.nodes[0].port;
    for round in 0..4 {
        // A shard whose connection was killed and not used since notices it on its idle
        // check and reconnects within about a second: wait for that, so that every shard
        // has a connection to lose.
        let deadline = Instant::now() + Duration::from_secs(10);
        while other_clients(primary) < SHARDS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let killed = cluster_command(primary, &["CLIENT", "KILL", "TYPE", "normal"]);
        assert!(killed.int() >= SHARDS as i64, "round {round}: {killed:?}");
        for (topic, expected) in topics.iter().zip(&published) {
            let page = relay.call(
                "GET",
                &format!("/api/v1/topics/{topic}/messages?limit=10&order=asc"),
                &token,
                &Value::Null,
            );
            page.assert_status(200);
            assert_eq!(
                &ids_in(&page.json()["messages"]),
                expected,
                "history of {topic}"
            );
            assert_eq!(&replayed(&relay, topic), expected, "replay of {topic}");
        }
    }
}

/// The normal (not pub/sub, not replica) client connections of Valkey at `port`, other
/// than the one asking.
fn other_clients(port: u16) -> usize {
    let list = cluster_command(port, &["CLIENT", "LIST", "TYPE", "normal"]);
    let lines = list.text().unwrap_or_default().lines().count();
    lines.saturating_sub(1)
}

/// The relay's sentinel keys on `primary` (index in `cluster.nodes`).
fn sentinels_on(cluster: &ValkeyCluster, primary: usize) -> Vec<String> {
    cluster_command(
        cluster.nodes[primary].port,
        &["KEYS", "pulsar:{relay*}:epoch"],
    )
    .items()
    .iter()
    .filter_map(Resp::text)
    .collect()
}

/// Data-loss detection covers every primary, not only the one serving `{relay}`: each
/// holds a sentinel of its own. Primary 1 (which does not serve `{relay}`'s slot) is
/// flushed and drops the relay's connections, as a primary restarted without its files
/// does: on reconnecting, each shard reports DATA LOSS naming that primary and counts it.
/// A sentinel whose slot was migrated to another primary (keys move with `MIGRATE`) is not
/// a loss, and the relay keeps working after the loss.
#[test]
fn a_primary_that_lost_its_data_is_reported_whichever_slots_it_serves() {
    let cluster = ValkeyCluster::start();
    let relay = ready_relay(&cluster, &[]);
    let relay_slot = cluster.slot_of("pulsar:{relay}:epoch");
    assert_eq!(cluster.owner_of(relay_slot), 0, "the harness's slot layout");
    for primary in 0..3 {
        assert_eq!(
            sentinels_on(&cluster, primary).len(),
            1,
            "primary {primary} holds one sentinel"
        );
    }
    let topic = topic_on_primary(&cluster, "lost", 0, 1);
    relay.publish(&topic, r#"{"n":1}"#);

    // Primary 2's sentinel moves to primary 0 with its slot; both drop the relay's
    // connections, and the relay finds the key on its new primary: no loss.
    let moved = sentinels_on(&cluster, 2).remove(0);
    cluster.migrate_slot(cluster.slot_of(&moved), 0, Duration::ZERO);
    assert!(sentinels_on(&cluster, 0).contains(&moved));
    for primary in [0, 2] {
        cluster_command(
            cluster.nodes[primary].port,
            &["CLIENT", "KILL", "TYPE", "normal"],
        );
    }
    relay.wait_ready(READY_TIMEOUT);

    let lost = cluster.nodes[1].port;
    assert!(matches!(
        cluster_command(lost, &["FLUSHALL"]),
        Resp::Simple(_)
    ));
    cluster_command(lost, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            relay.metrics().sum("pulsar_valkey_data_loss_total") >= SHARDS as f64
        }),
        "each shard reports the loss: {}",
        relay.stderr()
    );
    let stderr = relay.stderr();
    let reports: Vec<&str> = stderr.lines().filter(|l| l.contains("DATA LOSS")).collect();
    assert_eq!(reports.len(), SHARDS, "{stderr}");
    for report in reports {
        assert!(report.contains(&format!("127.0.0.1:{lost}")), "{report}");
    }
    assert_eq!(
        relay.metrics().sum("pulsar_valkey_data_loss_total"),
        SHARDS as f64
    );
    // The primary has a sentinel again and takes the topic's writes.
    relay.wait_ready(READY_TIMEOUT);
    assert_eq!(sentinels_on(&cluster, 1).len(), 1);
    let after = relay.publish(&topic, r#"{"n":2}"#);
    assert_eq!(cluster.stream_ids(&stream_key(&topic)), [id_of(&after)]);
}
