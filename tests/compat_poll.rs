//! The original Python relay's long-poll endpoint, `POST /messages/poll`, against the real
//! binary: validation as the original does it, the catch-up semantics its client relies
//! on, waiting, permissions, per-user namespaces, cursors across relay
//! restarts and from Valkey beyond the hot ring, and `GET /messages/poll/stats`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

/// `POST /messages/poll` with `token` on a fresh connection (read timeout beyond any poll
/// timeout).
fn poll_as(relay: &Relay, token: &str, body: &Value) -> Response {
    poll_raw(relay, token, body.to_string().as_bytes())
}

fn poll_raw(relay: &Relay, token: &str, body: &[u8]) -> Response {
    let mut http = relay.http();
    http.set_read_timeout(Duration::from_secs(75));
    http.request(
        "POST",
        "/messages/poll",
        &[
            auth_header(token).as_pair(),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

fn poll(relay: &Relay, body: &Value) -> Response {
    poll_as(relay, &rw_token(), body)
}

/// The `messages` of a 200 answer.
fn items(resp: &Response) -> Vec<Value> {
    resp.assert_status(200);
    let body = resp.json();
    assert!(body["has_more"].is_boolean(), "{body}");
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array in {body}"))
        .clone()
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|m| id_of(m).to_string()).collect()
}

/// The IDs of the items of one topic, in answer order.
fn ids_of_topic(items: &[Value], topic: &str) -> Vec<String> {
    let of_topic: Vec<Value> = items
        .iter()
        .filter(|m| m["topic"] == topic)
        .cloned()
        .collect();
    ids(&of_topic)
}

/// Publishes `n` messages `{"i": k}` to `topic` in one bulk request; returns their IDs.
fn publish_n(relay: &Relay, topic: &str, n: usize) -> Vec<String> {
    publish_n_as(relay, &rw_token(), topic, n)
}

fn publish_n_as(relay: &Relay, token: &str, topic: &str, n: usize) -> Vec<String> {
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topic, "payload": {"i": i}}))
        .collect();
    let resp = relay.request(
        "POST",
        "/api/v1/messages/bulk",
        &[auth_header(token).as_pair()],
        json!({ "messages": messages }).to_string().as_bytes(),
    );
    resp.assert_status(207);
    resp.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted", "{r}");
            id_of(r).to_string()
        })
        .collect()
}

#[test]
fn invalid_requests_are_422_and_lax_timeouts_are_accepted() {
    let relay = Relay::start();
    let topic = topic_on("compat-valid", 0);
    let token = rw_token();
    for (body, code) in [
        (json!({"topics": []}), "MISSING_FIELD"),
        (json!({"since": null}), "MISSING_FIELD"),
        (json!({"topics": "jobs"}), "INVALID_TOPIC"),
        (json!({"topics": ["bad topic!"]}), "INVALID_TOPIC"),
        (
            json!({"topics": [&topic], "since": {&topic: 5}}),
            "INVALID_CURSOR",
        ),
        (
            json!({"topics": [&topic], "since": [&topic]}),
            "INVALID_CURSOR",
        ),
        (json!({"topics": [&topic], "timeout": 0}), "INVALID_TIMEOUT"),
        (
            json!({"topics": [&topic], "timeout": 61}),
            "INVALID_TIMEOUT",
        ),
        (
            json!({"topics": [&topic], "timeout": 5.5}),
            "INVALID_TIMEOUT",
        ),
        (
            json!({"topics": [&topic], "timeout": "soon"}),
            "INVALID_TIMEOUT",
        ),
        (
            json!({"topics": [&topic], "timeout": -1}),
            "INVALID_TIMEOUT",
        ),
    ] {
        poll_as(&relay, &token, &body).assert_error(422, code);
    }
    let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    poll(&relay, &json!({ "topics": many })).assert_error(422, "TOO_MANY_TOPICS");
    for malformed in [&b"{\"topics\":["[..], b"", b"[]", b"\xff"] {
        poll_raw(&relay, &token, malformed).assert_error(422, "INVALID_JSON");
    }

    // Valid timeouts, answered at once by a catch-up (an unusable cursor replays from the
    // oldest message), so that no test waits for them.
    let published = publish_n(&relay, &topic, 1);
    for timeout in [json!(5), json!("5"), json!(5.0), json!(60), json!(1)] {
        let started = Instant::now();
        let resp = poll(
            &relay,
            &json!({"topics": [&topic], "since": {&topic: ""}, "timeout": timeout}),
        );
        assert_eq!(ids(&items(&resp)), published, "timeout {timeout}");
        assert!(started.elapsed() < Duration::from_secs(4), "{timeout}");
    }

    // The route's methods.
    relay
        .request(
            "GET",
            "/messages/poll",
            &[auth_header(&token).as_pair()],
            b"",
        )
        .assert_error(405, "METHOD_NOT_ALLOWED");
    let preflight = relay.request(
        "OPTIONS",
        "/messages/poll",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    preflight.assert_status(204);
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
}

#[test]
fn timeout_with_nothing_new_answers_an_empty_list_and_null_since_does_not_replay() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("compat-timeout");
    for topic in &topics {
        publish_n(&relay, topic, 2);
    }
    for since in [json!(null), json!({})] {
        let started = Instant::now();
        let resp = poll(
            &relay,
            &json!({"topics": &topics, "since": since, "timeout": 1}),
        );
        let elapsed = started.elapsed();
        resp.assert_status(200);
        assert_eq!(resp.json(), json!({"messages": [], "has_more": false}));
        assert!(
            elapsed >= Duration::from_millis(900),
            "answered after {elapsed:?}, before the 1 s timeout"
        );
        assert!(
            elapsed < Duration::from_secs(6),
            "answered after {elapsed:?}"
        );
    }
}

#[test]
fn since_cursor_returns_only_the_later_messages_at_once_in_order() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("compat-since");
    let a = publish_n(&relay, &topics[0], 5);
    let b = publish_n(&relay, &topics[1], 4);
    let started = Instant::now();
    let resp = poll(
        &relay,
        &json!({"topics": &topics, "since": {&topics[0]: a[1], &topics[1]: b[0]}, "timeout": 30}),
    );
    let got = items(&resp);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited although messages were there"
    );
    assert_eq!(ids_of_topic(&got, &topics[0]), a[2..]);
    assert_eq!(ids_of_topic(&got, &topics[1]), b[1..]);
    assert_eq!(got.len(), 3 + 3);
    assert_eq!(resp.json()["has_more"], false);
    for m in &got {
        assert_eq!(m["type"], "message", "{m}");
        assert!(m["timestamp"].is_string(), "{m}");
        assert!(m.get("metadata").is_some(), "{m}");
    }
    // A cursor at the head: nothing after it, so the poll waits (and times out).
    let resp = poll(
        &relay,
        &json!({"topics": [&topics[0]], "since": {&topics[0]: a[4]}, "timeout": 1}),
    );
    assert!(items(&resp).is_empty());
}

#[test]
fn message_published_during_a_wait_is_returned_verbatim() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("compat-wait");
    let payload = r#"{"z":1.50,"a":[1,2],"s":"\u00e9"}"#;
    for target in &topics {
        for with_cursors in [false, true] {
            // Cursors at the head of each topic wait, as does `since: null`.
            let heads: Vec<String> = topics
                .iter()
                .map(|t| publish_n(&relay, t, 1).remove(0))
                .collect();
            let since = match with_cursors {
                false => json!(null),
                true => json!({&topics[0]: heads[0], &topics[1]: heads[1]}),
            };
            let (resp, published) = poll_while_publishing(&relay, target, payload, || {
                poll(
                    &relay,
                    &json!({"topics": &topics, "since": since, "timeout": 20}),
                )
            });
            let got = items(&resp);
            assert!(!got.is_empty(), "{target}: the poll timed out");
            for m in &got {
                assert_eq!(m["topic"], target.as_str(), "{m}");
                assert!(published.contains(&id_of(m).to_string()), "{m}");
                assert_eq!(m["type"], "message");
                assert_eq!(m["metadata"], Value::Null);
            }
            assert!(
                resp.text().contains(&format!(r#""payload":{payload}"#)),
                "payload not verbatim: {}",
                resp.text()
            );
        }
    }
}

#[test]
fn a_topic_without_a_usable_cursor_replays_from_its_oldest_message() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("compat-oldest");
    let a = publish_n(&relay, &topics[0], 3);
    let b = publish_n(&relay, &topics[1], 3);
    // `since` names topic A only: B replays from its oldest message.
    let resp = poll(
        &relay,
        &json!({"topics": &topics, "since": {&topics[0]: a[2]}, "timeout": 30}),
    );
    let got = items(&resp);
    assert_eq!(ids_of_topic(&got, &topics[0]), Vec::<String>::new());
    assert_eq!(ids_of_topic(&got, &topics[1]), b);

    // Cursors that are not message IDs (the original memory backend's, an empty string)
    // are no error: those topics replay from the oldest message too.
    for unusable in ["msg_0123abcd", "", "latest", "1-2-3"] {
        let resp = poll(
            &relay,
            &json!({"topics": &topics, "since": {&topics[0]: unusable, &topics[1]: b[1]}}),
        );
        let got = items(&resp);
        assert_eq!(ids_of_topic(&got, &topics[0]), a, "{unusable:?}");
        assert_eq!(ids_of_topic(&got, &topics[1]), b[2..], "{unusable:?}");
    }

    // Any well-formed ID is an exclusive start, even one older than every message.
    let resp = poll(
        &relay,
        &json!({"topics": [&topics[0]], "since": {&topics[0]: "1-0"}}),
    );
    assert_eq!(ids(&items(&resp)), a);
}

#[test]
fn catch_up_reads_at_most_100_per_topic_and_reports_has_more() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("compat-more");
    let a = publish_n(&relay, &topics[0], 150);
    let b = publish_n(&relay, &topics[1], 120);
    let since = json!({&topics[0]: "msg_unknown"});
    let resp = poll(&relay, &json!({"topics": &topics, "since": since}));
    let got = items(&resp);
    assert_eq!(resp.json()["has_more"], true);
    assert_eq!(ids_of_topic(&got, &topics[0]), a[..100]);
    assert_eq!(ids_of_topic(&got, &topics[1]), b[..100]);

    // The client continues from the last item of each topic.
    let since = json!({&topics[0]: a[99], &topics[1]: b[99]});
    let resp = poll(&relay, &json!({"topics": &topics, "since": since}));
    let got = items(&resp);
    assert_eq!(resp.json()["has_more"], false, "70 in all, none cut short");
    assert_eq!(ids_of_topic(&got, &topics[0]), a[100..]);
    assert_eq!(ids_of_topic(&got, &topics[1]), b[100..]);

    // As in the original, 100 or more in all counts as "more", though no topic was cut
    // short.
    let since = json!({&topics[0]: a[89], &topics[1]: b[29]});
    let resp = poll(&relay, &json!({"topics": &topics, "since": since}));
    assert_eq!(items(&resp).len(), 60 + 90);
    assert_eq!(resp.json()["has_more"], true);
}

#[test]
fn chained_cursors_see_every_message_once_in_order_under_live_traffic() {
    let relay = Relay::start();
    let topic = topic_on("compat-chain", 1);
    let first = publish_n(&relay, &topic, 1).remove(0);
    let published = Arc::new(Mutex::new(vec![first.clone()]));
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (addr, topic) = (relay.addr, topic.clone());
        let (published, done) = (Arc::clone(&published), Arc::clone(&done));
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            for i in 0..300 {
                let id = id_of(&http.publish(&topic, &i.to_string())).to_string();
                published.lock().unwrap().push(id);
                if i % 10 == 0 {
                    thread::sleep(Duration::from_millis(3));
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    // The Python client's loop: the last item per topic becomes its next cursor.
    let mut got = vec![first];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(done.load(Ordering::Acquire) && got.last() == published.lock().unwrap().last()) {
        assert!(
            Instant::now() < deadline,
            "stuck after {} messages",
            got.len()
        );
        let cursor = got.last().unwrap().clone();
        let resp = poll(
            &relay,
            &json!({"topics": [&topic], "since": {&topic: cursor}, "timeout": 2}),
        );
        got.extend(ids(&items(&resp)));
    }
    producer.join().unwrap();
    assert_eq!(
        got,
        *published.lock().unwrap(),
        "missing or repeated messages"
    );
}

#[test]
fn read_permission_is_needed_and_the_topics_claim_applies() {
    let relay = Relay::start();
    let topic = topic_on("jobs.compat", 0);
    let published = publish_n(&relay, &topic, 1);
    let body = json!({"topics": [&topic], "since": {&topic: ""}, "timeout": 1});
    assert_eq!(
        ids(&items(&poll_as(&relay, &read_token(), &body))),
        published
    );
    poll_as(&relay, &write_token(), &body).assert_error(403, "PERMISSION_DENIED");
    poll_raw(&relay, "", body.to_string().as_bytes()).assert_status(401);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let restricted = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "restricted", "permissions": ["read"], "exp": now + 3600,
                "topics": ["jobs.*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(ids(&items(&poll_as(&relay, &restricted, &body))), published);
    let body = json!({"topics": [&topic, "secrets"], "since": {&topic: ""}});
    poll_as(&relay, &restricted, &body).assert_error(403, "TOPIC_FORBIDDEN");
}

#[test]
fn per_user_namespaces_hide_another_accounts_same_named_topic() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user")]);
    let alice = token("alice", Permissions::READ | Permissions::WRITE);
    let bob = token("bob", Permissions::READ | Permissions::WRITE);
    let alices = publish_n_as(&relay, &alice, "jobs", 2);
    let body = json!({"topics": ["jobs"], "since": {"jobs": ""}, "timeout": 1});

    let resp = poll_as(&relay, &bob, &body);
    assert_eq!(resp.json(), json!({"messages": [], "has_more": false}));

    let got = items(&poll_as(&relay, &alice, &body));
    assert_eq!(ids(&got), alices);
    assert!(got.iter().all(|m| m["topic"] == "jobs"), "{got:?}");

    // Live delivery is namespaced too: another account publishing to its `jobs` does not
    // wake Bob's poll.
    let (resp, published) = poll_while_publishing(&relay, "jobs", r#"{"to":"tester"}"#, || {
        poll_as(&relay, &bob, &json!({"topics": ["jobs"], "timeout": 2}))
    });
    assert!(!published.is_empty());
    assert_eq!(resp.json(), json!({"messages": [], "has_more": false}));
}

#[test]
fn stats_count_waiting_polls_without_naming_topics() {
    let relay = Relay::start();
    let topic = topic_on("compat-stats", 1);
    let stats = || {
        let resp = relay.request(
            "GET",
            "/messages/poll/stats",
            &[auth_header(&read_token()).as_pair()],
            b"",
        );
        resp.assert_status(200);
        resp.json()
    };
    assert_eq!(
        stats(),
        json!({"active_waiters": 0, "subscribed_topics": 0})
    );
    let waiter = {
        let (addr, topic) = (relay.addr, topic.clone());
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            http.set_read_timeout(Duration::from_secs(30));
            let body = json!({"topics": [&topic], "timeout": 20}).to_string();
            http.request(
                "POST",
                "/messages/poll",
                &[auth_header(&rw_token()).as_pair()],
                body.as_bytes(),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats() != json!({"active_waiters": 1, "subscribed_topics": 1}) {
        assert!(Instant::now() < deadline, "the waiting poll never showed");
        thread::sleep(Duration::from_millis(20));
    }
    let published = publish_n(&relay, &topic, 1);
    assert_eq!(ids(&items(&waiter.join().unwrap())), published);
    assert_eq!(
        stats(),
        json!({"active_waiters": 0, "subscribed_topics": 0})
    );
    relay
        .request("GET", "/messages/poll/stats", &[], b"")
        .assert_status(401);
}

#[test]
fn cursors_stay_valid_across_a_relay_restart_on_valkey() {
    let valkey = Valkey::start();
    let topic = topic_on("compat-restart", 0);
    let cursor = {
        let relay = Relay::start_on_valkey(&valkey, &[]);
        relay.wait_ready(Duration::from_secs(10));
        let published = publish_n(&relay, &topic, 3);
        let resp = poll(&relay, &json!({"topics": [&topic], "since": {&topic: ""}}));
        let got = ids(&items(&resp));
        assert_eq!(got, published);
        got.last().unwrap().clone()
    };
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(10));
    let new = publish_n(&relay, &topic, 2);
    let resp = poll(
        &relay,
        &json!({"topics": [&topic], "since": {&topic: cursor}, "timeout": 5}),
    );
    assert_eq!(ids(&items(&resp)), new, "exactly the new messages");
}

#[test]
fn a_cursor_older_than_the_hot_ring_reads_from_valkey() {
    let valkey = Valkey::start();
    let relay = Relay::start_on_valkey(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "5")],
    );
    relay.wait_ready(Duration::from_secs(10));
    let topics = topics_on_each_shard("compat-history");
    let a = publish_n(&relay, &topics[0], 20);
    let b = publish_n(&relay, &topics[1], 130);
    let since = json!({&topics[0]: a[2], &topics[1]: "1-0"});
    let resp = poll(&relay, &json!({"topics": &topics, "since": since}));
    let got = items(&resp);
    assert_eq!(ids_of_topic(&got, &topics[0]), a[3..]);
    assert_eq!(ids_of_topic(&got, &topics[1]), b[..100]);
    assert_eq!(resp.json()["has_more"], true);
}
