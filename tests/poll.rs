//! Long-poll consumers: immediate answers, wake-up on publish, timeout, limits, and
//! durable positions through `POST /api/v1/ack`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn messages(resp: &Response) -> Vec<Value> {
    resp.assert_status(200);
    let body = resp.json();
    assert!(body["has_more"].is_boolean(), "{body}");
    body["messages"].as_array().expect("messages array").clone()
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| id_of(m).to_string()).collect()
}

fn ack(relay: &Relay, body: Value) -> Response {
    let token = rw_token();
    relay.request(
        "POST",
        "/api/v1/ack",
        &[auth_header(&token).as_pair()],
        body.to_string().as_bytes(),
    )
}

#[test]
fn poll_answers_at_once_when_messages_are_after_the_cursor() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("poll-now");
    let mut http = relay.http();
    let receipts: Vec<Value> = (0..6)
        .map(|i| http.publish(&topics[i % 2], &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let started = Instant::now();
    let resp = relay.poll(&format!(
        "topics={},{}&since=earliest&timeout=30",
        topics[0], topics[1]
    ));
    let got = messages(&resp);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the timeout although messages were there"
    );
    assert_eq!(resp.json()["has_more"], false);
    let mut got_ids = ids(&got);
    got_ids.sort();
    let mut want: Vec<String> = receipts.iter().map(|r| id_of(r).to_string()).collect();
    want.sort();
    assert_eq!(got_ids, want);
    for m in &got {
        assert_eq!(m["type"], "message", "{m}");
        assert!(
            m["timestamp"].is_string() && m.get("metadata").is_some(),
            "{m}"
        );
    }
    // Per topic, in publish order.
    for topic in &topics {
        let per: Vec<&Value> = got
            .iter()
            .filter(|m| m["topic"] == topic.as_str())
            .collect();
        assert_eq!(per.len(), 3);
        assert!(per
            .windows(2)
            .all(|w| parse_id(id_of(w[0])) < parse_id(id_of(w[1]))));
    }

    // `since` an ID is exclusive.
    let resp = relay.poll(&format!(
        "topics={}&since={}&timeout=30",
        topics[0],
        id_of(&receipts[2])
    ));
    assert_eq!(ids(&messages(&resp)), [id_of(&receipts[4])]);
}

#[test]
fn poll_limit_sets_has_more() {
    let relay = Relay::start();
    let topic = topic_on("poll-limit", 1);
    let mut http = relay.http();
    let receipts: Vec<Value> = (0..5)
        .map(|i| http.publish(&topic, &i.to_string()))
        .collect();
    let resp = relay.poll(&format!("topics={topic}&since=earliest&limit=2&timeout=1"));
    assert_eq!(resp.json()["has_more"], true, "{}", resp.text());
    assert_eq!(
        ids(&messages(&resp)),
        [id_of(&receipts[0]), id_of(&receipts[1])]
    );
    // Continuing from the last one gets the rest.
    let resp = relay.poll(&format!(
        "topics={topic}&since={}&limit=10&timeout=1",
        id_of(&receipts[1])
    ));
    assert_eq!(resp.json()["has_more"], false);
    assert_eq!(messages(&resp).len(), 3);
}

#[test]
fn parked_poll_wakes_up_on_publish_from_another_connection() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("poll-wake") {
        // Older history must not satisfy a poll without `since`.
        relay.publish(&topic, r#""old""#);
        // Publish until the poll answers: whichever message is the first after the poll
        // registered wakes it.
        let started = Instant::now();
        let (resp, published) = poll_while_publishing(&relay, &topic, r#""new""#, || {
            relay.poll(&format!("topics={topic}&timeout=20"))
        });
        let elapsed = started.elapsed();
        let got = messages(&resp);
        assert!(
            !got.is_empty(),
            "{topic}: the poll timed out instead of waking up after {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(15), "{topic}: {elapsed:?}");
        for m in &got {
            assert_eq!(m["payload"], "new", "{topic}: {m}");
            assert!(published.contains(&id_of(m).to_string()), "{m}");
        }
    }
}

#[test]
fn poll_on_several_topics_wakes_for_either_owner() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("poll-multi");
    for (k, target) in topics.iter().enumerate() {
        let payload = format!(r#"{{"k":{k}}}"#);
        let (resp, _) = poll_while_publishing(&relay, target, &payload, || {
            relay.poll(&format!("topics={},{}&timeout=20", topics[0], topics[1]))
        });
        let got = messages(&resp);
        assert!(!got.is_empty(), "poll on both topics missed {target}");
        assert!(got.iter().all(|m| m["topic"] == target.as_str()), "{got:?}");
    }
}

#[test]
fn poll_times_out_with_an_empty_list() {
    let relay = Relay::start();
    let topic = topic_on("poll-timeout", 0);
    relay.publish(&topic, r#""history""#);
    let started = Instant::now();
    let resp = relay.poll(&format!("topics={topic}&timeout=1"));
    let elapsed = started.elapsed();
    assert!(messages(&resp).is_empty(), "{}", resp.text());
    assert_eq!(resp.json()["has_more"], false);
    assert!(
        elapsed >= Duration::from_millis(900),
        "answered after {elapsed:?}, before the 1 s timeout"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "answered after {elapsed:?}"
    );

    // The connection stays usable after a timed-out poll.
    let mut http = relay.http();
    let token = rw_token();
    let resp = http.request(
        "GET",
        &format!("/api/v1/poll?topics={topic}&timeout=1"),
        &[auth_header(&token).as_pair()],
        b"",
    );
    assert!(messages(&resp).is_empty());
    http.request("GET", "/health", &[], b"").assert_status(200);
}

#[test]
fn poll_parameter_errors() {
    let relay = Relay::start();
    let cases = [
        ("topics=a&timeout=0", "INVALID_TIMEOUT"),
        ("topics=a&timeout=61", "INVALID_TIMEOUT"),
        ("topics=a&timeout=abc", "INVALID_TIMEOUT"),
        ("topics=a&timeout=-1", "INVALID_TIMEOUT"),
        ("topics=a&timeout=1&limit=0", "INVALID_LIMIT"),
        ("topics=a&timeout=1&since=yesterday", "INVALID_CURSOR"),
        ("topics=a%20b&timeout=1", "INVALID_TOPIC"),
        ("timeout=1", "MISSING_FIELD"),
        (
            "topics=a&timeout=1&client_id=no%20spaces",
            "INVALID_CLIENT_ID",
        ),
    ];
    for (query, code) in cases {
        let started = Instant::now();
        let resp = relay.poll(query);
        assert_eq!(resp.status, 422, "{query}: {}", resp.text());
        assert_eq!(resp.code(), code, "{query}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{query} was parked"
        );
    }
}

#[test]
fn delivery_max_poll_timeout_caps_both_long_polls() {
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_MAX_POLL_TIMEOUT", "1s")]);
    let topic = topic_on("poll-cap", 0);
    // Above the configured cap (not only above the hard 60): refused at once.
    relay
        .poll(&format!("topics={topic}&timeout=2"))
        .assert_error(422, "INVALID_TIMEOUT");
    relay.publish(&topic, "1");
    let at_cap = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
    assert_eq!(messages(&at_cap).len(), 1);
    // With nothing new, the default wait (30 s) is lowered to the cap, and the original
    // relay's poll is shortened to it rather than refused. Both wait at once.
    let token = rw_token();
    let compat = json!({"topics": [&topic], "since": null, "timeout": 30}).to_string();
    let waits: Vec<(Response, Duration)> = std::thread::scope(|s| {
        let polls = [
            ("GET", format!("/api/v1/poll?topics={topic}"), String::new()),
            ("POST", "/messages/poll".to_string(), compat),
        ];
        let handles: Vec<_> = polls
            .into_iter()
            .map(|(method, path, body)| {
                let (relay, token) = (&relay, &token);
                s.spawn(move || {
                    let mut http = relay.http();
                    http.set_read_timeout(Duration::from_secs(40));
                    let started = Instant::now();
                    let resp = http.request(
                        method,
                        &path,
                        &[auth_header(token).as_pair()],
                        body.as_bytes(),
                    );
                    (resp, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (resp, elapsed) in waits {
        assert!(messages(&resp).is_empty(), "{}", resp.text());
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(5)).contains(&elapsed),
            "answered after {elapsed:?}, not after the 1 s cap"
        );
    }
}

#[test]
fn ack_then_poll_with_client_id_resumes_after_it() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("poll-ack") {
        let client = "poller-1";
        let mut http = relay.http();
        let r: Vec<Value> = (1..=5)
            .map(|i| http.publish(&topic, &i.to_string()))
            .collect();

        // A new consumer asking for `earliest` gets everything.
        let first = messages(&relay.poll(&format!(
            "topics={topic}&client_id={client}&since=earliest&timeout=1"
        )));
        assert_eq!(first.len(), 5);

        // Nothing acked yet: polling again without `since` redelivers all of them.
        let again = messages(&relay.poll(&format!("topics={topic}&client_id={client}&timeout=1")));
        assert_eq!(ids(&again), ids(&first), "{topic}: unacked not redelivered");

        // Cumulative ack of message 3.
        let resp = ack(
            &relay,
            json!({"message_ids": [id_of(&r[2])], "client_id": client}),
        );
        resp.assert_status(200);
        assert_eq!(
            resp.json(),
            json!({"acknowledged": 1, "unknown": [], "ambiguous": []})
        );

        let rest = messages(&relay.poll(&format!("topics={topic}&client_id={client}&timeout=1")));
        assert_eq!(ids(&rest), [id_of(&r[3]), id_of(&r[4])], "{topic}");

        // Ack the last one (naming the topic), alongside an ID no topic holds.
        let future = "99999999999999-0";
        let resp = ack(
            &relay,
            json!({"message_ids": [id_of(&r[4]), future], "client_id": client, "topic": topic}),
        );
        assert_eq!(
            resp.json(),
            json!({"acknowledged": 1, "unknown": [future], "ambiguous": []})
        );

        // Only what comes next is delivered now.
        let six = http.publish(&topic, "6");
        let next = messages(&relay.poll(&format!("topics={topic}&client_id={client}&timeout=5")));
        assert_eq!(ids(&next), [id_of(&six)], "{topic}");

        // Another client_id has its own position.
        let other = messages(&relay.poll(&format!(
            "topics={topic}&client_id=poller-2&since=earliest&timeout=1"
        )));
        assert_eq!(other.len(), 6);
    }
}

#[test]
fn ack_request_errors() {
    let relay = Relay::start();
    let cases = [
        (json!({"message_ids": ["1-0"]}), "CLIENT_ID_REQUIRED"),
        (
            json!({"message_ids": ["1-0"], "client_id": "bad id"}),
            "INVALID_CLIENT_ID",
        ),
        (
            json!({"message_ids": [], "client_id": "c"}),
            "INVALID_BATCH_SIZE",
        ),
        (
            json!({"message_ids": ["x-y"], "client_id": "c"}),
            "INVALID_MESSAGE_ID",
        ),
        (
            json!({"message_ids": ["1-0"], "client_id": "c", "topic": "a b"}),
            "INVALID_TOPIC",
        ),
        (json!({"client_id": "c"}), "INVALID_JSON"),
    ];
    for (body, code) in cases {
        let resp = ack(&relay, body.clone());
        assert_eq!(resp.status, 422, "{body}: {}", resp.text());
        assert_eq!(resp.code(), code, "{body}");
    }
    let token = write_token();
    let resp = relay.request(
        "POST",
        "/api/v1/ack",
        &[auth_header(&token).as_pair()],
        br#"{"message_ids":["1-0"],"client_id":"c"}"#,
    );
    resp.assert_error(403, "PERMISSION_DENIED");
}

#[test]
fn http_ack_without_topic_only_acknowledges_the_topic_that_holds_the_message() {
    let relay = Relay::start();
    let [a, b]: [String; 2] = topics_on_each_shard("http-ack-scope").try_into().unwrap();
    let client = "scoped-poller";
    let mut http = relay.http();
    let b1 = http.publish(&b, r#""b1""#);
    let a1 = http.publish(&a, r#""a1""#);
    let b2 = http.publish(&b, r#""b2""#);
    let all = messages(&relay.poll(&format!(
        "topics={a},{b}&client_id={client}&since=earliest&timeout=1"
    )));
    assert_eq!(all.len(), 3);

    let resp = ack(
        &relay,
        json!({"message_ids": [id_of(&a1)], "client_id": client}),
    );
    assert_eq!(
        resp.json(),
        json!({"acknowledged": 1, "unknown": [], "ambiguous": []})
    );

    let rest = messages(&relay.poll(&format!("topics={a},{b}&client_id={client}&timeout=1")));
    let mut got: Vec<String> = rest
        .iter()
        .map(|m| format!("{}/{}", m["topic"].as_str().unwrap(), id_of(m)))
        .collect();
    got.sort();
    let mut want = vec![format!("{b}/{}", id_of(&b1)), format!("{b}/{}", id_of(&b2))];
    want.sort();
    assert_eq!(
        got,
        want,
        "acking {a}'s message {} must not acknowledge {b}'s messages",
        id_of(&a1)
    );
}
