//! Who may do what to a topic, end to end on a real relay: topic squatting in the `global`
//! namespace, `read` on every path that reads messages or records, the `topics` claim on
//! acknowledgements, logout of tokens that cannot be revoked and a deny-list keyed by
//! subject and `jti`, and token renewal in `per_user` namespaces with a `topics` claim.

mod common;

use common::*;
use serde_json::{json, Value};

fn admin() -> String {
    token_with("root", &["read", "write", "admin"], json!({}))
}

/// One request with `token` and an optional JSON body.
fn call(relay: &Relay, method: &str, path: &str, token: &str, body: Option<&Value>) -> Response {
    let auth = auth_header(token);
    let text = body.map(Value::to_string).unwrap_or_default();
    relay.request(
        method,
        path,
        &[auth.as_pair(), ("Content-Type", "application/json")],
        text.as_bytes(),
    )
}

fn publish(relay: &Relay, token: &str, topic: &str, n: i64) -> Response {
    let body = json!({"topic": topic, "payload": {"n": n}});
    call(relay, "POST", "/api/v1/messages", token, Some(&body))
}

fn published(relay: &Relay, token: &str, topic: &str, n: i64) -> String {
    let resp = publish(relay, token, topic, n);
    resp.assert_status(201);
    resp.json()["message_id"].as_str().unwrap().to_owned()
}

/// The `n` of every message a `since=earliest` poll of `topic` returns.
fn everything(relay: &Relay, token: &str, topic: &str, extra: &str) -> Vec<i64> {
    let path = format!("/api/v1/poll?topics={topic}&since=earliest&timeout=1{extra}");
    let resp = call(relay, "GET", &path, token, None);
    resp.assert_status(200);
    resp.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"]["n"].as_i64().unwrap())
        .collect()
}

fn ack(relay: &Relay, token: &str, body: Value) -> Response {
    call(relay, "POST", "/api/v1/ack", token, Some(&body))
}

// ---------------------------------------------------------------------------------------
// Item 1: squatting a name in the global namespace gives no destructive rights
// ---------------------------------------------------------------------------------------

#[test]
fn a_squatter_in_the_global_namespace_cannot_delete_or_change_the_topic() {
    let relay = Relay::start();
    let squatter = token_with("squatter", &["write"], json!({}));
    let service = token_with("payments-svc", &["read", "write"], json!({}));

    // The squatter publishes first, so the auto-created record names it.
    published(&relay, &squatter, "payments", 0);
    let create = json!({"topic_name": "payments"});
    call(&relay, "POST", "/api/v1/topics", &service, Some(&create))
        .assert_error(409, "TOPIC_OWNED_BY_ANOTHER");
    // The service publishes anyway.
    published(&relay, &service, "payments", 1);
    published(&relay, &service, "payments", 2);

    let path = "/api/v1/topics/payments";
    let changed = json!({"description": "mine"});
    call(&relay, "DELETE", path, &squatter, None).assert_error(403, "NOT_TOPIC_OWNER");
    call(&relay, "PUT", path, &squatter, Some(&changed)).assert_error(403, "NOT_TOPIC_OWNER");
    // Creating the name explicitly first gives an unscoped token no more.
    let ledger = json!({"topic_name": "ledger"});
    call(&relay, "POST", "/api/v1/topics", &squatter, Some(&ledger)).assert_status(201);
    published(&relay, &service, "ledger", 7);
    call(&relay, "DELETE", "/api/v1/topics/ledger", &squatter, None)
        .assert_error(403, "NOT_TOPIC_OWNER");

    // Nothing was lost: messages, history and the record are all there.
    assert_eq!(everything(&relay, &service, "payments", ""), [0, 1, 2]);
    assert_eq!(everything(&relay, &service, "ledger", ""), [7]);
    let page = call(&relay, "GET", &format!("{path}/messages"), &service, None);
    page.assert_status(200);
    assert_eq!(page.json()["total"], 3);

    // A token whose `topics` claim covers the name manages the topics it owns.
    let billing = token_with("billing-svc", &["write"], json!({"topics": ["billing.*"]}));
    let rival = token_with("rival-svc", &["write"], json!({"topics": ["billing.*"]}));
    published(&relay, &billing, "billing.eu", 1);
    call(&relay, "DELETE", "/api/v1/topics/billing.eu", &rival, None)
        .assert_error(403, "NOT_TOPIC_OWNER");
    let described = call(
        &relay,
        "PUT",
        "/api/v1/topics/billing.eu",
        &billing,
        Some(&changed),
    );
    described.assert_status(200);
    assert_eq!(described.json()["description"], "mine");
    call(
        &relay,
        "DELETE",
        "/api/v1/topics/billing.eu",
        &billing,
        None,
    )
    .assert_status(204);

    // An admin may delete any topic.
    call(&relay, "DELETE", path, &admin(), None).assert_status(204);
    assert!(everything(&relay, &service, "payments", "").is_empty());
}

#[test]
fn per_user_owners_manage_their_own_topics_as_the_original_relay_lets_them() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user")]);
    let alice = token_with("alice", &["read", "write"], json!({}));
    published(&relay, &alice, "jobs", 1);
    let changed = json!({"description": "mine"});
    call(&relay, "PUT", "/api/v1/topics/jobs", &alice, Some(&changed)).assert_status(200);
    call(&relay, "DELETE", "/api/v1/topics/jobs", &alice, None).assert_status(204);
    assert!(everything(&relay, &alice, "jobs", "").is_empty());
}

// ---------------------------------------------------------------------------------------
// Item 2: reading messages (and other users' records) takes `read`
// ---------------------------------------------------------------------------------------

#[test]
fn reading_messages_or_records_takes_read_on_every_path() {
    let relay = Relay::start();
    let bob = token_with("bob", &["read", "write"], json!({}));
    published(&relay, &bob, "orders", 42);

    for token in [
        token_with("writer", &["write"], json!({})),
        token_with("nobody", &[], json!({})),
    ] {
        let history = call(
            &relay,
            "GET",
            "/api/v1/topics/orders/messages",
            &token,
            None,
        );
        history.assert_error(403, "PERMISSION_DENIED");
        assert!(!history.text().contains("42"), "{}", history.text());
        let record = call(&relay, "GET", "/api/v1/topics/orders", &token, None);
        record.assert_error(403, "PERMISSION_DENIED");
        assert!(!record.text().contains("bob"), "{}", record.text());
        let poll = "/api/v1/poll?topics=orders&since=earliest&timeout=1";
        call(&relay, "GET", poll, &token, None).assert_error(403, "PERMISSION_DENIED");
        let compat = json!({"topics": ["orders"], "since": {}, "timeout": 1});
        call(&relay, "POST", "/messages/poll", &token, Some(&compat))
            .assert_error(403, "PERMISSION_DENIED");
    }

    // A topic's own creator sees its record without `read` (so a write-only producer can
    // verify what it created), but still not its messages.
    let producer = token_with("producer", &["write"], json!({}));
    let create = json!({"topic_name": "made"});
    call(&relay, "POST", "/api/v1/topics", &producer, Some(&create)).assert_status(201);
    published(&relay, &producer, "made", 1);
    let own = call(&relay, "GET", "/api/v1/topics/made", &producer, None);
    own.assert_status(200);
    assert_eq!(own.json()["owner_id"], "producer");
    call(
        &relay,
        "GET",
        "/api/v1/topics/made/messages",
        &producer,
        None,
    )
    .assert_error(403, "PERMISSION_DENIED");

    // With `read` everything is there.
    let reader = token_with("reader", &["read"], json!({}));
    let record = call(&relay, "GET", "/api/v1/topics/orders", &reader, None);
    record.assert_status(200);
    assert_eq!(record.json()["description"], "Auto-created topic by bob");
    let page = call(
        &relay,
        "GET",
        "/api/v1/topics/orders/messages",
        &reader,
        None,
    );
    page.assert_status(200);
    assert_eq!(page.json()["messages"][0]["payload"], json!({"n": 42}));
}

// ---------------------------------------------------------------------------------------
// Item 3: an ack without `topic` stays within the token's `topics` claim
// ---------------------------------------------------------------------------------------

#[test]
fn an_ack_without_topic_resolves_only_in_topics_the_token_may_use() {
    let relay = Relay::start();
    let full = token_with("svc", &["read", "write"], json!({}));
    let limited = token_with("svc", &["read"], json!({"topics": ["jobs.*"]}));
    for topic in topics_on_each_shard("secret") {
        let first = published(&relay, &full, &topic, 1);
        published(&relay, &full, &topic, 2);
        let consumer = "&client_id=c1";
        assert_eq!(everything(&relay, &full, &topic, consumer), [1, 2]);

        let resp = ack(
            &relay,
            &limited,
            json!({"message_ids": [first], "client_id": "c1"}),
        );
        resp.assert_status(200);
        assert_eq!(
            resp.json(),
            json!({"acknowledged": 0, "unknown": [first], "ambiguous": []}),
            "{topic}: the ID is as unknown as one that does not exist"
        );
        ack(
            &relay,
            &limited,
            json!({"message_ids": [first], "client_id": "c1", "topic": topic}),
        )
        .assert_error(403, "TOPIC_FORBIDDEN");
        // The consumer's position did not move.
        let path = format!("/api/v1/poll?topics={topic}&timeout=1{consumer}");
        let again = call(&relay, "GET", &path, &full, None);
        assert_eq!(again.json()["messages"].as_array().unwrap().len(), 2);
    }

    // Within its topics the limited token acknowledges without naming the topic.
    let job = published(&relay, &full, "jobs.a", 1);
    assert_eq!(everything(&relay, &full, "jobs.a", "&client_id=c1"), [1]);
    let resp = ack(
        &relay,
        &limited,
        json!({"message_ids": [job], "client_id": "c1"}),
    );
    assert_eq!(resp.json()["acknowledged"], 1, "{}", resp.text());
}

// ---------------------------------------------------------------------------------------
// Item 6: logout says what it did, and the deny-list is keyed by subject and `jti`
// ---------------------------------------------------------------------------------------

#[test]
fn logout_refuses_a_token_without_jti_instead_of_pretending() {
    let relay = Relay::start();
    let token = token_with("svc", &["read", "write"], json!({}));
    let resp = call(&relay, "POST", "/auth/logout", &token, None);
    resp.assert_error(400, "TOKEN_NOT_REVOCABLE");
    assert!(resp.text().contains("jti"), "{}", resp.text());
    // The refusal is honest: the token works as before.
    published(&relay, &token, "jobs", 1);
}

#[test]
fn logging_out_denies_that_subjects_jti_and_no_other_subjects() {
    let valkey = Valkey::start();
    let mut relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(IO_TIMEOUT);
    let alice = token_with("alice", &["read", "write"], json!({"jti": "same-id"}));
    let bob = token_with("bob", &["read", "write"], json!({"jti": "same-id"}));
    call(&relay, "POST", "/auth/logout", &alice, None).assert_status(204);

    let check = |relay: &Relay| {
        publish(relay, &alice, "jobs", 1).assert_error(401, "TOKEN_REVOKED");
        published(relay, &bob, "jobs", 2);
        let mut ws = Ws::connect(relay.addr, &bob);
        ws.subscribe(&["jobs"], json!({}));
        ws.close();
    };
    check(&relay);
    // The deny-list in Valkey keeps the subject too.
    relay.terminate();
    relay
        .wait_exit(IO_TIMEOUT)
        .expect("the relay exits on SIGTERM");
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(IO_TIMEOUT);
    check(&relay);
}

// ---------------------------------------------------------------------------------------
// Item 7: renewal in per_user namespaces with a `topics` claim
// ---------------------------------------------------------------------------------------

#[test]
fn a_per_user_session_with_a_topics_claim_renews_its_token() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user")]);
    let claims = json!({"topics": ["jobs.*"]});
    let mut ws = Ws::connect(relay.addr, &token_with("svcU", &["read"], claims.clone()));
    ws.subscribe(&["jobs.a"], json!({}));

    let renewed = token_with("svcU", &["read"], claims);
    ws.send_json(&json!({"type": "auth", "token": renewed}));
    ws.expect_type("authenticated");

    // A token that no longer covers the subscription is refused, naming the topic as the
    // consumer knows it.
    let narrower = token_with("svcU", &["read"], json!({"topics": ["other"]}));
    ws.send_json(&json!({"type": "auth", "token": narrower}));
    let err = ws.expect_error("TOPIC_FORBIDDEN");
    let text = err.to_string();
    assert!(text.contains("jobs.a"), "{text}");
    assert!(!text.contains("svcU"), "the internal key leaked: {text}");
    // The session lives on with the renewed token.
    ws.send_json(&json!({"type": "ping"}));
    ws.expect_type("pong");
}
