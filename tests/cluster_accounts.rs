//! Accounts across the nodes of a cluster (`cluster.enabled`): several real relay
//! processes, one shard each, on one real valkey-server, with the same jwt secret. What
//! one node changes (users, logouts, refresh tokens) takes effect on the others within a
//! second, and decisions that need one winner (a refresh-token rotation, a username) have
//! exactly one across nodes.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "12345678";

/// What the README promises, with room for a loaded test machine.
const PROPAGATION: Duration = Duration::from_secs(2);

/// `n` relay nodes in cluster mode on `valkey`, each ready to answer logins.
fn nodes(valkey: &Valkey, n: usize) -> Vec<Relay> {
    let nodes: Vec<Relay> = (0..n)
        .map(|_| {
            Relay::start_on_valkey(
                valkey,
                &[
                    ("PULSAR_CLUSTER_ENABLED", "true"),
                    ("PULSAR_SERVER_SHARDS", "1"),
                    ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
                    ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
                    ("PULSAR_ACCOUNTS_LOGIN_RATE", "0"),
                ],
            )
        })
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(10));
    }
    nodes
}

/// Logs in and returns (access token, refresh token).
fn login(relay: &Relay, username: &str, password: &str) -> (String, String) {
    let resp = relay.form_login(username, password);
    resp.assert_status(200);
    let body = resp.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// Logs in on `relay` once it knows `username` (made on another node a moment ago).
fn login_when_known(relay: &Relay, username: &str, password: &str) -> (String, String) {
    assert!(
        eventually(PROPAGATION, || relay.form_login(username, password).status
            == 200),
        "{username} cannot log in on the other node"
    );
    login(relay, username, password)
}

fn register(relay: &Relay, admin: &str, username: &str, permissions: &[&str]) -> Response {
    relay.call(
        "POST",
        "/auth/register",
        admin,
        &json!({"username": username, "password": format!("pw-{username}-123"),
                "permissions": permissions}),
    )
}

/// Registers `username` on `relay` and returns its user ID.
fn registered(relay: &Relay, admin: &str, username: &str) -> String {
    let resp = register(relay, admin, username, &["read", "write"]);
    resp.assert_status(201);
    resp.json()["user_id"].as_str().unwrap().to_owned()
}

/// Waits until `token` is refused on `relay` with `status` and `code`.
#[track_caller]
fn refused_within(relay: &Relay, token: &str, status: u16, code: &str) {
    let mut last = None;
    let refused = eventually(PROPAGATION, || {
        let resp = relay.call("GET", "/auth/me", token, &Value::Null);
        let done = resp.status == status && resp.json()["code"] == code;
        last = Some((resp.status, resp.text()));
        done
    });
    assert!(refused, "expected {status} {code}, last answer {last:?}");
}

#[test]
fn a_user_made_on_one_node_logs_in_on_another_and_names_stay_unique() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    let (admin_a, _) = login(&a, ADMIN, ADMIN_PASSWORD);
    let (admin_b, _) = login(&b, ADMIN, ADMIN_PASSWORD);
    assert_eq!(
        a.call("GET", "/auth/me", &admin_a, &Value::Null).json()["user_id"],
        b.call("GET", "/auth/me", &admin_b, &Value::Null).json()["user_id"],
        "both nodes started with one bootstrap administrator"
    );

    let bob = registered(&a, &admin_a, "bob");
    let (bob_token, _) = login_when_known(&b, "bob", "pw-bob-123");
    let me = b.call("GET", "/auth/me", &bob_token, &Value::Null).json();
    assert_eq!(me["user_id"], bob.as_str());
    register(&b, &admin_b, "bob", &["read"]).assert_error(400, "USERNAME_TAKEN");

    // The same new name on both nodes at once: exactly one account gets it.
    for round in 0..3 {
        let name = format!("carol{round}");
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<(u16, String)> = thread::scope(|s| {
            let handles: Vec<_> = [(&a, &admin_a), (&b, &admin_b)]
                .into_iter()
                .map(|(node, admin)| {
                    let (barrier, name) = (Arc::clone(&barrier), name.clone());
                    s.spawn(move || {
                        barrier.wait();
                        let resp = register(node, admin, &name, &["read"]);
                        let code = if resp.status == 201 {
                            String::new()
                        } else {
                            resp.code()
                        };
                        (resp.status, code)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created = answers.iter().filter(|(status, _)| *status == 201).count();
        assert_eq!(created, 1, "{answers:?}");
        assert!(
            answers
                .iter()
                .any(|(status, code)| *status == 400 && code == "USERNAME_TAKEN"),
            "{answers:?}"
        );
    }
    let names = |node: &Relay, admin: &str| -> Vec<String> {
        let list = node.call("GET", "/auth/users", admin, &Value::Null).json();
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let expected = ["admin", "bob", "carol0", "carol1", "carol2"];
    assert!(
        eventually(PROPAGATION, || names(&a, &admin_a) == expected
            && names(&b, &admin_b) == expected),
        "{:?} / {:?}",
        names(&a, &admin_a),
        names(&b, &admin_b)
    );

    // Two administrators change different fields of one account on two nodes at once:
    // neither change is lost to the other node's older copy.
    let path = format!("/auth/users/{bob}");
    for round in 0..3 {
        let email = format!("bob{round}@example.com");
        let permissions = if round % 2 == 0 {
            json!(["read"])
        } else {
            json!(["read", "write"])
        };
        let barrier = Arc::new(Barrier::new(2));
        thread::scope(|s| {
            for (node, admin, body) in [
                (&a, &admin_a, json!({ "email": email })),
                (&b, &admin_b, json!({ "permissions": permissions })),
            ] {
                let (barrier, path) = (Arc::clone(&barrier), &path);
                s.spawn(move || {
                    barrier.wait();
                    node.call("PATCH", path, admin, &body).assert_status(200);
                });
            }
        });
        for (node, admin) in [(&a, &admin_a), (&b, &admin_b)] {
            let both = eventually(PROPAGATION, || {
                let users = node.call("GET", "/auth/users", admin, &Value::Null).json();
                let user = users
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|u| u["user_id"] == bob.as_str())
                    .cloned()
                    .unwrap();
                user["email"] == email.as_str() && user["permissions"] == permissions
            });
            assert!(both, "round {round}: a change was lost");
        }
    }
}

#[test]
fn deactivation_on_one_node_ends_sessions_on_another() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    let (admin, _) = login(&a, ADMIN, ADMIN_PASSWORD);
    let bob = registered(&a, &admin, "bob");
    let (bob_token, _) = login_when_known(&b, "bob", "pw-bob-123");

    let mut session = Ws::connect(b.addr, &bob_token);
    session.subscribe(&["jobs"], Value::Null);
    let started = Instant::now();
    a.call(
        "PATCH",
        &format!("/auth/users/{bob}"),
        &admin,
        &json!({"is_active": false}),
    )
    .assert_status(200);
    let reason = session.expect_close(4003);
    assert!(reason.contains("inactive"), "{reason}");
    assert!(
        started.elapsed() < PROPAGATION,
        "closed after {:?}",
        started.elapsed()
    );
    refused_within(&b, &bob_token, 403, "USER_INACTIVE");
    b.form_login("bob", "pw-bob-123")
        .assert_error(403, "USER_INACTIVE");

    // Reactivated on B, then read permission taken away on A: the session on B ends.
    let (admin_b, _) = login(&b, ADMIN, ADMIN_PASSWORD);
    b.call(
        "PATCH",
        &format!("/auth/users/{bob}"),
        &admin_b,
        &json!({"is_active": true}),
    )
    .assert_status(200);
    let (bob_token, _) = login(&b, "bob", "pw-bob-123");
    let mut session = Ws::connect(b.addr, &bob_token);
    session.subscribe(&["jobs"], Value::Null);
    // A knows of the reactivation before it is told to change permissions (the revision
    // it changes is the one B wrote, or its change is decided again on it).
    let patched = a.call(
        "PATCH",
        &format!("/auth/users/{bob}"),
        &admin,
        &json!({"permissions": ["write"]}),
    );
    patched.assert_status(200);
    assert_eq!(
        patched.json()["is_active"],
        true,
        "the reactivation was kept"
    );
    assert!(session.expect_close(4003).contains("read"));
}

#[test]
fn logout_on_one_node_is_refused_on_every_other() {
    let valkey = Valkey::start();
    let [a, b, c] = <[Relay; 3]>::try_from(nodes(&valkey, 3)).ok().unwrap();
    let (admin, _) = login(&a, ADMIN, ADMIN_PASSWORD);
    registered(&a, &admin, "bob");
    let (bob_token, _) = login_when_known(&b, "bob", "pw-bob-123");
    let (other_token, _) = login(&b, "bob", "pw-bob-123");
    for node in [&a, &c] {
        assert!(eventually(PROPAGATION, || node
            .call("GET", "/auth/me", &bob_token, &Value::Null)
            .status
            == 200));
    }
    let mut session = Ws::connect(c.addr, &bob_token);
    session.subscribe(&["jobs"], Value::Null);

    a.call("POST", "/auth/logout", &bob_token, &Value::Null)
        .assert_status(204);
    assert!(session.expect_close(4003).contains("revoked"));
    refused_within(&b, &bob_token, 401, "TOKEN_REVOKED");
    refused_within(&c, &bob_token, 401, "TOKEN_REVOKED");
    // The account's other token is not logged out anywhere.
    for node in [&a, &b, &c] {
        node.call("GET", "/auth/me", &other_token, &Value::Null)
            .assert_status(200);
    }
}

#[test]
fn a_refresh_token_presented_on_two_nodes_at_once_has_one_winner() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    for round in 0..4 {
        // Logged in on A: B may not have heard of the token yet, and must not refuse it
        // for that.
        let (_, token) = login(&a, ADMIN, ADMIN_PASSWORD);
        let barrier = Arc::new(Barrier::new(4));
        let answers: Vec<(u16, Value)> = thread::scope(|s| {
            let handles: Vec<_> = [&a, &b, &a, &b]
                .into_iter()
                .map(|node| {
                    let (barrier, token) = (Arc::clone(&barrier), token.clone());
                    s.spawn(move || {
                        barrier.wait();
                        let resp = node.refresh(&token);
                        let body = if resp.status == 200 {
                            resp.json()
                        } else {
                            Value::Null
                        };
                        (resp.status, body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 401),
            "{statuses:?}"
        );
        // The others were replays: the winner's new token went with the chain, on both
        // nodes.
        let (_, won) = answers.iter().find(|(status, _)| *status == 200).unwrap();
        let child = won["refresh_token"].as_str().unwrap();
        b.refresh(child).assert_error(401, "INVALID_REFRESH_TOKEN");
        a.refresh(child).assert_error(401, "INVALID_REFRESH_TOKEN");
    }

    // One rotation at a time goes on from node to node.
    let (_, mut token) = login(&a, ADMIN, ADMIN_PASSWORD);
    for node in [&b, &a, &b] {
        let resp = node.refresh(&token);
        resp.assert_status(200);
        token = resp.json()["refresh_token"].as_str().unwrap().to_owned();
    }
}

#[test]
fn a_user_deleted_on_one_node_cannot_log_in_on_another() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    let (admin, _) = login(&a, ADMIN, ADMIN_PASSWORD);
    let bob = registered(&a, &admin, "bob");
    let (bob_token, bob_refresh) = login_when_known(&b, "bob", "pw-bob-123");
    let mut session = Ws::connect(b.addr, &bob_token);
    session.subscribe(&["jobs"], Value::Null);

    a.call(
        "DELETE",
        &format!("/auth/users/{bob}"),
        &admin,
        &Value::Null,
    )
    .assert_status(204);
    assert!(session.expect_close(4003).contains("not found"));
    assert!(eventually(PROPAGATION, || b
        .form_login("bob", "pw-bob-123")
        .status
        == 401));
    b.form_login("bob", "pw-bob-123")
        .assert_error(401, "INVALID_CREDENTIALS");
    b.refresh(&bob_refresh)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
    refused_within(&b, &bob_token, 401, "USER_NOT_FOUND");
    // The name is free again, on either node.
    let (admin_b, _) = login(&b, ADMIN, ADMIN_PASSWORD);
    register(&b, &admin_b, "bob", &["read"]).assert_status(201);
}

/// Sends `signal` (`STOP`, `CONT`) to the relay process.
fn signal(relay: &Relay, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(relay.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_node_that_fell_behind_the_log_reloads_everything() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    let (admin, _) = login(&a, ADMIN, ADMIN_PASSWORD);
    let bob = registered(&a, &admin, "bob");
    let (bob_token, _) = login_when_known(&b, "bob", "pw-bob-123");
    let mut session = Ws::connect(b.addr, &bob_token);
    session.subscribe(&["jobs"], Value::Null);

    // While B is paused, A makes changes and the log is trimmed past B's place in it.
    signal(&b, "STOP");
    let resumed = std::panic::catch_unwind(|| {
        registered(&a, &admin, "dave");
        a.call(
            "PATCH",
            &format!("/auth/users/{bob}"),
            &admin,
            &json!({"is_active": false}),
        )
        .assert_status(200);
        valkey.command(&["XTRIM", "pulsar:{accounts}:log", "MAXLEN", "0"]);
        registered(&a, &admin, "erin");
    });
    signal(&b, "CONT");
    resumed.unwrap();

    assert!(session.expect_close(4003).contains("inactive"));
    refused_within(&b, &bob_token, 403, "USER_INACTIVE");
    login_when_known(&b, "dave", "pw-dave-123");
    login_when_known(&b, "erin", "pw-erin-123");
}

#[test]
fn accounts_of_a_single_node_carry_over_to_cluster_mode() {
    let valkey = Valkey::start();
    let mut single = Relay::start_on_valkey(
        &valkey,
        &[
            ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    single.wait_ready(Duration::from_secs(10));
    let (admin, _) = login(&single, ADMIN, ADMIN_PASSWORD);
    let bob = registered(&single, &admin, "bob");
    let (bob_token, _) = login(&single, "bob", "pw-bob-123");
    single
        .call("POST", "/auth/logout", &bob_token, &Value::Null)
        .assert_status(204);
    single.terminate();
    single.wait_exit(Duration::from_secs(10));

    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    let index = valkey.command(&["HGET", "pulsar:{accounts}:names", "bob"]);
    assert_eq!(
        index.text().as_deref(),
        Some(bob.as_str()),
        "indexed at start"
    );
    for node in [&a, &b] {
        login(node, "bob", "pw-bob-123");
        refused_within(node, &bob_token, 401, "TOKEN_REVOKED");
    }
    let (admin_b, _) = login(&b, ADMIN, ADMIN_PASSWORD);
    register(&b, &admin_b, "bob", &["read"]).assert_error(400, "USERNAME_TAKEN");
}

/// The refresh-token IDs Valkey holds.
fn stored_tokens(valkey: &Valkey) -> Vec<String> {
    valkey
        .command(&["HKEYS", "pulsar:{accounts}:refresh"])
        .items()
        .iter()
        .filter_map(|item| item.text())
        .collect()
}

/// The account counters of cluster mode on `node`: (log entries applied, reloads, commits
/// refused).
fn account_counters(node: &Relay) -> (f64, f64, f64) {
    let metrics = node.metrics();
    (
        metrics.sum("pulsar_cluster_account_log_entries_total"),
        metrics.sum("pulsar_cluster_account_reloads_total"),
        metrics.sum("pulsar_cluster_account_commits_refused_total"),
    )
}

/// `/metrics` counts what keeps a node's accounts in step: the other nodes' log entries it
/// applied, its full reloads (one at start, one after falling behind the
/// log), and its commits Valkey refused. The refusal is made deterministic by removing a
/// refresh token from Valkey behind the nodes' backs: B still holds it as live, decides a
/// rotation, and Valkey refuses the commit; B then reads Valkey's copy and answers 401.
#[test]
fn account_metrics_count_entries_applied_reloads_and_refused_commits() {
    let valkey = Valkey::start();
    let [a, b] = <[Relay; 2]>::try_from(nodes(&valkey, 2)).ok().unwrap();
    // Both nodes started at once, so either may have applied the other's bootstrap of the
    // administrator: counted from here.
    let (a0, b0) = (account_counters(&a), account_counters(&b));
    assert!(b0.1 >= 1.0, "no load at start: {b0:?}");

    let before = stored_tokens(&valkey);
    let (admin, refresh_token) = login(&a, ADMIN, ADMIN_PASSWORD);
    let jti = stored_tokens(&valkey)
        .into_iter()
        .find(|t| !before.contains(t))
        .expect("the login's refresh token is in Valkey");
    assert!(
        eventually(PROPAGATION, || account_counters(&b).0 > b0.0),
        "B applied no entry of A's: {:?}",
        account_counters(&b)
    );

    let removed = valkey.command(&["HDEL", "pulsar:{accounts}:refresh", &jti]);
    assert_eq!(removed.int(), 1);
    b.refresh(&refresh_token)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
    assert_eq!(
        account_counters(&b).2,
        b0.2 + 1.0,
        "B's rotation commit was refused"
    );
    assert_eq!(account_counters(&a).2, a0.2);

    signal(&b, "STOP");
    let resumed = std::panic::catch_unwind(|| {
        registered(&a, &admin, "dave");
        valkey.command(&["XTRIM", "pulsar:{accounts}:log", "MAXLEN", "0"]);
        registered(&a, &admin, "erin");
    });
    signal(&b, "CONT");
    resumed.unwrap();
    assert!(
        eventually(PROPAGATION, || account_counters(&b).1 == b0.1 + 1.0),
        "B did not reload after falling behind: {:?}",
        account_counters(&b)
    );
    login_when_known(&b, "erin", "pw-erin-123");
}
