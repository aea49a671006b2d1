//! User accounts of the original relay's API against the real binary: password login,
//! rotating refresh tokens, logout, `/auth/me`, admin user management, the login limit,
//! and (with a real valkey-server) accounts surviving a restart. Expected statuses and
//! `detail` texts are the ones the original relay answers and its Python client relies on.

mod common;

use std::time::Duration;

use common::*;
use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "12345678";

/// A relay with the bootstrap administrator, ready to answer logins.
fn start(extra: &[(&str, &str)]) -> Relay {
    let mut env = vec![
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("PULSAR_ACCOUNTS_LOGIN_RATE", "0"),
    ];
    env.extend_from_slice(extra);
    let relay = Relay::start_with(&env);
    relay.wait_ready(Duration::from_secs(10));
    relay
}

/// Logs in and returns (access token, refresh token).
fn login(relay: &Relay, username: &str, password: &str) -> (String, String) {
    let resp = relay.form_login(username, password);
    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 600);
    assert!(body["refresh_token_secondary"].is_null());
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

fn publish_as(relay: &Relay, token: &str, topic: &str) -> Response {
    relay.call(
        "POST",
        "/api/v1/messages",
        token,
        &json!({"topic": topic, "payload": {"n": 1}}),
    )
}

fn detail(resp: &Response) -> String {
    resp.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn register(relay: &Relay, admin: &str, username: &str, permissions: &[&str]) -> Value {
    let resp = relay.call(
        "POST",
        "/auth/register",
        admin,
        &json!({"username": username, "password": format!("pw-{username}-123"),
                "email": null, "permissions": permissions}),
    );
    resp.assert_status(201);
    resp.json()
}

#[test]
fn password_login_issues_tokens_the_relay_accepts() {
    let relay = start(&[]);
    let (access, _) = login(&relay, ADMIN, ADMIN_PASSWORD);
    publish_as(&relay, &access, "jobs").assert_status(201);

    let me = relay.call("GET", "/auth/me", &access, &Value::Null);
    me.assert_status(200);
    let me = me.json();
    assert_eq!(me["username"], ADMIN);
    assert_eq!(me["email"], "admin@example.com");
    assert_eq!(me["is_active"], true);
    assert_eq!(me["permissions"], json!(["read", "write", "admin"]));
    assert_eq!(me["user_id"].as_str().unwrap().len(), 36);
    assert_eq!(
        me["owned_topics"],
        json!(["jobs"]),
        "publishing created the topic"
    );

    let wrong = relay.form_login(ADMIN, "not-the-password");
    wrong.assert_error(401, "INVALID_CREDENTIALS");
    assert!(detail(&wrong).contains("Incorrect username or password"));
    assert_eq!(wrong.header("WWW-Authenticate"), Some("Bearer"));
    relay
        .form_login("nobody", "whatever-it-is")
        .assert_error(401, "INVALID_CREDENTIALS");

    // The OAuth2 password form only: JSON and other grants are refused.
    relay
        .request(
            "POST",
            "/auth/login",
            &[("Content-Type", "application/json")],
            br#"{"username":"admin","password":"12345678"}"#,
        )
        .assert_error(422, "MISSING_FIELD");
    relay
        .request(
            "POST",
            "/auth/login",
            &[],
            b"username=admin&password=12345678&grant_type=client_credentials",
        )
        .assert_error(422, "UNSUPPORTED_GRANT_TYPE");
    // Percent-encoded form values decode.
    login(&relay, "%61dmin", "1234%35678");

    relay
        .request("GET", "/auth/me", &[], b"")
        .assert_error(401, "AUTH_REQUIRED");
    let bad = relay.call("GET", "/auth/me", "not-a-jwt", &Value::Null);
    assert_eq!(bad.status, 401);
    relay
        .request("GET", "/auth/login", &[], b"")
        .assert_error(405, "METHOD_NOT_ALLOWED");

    // A service token (no account) still works, and /auth/me describes it from its claims.
    let service = relay.call("GET", "/auth/me", &rw_token(), &Value::Null);
    service.assert_status(200);
    assert_eq!(service.json()["permissions"], json!(["read", "write"]));
}

#[test]
fn refresh_tokens_rotate_and_a_replay_ends_the_chain() {
    let relay = start(&[]);
    let (access_a, first) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let (access_b, other_login) = login(&relay, ADMIN, ADMIN_PASSWORD);
    // Same account, same second: only the jti tells them apart (and lets logout pick one).
    assert_ne!(access_a, access_b);

    let rotated = relay.refresh(&first);
    rotated.assert_status(200);
    let body = rotated.json();
    let second = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let access = body["access_token"].as_str().unwrap();
    publish_as(&relay, access, "jobs").assert_status(201);

    // Someone replays the spent token: refused, and the legitimate successor dies with it.
    let replay = relay.refresh(&first);
    replay.assert_error(401, "INVALID_REFRESH_TOKEN");
    assert_eq!(detail(&replay), "invalid refresh token");
    relay
        .refresh(&second)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
    // Another login's chain is untouched.
    relay.refresh(&other_login).assert_status(200);

    relay
        .refresh("no-dot-here")
        .assert_error(401, "INVALID_REFRESH_TOKEN");
    relay
        .request("POST", "/auth/token/refresh", &[], b"{}")
        .assert_error(422, "INVALID_BODY");
}

#[test]
fn concurrent_rotations_of_one_token_have_exactly_one_winner() {
    let relay = start(&[]);
    let (_, token) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (barrier, relay, token) = (barrier.clone(), &relay, &token);
                s.spawn(move || {
                    let mut http = relay.http();
                    barrier.wait();
                    http.request(
                        "POST",
                        "/auth/token/refresh",
                        &[],
                        json!({ "refresh_token": token }).to_string().as_bytes(),
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );
}

#[test]
fn revoke_needs_the_secret_and_can_end_a_chain() {
    let relay = start(&[]);
    let (_, token) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let jti = token.split('.').next().unwrap();
    let revoke = |body: Value| {
        relay.request(
            "POST",
            "/auth/token/revoke",
            &[],
            body.to_string().as_bytes(),
        )
    };
    // A forged secret or an unknown ID: 204, and the token is untouched.
    revoke(json!({"refresh_token": format!("{jti}.{}", "0".repeat(64))})).assert_status(204);
    revoke(json!({"refresh_token": "00000000-0000-4000-8000-000000000000.abc"})).assert_status(204);
    revoke(json!({"refresh_token": "malformed"})).assert_error(400, "MALFORMED_REFRESH_TOKEN");
    let rotate = |wire: &str| {
        let resp = relay.refresh(wire);
        resp.assert_status(200);
        resp.json()["refresh_token"].as_str().unwrap().to_owned()
    };
    // `token` is spent now; `child` is the live end of its chain.
    let child = rotate(&token);
    // The spent token alone: its live child is untouched.
    revoke(json!({"refresh_token": token, "revoke_chain": false})).assert_status(204);
    let grandchild = rotate(&child);
    // The spent token with its chain: the live end of the chain is revoked too.
    revoke(json!({"refresh_token": token, "revoke_chain": true})).assert_status(204);
    relay
        .refresh(&grandchild)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
}

#[test]
fn logout_denies_the_token_on_http_and_websocket() {
    let relay = start(&[]);
    let (access, _) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let (other, _) = login(&relay, ADMIN, ADMIN_PASSWORD);
    relay
        .call("POST", "/auth/logout", &access, &Value::Null)
        .assert_status(204);

    let after = publish_as(&relay, &access, "jobs");
    after.assert_error(401, "TOKEN_REVOKED");
    assert!(detail(&after).contains("revoked"));
    // Every shard knows: try several connections (they spread over the shards).
    for _ in 0..6 {
        relay
            .call("GET", "/auth/me", &access, &Value::Null)
            .assert_error(401, "TOKEN_REVOKED");
    }
    let req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws?token={access}",
        relay.addr
    ))
    .unwrap();
    match Ws::connect_request(relay.addr, req) {
        WsConnect::Refused(status) => assert_eq!(status, 401),
        WsConnect::Open(_) => panic!("a logged-out token opened a WebSocket"),
    }
    // Nor can an open session switch to it with an `auth` frame, while a live token of the
    // same account still renews the session.
    let mut ws = Ws::connect(relay.addr, &other);
    ws.send_json(&json!({"type": "auth", "token": access}));
    ws.expect_error("TOKEN_REVOKED");
    let (fresh, _) = login(&relay, ADMIN, ADMIN_PASSWORD);
    ws.send_json(&json!({"type": "auth", "token": fresh}));
    ws.expect_type("authenticated");
    // Other tokens of the same account are unaffected; a token without jti cannot be
    // logged out, and is told so.
    publish_as(&relay, &other, "jobs").assert_status(201);
    relay
        .call("POST", "/auth/logout", &rw_token(), &Value::Null)
        .assert_error(400, "TOKEN_NOT_REVOCABLE");
    publish_as(&relay, &rw_token(), "jobs").assert_status(201);
}

#[test]
fn administrators_manage_users_and_changes_apply_at_once() {
    let relay = start(&[]);
    let (admin, _) = login(&relay, ADMIN, ADMIN_PASSWORD);

    let bob = register(&relay, &admin, "bob", &["read", "write"]);
    let bob_id = bob["user_id"].as_str().unwrap().to_owned();
    assert_eq!(bob["permissions"], json!(["read", "write"]));
    assert!(bob["email"].is_null());
    let (bob_token, _) = login(&relay, "bob", "pw-bob-123");

    // Registration rules.
    let dup = relay.call(
        "POST",
        "/auth/register",
        &admin,
        &json!({"username": "bob", "password": "another-pass"}),
    );
    dup.assert_error(400, "USERNAME_TAKEN");
    assert!(detail(&dup).contains("already exists"));
    for (body, code) in [
        (
            json!({"username": "ab", "password": "long-enough"}),
            "INVALID_USERNAME",
        ),
        (
            json!({"username": "carol", "password": "short"}),
            "INVALID_PASSWORD",
        ),
        (
            json!({"username": "carol", "password": "long-enough", "permissions": ["root"]}),
            "INVALID_PERMISSIONS",
        ),
        (json!({"password": "long-enough"}), "MISSING_FIELD"),
    ] {
        relay
            .call("POST", "/auth/register", &admin, &body)
            .assert_error(422, code);
    }
    relay
        .call(
            "POST",
            "/auth/register",
            &bob_token,
            &json!({"username": "carol", "password": "long-enough"}),
        )
        .assert_error(403, "PERMISSION_DENIED");

    let users = relay.call("GET", "/auth/users", &admin, &Value::Null);
    users.assert_status(200);
    let names: Vec<String> = users
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin", "bob"]);
    publish_as(&relay, &admin, "admins-topic").assert_status(201);
    let users = relay
        .call("GET", "/auth/users", &admin, &Value::Null)
        .json();
    assert_eq!(users[0]["owned_topics"], json!(["admins-topic"]), "{users}");
    assert_eq!(users[1]["owned_topics"], json!([]));
    let stats = relay.call("GET", "/auth/users/stats", &admin, &Value::Null);
    assert_eq!(stats.json()["total_users"], 2);
    relay
        .call("GET", "/auth/users", &bob_token, &Value::Null)
        .assert_error(403, "PERMISSION_DENIED");

    let path = format!("/auth/users/{bob_id}");
    // An empty patch changes nothing.
    let same = relay.call("PATCH", &path, &admin, &json!({}));
    same.assert_status(200);
    assert_eq!(same.json()["permissions"], json!(["read", "write"]));
    // Taking `write` away applies to tokens already issued.
    relay
        .call("PATCH", &path, &admin, &json!({"permissions": ["read"]}))
        .assert_status(200);
    publish_as(&relay, &bob_token, "jobs").assert_error(403, "PERMISSION_DENIED");
    // A new password works at once, the old one no longer.
    relay
        .call(
            "PATCH",
            &path,
            &admin,
            &json!({"password": "brand-new-pass"}),
        )
        .assert_status(200);
    relay
        .form_login("bob", "pw-bob-123")
        .assert_error(401, "INVALID_CREDENTIALS");
    login(&relay, "bob", "brand-new-pass");
    // Deactivation: no login, and existing tokens stop.
    relay
        .call("PATCH", &path, &admin, &json!({"is_active": false}))
        .assert_status(200);
    let inactive = relay.form_login("bob", "brand-new-pass");
    inactive.assert_error(403, "USER_INACTIVE");
    assert_eq!(detail(&inactive), "User account is inactive");
    let stopped = relay.call("GET", "/auth/me", &bob_token, &Value::Null);
    stopped.assert_error(403, "USER_INACTIVE");
    assert_eq!(detail(&stopped), "User is inactive");

    // Deletion.
    let me = relay.call("GET", "/auth/me", &admin, &Value::Null).json();
    let own = format!("/auth/users/{}", me["user_id"].as_str().unwrap());
    let self_delete = relay.call("DELETE", &own, &admin, &Value::Null);
    self_delete.assert_error(400, "CANNOT_DELETE_SELF");
    assert_eq!(detail(&self_delete), "Cannot delete your own user account");
    relay
        .call("DELETE", &path, &admin, &Value::Null)
        .assert_status(204);
    let gone = relay.call("GET", "/auth/me", &bob_token, &Value::Null);
    gone.assert_error(401, "USER_NOT_FOUND");
    for method in ["DELETE", "PATCH"] {
        let missing = relay.call(method, &path, &admin, &json!({}));
        missing.assert_error(404, "USER_NOT_FOUND");
        assert!(detail(&missing).contains("not found"));
    }
}

#[test]
fn sessions_list_and_end_the_callers_refresh_tokens() {
    let relay = start(&[]);
    let (access, refresh_token) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let sessions = relay.call("GET", "/auth/sessions", &access, &Value::Null);
    sessions.assert_status(200);
    let list = sessions.json();
    let jti = refresh_token.split('.').next().unwrap();
    assert!(
        list.as_array().unwrap().iter().any(|s| s["jti"] == jti),
        "{list}"
    );
    assert_eq!(list[0]["client_hint"], "password-login");
    let end_session = || {
        let path = format!("/auth/sessions/{jti}");
        relay.call("DELETE", &path, &access, &Value::Null)
    };
    end_session().assert_status(204);
    relay
        .refresh(&refresh_token)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
    end_session().assert_error(404, "SESSION_NOT_FOUND");
}

#[test]
fn logins_are_limited_per_address() {
    // One shard, so that the per-shard window is the whole relay's.
    let relay = start(&[
        ("PULSAR_ACCOUNTS_LOGIN_RATE", "5"),
        ("PULSAR_SERVER_SHARDS", "1"),
    ]);
    for _ in 0..5 {
        assert_ne!(relay.form_login(ADMIN, "wrong-password").status, 429);
    }
    let limited = relay.form_login(ADMIN, ADMIN_PASSWORD);
    limited.assert_error(429, "RATE_LIMITED");
    assert!(detail(&limited).contains("5 per 1 minute"));
    assert!(limited.header("Retry-After").is_some());
    // Publishing is not a login: unaffected.
    publish_as(&relay, &token("svc", Permissions::WRITE), "jobs").assert_status(201);
}

#[test]
fn bootstrap_settings_are_checked_at_start() {
    for (env, key) in [
        (
            vec![("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin")],
            "bootstrap.admin_password",
        ),
        (
            vec![
                ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
                ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "short"),
            ],
            "bootstrap.admin_password",
        ),
    ] {
        let (status, _, stderr) = run_binary(&[], &env);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

#[test]
fn accounts_survive_a_restart_with_valkey() {
    let valkey = Valkey::start();
    let mut relay = Relay::start_on_valkey(
        &valkey,
        &[
            ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    let (admin, admin_refresh) = login(&relay, ADMIN, ADMIN_PASSWORD);
    let admin_id = relay.call("GET", "/auth/me", &admin, &Value::Null).json()["user_id"].clone();
    register(&relay, &admin, "bob", &["read"]);
    let (bob, _) = login(&relay, "bob", "pw-bob-123");
    relay
        .call("POST", "/auth/logout", &bob, &Value::Null)
        .assert_status(204);
    relay.kill9();

    // A new relay on the same Valkey, with a changed bootstrap password.
    let relay = Relay::start_on_valkey(
        &valkey,
        &[
            ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "a-new-admin-password"),
        ],
    );
    relay.wait_ready(Duration::from_secs(10));
    relay
        .form_login(ADMIN, ADMIN_PASSWORD)
        .assert_error(401, "INVALID_CREDENTIALS");
    let (admin2, _) = login(&relay, ADMIN, "a-new-admin-password");
    let me = relay.call("GET", "/auth/me", &admin2, &Value::Null).json();
    assert_eq!(
        me["user_id"], admin_id,
        "the bootstrap account is the same account"
    );
    login(&relay, "bob", "pw-bob-123");
    relay
        .call("GET", "/auth/me", &bob, &Value::Null)
        .assert_error(401, "TOKEN_REVOKED");
    relay.refresh(&admin_refresh).assert_status(200);
    relay
        .refresh(&admin_refresh)
        .assert_error(401, "INVALID_REFRESH_TOKEN");
}

/// A user record whose hash was made by the original relay (argon2-cffi, m=65536,t=3,p=4)
/// logs in: operators can carry password hashes over.
#[test]
fn password_hashes_of_the_original_relay_verify() {
    let valkey = Valkey::start();
    let record = json!({
        "user_id": "5b1c2f0e-6a43-4c43-9b7e-0d6f7a1e2b3c",
        "username": "galaxy",
        "email": null,
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$qY0tUjdAM4NUViPTttHLIQ$PZAXEDvHE0Ik3miWxyqw6y9a67a0Xt+0UZ0KsxJi94k",
        "is_active": true,
        "created_at_ms": 1_700_000_000_000u64,
        "permissions": ["read", "write"],
    });
    valkey.command(&[
        "HSET",
        "pulsar:{accounts}:users",
        "5b1c2f0e-6a43-4c43-9b7e-0d6f7a1e2b3c",
        &record.to_string(),
    ]);
    let relay = Relay::start_on_valkey(&valkey, &[]);
    relay.wait_ready(Duration::from_secs(10));
    let (access, _) = login(&relay, "galaxy", "12345678");
    publish_as(&relay, &access, "jobs").assert_status(201);
    relay
        .form_login("galaxy", "12345679")
        .assert_error(401, "INVALID_CREDENTIALS");
}

#[test]
fn open_websockets_end_when_access_is_withdrawn() {
    let relay = start(&[]);
    let (admin, _) = login(&relay, ADMIN, ADMIN_PASSWORD);
    register(&relay, &admin, "bob", &["read", "write"]);
    let bob_id = relay
        .call("GET", "/auth/users", &admin, &Value::Null)
        .json()[1]["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bob, _) = login(&relay, "bob", "pw-bob-123");
    let (bob_again, _) = login(&relay, "bob", "pw-bob-123");

    // Logging one token out ends its sessions, not those of the account's other tokens.
    let mut logged_out = Ws::connect(relay.addr, &bob);
    let mut other = Ws::connect(relay.addr, &bob_again);
    logged_out.subscribe(&["jobs"], Value::Null);
    other.subscribe(&["jobs"], Value::Null);
    relay
        .call("POST", "/auth/logout", &bob, &Value::Null)
        .assert_status(204);
    let reason = logged_out.expect_close(4003);
    assert!(reason.contains("revoked"), "{reason}");
    assert!(other.collect_until_pong().is_empty());

    // Taking `write` away keeps a reader; taking `read` away ends it.
    let path = format!("/auth/users/{bob_id}");
    relay
        .call("PATCH", &path, &admin, &json!({"permissions": ["read"]}))
        .assert_status(200);
    assert!(other.collect_until_pong().is_empty());
    publish_as(&relay, &admin, "jobs").assert_status(201);
    assert_eq!(other.recv_delivery()["topic"], "jobs", "still subscribed");
    relay
        .call("PATCH", &path, &admin, &json!({"permissions": ["write"]}))
        .assert_status(200);
    assert!(other.expect_close(4003).contains("read"));

    // Deactivation and deletion end sessions too.
    relay
        .call("PATCH", &path, &admin, &json!({"permissions": ["read"]}))
        .assert_status(200);
    let mut again = Ws::connect(relay.addr, &bob_again);
    relay
        .call("PATCH", &path, &admin, &json!({"is_active": false}))
        .assert_status(200);
    assert!(again.expect_close(4003).contains("inactive"));
    relay
        .call("PATCH", &path, &admin, &json!({"is_active": true}))
        .assert_status(200);
    let mut last = Ws::connect(relay.addr, &bob_again);
    relay
        .call("DELETE", &path, &admin, &Value::Null)
        .assert_status(204);
    assert!(last.expect_close(4003).contains("not found"));
}
