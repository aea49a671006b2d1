//! The Topics API of the original relay (`/api/v1/topics…`) against the real binary: topic
//! records (create, detail, list, update, delete, stats), ownership in both topic
//! namespaces, history pages (the reference's §13 item 9 checklist), and, on a real
//! `valkey-server`, records and history across a restart, pages crossing from the Valkey
//! stream into the hot ring, and deletion of the stored messages.

mod common;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

fn user(sub: &str) -> String {
    token(sub, Permissions::READ | Permissions::WRITE)
}

/// A token whose `topics` claim covers every name: with the (default) `global` namespace,
/// owning a topic lets such a token change and delete it; owning alone does not.
fn manager(sub: &str) -> String {
    token_with(sub, &["read", "write"], json!({"topics": ["*"]}))
}

fn admin() -> String {
    token(
        "root",
        Permissions::READ | Permissions::WRITE | Permissions::ADMIN,
    )
}

/// One request with `token` (none when empty) and an optional JSON body.
fn call(relay: &Relay, method: &str, path: &str, token: &str, body: Option<&Value>) -> Response {
    let auth = auth_header(token);
    let mut headers = vec![("Content-Type", "application/json")];
    if !token.is_empty() {
        headers.push(auth.as_pair());
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    relay.request(method, path, &headers, body.as_bytes())
}

fn create(relay: &Relay, token: &str, body: Value) -> Response {
    call(relay, "POST", "/api/v1/topics", token, Some(&body))
}

/// Creates `name` and returns the 201 record.
#[track_caller]
fn created(relay: &Relay, token: &str, name: &str) -> Value {
    let resp = create(relay, token, json!({ "topic_name": name }));
    resp.assert_status(201);
    resp.json()
}

fn detail(relay: &Relay, token: &str, name: &str) -> Response {
    call(relay, "GET", &format!("/api/v1/topics/{name}"), token, None)
}

fn list(relay: &Relay, token: &str) -> Vec<Value> {
    let resp = call(relay, "GET", "/api/v1/topics", token, None);
    resp.assert_status(200);
    resp.json().as_array().expect("a JSON array").clone()
}

fn history(relay: &Relay, token: &str, name: &str, query: &str) -> Response {
    let path = format!("/api/v1/topics/{name}/messages?{query}");
    call(relay, "GET", &path, token, None)
}

/// A history page that must be 200.
#[track_caller]
fn page(relay: &Relay, token: &str, name: &str, query: &str) -> Value {
    let resp = history(relay, token, name, query);
    resp.assert_status(200);
    resp.json()
}

/// The `n` payload fields of a page's messages, in page order.
fn ns(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| m["payload"]["n"].as_i64().unwrap())
        .collect()
}

fn page_ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| id_of(m).to_string())
        .collect()
}

/// Publishes `{"n": i}` for every `i` in `range` to `topic` as `token`; returns the IDs.
fn publish_ns(relay: &Relay, token: &str, topic: &str, range: std::ops::Range<i64>) -> Vec<String> {
    let mut http = relay.http();
    range
        .map(|n| {
            let body = json!({"topic": topic, "payload": {"n": n}}).to_string();
            let resp = http.request(
                "POST",
                "/api/v1/messages",
                &[
                    auth_header(token).as_pair(),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            resp.assert_status(201);
            id_of(&resp.json()).to_string()
        })
        .collect()
}

#[track_caller]
fn assert_detail(resp: &Response, status: u16, code: &str, detail: &str) {
    resp.assert_error(status, code);
    let body = resp.json();
    assert_eq!(body["detail"], detail, "{body}");
}

fn is_uuid4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && text
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && groups[2].starts_with('4')
}

/// `2025-10-09T12:00:00.123000` followed by `zone`.
#[track_caller]
fn assert_datetime(text: &Value, zone: &str) {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("{text} is not a string"));
    let (stamp, rest) = text.split_at(26.min(text.len()));
    assert_eq!(rest, zone, "{text}");
    let bytes = stamp.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13 | 16 | 19);
        assert_eq!(b.is_ascii_digit(), want_digit, "{text}");
    }
    assert_eq!(&stamp[4..5], "-");
    assert_eq!(&stamp[10..11], "T");
    assert_eq!(&stamp[19..20], ".");
}

// ---------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------

#[test]
fn create_detail_list_update_and_delete_a_topic() {
    let relay = Relay::start();
    let alice = manager("alice");
    let resp = create(
        &relay,
        &alice,
        json!({"topic_name": "jobs", "description": "work", "is_public": true}),
    );
    resp.assert_status(201);
    let record = resp.json();
    assert!(is_uuid4(record["topic_id"].as_str().unwrap()), "{record}");
    assert_eq!(record["topic_name"], "jobs");
    assert_eq!(record["owner_id"], "alice");
    assert_eq!(record["description"], "work");
    assert_datetime(&record["created_at"], "Z");
    let keys: HashSet<&str> = record.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "topic_id",
            "topic_name",
            "owner_id",
            "created_at",
            "description"
        ])
    );

    let got = detail(&relay, &alice, "jobs");
    got.assert_status(200);
    assert_eq!(got.json(), record);
    // Any token with `read` may read a record; one without gets 403 (the record names
    // its owner).
    assert_eq!(detail(&relay, &read_token(), "jobs").json(), record);
    let nobody = token("nobody", Permissions::default());
    detail(&relay, &nobody, "jobs").assert_error(403, "PERMISSION_DENIED");

    let plain = created(&relay, &alice, "plain");
    assert_eq!(plain["description"], Value::Null, "emitted as null");
    let others = created(&relay, &user("bob"), "bobs");
    let mine = list(&relay, &alice);
    assert_eq!(
        mine,
        vec![record.clone(), plain],
        "oldest first, only alice's"
    );
    assert_eq!(list(&relay, &user("bob")), vec![others]);
    assert!(list(&relay, &nobody).is_empty());

    let path = "/api/v1/topics/jobs";
    let updated = call(
        &relay,
        "PUT",
        path,
        &alice,
        Some(&json!({"description": "new"})),
    );
    updated.assert_status(200);
    let updated = updated.json();
    assert_eq!(updated["description"], "new");
    assert_eq!(updated["topic_id"], record["topic_id"]);
    assert_eq!(updated["created_at"], record["created_at"]);
    let unchanged = call(
        &relay,
        "PUT",
        path,
        &alice,
        Some(&json!({"description": null})),
    );
    unchanged.assert_status(200);
    assert_eq!(unchanged.json(), updated, "null leaves the description");
    assert_eq!(
        call(&relay, "PUT", path, &alice, Some(&json!({}))).json(),
        updated
    );
    assert_eq!(detail(&relay, &alice, "jobs").json(), updated);

    let deleted = call(&relay, "DELETE", path, &alice, None);
    deleted.assert_status(204);
    assert!(deleted.body.is_empty());
    assert_detail(
        &detail(&relay, &alice, "jobs"),
        404,
        "TOPIC_NOT_FOUND",
        "Topic 'jobs' not found",
    );
    assert_eq!(list(&relay, &alice).len(), 1);
    let again = created(&relay, &alice, "jobs");
    assert_ne!(again["topic_id"], record["topic_id"], "a new record");
}

#[test]
fn create_refuses_duplicates_bad_input_and_missing_rights() {
    let relay = Relay::start();
    let alice = user("alice");
    created(&relay, &alice, "dup");
    assert_detail(
        &create(&relay, &alice, json!({"topic_name": "dup"})),
        400,
        "TOPIC_EXISTS",
        "Topic 'dup' already exists for owner alice",
    );
    for (body, code) in [
        (json!({"topic_name": "bad name"}), "INVALID_TOPIC"),
        (json!({"topic_name": "invalid@topic!"}), "INVALID_TOPIC"),
        (json!({"topic_name": ""}), "INVALID_TOPIC"),
        (json!({"topic_name": "x".repeat(256)}), "INVALID_TOPIC"),
        (json!({"topic_name": 5}), "INVALID_TOPIC"),
        (json!({"description": "no name"}), "MISSING_FIELD"),
        (json!({"topic_name": null}), "MISSING_FIELD"),
        (
            json!({"topic_name": "long", "description": "é".repeat(501)}),
            "INVALID_DESCRIPTION",
        ),
        (
            json!({"topic_name": "d", "description": 7}),
            "INVALID_DESCRIPTION",
        ),
        (json!(["topic_name", "x"]), "INVALID_BODY"),
    ] {
        create(&relay, &alice, body.clone()).assert_error(422, code);
    }
    let raw = relay.request(
        "POST",
        "/api/v1/topics",
        &[auth_header(&alice).as_pair()],
        b"{\"topic_name\":",
    );
    raw.assert_error(422, "INVALID_JSON");
    // 500 characters (not bytes) are fine.
    let long = create(
        &relay,
        &alice,
        json!({"topic_name": "long", "description": "é".repeat(500)}),
    );
    long.assert_status(201);
    assert_eq!(
        list(&relay, &alice).len(),
        2,
        "rejected creates changed nothing"
    );

    create(&relay, "", json!({"topic_name": "t"})).assert_error(401, "AUTH_REQUIRED");
    let reader = read_token();
    assert_detail(
        &create(&relay, &reader, json!({"topic_name": "t"})),
        403,
        "PERMISSION_DENIED",
        "Permission 'write' required",
    );
    let limited = token_with("alice", &["write"], json!({"topics": ["allowed.*"]}));
    create(&relay, &limited, json!({"topic_name": "other"})).assert_error(403, "TOPIC_FORBIDDEN");
    create(&relay, &limited, json!({"topic_name": "allowed.x"})).assert_status(201);
}

#[test]
fn global_namespace_shares_names_so_others_get_409_and_cannot_change_the_topic() {
    let relay = Relay::start();
    let (alice, bob) = (user("alice"), user("bob"));
    let record = created(&relay, &alice, "shared");
    let taken = create(&relay, &bob, json!({"topic_name": "shared"}));
    taken.assert_error(409, "TOPIC_OWNED_BY_ANOTHER");
    assert!(taken.json()["detail"]
        .as_str()
        .unwrap()
        .contains("'shared'"));
    // The Python client then verifies ownership through the detail endpoint.
    assert_eq!(detail(&relay, &bob, "shared").json()["owner_id"], "alice");

    let path = "/api/v1/topics/shared";
    let put = call(
        &relay,
        "PUT",
        path,
        &bob,
        Some(&json!({"description": "mine"})),
    );
    put.assert_error(403, "NOT_TOPIC_OWNER");
    call(&relay, "DELETE", path, &bob, None).assert_error(403, "NOT_TOPIC_OWNER");
    assert_eq!(detail(&relay, &alice, "shared").json(), record, "unchanged");
    assert!(list(&relay, &bob).is_empty(), "bob owns nothing");

    // An admin may change and delete anybody's topic.
    let root = admin();
    let put = call(
        &relay,
        "PUT",
        path,
        &root,
        Some(&json!({"description": "by admin"})),
    );
    put.assert_status(200);
    assert_eq!(put.json()["owner_id"], "alice");
    call(&relay, "DELETE", path, &root, None).assert_status(204);
    detail(&relay, &alice, "shared").assert_error(404, "TOPIC_NOT_FOUND");
}

#[test]
fn per_user_namespaces_keep_same_named_topics_apart() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_TOPIC_NAMESPACE", "per_user")]);
    let (alice, bob) = (user("alice"), user("bob"));
    let a = created(&relay, &alice, "jobs");
    let b = created(&relay, &bob, "jobs");
    assert_ne!(a["topic_id"], b["topic_id"]);
    assert_eq!(a["owner_id"], "alice");
    assert_eq!(b["owner_id"], "bob");
    assert_eq!(b["topic_name"], "jobs", "the bare name, never the key");
    assert_eq!(detail(&relay, &alice, "jobs").json(), a);
    assert_eq!(detail(&relay, &bob, "jobs").json(), b);
    assert_eq!(list(&relay, &alice), vec![a.clone()]);
    assert_eq!(list(&relay, &bob), vec![b]);
    assert_detail(
        &create(&relay, &alice, json!({"topic_name": "jobs"})),
        400,
        "TOPIC_EXISTS",
        "Topic 'jobs' already exists for owner alice",
    );

    // Messages are per namespace too; another user's topic is invisible (404).
    publish_ns(&relay, &alice, "jobs", 0..2);
    assert_eq!(ns(&page(&relay, &alice, "jobs", "")), [1, 0]);
    assert_eq!(page(&relay, &bob, "jobs", "")["total"], 0);
    let carol = user("carol");
    detail(&relay, &carol, "jobs").assert_error(404, "TOPIC_NOT_FOUND");
    history(&relay, &carol, "jobs", "").assert_error(404, "TOPIC_NOT_FOUND");

    call(&relay, "DELETE", "/api/v1/topics/jobs", &bob, None).assert_status(204);
    assert_eq!(
        detail(&relay, &alice, "jobs").json(),
        a,
        "alice's is untouched"
    );
    assert_eq!(page(&relay, &alice, "jobs", "")["total"], 2);
}

#[test]
fn unknown_and_hidden_topics_are_404() {
    let relay = Relay::start();
    let alice = user("alice");
    let missing = |resp: Response| {
        resp.assert_error(404, "TOPIC_NOT_FOUND");
        assert!(resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not found"));
    };
    missing(detail(&relay, &alice, "nope"));
    missing(history(&relay, &alice, "nope", ""));
    // The missing record is reported before bad parameters, as upstream.
    missing(history(&relay, &alice, "nope", "order=sideways&limit=0"));
    missing(call(
        &relay,
        "PUT",
        "/api/v1/topics/nope",
        &alice,
        Some(&json!({})),
    ));
    missing(call(&relay, "DELETE", "/api/v1/topics/nope", &alice, None));
    // Path names that are not topic names are simply not found.
    missing(detail(&relay, &alice, "bad%20name"));
    missing(detail(&relay, &alice, "a%2Fb"));

    // Path segments are percent-decoded (the Python client quotes `:`).
    created(&relay, &alice, "ns:jobs");
    detail(&relay, &alice, "ns%3Ajobs").assert_status(200);
    detail(&relay, &alice, "ns:jobs").assert_status(200);

    // A token whose `topics` claim does not cover a topic cannot see that it exists.
    let limited = token_with("alice", &["read", "write"], json!({"topics": ["other.*"]}));
    missing(detail(&relay, &limited, "ns:jobs"));
    missing(history(&relay, &limited, "ns:jobs", ""));
    missing(call(
        &relay,
        "DELETE",
        "/api/v1/topics/ns:jobs",
        &limited,
        None,
    ));
    assert!(list(&relay, &limited).is_empty());
    detail(&relay, &alice, "ns:jobs").assert_status(200);

    detail(&relay, "", "ns:jobs").assert_error(401, "AUTH_REQUIRED");
    call(&relay, "GET", "/api/v1/topics", "", None).assert_error(401, "AUTH_REQUIRED");
}

#[test]
fn routes_answer_405_and_cors_preflights() {
    let relay = Relay::start();
    let alice = user("alice");
    for (method, path, allow) in [
        ("PUT", "/api/v1/topics", "GET, POST"),
        ("PATCH", "/api/v1/topics/x", "GET, PUT, DELETE"),
        ("POST", "/api/v1/topics/stats", "GET, PUT, DELETE"),
        ("POST", "/api/v1/topics/x/messages", "GET"),
    ] {
        let resp = call(&relay, method, path, &alice, None);
        resp.assert_error(405, "METHOD_NOT_ALLOWED");
        assert_eq!(resp.header("Allow"), Some(allow), "{method} {path}");
    }
    call(&relay, "GET", "/api/v1/topics/x/other", &alice, None).assert_error(404, "NOT_FOUND");
    call(&relay, "GET", "/api/v1/topicsx", &alice, None).assert_error(404, "NOT_FOUND");

    for (path, methods) in [
        ("/api/v1/topics", "GET, POST, OPTIONS"),
        ("/api/v1/topics/x", "GET, PUT, DELETE, OPTIONS"),
        ("/api/v1/topics/x/messages", "GET, OPTIONS"),
    ] {
        let resp = relay.request(
            "OPTIONS",
            path,
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "GET"),
            ],
            b"",
        );
        resp.assert_status(204);
        assert_eq!(resp.header("Access-Control-Allow-Methods"), Some(methods));
        assert_eq!(resp.header("Access-Control-Allow-Origin"), Some("*"));
    }
}

#[test]
fn stats_count_every_shards_records_for_admins_only() {
    let relay = Relay::start();
    let alice = user("alice");
    let stats = |token: &str| call(&relay, "GET", "/api/v1/topics/stats", token, None);
    assert_eq!(stats(&admin()).json(), json!({"total_topics": 0}));
    for topic in topics_on_each_shard("stat") {
        created(&relay, &alice, &topic);
    }
    publish_ns(&relay, &user("bob"), &topic_on("auto", 1), 0..1);
    assert_detail(
        &stats(&alice),
        403,
        "PERMISSION_DENIED",
        "Permission 'admin' required",
    );
    assert_eq!(stats(&admin()).json(), json!({"total_topics": SHARDS + 1}));
    // Other methods on `stats` address a topic of that name.
    call(&relay, "DELETE", "/api/v1/topics/stats", &alice, None)
        .assert_error(404, "TOPIC_NOT_FOUND");
}

#[test]
fn publishing_auto_creates_the_record_but_subscribing_does_not() {
    let relay = Relay::start_with(&[
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "alice"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "alice-password"),
    ]);
    relay.wait_ready(std::time::Duration::from_secs(10));
    // An account token (from /auth/login) names its user in the description.
    let login = relay.request(
        "POST",
        "/auth/login",
        &[],
        b"username=alice&password=alice-password",
    );
    login.assert_status(200);
    let named = login.json()["access_token"].as_str().unwrap().to_owned();
    let me = call(&relay, "GET", "/auth/me", &named, None).json();
    let topic = topic_on("auto", 0);
    publish_ns(&relay, &named, &topic, 0..1);
    let record = detail(&relay, &named, &topic);
    record.assert_status(200);
    let record = record.json();
    assert_eq!(record["owner_id"], me["user_id"]);
    assert_eq!(record["description"], "Auto-created topic by alice");
    assert!(is_uuid4(record["topic_id"].as_str().unwrap()));
    publish_ns(&relay, &named, &topic, 1..2);
    assert_eq!(
        detail(&relay, &named, &topic).json(),
        record,
        "created once"
    );
    assert_eq!(list(&relay, &named), vec![record]);

    // Without a username the description names the subject; bulk publishes create too.
    let bulk_topic = topic_on("auto-bulk", 1);
    let body = json!({"messages": [{"topic": bulk_topic, "payload": {}}]}).to_string();
    relay
        .request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&user("svc")).as_pair()],
            body.as_bytes(),
        )
        .assert_status(207);
    let made = detail(&relay, &user("svc"), &bulk_topic).json();
    assert_eq!(made["owner_id"], "svc");
    assert_eq!(made["description"], "Auto-created topic by svc");

    // Subscribers and polls do not make records.
    let mut ws = relay.ws();
    ws.subscribe(&["watched"], json!({}));
    relay.poll("topics=polled&timeout=1").assert_status(200);
    detail(&relay, &user("svc"), "watched").assert_error(404, "TOPIC_NOT_FOUND");
    detail(&relay, &user("svc"), "polled").assert_error(404, "TOPIC_NOT_FOUND");
    // A publish to a topic somebody created keeps its owner.
    let alice = user("alice");
    created(&relay, &alice, "owned");
    publish_ns(&relay, &user("bob"), "owned", 0..1);
    assert_eq!(detail(&relay, &alice, "owned").json()["owner_id"], "alice");
}

// ---------------------------------------------------------------------------------------
// History pages
// ---------------------------------------------------------------------------------------

#[test]
fn history_pages_follow_the_original_contract() {
    let relay = Relay::start();
    let alice = user("alice");
    let topic = "hist";
    created(&relay, &alice, topic);
    let empty = page(&relay, &alice, topic, "");
    assert_eq!(
        empty,
        json!({"messages": [], "total": 0, "limit": 10, "order": "desc",
               "cursor": null, "next_cursor": null})
    );

    let ids = publish_ns(&relay, &alice, topic, 0..12);
    let first = page(&relay, &alice, topic, "");
    assert_eq!(first["limit"], 10);
    assert_eq!(first["order"], "desc");
    assert_eq!(first["total"], 10);
    assert_eq!(ns(&first), (2..12).rev().collect::<Vec<_>>());
    assert_eq!(first["next_cursor"], ids[2].as_str());
    assert_eq!(first["cursor"], Value::Null);

    let p1 = page(&relay, &alice, topic, "limit=3&order=desc&cursor=");
    let p1_ns = ns(&p1);
    assert_eq!(p1_ns, [11, 10, 9]);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let p2 = page(&relay, &alice, topic, &format!("limit=3&cursor={cursor}"));
    assert_eq!(ns(&p2), [8, 7, 6]);
    assert_eq!(
        p2["cursor"],
        cursor.as_str(),
        "the request's cursor is echoed"
    );
    assert_eq!(p2["total"], 3);

    let a1 = page(&relay, &alice, topic, "limit=3&order=asc");
    assert_eq!(ns(&a1), [0, 1, 2]);
    let next = a1["next_cursor"].as_str().unwrap();
    let a2 = page(
        &relay,
        &alice,
        topic,
        &format!("limit=3&order=asc&cursor={next}"),
    );
    assert_eq!(ns(&a2), [3, 4, 5]);

    // Past either end: an empty page without a next cursor.
    let end = page(
        &relay,
        &alice,
        topic,
        &format!("order=asc&cursor={}", ids[11]),
    );
    assert_eq!(end["messages"], json!([]));
    assert_eq!(end["next_cursor"], Value::Null);
    let start = page(&relay, &alice, topic, &format!("cursor={}", ids[0]));
    assert_eq!(start["total"], 0);

    // Items are the original's stored-message shape.
    let item = &page(&relay, &alice, topic, "limit=1")["messages"][0];
    let keys: HashSet<&str> = item.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys,
        HashSet::from(["message_id", "topic", "payload", "timestamp", "metadata"])
    );
    assert_eq!(item["message_id"], ids[11].as_str());
    assert_eq!(item["topic"], topic);
    assert_eq!(item["payload"], json!({"n": 11}));
    assert_eq!(item["metadata"], json!({}), "no metadata is {{}}");
    assert_datetime(&item["timestamp"], "+00:00");
}

#[test]
fn history_parameters_are_checked_like_the_original() {
    let relay = Relay::start();
    let alice = user("alice");
    created(&relay, &alice, "params");
    for query in ["limit=0", "limit=-1"] {
        assert_detail(
            &history(&relay, &alice, "params", query),
            400,
            "INVALID_LIMIT",
            "Limit must be at least 1",
        );
    }
    for query in ["limit=abc", "limit=1.5", "limit="] {
        history(&relay, &alice, "params", query).assert_error(422, "INVALID_LIMIT");
    }
    let order = history(&relay, &alice, "params", "order=sideways");
    order.assert_error(400, "INVALID_ORDER");
    assert!(order.json()["detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("order"));
    for cursor in ["abc", "1-2-3", "-5"] {
        history(&relay, &alice, "params", &format!("cursor={cursor}"))
            .assert_error(400, "INVALID_CURSOR");
    }

    // More than 100 is capped to 100.
    let messages: Vec<Value> = (0..150)
        .map(|n| json!({"topic": "params", "payload": {"n": n}}))
        .collect();
    let body = json!({ "messages": messages }).to_string();
    relay
        .request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&alice).as_pair()],
            body.as_bytes(),
        )
        .assert_status(207);
    let capped = page(&relay, &alice, "params", "limit=150");
    assert_eq!(capped["limit"], 100);
    assert_eq!(capped["total"], 100);
    assert_eq!(ns(&capped), (50..150).rev().collect::<Vec<_>>());
}

#[test]
fn history_preserves_payload_bytes_and_metadata_strings_and_hides_expired_messages() {
    let relay = Relay::start();
    let alice = user("alice");
    let topic = "fidelity";
    let mut http = relay.http();
    let bodies = [
        r#"{"topic":"fidelity","payload":{"b": 1.50, "a": [1e3]},"metadata":{"k":"v","n":"1"}}"#,
        r#"{"topic":"fidelity","payload":{"short":true},"ttl":1}"#,
        r#"{"topic":"fidelity","payload":{"last":true}}"#,
    ];
    for body in bodies {
        let resp = http.request(
            "POST",
            "/api/v1/messages",
            &[auth_header(&alice).as_pair()],
            body.as_bytes(),
        );
        resp.assert_status(201);
    }
    let raw = history(&relay, &alice, topic, "order=asc").text();
    assert!(
        raw.contains(r#""payload":{"b": 1.50, "a": [1e3]},"#),
        "payload not verbatim: {raw}"
    );
    let body: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body["messages"][0]["metadata"], json!({"k": "v", "n": "1"}));
    assert_eq!(body["total"], 3);

    thread::sleep(Duration::from_millis(1100));
    let later = page(&relay, &alice, topic, "order=asc");
    assert_eq!(later["total"], 2, "the expired message is gone: {later}");
    assert_eq!(later["messages"][1]["payload"], json!({"last": true}));
    assert_eq!(page(&relay, &alice, topic, "order=desc")["total"], 2);
}

#[test]
fn delete_removes_the_messages_and_ids_keep_growing() {
    let relay = Relay::start();
    let alice = manager("alice");
    let topic = "short-lived";
    let old = publish_ns(&relay, &alice, topic, 0..3);
    let mut ws = relay.ws();
    ws.subscribe(&[topic], json!({}));
    call(
        &relay,
        "DELETE",
        &format!("/api/v1/topics/{topic}"),
        &alice,
        None,
    )
    .assert_status(204);
    history(&relay, &alice, topic, "").assert_error(404, "TOPIC_NOT_FOUND");
    created(&relay, &alice, topic);
    assert_eq!(
        page(&relay, &alice, topic, "")["total"],
        0,
        "the messages went too"
    );

    let new = publish_ns(&relay, &alice, topic, 3..4);
    assert!(
        parse_id(&new[0]) > parse_id(&old[2]),
        "IDs never go backwards"
    );
    assert_eq!(page_ids(&page(&relay, &alice, topic, "")), new);
    // The subscription survived the delete.
    assert_eq!(id_of(&ws.recv_delivery()), new[0]);
    // Earliest replay no longer finds the deleted messages.
    let mut late = relay.ws();
    late.subscribe(&[topic], json!({"since": "earliest"}));
    let replay = late.collect_until_pong();
    assert_eq!(replay.len(), 1, "{replay:?}");
}

// ---------------------------------------------------------------------------------------
// With Valkey
// ---------------------------------------------------------------------------------------

/// How long a relay may take to read its topics back from Valkey and turn ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn start_on(valkey: &Valkey, env: &[(&str, &str)]) -> Relay {
    let relay = Relay::start_on_valkey(valkey, env);
    relay.wait_ready(READY_TIMEOUT);
    relay
}

/// Every message of `topic`, walking pages of `size` in `order` with `next_cursor`.
fn walk(relay: &Relay, token: &str, topic: &str, order: &str, size: usize) -> Vec<i64> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = page(
            relay,
            token,
            topic,
            &format!("limit={size}&order={order}&cursor={cursor}"),
        );
        let got = ns(&p);
        assert!(got.len() <= size, "{p}");
        if got.is_empty() {
            assert_eq!(p["next_cursor"], Value::Null);
            return all;
        }
        all.extend(got);
        cursor = p["next_cursor"].as_str().unwrap().to_string();
        assert!(all.len() < 1000, "paging does not end");
    }
}

#[test]
fn records_and_history_survive_a_relay_restart() {
    let valkey = Valkey::start();
    let relay = start_on(&valkey, &[]);
    let alice = manager("alice");
    let topics = topics_on_each_shard("kept");
    let mut records = Vec::new();
    for topic in &topics {
        let resp = create(
            &relay,
            &alice,
            json!({"topic_name": topic, "description": "d"}),
        );
        resp.assert_status(201);
        records.push(resp.json());
    }
    let auto = topic_on("kept-auto", 1);
    let ids = publish_ns(&relay, &alice, &auto, 0..5);
    let auto_record = detail(&relay, &alice, &auto).json();
    let updated = call(
        &relay,
        "PUT",
        &format!("/api/v1/topics/{}", topics[0]),
        &alice,
        Some(&json!({"description": "changed"})),
    );
    updated.assert_status(200);
    records[0] = updated.json();

    let hash = valkey.command(&["HGETALL", &format!("pulsar:{{{auto}}}:t")]);
    let fields: Vec<String> = hash.items().iter().filter_map(|r| r.text()).collect();
    for want in [
        "topic_id",
        "topic_name",
        "owner_id",
        "created_at",
        "description",
        &auto,
    ] {
        assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
    }

    drop(relay);
    let relay = start_on(&valkey, &[]);
    for (topic, record) in topics.iter().zip(&records) {
        assert_eq!(&detail(&relay, &alice, topic).json(), record, "{topic}");
    }
    assert_eq!(detail(&relay, &alice, &auto).json(), auto_record);
    assert_eq!(list(&relay, &alice).len(), 3);
    let after = page(&relay, &alice, &auto, "order=asc");
    assert_eq!(page_ids(&after), ids, "history comes back from the stream");
    assert_eq!(ns(&after), [0, 1, 2, 3, 4]);
    assert_detail(
        &create(&relay, &alice, json!({"topic_name": topics[1]})),
        400,
        "TOPIC_EXISTS",
        &format!("Topic '{}' already exists for owner alice", topics[1]),
    );
    let more = publish_ns(&relay, &alice, &auto, 5..6);
    assert!(parse_id(&more[0]) > parse_id(&ids[4]));
    assert_eq!(
        detail(&relay, &alice, &auto).json(),
        auto_record,
        "a publish after the restart does not re-create the record"
    );
}

#[test]
fn history_pages_cross_from_the_valkey_stream_into_the_ring_without_gap_or_duplicate() {
    let valkey = Valkey::start();
    let relay = start_on(
        &valkey,
        &[("PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC", "4")],
    );
    let alice = user("alice");
    let topic = topic_on("crossing", 1);
    publish_ns(&relay, &alice, &topic, 0..23);
    assert_eq!(valkey.xlen(&stream_key(&topic)), 23);

    let all: Vec<i64> = (0..23).collect();
    let newest_first: Vec<i64> = all.iter().rev().copied().collect();
    for size in [1, 3, 4, 5, 10, 100] {
        assert_eq!(
            walk(&relay, &alice, &topic, "asc", size),
            all,
            "asc by {size}"
        );
        assert_eq!(
            walk(&relay, &alice, &topic, "desc", size),
            newest_first,
            "desc by {size}"
        );
    }
    // A page that starts in the stream and ends in the ring, both ways.
    let ids = page_ids(&page(&relay, &alice, &topic, "order=asc&limit=100"));
    let asc = page(
        &relay,
        &alice,
        &topic,
        &format!("order=asc&limit=6&cursor={}", ids[15]),
    );
    assert_eq!(ns(&asc), [16, 17, 18, 19, 20, 21]);
    let desc = page(
        &relay,
        &alice,
        &topic,
        &format!("limit=6&cursor={}", ids[21]),
    );
    assert_eq!(ns(&desc), [20, 19, 18, 17, 16, 15]);
    assert_eq!(
        ns(&page(&relay, &alice, &topic, "limit=6")),
        [22, 21, 20, 19, 18, 17]
    );
}

#[test]
fn delete_removes_the_stream_the_positions_and_the_record_from_valkey() {
    let valkey = Valkey::start();
    let relay = start_on(&valkey, &[]);
    let alice = manager("alice");
    let topic = topic_on("erased", 0);
    publish_ns(&relay, &alice, &topic, 0..3);
    let keys = [
        stream_key(&topic),
        positions_key(&topic),
        format!("pulsar:{{{topic}}}:t"),
    ];
    // A durable consumer position, so that the positions hash exists.
    let polled = relay.poll(&format!(
        "topics={topic}&since=earliest&client_id=c1&timeout=1"
    ));
    polled.assert_status(200);
    let last = polled.json()["messages"][2]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("three messages replayed: {}", polled.text()))
        .to_owned();
    relay
        .request(
            "POST",
            "/api/v1/ack",
            &[auth_header(&rw_token()).as_pair()],
            json!({"message_ids": [last], "client_id": "c1"})
                .to_string()
                .as_bytes(),
        )
        .assert_status(200);
    // Positions are written behind the ack: wait until Valkey has this one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while valkey.command(&["HLEN", &keys[1]]).int() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared in Valkey",
            keys[1]
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(valkey.xlen(&keys[0]), 3);
    assert_eq!(valkey.command(&["EXISTS", &keys[2]]).int(), 1);

    call(
        &relay,
        "DELETE",
        &format!("/api/v1/topics/{topic}"),
        &alice,
        None,
    )
    .assert_status(204);
    // With persisted acks (the default on Valkey) the 204 waited for the DEL.
    detail(&relay, &alice, &topic).assert_error(404, "TOPIC_NOT_FOUND");
    for key in &keys {
        assert_eq!(
            valkey.command(&["EXISTS", key]).int(),
            0,
            "{key} is still there"
        );
    }

    drop(relay);
    let relay = start_on(&valkey, &[]);
    detail(&relay, &alice, &topic).assert_error(404, "TOPIC_NOT_FOUND");
    created(&relay, &alice, &topic);
    assert_eq!(page(&relay, &alice, &topic, "")["total"], 0);
}

#[test]
fn records_are_not_touched_until_the_shard_recovered_them_from_valkey() {
    let mut valkey = Valkey::start();
    let relay = start_on(&valkey, &[]);
    let alice = user("alice");
    let topic = topic_on("recovering", 1);
    let record = created(&relay, &alice, &topic);
    drop(relay);

    // Valkey is away while the relay starts: it cannot know its records yet, so it must
    // neither answer from nor create over them.
    valkey.kill9();
    let relay = Relay::start_on_valkey(&valkey, &[]);
    create(&relay, &alice, json!({"topic_name": topic})).assert_error(503, "STORE_RECOVERING");
    detail(&relay, &alice, &topic).assert_error(503, "STORE_RECOVERING");
    history(&relay, &alice, &topic, "").assert_error(503, "STORE_RECOVERING");
    call(&relay, "GET", "/api/v1/topics", &alice, None).assert_error(503, "STORE_RECOVERING");
    // Publishing needs the shard's last IDs and records too: refused, and a bulk item
    // says why.
    let auth = auth_header(&alice);
    let single = json!({"topic": topic, "payload": 1}).to_string();
    let resp = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth.as_pair()],
        single.as_bytes(),
    );
    resp.assert_error(503, "STORE_RECOVERING");
    assert!(resp.header("retry-after").is_some(), "no Retry-After");
    let bulk = json!({"messages": [{"topic": topic, "payload": 1}]}).to_string();
    let resp = relay.request(
        "POST",
        "/api/v1/messages/bulk",
        &[auth.as_pair()],
        bulk.as_bytes(),
    );
    resp.assert_status(207);
    let item = &resp.json()["results"][0];
    assert_eq!(item["status"], "rejected", "{item}");
    assert_eq!(item["error"]["code"], "STORE_RECOVERING", "{item}");

    valkey.restart_same_dir();
    relay.wait_ready(Duration::from_secs(15));
    assert_eq!(detail(&relay, &alice, &topic).json(), record);
    create(&relay, &alice, json!({"topic_name": topic})).assert_error(400, "TOPIC_EXISTS");
    assert_eq!(
        page(&relay, &alice, &topic, "")["total"],
        0,
        "the refused publishes left nothing"
    );
}
