//! `Idempotency-Key` on `POST /api/v1/messages` and `/api/v1/messages/bulk`, against the
//! real binary: a retry gets the first answer and nothing is stored twice, concurrent
//! duplicates on separate connections publish once, duplicates of a publish in flight wait
//! for its answer (and are released at shutdown), keys are scoped per subject and per
//! endpoint, bad keys and reused keys are refused, a failed attempt (a bulk that published
//! nothing too) does not hold the key, answers expire with `limits.idempotency_window`, a
//! duplicate waits at most `limits.idempotency_wait` and too many are refused, and with
//! Valkey a retry after a relay restart still gets the first answer.
//!
//! What was stored is always checked by reading the topic back from the earliest message
//! (`GET /api/v1/poll?since=earliest`), never by trusting the answers.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

const SINGLE: &str = "/api/v1/messages";
const BULK: &str = "/api/v1/messages/bulk";
const REPLAYED: &str = "Idempotent-Replayed";

/// A key shaped like the Python client's (32 hex digits).
fn key(n: u32) -> String {
    format!("{:032x}", 0x5eed_0000_u128 + u128::from(n))
}

fn rw(subject: &str) -> String {
    token(subject, Permissions::READ | Permissions::WRITE)
}

fn request_bytes(path: &str, token: &str, key: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth_header(token);
    let mut headers = vec![auth.as_pair(), ("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    encode_request("POST", path, &headers, body.as_bytes())
}

/// One POST on a fresh connection, any status.
fn post(relay: &Relay, path: &str, token: &str, key: Option<&str>, body: &str) -> Response {
    let mut http = relay.http();
    http.send_raw(&request_bytes(path, token, key, body));
    http.read_response(true)
}

fn message(topic: &str, payload: Value) -> String {
    json!({"topic": topic, "payload": payload}).to_string()
}

/// The IDs `topic` holds, oldest first, read back with a long-poll from the earliest.
fn stored(relay: &Relay, topic: &str) -> Vec<String> {
    let resp = relay.poll(&format!(
        "topics={topic}&since=earliest&timeout=1&limit=1000"
    ));
    resp.assert_status(200);
    resp.json()["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| id_of(m).to_string())
        .collect()
}

#[track_caller]
fn assert_first(resp: &Response, status: u16) {
    resp.assert_status(status);
    assert_eq!(
        resp.header(REPLAYED),
        None,
        "a first answer is not marked replayed"
    );
}

#[track_caller]
fn assert_replay_of(resp: &Response, first: &Response) {
    resp.assert_status(first.status);
    assert_eq!(resp.header(REPLAYED), Some("true"));
    assert_eq!(
        resp.text(),
        first.text(),
        "the replay is the first answer verbatim"
    );
}

#[test]
fn same_key_twice_answers_the_first_receipt_and_stores_one_message() {
    let relay = Relay::start();
    let token = rw_token();
    let body = message("idem-twice", json!({"n": 1}));
    let k = key(1);
    let first = post(&relay, SINGLE, &token, Some(&k), &body);
    assert_first(&first, 201);
    // A retry on another connection, and one on a keep-alive connection.
    let again = post(&relay, SINGLE, &token, Some(&k), &body);
    assert_replay_of(&again, &first);
    let mut http = relay.http();
    for _ in 0..2 {
        http.send_raw(&request_bytes(SINGLE, &token, Some(&k), &body));
        assert_replay_of(&http.read_response(true), &first);
    }
    assert_eq!(stored(&relay, "idem-twice"), vec![id_of(&first.json())]);
}

#[test]
fn keys_are_scoped_per_subject() {
    let relay = Relay::start();
    let body = message("idem-subjects", json!({"n": 1}));
    let k = key(2);
    let alice = post(&relay, SINGLE, &rw("alice"), Some(&k), &body);
    let bob = post(&relay, SINGLE, &rw("bob"), Some(&k), &body);
    assert_first(&alice, 201);
    assert_first(&bob, 201);
    assert_ne!(id_of(&alice.json()), id_of(&bob.json()));
    assert_eq!(stored(&relay, "idem-subjects").len(), 2);
    let alice_again = post(&relay, SINGLE, &rw("alice"), Some(&k), &body);
    assert_replay_of(&alice_again, &alice);
}

#[test]
fn without_the_header_nothing_is_deduplicated() {
    let relay = Relay::start();
    let body = message("idem-none", json!({"n": 1}));
    let a = post(&relay, SINGLE, &rw_token(), None, &body);
    let b = post(&relay, SINGLE, &rw_token(), None, &body);
    assert_first(&a, 201);
    assert_first(&b, 201);
    assert_ne!(id_of(&a.json()), id_of(&b.json()));
    assert_eq!(stored(&relay, "idem-none").len(), 2);
}

#[test]
fn concurrent_duplicates_on_separate_connections_publish_once() {
    const DUPLICATES: usize = 20;
    let relay = Relay::start();
    // Connections must spread over several shards.
    const { assert!(SHARDS >= 2) };
    let token = rw_token();
    // Several keys, so that their owners and the topics' owners differ between rounds.
    for (round, topic) in ["idem-race-a", "idem-race-b"]
        .iter()
        .flat_map(|p| topics_on_each_shard(p))
        .enumerate()
    {
        let bytes = Arc::new(request_bytes(
            SINGLE,
            &token,
            Some(&key(100 + round as u32)),
            &message(&topic, json!({"round": round})),
        ));
        let start = Arc::new(Barrier::new(DUPLICATES));
        let senders: Vec<_> = (0..DUPLICATES)
            .map(|_| {
                let mut http = relay.http();
                let (bytes, start) = (Arc::clone(&bytes), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    http.send_raw(&bytes);
                    http.read_response(true)
                })
            })
            .collect();
        let answers: Vec<Response> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        let firsts: Vec<&Response> = answers
            .iter()
            .filter(|r| r.header(REPLAYED).is_none())
            .collect();
        assert_eq!(firsts.len(), 1, "exactly one request published");
        assert_first(firsts[0], 201);
        for answer in &answers {
            answer.assert_status(201);
            assert_eq!(
                answer.text(),
                firsts[0].text(),
                "every duplicate got the same answer"
            );
        }
        assert_eq!(stored(&relay, &topic), vec![id_of(&firsts[0].json())]);
    }
}

#[test]
fn bulk_replay_is_the_same_207_and_single_and_bulk_keys_do_not_collide() {
    let relay = Relay::start();
    let token = rw_token();
    let topics = topics_on_each_shard("idem-bulk");
    let body = json!({"messages": [
        {"topic": topics[0], "payload": {"n": 1}},
        {"topic": topics[1], "payload": {"n": 2}},
        {"topic": "not a topic", "payload": {"n": 3}},
        {"topic": topics[0], "payload": {"n": 4}},
    ]})
    .to_string();
    let k = key(3);
    let first = post(&relay, BULK, &token, Some(&k), &body);
    assert_first(&first, 207);
    assert_eq!(
        first.json()["summary"],
        json!({"total": 4, "accepted": 3, "rejected": 1})
    );
    let again = post(&relay, BULK, &token, Some(&k), &body);
    assert_replay_of(&again, &first);
    assert_eq!(stored(&relay, &topics[0]).len(), 2);
    assert_eq!(stored(&relay, &topics[1]).len(), 1);

    // The same key on the single endpoint is another key: it publishes.
    let single = post(
        &relay,
        SINGLE,
        &token,
        Some(&k),
        &message(&topics[1], json!({"n": 5})),
    );
    assert_first(&single, 201);
    assert_eq!(stored(&relay, &topics[1]).len(), 2);
}

#[test]
fn another_body_with_the_same_key_is_422_and_publishes_nothing() {
    let relay = Relay::start();
    let token = rw_token();
    let k = key(4);
    let first = post(
        &relay,
        SINGLE,
        &token,
        Some(&k),
        &message("idem-reuse", json!(1)),
    );
    assert_first(&first, 201);
    let other = post(
        &relay,
        SINGLE,
        &token,
        Some(&k),
        &message("idem-reuse", json!(2)),
    );
    other.assert_error(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(stored(&relay, "idem-reuse"), vec![id_of(&first.json())]);
}

#[test]
fn invalid_keys_are_422_and_publish_nothing() {
    let relay = Relay::start();
    let token = rw_token();
    let body = message("idem-invalid", json!(1));
    let long = "k".repeat(256);
    for bad in ["", "two words", "tab\there", "ключ", long.as_str()] {
        for path in [SINGLE, BULK] {
            let body = if path == BULK {
                format!(r#"{{"messages":[{body}]}}"#)
            } else {
                body.clone()
            };
            let resp = post(&relay, path, &token, Some(bad), &body);
            resp.assert_error(422, "INVALID_IDEMPOTENCY_KEY");
        }
    }
    // Two keys on one request are ambiguous.
    let auth = auth_header(&token);
    let mut http = relay.http();
    http.send_request(
        "POST",
        SINGLE,
        &[
            auth.as_pair(),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
        body.as_bytes(),
    );
    http.read_response(true)
        .assert_error(422, "INVALID_IDEMPOTENCY_KEY");
    assert!(stored(&relay, "idem-invalid").is_empty());
    // The longest key is fine.
    let longest = "k".repeat(255);
    assert_first(&post(&relay, SINGLE, &token, Some(&longest), &body), 201);
}

#[test]
fn a_failed_first_attempt_does_not_hold_the_key() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_PUBLISH_RATE", "1")]);
    let token = rw_token();
    let k = key(5);
    let body = message("idem-failed", json!({"n": 1}));

    // Invalid content: refused before the key is looked at.
    let mut http = relay.http();
    http.send_raw(&request_bytes(
        SINGLE,
        &token,
        Some(&k),
        r#"{"topic":"idem-failed"}"#,
    ));
    http.read_response(true).assert_error(422, "MISSING_FIELD");

    // Over the rate (buckets are per shard: one connection keeps to one): the key was
    // claimed and must be given up.
    http.send_raw(&request_bytes(
        SINGLE,
        &token,
        None,
        &message("idem-failed", json!(0)),
    ));
    assert_first(&http.read_response(true), 201);
    http.send_raw(&request_bytes(SINGLE, &token, Some(&k), &body));
    http.read_response(true).assert_error(429, "RATE_LIMITED");

    thread::sleep(Duration::from_millis(1100));
    http.send_raw(&request_bytes(SINGLE, &token, Some(&k), &body));
    let published = http.read_response(true);
    assert_first(&published, 201);
    http.send_raw(&request_bytes(SINGLE, &token, Some(&k), &body));
    assert_replay_of(&http.read_response(true), &published);
    assert_eq!(stored(&relay, "idem-failed").len(), 2);
}

#[test]
fn a_bulk_that_published_nothing_does_not_keep_its_key() {
    let relay = Relay::start();
    let token = rw_token();
    let k = key(12);
    let topic = "idem-bulk-none";
    let nothing = json!({"messages": [
        {"topic": "not a topic!", "payload": 1},
        {"topic": topic},
    ]})
    .to_string();
    let refused = post(&relay, BULK, &token, Some(&k), &nothing);
    assert_first(&refused, 207);
    assert_eq!(
        refused.json()["summary"]["accepted"],
        0,
        "{}",
        refused.text()
    );
    // Its retry is handled anew, not replayed...
    assert_first(&post(&relay, BULK, &token, Some(&k), &nothing), 207);
    // ...and the key is free for another body, which publishes.
    let good = json!({"messages": [{"topic": topic, "payload": 2}]}).to_string();
    let published = post(&relay, BULK, &token, Some(&k), &good);
    assert_first(&published, 207);
    assert_eq!(published.json()["summary"]["accepted"], 1);
    assert_replay_of(&post(&relay, BULK, &token, Some(&k), &good), &published);
    assert_eq!(stored(&relay, topic).len(), 1);
}

/// With Valkey (one shard, so that one owner publishes the whole bulk): a bulk publish of
/// which Valkey refused one message's write (its stream key holds a string) answers 207
/// with the others accepted and that one `STORE_REJECTED`, and the key keeps that answer:
/// its retry replays it and stores nothing twice.
#[test]
fn a_bulk_partly_refused_by_valkey_keeps_its_key() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_SERVER_SHARDS", "1")]);
    relay.wait_ready(Duration::from_secs(10));
    valkey.command(&["SET", &stream_key("idem-refused"), "not a stream"]);
    let token = rw_token();
    let k = key(13);
    let body = json!({"messages": [
        {"topic": "idem-written", "payload": 1},
        {"topic": "idem-refused", "payload": 2},
    ]})
    .to_string();
    let first = post(&relay, BULK, &token, Some(&k), &body);
    assert_first(&first, 207);
    let answer = first.json();
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"][1]["error"]["code"], "STORE_REJECTED",
        "{answer}"
    );
    assert_replay_of(&post(&relay, BULK, &token, Some(&k), &body), &first);
    assert_eq!(
        valkey.xrange(&stream_key("idem-written")).len(),
        1,
        "stored once"
    );
}

/// With Valkey, one shard: a bulk publish of which Valkey refused every write answers 207
/// with every item `STORE_REJECTED` and none accepted, and still keeps its key, unlike a
/// bulk refused before publishing: each message was delivered live from memory, so a
/// retry must replay the answer, not deliver them again.
#[test]
fn a_bulk_entirely_refused_by_valkey_keeps_its_key() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_SERVER_SHARDS", "1")]);
    relay.wait_ready(Duration::from_secs(10));
    let topics = ["idem-all-refused-a", "idem-all-refused-b"];
    for topic in topics {
        valkey.command(&["SET", &stream_key(topic), "not a stream"]);
    }
    let token = rw_token();
    let k = key(14);
    let body = json!({"messages": [
        {"topic": topics[0], "payload": 1},
        {"topic": topics[1], "payload": 2},
    ]})
    .to_string();
    let first = post(&relay, BULK, &token, Some(&k), &body);
    assert_first(&first, 207);
    let answer = first.json();
    assert_eq!(answer["summary"]["accepted"], 0, "{answer}");
    for item in 0..2 {
        assert_eq!(
            answer["results"][item]["error"]["code"], "STORE_REJECTED",
            "{answer}"
        );
    }
    assert_replay_of(&post(&relay, BULK, &token, Some(&k), &body), &first);
    for topic in topics {
        assert_eq!(
            stored(&relay, topic).len(),
            1,
            "{topic}: delivered from memory once, not again by the retry"
        );
    }
}

#[test]
fn answers_expire_with_the_window() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_IDEMPOTENCY_WINDOW", "1s")]);
    let token = rw_token();
    let k = key(6);
    let body = message("idem-window", json!({"n": 1}));
    let first = post(&relay, SINGLE, &token, Some(&k), &body);
    assert_first(&first, 201);
    assert_replay_of(&post(&relay, SINGLE, &token, Some(&k), &body), &first);
    thread::sleep(Duration::from_millis(1300));
    let later = post(&relay, SINGLE, &token, Some(&k), &body);
    assert_first(&later, 201);
    assert_ne!(id_of(&later.json()), id_of(&first.json()));
    assert_eq!(stored(&relay, "idem-window").len(), 2);
}

#[test]
fn with_valkey_a_retry_after_a_relay_restart_gets_the_first_answer() {
    const READY: Duration = Duration::from_secs(10);
    let valkey = Valkey::start();
    let mut relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(READY);
    let token = rw_token();
    let topics = topics_on_each_shard("idem-restart");
    let (k_single, k_bulk) = (key(7), key(8));
    let single_body = message(&topics[0], json!({"n": 1}));
    let bulk_body = json!({"messages": [
        {"topic": topics[0], "payload": {"n": 2}},
        {"topic": topics[1], "payload": {"n": 3}},
    ]})
    .to_string();
    let single = post(&relay, SINGLE, &token, Some(&k_single), &single_body);
    assert_first(&single, 201);
    let bulk = post(&relay, BULK, &token, Some(&k_bulk), &bulk_body);
    assert_first(&bulk, 207);

    // The answers are in Valkey, expiring with the window.
    let record = format!("pulsar:idem:{{tester}}:single:{k_single}");
    let value = valkey
        .command(&["GET", &record])
        .text()
        .expect("record stored");
    assert!(
        value.starts_with("201 ") && value.ends_with(&single.text()),
        "{value}"
    );
    let ttl = valkey.command(&["PTTL", &record]).int();
    assert!((1..=600_000).contains(&ttl), "TTL {ttl} ms");

    relay.kill9();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(READY);
    assert_replay_of(
        &post(&relay, SINGLE, &token, Some(&k_single), &single_body),
        &single,
    );
    assert_replay_of(
        &post(&relay, BULK, &token, Some(&k_bulk), &bulk_body),
        &bulk,
    );
    // The body hash survives too.
    let other = message(&topics[0], json!({"n": 9}));
    post(&relay, SINGLE, &token, Some(&k_single), &other)
        .assert_error(422, "IDEMPOTENCY_KEY_REUSED");

    assert_eq!(valkey.xlen(&stream_key(&topics[0])), 2);
    assert_eq!(valkey.xlen(&stream_key(&topics[1])), 1);
    let mut want = vec![id_of(&single.json()).to_string()];
    want.push(id_of(&bulk.json()["results"][0]).to_string());
    assert_eq!(stored(&relay, &topics[0]), want);
}

/// Sends `bytes` on a fresh connection from another thread and returns the answer.
fn post_in_thread(relay: &Relay, bytes: &[u8]) -> thread::JoinHandle<Response> {
    let mut http = relay.http();
    let bytes = bytes.to_vec();
    thread::spawn(move || {
        http.send_raw(&bytes);
        http.read_response(true)
    })
}

/// A first request whose publish Valkey holds back (`CLIENT PAUSE … WRITE`, persisted
/// acks), so that duplicates certainly arrive while it is in flight.
fn first_held_back(
    valkey: &Valkey,
    relay: &Relay,
    pause_ms: u64,
    bytes: &[u8],
) -> thread::JoinHandle<Response> {
    valkey.command(&["CLIENT", "PAUSE", &pause_ms.to_string(), "WRITE"]);
    let first = post_in_thread(relay, bytes);
    thread::sleep(Duration::from_millis(300));
    assert!(!first.is_finished(), "the first publish was not held back");
    first
}

#[test]
fn duplicates_of_a_publish_in_flight_wait_for_its_answer() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_STORAGE_ACK", "persisted")]);
    relay.wait_ready(Duration::from_secs(10));
    let topic = "idem-in-flight";
    let bytes = request_bytes(
        SINGLE,
        &rw_token(),
        Some(&key(9)),
        &message(topic, json!(1)),
    );
    let mut senders = vec![first_held_back(&valkey, &relay, 1500, &bytes)];
    senders.extend((0..6).map(|_| post_in_thread(&relay, &bytes)));
    let answers: Vec<Response> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    // Normally the request sent first publishes; which one did does not matter.
    let (firsts, replays): (Vec<&Response>, Vec<&Response>) =
        answers.iter().partition(|r| r.header(REPLAYED).is_none());
    assert_eq!(firsts.len(), 1, "exactly one request published");
    assert_first(firsts[0], 201);
    for replay in replays {
        assert_replay_of(replay, firsts[0]);
    }
    assert_eq!(stored(&relay, topic), vec![id_of(&firsts[0].json())]);
    assert_eq!(valkey.xlen(&stream_key(topic)), 1);
}

#[test]
fn a_waiting_duplicate_is_answered_at_shutdown_and_the_first_publish_completes() {
    let valkey = Valkey::start();
    let mut relay = Relay::start_on_valkey(&valkey, &[("PULSAR_STORAGE_ACK", "persisted")]);
    relay.wait_ready(Duration::from_secs(10));
    let topic = "idem-shutdown";
    let bytes = request_bytes(
        SINGLE,
        &rw_token(),
        Some(&key(10)),
        &message(topic, json!(1)),
    );
    let first = first_held_back(&valkey, &relay, 2500, &bytes);
    let duplicate = post_in_thread(&relay, &bytes);
    thread::sleep(Duration::from_millis(300));
    relay.terminate();
    // The waiting request is answered at once; the publishing one when Valkey resumes.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while !first.is_finished() && !duplicate.is_finished() {
        assert!(
            Instant::now() < deadline,
            "shutdown did not answer the waiting duplicate"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (waiter, publisher) = if duplicate.is_finished() {
        (duplicate, first)
    } else {
        (first, duplicate)
    };
    assert!(
        !publisher.is_finished(),
        "the waiter was answered only once Valkey resumed"
    );
    let refused = waiter.join().unwrap();
    refused.assert_error(503, "IDEMPOTENCY_KEY_IN_FLIGHT");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert_first(&publisher.join().unwrap(), 201);
    assert!(relay.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(valkey.xlen(&stream_key(topic)), 1);
}

#[test]
fn a_duplicate_waits_at_most_idempotency_wait_and_one_over_the_waiter_bound_is_busy() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(
        &valkey,
        &[
            ("PULSAR_STORAGE_ACK", "persisted"),
            ("PULSAR_LIMITS_IDEMPOTENCY_WAIT", "500ms"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topic = "idem-wait";
    let bytes = request_bytes(
        SINGLE,
        &rw_token(),
        Some(&key(11)),
        &message(topic, json!(1)),
    );
    let first = first_held_back(&valkey, &relay, 1600, &bytes);
    // 257 duplicates, one connection each, all sent before any answer is read: 256 may
    // wait on one key, the 257th is refused at once.
    let sent = Instant::now();
    let mut duplicates: Vec<Http> = (0..257)
        .map(|_| {
            let mut http = relay.http();
            http.send_raw(&bytes);
            http
        })
        .collect();
    // Until the wait runs out (500 ms after each claim, so after `sent`), only the refusal
    // can be there.
    let answered = || {
        duplicates
            .iter()
            .filter(|http| {
                http.stream.set_nonblocking(true).unwrap();
                let ready = http.stream.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
                http.stream.set_nonblocking(false).unwrap();
                ready
            })
            .count()
    };
    let mut answered_early = answered();
    while answered_early == 0 && sent.elapsed() < Duration::from_millis(350) {
        thread::sleep(Duration::from_millis(20));
        answered_early = answered();
    }
    assert!(
        sent.elapsed() < Duration::from_millis(600),
        "too slow to tell"
    );
    assert_eq!(answered_early, 1, "answers before the wait ran out");
    let answers: Vec<Response> = duplicates
        .iter_mut()
        .map(|http| http.read_response(true))
        .collect();
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the waiting duplicates were answered after {waited:?}"
    );
    assert!(
        !first.is_finished(),
        "the duplicates were answered only once the first publish completed"
    );
    let busy: Vec<&Response> = answers
        .iter()
        .filter(|r| r.code() == "IDEMPOTENCY_BUSY")
        .collect();
    assert_eq!(busy.len(), 1);
    busy[0].assert_error(503, "IDEMPOTENCY_BUSY");
    assert_eq!(busy[0].header("Retry-After"), Some("1"));
    for resp in answers.iter().filter(|r| r.code() != "IDEMPOTENCY_BUSY") {
        resp.assert_error(503, "IDEMPOTENCY_KEY_IN_FLIGHT");
        assert_eq!(resp.header("Retry-After"), Some("1"));
    }
    // The first publish completes; the key then answers with it.
    let published = first.join().unwrap();
    assert_first(&published, 201);
    let mut retry = relay.http();
    retry.send_raw(&bytes);
    assert_replay_of(&retry.read_response(true), &published);
    assert_eq!(valkey.xlen(&stream_key(topic)), 1);
}
