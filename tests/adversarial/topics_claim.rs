//! A token restricted to some topics (its `topics` claim) cannot touch the others, over
//! HTTP and WebSocket: publish, bulk, poll, subscribe, acks and session renewal. (One test,
//! merged from the security and adversarial suites' two.)

use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use super::common::*;
use super::support::*;

/// The 403 (HTTP) or error frame (WebSocket) for a topic outside the token's claim.
#[track_caller]
fn assert_topic_forbidden(status: u16, code: &Value, text: &Value, topic: &str, what: &str) {
    assert_eq!(status, 403, "{what}");
    assert_eq!(code, "TOPIC_FORBIDDEN", "{what}");
    assert!(
        text.as_str().is_some_and(|t| t.contains(topic)),
        "{what}: the refusal does not name {topic}: {text}"
    );
}

#[test]
fn a_token_restricted_to_some_topics_cannot_touch_the_others() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    // A pattern and an exact name.
    let restricted = hs256(&claims(json!({
        "sub": "jobs-worker",
        "permissions": ["read", "write"],
        "topics": ["jobs.*", "alerts"],
    })));
    let auth = format!("Bearer {restricted}");
    let headers = [("Authorization", auth.as_str())];
    let mut http = relay.http();

    // Publishing: allowed inside the claim, 403 naming the topic outside it.
    for allowed in [
        r#"{"topic":"jobs.1","payload":1}"#,
        r#"{"topic":"alerts","payload":1}"#,
    ] {
        http.request("POST", "/api/v1/messages", &headers, allowed.as_bytes())
            .assert_status(201);
    }
    for (denied, body) in [
        ("secrets", r#"{"topic":"secrets","payload":1}"#),
        ("jobs", r#"{"topic":"jobs","payload":1}"#),
        ("xjobs.1", r#"{"topic":"xjobs.1","payload":1}"#),
        ("JOBS.1", r#"{"topic":"JOBS.1","payload":1}"#),
        ("alerts.1", r#"{"topic":"alerts.1","payload":1}"#),
        // The same name spelled with a JSON escape is the same topic.
        ("secrets", r#"{"topic":"s\u0065crets","payload":1}"#),
    ] {
        let resp = http.request("POST", "/api/v1/messages", &headers, body.as_bytes());
        let v = resp.json();
        assert_topic_forbidden(resp.status, &v["code"], &v["detail"], denied, body);
    }
    // Duplicate keys: whichever `topic` the relay would publish to must be the one it
    // checked. Refusing duplicates outright is fine; what must not happen is a message in
    // `secrets`, which the final check below looks for.
    for body in [
        r#"{"topic":"jobs.1","payload":1,"topic":"secrets"}"#,
        r#"{"topic":"secrets","payload":1,"topic":"jobs.1"}"#,
    ] {
        let resp = http.request("POST", "/api/v1/messages", &headers, body.as_bytes());
        assert!(
            matches!(resp.status, 201 | 403 | 422),
            "{body}: {} {}",
            resp.status,
            resp.text()
        );
    }
    // Bulk: the denied item is rejected with TOPIC_FORBIDDEN, the allowed one accepted.
    let resp = http.request(
        "POST",
        "/api/v1/messages/bulk",
        &headers,
        br#"{"messages":[{"topic":"jobs.2","payload":2},{"topic":"secrets","payload":2}]}"#,
    );
    resp.assert_status(207);
    let bulk = resp.json();
    assert_eq!(
        bulk["summary"],
        json!({"total": 2, "accepted": 1, "rejected": 1})
    );
    let results = bulk["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["status"], "accepted", "{bulk}");
    assert_eq!(results[1]["status"], "rejected", "{bulk}");
    assert_eq!(results[1]["error"]["code"], "TOPIC_FORBIDDEN");

    // Polling a denied topic, alone or among allowed ones: 403.
    for topics in ["secrets", "jobs.1,secrets", "jobs.1,s%65crets"] {
        let resp = http.request(
            "GET",
            &format!("/api/v1/poll?topics={topics}&since=earliest&timeout=1"),
            &headers,
            b"",
        );
        let v = resp.json();
        assert_topic_forbidden(resp.status, &v["code"], &v["detail"], "secrets", topics);
    }
    let resp = http.request(
        "GET",
        "/api/v1/poll?topics=jobs.1&since=earliest&timeout=1",
        &headers,
        b"",
    );
    resp.assert_status(200);
    assert_eq!(resp.json()["messages"].as_array().unwrap().len(), 1);
    drop(http);

    // WebSocket: subscribing to a denied topic gets an error frame naming it, and no
    // subscription; a request mixing allowed and denied topics subscribes to nothing.
    let mut ws = Ws::connect(relay.addr, &restricted);
    for topics in [vec!["secrets"], vec!["jobs.3", "secrets"]] {
        ws.send_json(&json!({"type": "subscribe", "topics": topics}));
        let frame = ws.expect_type("error");
        assert_topic_forbidden(
            403,
            &frame["code"],
            &frame["message"],
            "secrets",
            &format!("subscribe {topics:?}"),
        );
    }
    ws.subscribe(&["jobs.4"], json!({}));
    // Renewing the session with an unrestricted token of another subject does not widen
    // it, and a forged one is refused; the session keeps its restricted token.
    let widened = hs256(&claims(json!({"sub": "someone-else"})));
    ws.send_json(&json!({"type": "auth", "token": widened}));
    ws.expect_error("AUTH_SUBJECT_MISMATCH");
    let forged = jwt_hmac(
        &json!({"alg": "HS256"}),
        &claims(json!({"sub": "jobs-worker"})),
        jsonwebtoken::Algorithm::HS256,
        b"attacker-secret",
    );
    ws.send_json(&json!({"type": "auth", "token": forged}));
    ws.expect_error("INVALID_TOKEN");
    ws.send_json(&json!({"type": "subscribe", "topics": ["secrets"]}));
    ws.expect_error("TOPIC_FORBIDDEN");

    let secret_receipt = relay.publish("secrets", r#""top secret""#);
    relay.publish("jobs.3", r#""not subscribed""#);
    let allowed = relay.publish("jobs.4", r#""for the worker""#);
    let got = ws.recv_delivery();
    assert_eq!(got["message_id"], allowed["message_id"], "{got}");
    // Give a leaked delivery time to arrive, then check nothing else came.
    thread::sleep(Duration::from_millis(300));
    let frames = ws.collect_until_pong();
    assert!(frames.is_empty(), "denied topics delivered: {frames:?}");
    ws.close();

    // Acks: naming a topic the claim does not cover is refused, over HTTP and WebSocket;
    // a covered one moves the consumer's position.
    let ack =
        |body: Value| relay.request("POST", "/api/v1/ack", &headers, body.to_string().as_bytes());
    let resp =
        ack(json!({"message_ids": [id_of(&secret_receipt)], "client_id": "w", "topic": "secrets"}));
    let v = resp.json();
    assert_topic_forbidden(resp.status, &v["code"], &v["detail"], "secrets", "ack");
    let acked = ack(json!({"message_ids": [id_of(&allowed)], "client_id": "w", "topic": "jobs.4"}));
    acked.assert_status(200);
    assert_eq!(acked.json()["acknowledged"], 1, "{}", acked.text());
    let mut durable = Ws::connect(relay.addr, &restricted);
    durable.subscribe(&["jobs.4"], json!({"client_id": "d"}));
    durable.send_json(
        &json!({"type": "ack", "message_id": id_of(&secret_receipt), "topic": "secrets"}),
    );
    let err = durable.expect_error("TOPIC_FORBIDDEN");
    assert!(
        err["message"].as_str().unwrap().contains("secrets"),
        "{err}"
    );
    durable.send_json(&json!({"type": "ack", "message_id": id_of(&allowed), "topic": "jobs.4"}));
    assert_eq!(
        durable.collect_until_pong(),
        Vec::<Value>::new(),
        "the covered ack is taken"
    );
    durable.close();

    // Nothing the restricted token tried landed in a denied topic: only the message
    // published with the unrestricted token is there.
    let resp = relay.poll("topics=secrets&since=earliest&timeout=1");
    let held = resp.json()["messages"].as_array().unwrap().clone();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["message_id"], secret_receipt["message_id"]);
    baseline.assert_recovered(&relay, 20);
}
