//! The Valkey link as production meets it (issue #12): a Valkey killed and restarted under
//! the relay, a stalled link under a Topics API change (the publish side of a stall is in
//! `tests/faults.rs`), and replicated acknowledgements against a real primary and replica (two
//! `valkey-server` processes, `--replicaof`). Nothing is mocked; timeouts are short so each
//! test takes seconds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pulsar_faultproxy::{Direction, FaultProxy};
use serde_json::{json, Value};

/// Slack on top of a configured timeout for the relay to act on it (its connection clock
/// ticks every 250 ms, and the machine is shared).
const SLACK: Duration = Duration::from_millis(1500);

/// The IDs of a history page or poll answer, in order.
fn ids(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| id_of(m).to_string())
        .collect()
}

fn get(relay: &Relay, path: &str) -> Response {
    relay.request("GET", path, &[auth_header(&rw_token()).as_pair()], b"")
}

// ---------------------------------------------------------------------------------------
// Reconnects
// ---------------------------------------------------------------------------------------

/// Valkey killed (-9) and restarted on the same port: the very next history reads succeed
/// with the right messages, through `GET /api/v1/topics/{t}/messages` and
/// `GET /api/v1/poll?since=earliest`, for a topic owned by each shard, each on a fresh
/// connection (so on either shard). The ring holds one message per topic, so the rest comes
/// from Valkey over links whose connections Valkey's death closed: a shard must not report
/// that to a client while a fresh connection would do.
#[test]
fn history_reads_right_after_a_valkey_restart_succeed_on_every_shard() {
    let mut valkey = Valkey::start();
    let relay = Relay::start_on_valkey(
        &valkey,
        &[
            ("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "1"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "1s"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topics = topics_on_each_shard("restarted");
    let published: Vec<Vec<String>> = topics
        .iter()
        .map(|topic| {
            (0..4)
                .map(|n| id_of(&relay.publish(topic, &format!(r#"{{"n":{n}}}"#))).to_string())
                .collect()
        })
        .collect();

    // Down for a second, as a restart takes: the links lose their connections at once and
    // are between two reconnect attempts when the reads come.
    valkey.kill9();
    std::thread::sleep(Duration::from_secs(1));
    valkey.restart_same_dir();

    for _round in 0..3 {
        for (topic, expected) in topics.iter().zip(&published) {
            let page = get(
                &relay,
                &format!("/api/v1/topics/{topic}/messages?limit=10&order=asc"),
            );
            page.assert_status(200);
            assert_eq!(&ids(&page.json()), expected, "history of {topic}");
            let poll = get(
                &relay,
                &format!("/api/v1/poll?topics={topic}&since=earliest&timeout=1"),
            );
            poll.assert_status(200);
            assert_eq!(&ids(&poll.json()), expected, "poll of {topic}");
        }
    }
    // Both shards follow the restart within a second of it.
    relay.wait_ready(Duration::from_secs(1) + SLACK);
}

/// Every shard's view of the link, and `/ready`, follow Valkey going away and coming back
/// within a second, without any traffic (an idle connection is watched for Valkey closing
/// it; reconnect attempts are at most about half a second apart).
#[test]
fn ready_follows_valkey_down_and_up_within_a_second() {
    let mut valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(10));
    // Long enough down for the reconnect backoff to reach its cap.
    valkey.kill9();
    let killed = Instant::now();
    relay.wait_not_ready(Duration::from_secs(1) + SLACK);
    let noticed = killed.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    valkey.restart_same_dir();
    let restarted = Instant::now();
    relay.wait_ready(Duration::from_secs(1) + SLACK);
    eprintln!(
        "unready {noticed:?} after the kill, ready {:?} after the restart",
        restarted.elapsed()
    );
    assert!(
        noticed < Duration::from_secs(1) + Duration::from_millis(500),
        "/ready noticed a dead Valkey after {noticed:?}"
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(1) + Duration::from_millis(500),
        "/ready noticed Valkey back after {:?}",
        restarted.elapsed()
    );
}

/// With the Valkey link stalled (bytes stop, the connection stays open), a Topics API
/// change waits for its record's write at most `storage.ack_timeout`, then gets 503
/// `PERSIST_TIMEOUT` with `Retry-After`; the write stays queued and reaches Valkey once the
/// link flows.
#[test]
fn a_topic_change_during_a_stall_is_answered_within_ack_timeout_and_written_after() {
    const ACK_TIMEOUT: Duration = Duration::from_secs(1);
    let valkey = Valkey::start();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], valkey.port)))
        .expect("start the fault proxy");
    let relay = Relay::start_on_valkey_port(
        proxy.port(),
        &[
            ("PULSAR_STORAGE_ACK_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_COMMAND_TIMEOUT", "1s"),
            ("PULSAR_VALKEY_CONNECT_TIMEOUT", "500ms"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("stalled-record", 1);
    relay.publish(&topic, r#"{"n":0}"#);
    // Read once, so that its owner has the record in memory and the change needs no read.
    get(&relay, &format!("/api/v1/topics/{topic}")).assert_status(200);
    let record_key = format!("pulsar:{{{topic}}}:t");

    proxy.stall(Direction::Both);
    let sent = Instant::now();
    let admin = token("admin", pulsar_relay::auth::Permissions::ADMIN);
    let changed = relay.request(
        "PUT",
        &format!("/api/v1/topics/{topic}"),
        &[
            auth_header(&admin).as_pair(),
            ("Content-Type", "application/json"),
        ],
        br#"{"description":"during the stall"}"#,
    );
    let waited = sent.elapsed();
    changed.assert_error(503, "PERSIST_TIMEOUT");
    assert!(
        changed.header("retry-after").is_some(),
        "{:?}",
        changed.headers
    );
    assert!(
        waited >= ACK_TIMEOUT - Duration::from_millis(100) && waited < ACK_TIMEOUT + SLACK,
        "answered after {waited:?}; storage.ack_timeout is {ACK_TIMEOUT:?}"
    );

    proxy.flow(Direction::Both);
    let written = eventually(Duration::from_secs(15), || {
        valkey.command(&["HGET", &record_key, "description"]).text()
            == Some("during the stall".into())
    });
    assert!(written, "the change never reached Valkey");
}

// ---------------------------------------------------------------------------------------
// Replicated acknowledgements
// ---------------------------------------------------------------------------------------

/// `storage.replica_timeout` of the replicated-acks test.
const REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

fn bulk(relay: &Relay, topic: &str, count: usize) -> Value {
    let messages: Vec<Value> = (0..count)
        .map(|n| json!({"topic": topic, "payload": {"n": n}}))
        .collect();
    let resp = relay.request(
        "POST",
        "/api/v1/messages/bulk",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
        ],
        json!({ "messages": messages }).to_string().as_bytes(),
    );
    resp.assert_status(207);
    resp.json()
}

fn post(relay: &Relay, topic: &str, payload: &str) -> Response {
    relay.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"topic":"{topic}","payload":{payload}}}"#).as_bytes(),
    )
}

/// `storage.ack: replicated` with a primary and one replica: a publish is acknowledged once
/// the replica has it (it is readable there at once), with one `WAIT` per pipeline (a bulk
/// of 50 takes one or two, not 50). With the replica stopped, a publish is refused with 503
/// `REPLICATION_TIMEOUT` and `Retry-After` within `storage.replica_timeout` (the primary
/// has the write; no replica does), bulk items are rejected with that code, and the
/// shortfall is counted; with the replica back, publishes are acknowledged again.
#[test]
fn replicated_acks_wait_for_the_replica_and_are_refused_without_it() {
    let primary = Valkey::start();
    let mut replica = primary.start_replica();
    let relay = Relay::start_on_valkey(
        &primary,
        &[
            ("PULSAR_STORAGE_ACK", "replicated"),
            ("PULSAR_STORAGE_MIN_REPLICAS", "1"),
            ("PULSAR_STORAGE_REPLICA_TIMEOUT", "500ms"),
            ("PULSAR_STORAGE_ACK_TIMEOUT", "3s"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topic = topic_on("replicated", 0);
    let key = stream_key(&topic);

    let first = relay.publish(&topic, r#"{"n":"first"}"#);
    assert_eq!(replica.stream_ids(&key), [id_of(&first)]);

    let waits_before = primary.calls("wait");
    let page = bulk(&relay, &topic, 50);
    assert_eq!(page["summary"]["accepted"], 50, "{page}");
    let waits = primary.calls("wait") - waits_before;
    assert!(
        (1..=2).contains(&waits),
        "a bulk of 50 took {waits} WAITs: one per pipeline, not one per message"
    );
    assert_eq!(
        replica.xlen(&key),
        51,
        "acknowledged but not on the replica"
    );

    replica.kill9();
    let on_primary = primary.xlen(&key);
    let sent = Instant::now();
    let refused = post(&relay, &topic, r#"{"n":"refused"}"#);
    let waited = sent.elapsed();
    refused.assert_error(503, "REPLICATION_TIMEOUT");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    assert!(
        waited >= REPLICA_TIMEOUT - Duration::from_millis(100) && waited < REPLICA_TIMEOUT + SLACK,
        "answered after {waited:?}; storage.replica_timeout is {REPLICA_TIMEOUT:?}"
    );
    assert_eq!(
        primary.xlen(&key),
        on_primary + 1,
        "the refused publish is on the primary (only not on enough replicas)"
    );
    let page = bulk(&relay, &topic, 3);
    assert_eq!(page["summary"]["accepted"], 0, "{page}");
    for item in page["results"].as_array().unwrap() {
        assert_eq!(item["error"]["code"], "REPLICATION_TIMEOUT", "{item}");
    }
    assert!(relay.metrics().sum("pulsar_valkey_replica_timeouts_total") >= 2.0);

    replica.restart_same_dir();
    primary.wait_replicas(1);
    // The replica's first acknowledgements after a full resync may lag it a little: each
    // refusal meanwhile is the honest answer, so retry for a few seconds.
    let mut after = None;
    let acknowledged = eventually(Duration::from_secs(5), || {
        let resp = post(&relay, &topic, r#"{"n":"after"}"#);
        after = (resp.status == 201).then(|| resp.json());
        after.is_some()
    });
    assert!(
        acknowledged,
        "publishes were not acknowledged again with the replica back"
    );
    let after = after.unwrap();
    let on_replica = replica.stream_ids(&key);
    assert_eq!(on_replica.last().map(String::as_str), Some(id_of(&after)));
    assert_eq!(on_replica.len() as i64, primary.xlen(&key));
}

// ---------------------------------------------------------------------------------------
// Replicated acks and Idempotency-Key
// ---------------------------------------------------------------------------------------

/// A publish with an `Idempotency-Key` (a single message unless `path` says bulk).
fn post_keyed(relay: &Relay, path: &str, key: &str, body: &str) -> Response {
    relay.request(
        "POST",
        path,
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        body.as_bytes(),
    )
}

/// The stream entries of `key` whose payload is `payload`.
fn entries_with(valkey: &Valkey, key: &str, payload: &str) -> Vec<String> {
    valkey
        .xrange(key)
        .into_iter()
        .filter(|e| e.field("p") == Some(payload))
        .map(|e| e.id)
        .collect()
}

/// The replicated-acks tests' end: the single publish `body` with `key` replays its 201
/// naming `written[0]`, and the stream (on `primary`) holds that message and each bulk
/// message once.
#[track_caller]
fn assert_replayed_and_stored_once(
    relay: &Relay,
    (primary, stream): (&Valkey, &str),
    key: &str,
    body: &str,
    written: &[String],
) {
    let replayed = post_keyed(relay, "/api/v1/messages", key, body);
    replayed.assert_status(201);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(id_of(&replayed.json()), written[0]);
    assert_eq!(entries_with(primary, stream, r#""once""#), written);
    for payload in [r#""bulk-a""#, r#""bulk-b""#] {
        assert_eq!(entries_with(primary, stream, payload).len(), 1, "{payload}");
    }
}

/// A relay with replicated acks on `primary` (one replica wanted, `replica_timeout`).
fn replicated_relay(primary: &Valkey, replica_timeout: &str, ack_timeout: &str) -> Relay {
    replicated_with(primary, replica_timeout, ack_timeout, &[])
}

fn replicated_with(
    primary: &Valkey,
    replica_timeout: &str,
    ack_timeout: &str,
    more: &[(&str, &str)],
) -> Relay {
    let mut env = vec![
        ("PULSAR_STORAGE_ACK", "replicated"),
        ("PULSAR_STORAGE_MIN_REPLICAS", "1"),
        ("PULSAR_STORAGE_REPLICA_TIMEOUT", replica_timeout),
        ("PULSAR_STORAGE_ACK_TIMEOUT", ack_timeout),
        ("PULSAR_LIMITS_IDEMPOTENCY_WAIT", "5s"),
    ];
    env.extend_from_slice(more);
    let relay = Relay::start_on_valkey(primary, &env);
    relay.wait_ready(Duration::from_secs(10));
    relay
}

/// Publishes to `topic` until a publish is acknowledged (the replica's first
/// acknowledgements may lag `storage.replica_timeout` on a loaded machine): the topic
/// exists and replication is flowing before the test cuts it.
fn warm_up(relay: &Relay, topic: &str) {
    assert!(
        eventually(Duration::from_secs(5), || post(relay, topic, r#""warm""#)
            .status
            == 201),
        "no publish was acknowledged with the replica up"
    );
}

/// Retries `body` with `key` until it is answered 201 (the replica back after a full
/// resync may take a moment to acknowledge); the 201.
fn retried_until_confirmed(relay: &Relay, key: &str, body: &str) -> Value {
    let mut answer = None;
    let confirmed = eventually(Duration::from_secs(8), || {
        let resp = post_keyed(relay, "/api/v1/messages", key, body);
        if resp.status != 201 {
            resp.assert_error(503, resp.json()["code"].as_str().unwrap_or("?"));
        }
        answer = (resp.status == 201).then(|| resp.json());
        answer.is_some()
    });
    assert!(confirmed, "the retry was never confirmed");
    answer.unwrap()
}

/// `storage.ack: replicated` and an `Idempotency-Key`: with the replica gone, a publish is
/// answered 503 `REPLICATION_TIMEOUT` while its message is in the primary's stream, and
/// the key stays bound to that message: a retry while the replica is still gone is 503
/// again and writes nothing; once the replica is back a retry answers 201 with the
/// message's ID (the one the primary holds), and later retries replay that answer. The
/// stream holds the message exactly once. A key whose message vanished from the stream
/// is published again by its retry. A bulk publish with a key keeps its 207: its retry
/// gets the same answer and publishes nothing twice.
#[test]
fn a_key_refused_for_replication_stays_bound_to_its_message_and_a_retry_confirms_it() {
    let primary = Valkey::start();
    let mut replica = primary.start_replica();
    let relay = replicated_relay(&primary, "500ms", "3s");
    let topic = topic_on("keyed", 1);
    let key = stream_key(&topic);
    warm_up(&relay, &topic);

    replica.kill9();
    let body = format!(r#"{{"topic":"{topic}","payload":"once"}}"#);
    post_keyed(&relay, "/api/v1/messages", "k-once", &body)
        .assert_error(503, "REPLICATION_TIMEOUT");
    let written = entries_with(&primary, &key, r#""once""#);
    assert_eq!(written.len(), 1, "the primary has the message");
    post_keyed(&relay, "/api/v1/messages", "k-once", &body)
        .assert_error(503, "REPLICATION_TIMEOUT");
    assert_eq!(entries_with(&primary, &key, r#""once""#), written);

    // Another key's message disappears from the stream (as a failover to a replica that
    // never had it would lose it): its retry will publish it again, once.
    let gone_body = format!(r#"{{"topic":"{topic}","payload":"gone"}}"#);
    post_keyed(&relay, "/api/v1/messages", "k-gone", &gone_body)
        .assert_error(503, "REPLICATION_TIMEOUT");
    let lost = entries_with(&primary, &key, r#""gone""#);
    assert_eq!(primary.command(&["XDEL", &key, &lost[0]]).int(), 1);

    let bulk_body = json!({"messages": [
        {"topic": topic, "payload": "bulk-a"},
        {"topic": topic, "payload": "bulk-b"},
    ]})
    .to_string();
    let first = post_keyed(&relay, "/api/v1/messages/bulk", "k-bulk", &bulk_body);
    first.assert_status(207);
    assert_eq!(
        first.json()["results"][0]["error"]["code"],
        "REPLICATION_TIMEOUT",
        "{}",
        first.text()
    );
    let again = post_keyed(&relay, "/api/v1/messages/bulk", "k-bulk", &bulk_body);
    again.assert_status(207);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());

    replica.restart_same_dir();
    primary.wait_replicas(1);
    let confirmed = retried_until_confirmed(&relay, "k-once", &body);
    assert_eq!(id_of(&confirmed), written[0], "the message already written");
    assert!(
        replica.stream_ids(&key).contains(&written[0]),
        "confirmed, so the replica has it"
    );
    let stored = (&primary, key.as_str());
    assert_replayed_and_stored_once(&relay, stored, "k-once", &body, &written);
    let republished = retried_until_confirmed(&relay, "k-gone", &gone_body);
    assert_ne!(id_of(&republished), lost[0], "published anew");
    assert_eq!(
        entries_with(&primary, &key, r#""gone""#),
        [id_of(&republished)]
    );
}

/// The same through `storage.ack_timeout`: with the replica gone, a publish with a key
/// queued behind another publish's pipeline (whose `WAIT` runs its full
/// `replica_timeout`) is answered 503 `PERSIST_TIMEOUT` before its own `WAIT` reports; a
/// retry waits for that first publish, finds its message written but not replicated, and
/// is refused again without writing; once the replica is back a retry gets 201 with that
/// message's ID, written once.
#[test]
fn a_key_answered_persist_timeout_never_publishes_twice() {
    let primary = Valkey::start();
    let mut replica = primary.start_replica();
    let relay = replicated_relay(&primary, "1000ms", "1100ms");
    let topic = topic_on("late", 0);
    let key = stream_key(&topic);
    warm_up(&relay, &topic);

    replica.kill9();
    let body = format!(r#"{{"topic":"{topic}","payload":"late"}}"#);
    std::thread::scope(|s| {
        let ahead = s.spawn(|| post(&relay, &topic, r#""ahead""#));
        std::thread::sleep(Duration::from_millis(400));
        post_keyed(&relay, "/api/v1/messages", "k-late", &body)
            .assert_error(503, "PERSIST_TIMEOUT");
        ahead
            .join()
            .unwrap()
            .assert_error(503, "REPLICATION_TIMEOUT");
    });
    let retry = post_keyed(&relay, "/api/v1/messages", "k-late", &body);
    assert_eq!(retry.status, 503, "{}", retry.text());
    let written = entries_with(&primary, &key, r#""late""#);
    assert_eq!(written.len(), 1, "{}", retry.text());

    replica.restart_same_dir();
    primary.wait_replicas(1);
    let confirmed = retried_until_confirmed(&relay, "k-late", &body);
    assert_eq!(id_of(&confirmed), written[0]);
    assert_eq!(entries_with(&primary, &key, r#""late""#), written);
}

/// Cluster mode (`cluster.enabled`, three nodes of one shard on the primary): a publish
/// with a key answered 503 `REPLICATION_TIMEOUT` keeps the key bound to the message the
/// primary wrote, as on a single relay. A retry on any node is 503 again while the replica
/// is away and writes nothing; once it is back, a retry on another node answers 201 with
/// that message's ID, and the first node replays it. A bulk publish keeps its 207 on every
/// node. Each message is in the stream once.
#[test]
fn in_cluster_mode_a_key_refused_for_replication_stays_bound_on_every_node() {
    let primary = Valkey::start();
    let mut replica = primary.start_replica();
    let cluster = [
        ("PULSAR_CLUSTER_ENABLED", "true"),
        ("PULSAR_SERVER_SHARDS", "1"),
    ];
    let nodes: Vec<Relay> = (0..3)
        .map(|_| replicated_with(&primary, "500ms", "3s", &cluster))
        .collect();
    let topic = "keyed-nodes";
    let key = stream_key(topic);
    warm_up(&nodes[0], topic);

    replica.kill9();
    let body = format!(r#"{{"topic":"{topic}","payload":"once"}}"#);
    post_keyed(&nodes[0], "/api/v1/messages", "k-nodes", &body)
        .assert_error(503, "REPLICATION_TIMEOUT");
    let written = entries_with(&primary, &key, r#""once""#);
    assert_eq!(written.len(), 1, "the primary has the message");
    for node in [&nodes[1], &nodes[2], &nodes[0]] {
        post_keyed(node, "/api/v1/messages", "k-nodes", &body)
            .assert_error(503, "REPLICATION_TIMEOUT");
    }
    assert_eq!(entries_with(&primary, &key, r#""once""#), written);

    let bulk_body = json!({"messages": [
        {"topic": topic, "payload": "bulk-a"},
        {"topic": topic, "payload": "bulk-b"},
    ]})
    .to_string();
    let first = post_keyed(
        &nodes[0],
        "/api/v1/messages/bulk",
        "k-nodes-bulk",
        &bulk_body,
    );
    first.assert_status(207);
    assert_eq!(
        first.json()["results"][1]["error"]["code"],
        "REPLICATION_TIMEOUT",
        "{}",
        first.text()
    );
    let again = post_keyed(
        &nodes[1],
        "/api/v1/messages/bulk",
        "k-nodes-bulk",
        &bulk_body,
    );
    again.assert_status(207);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());

    replica.restart_same_dir();
    primary.wait_replicas(1);
    let confirmed = retried_until_confirmed(&nodes[2], "k-nodes", &body);
    assert_eq!(id_of(&confirmed), written[0], "the message already written");
    let stored = (&primary, key.as_str());
    assert_replayed_and_stored_once(&nodes[0], stored, "k-nodes", &body, &written);
}
