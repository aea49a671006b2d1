//! Forged, expired and malformed tokens: 401 on HTTP and on the WebSocket upgrade.

use pulsar_relay::auth::Permissions;
use serde_json::{json, Value};

use super::common::*;
use super::support::*;

/// Every token that must be refused with 401, and the code it must get.
fn bad_tokens() -> Vec<(&'static str, String, &'static str)> {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let secret = SECRET.as_bytes();
    let now = now_secs();
    let valid = hs256(&claims(json!({})));
    let (valid_input, valid_sig) = valid.rsplit_once('.').unwrap();
    let admin_claims = claims(json!({"sub": "root", "permissions": ["read", "write", "admin"]}));
    let flipped_sig = {
        let mut sig = valid_sig.as_bytes().to_vec();
        sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
        String::from_utf8(sig).unwrap()
    };
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let mut rng = Rng::new(99);
    let long_junk = b64url(&rng.bytes(6000));
    vec![
        ("expired an hour ago", expired_token(), "TOKEN_EXPIRED"),
        (
            "expired beyond the leeway",
            hs256(&claims(json!({"exp": now - 120}))),
            "TOKEN_EXPIRED",
        ),
        (
            "signed with another secret",
            foreign_token(),
            "INVALID_TOKEN",
        ),
        (
            "signed with an empty secret",
            jwt_hmac(&hs, &claims(json!({})), HS256, b""),
            "INVALID_TOKEN",
        ),
        (
            "forged signature",
            format!("{valid_input}.{flipped_sig}"),
            "INVALID_TOKEN",
        ),
        (
            "claims swapped under a valid signature",
            format!("{}.{valid_sig}", signing_input(&hs, &admin_claims)),
            "INVALID_TOKEN",
        ),
        (
            "signature stripped",
            format!("{valid_input}."),
            "INVALID_TOKEN",
        ),
        (
            "signature part missing",
            valid_input.to_string(),
            "INVALID_TOKEN",
        ),
        ("trailing junk", format!("{valid}x"), "INVALID_TOKEN"),
        (
            "two tokens glued",
            format!("{valid}.{valid}"),
            "INVALID_TOKEN",
        ),
        (
            "alg none",
            format!(
                "{}.",
                signing_input(&json!({"alg": "none", "typ": "JWT"}), &admin_claims)
            ),
            "INVALID_TOKEN",
        ),
        (
            "alg None with a signature",
            format!(
                "{}.{valid_sig}",
                signing_input(&json!({"alg": "None"}), &admin_claims)
            ),
            "INVALID_TOKEN",
        ),
        (
            "HS384 with the right secret",
            jwt_hmac(&json!({"alg": "HS384"}), &claims(json!({})), HS384, secret),
            "INVALID_TOKEN",
        ),
        (
            "HS512 with the right secret",
            jwt_hmac(&json!({"alg": "HS512"}), &claims(json!({})), HS512, secret),
            "INVALID_TOKEN",
        ),
        (
            "RS256 header over an HS256 signature",
            jwt_hmac(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &claims(json!({})),
                HS256,
                secret,
            ),
            "INVALID_TOKEN",
        ),
        (
            "ES256 header over an HS256 signature",
            jwt_hmac(&json!({"alg": "ES256"}), &claims(json!({})), HS256, secret),
            "INVALID_TOKEN",
        ),
        (
            "embedded jwk with the attacker's key",
            jwt_hmac(
                &json!({"alg": "HS256", "jwk": {"kty": "oct", "k": b64url(b"attacker")}}),
                &admin_claims,
                HS256,
                b"attacker",
            ),
            "INVALID_TOKEN",
        ),
        (
            "kid pointing at /dev/null, empty secret",
            jwt_hmac(
                &json!({"alg": "HS256", "kid": "../../../../dev/null"}),
                &admin_claims,
                HS256,
                b"",
            ),
            "INVALID_TOKEN",
        ),
        (
            "missing sub",
            hs256(&claims(json!({"sub": null}))),
            "INVALID_TOKEN",
        ),
        (
            "empty sub",
            hs256(&claims(json!({"sub": ""}))),
            "INVALID_TOKEN",
        ),
        (
            "numeric sub",
            hs256(&claims(json!({"sub": 42}))),
            "INVALID_TOKEN",
        ),
        (
            "missing exp",
            hs256(&claims(json!({"exp": null}))),
            "INVALID_TOKEN",
        ),
        (
            "exp as a string",
            hs256(&claims(json!({"exp": (now + 3600).to_string()}))),
            "INVALID_TOKEN",
        ),
        (
            "exp after the year 9999",
            hs256(&claims(json!({"exp": 253_402_300_800u64}))),
            "INVALID_TOKEN",
        ),
        (
            "missing permissions",
            hs256(&claims(json!({"permissions": null}))),
            "INVALID_TOKEN",
        ),
        (
            "unknown permission",
            hs256(&claims(json!({"permissions": ["read", "superuser"]}))),
            "INVALID_TOKEN",
        ),
        (
            "permission in upper case",
            hs256(&claims(json!({"permissions": ["READ", "WRITE"]}))),
            "INVALID_TOKEN",
        ),
        (
            "permissions as a string",
            hs256(&claims(json!({"permissions": "read,write"}))),
            "INVALID_TOKEN",
        ),
        (
            "not valid before next hour",
            hs256(&claims(json!({"nbf": now + 3600}))),
            "INVALID_TOKEN",
        ),
        (
            "audience the relay does not expect",
            hs256(&claims(json!({"aud": "someone-else"}))),
            "INVALID_TOKEN",
        ),
        (
            "header that is not JSON",
            format!(
                "{}.{}.{valid_sig}",
                b64url(b"{alg:HS256"),
                b64url(claims(json!({})).to_string().as_bytes())
            ),
            "INVALID_TOKEN",
        ),
        ("garbage", "garbage".to_string(), "INVALID_TOKEN"),
        ("three empty parts", "..".to_string(), "INVALID_TOKEN"),
        ("a.b.c", "a.b.c".to_string(), "INVALID_TOKEN"),
        ("6000 bytes of base64url", long_junk, "INVALID_TOKEN"),
    ]
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn forged_expired_and_malformed_tokens_get_401_on_http_and_on_the_upgrade() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let topic = topic_on("tokens", 0);
    let publish_body = format!(r#"{{"topic":"{topic}","payload":"forged"}}"#);
    // One keep-alive connection for all of them, which also proves that a rejected token
    // does not poison (or get served from) the connection's token cache.
    let mut http = relay.http();
    http.publish(&topic, r#""warm the auth cache""#);

    let mut checked = 0;
    for (name, token, code) in bad_tokens() {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str())];
        let resp = http.request(
            "POST",
            "/api/v1/messages",
            &headers,
            publish_body.as_bytes(),
        );
        assert_refused(&resp, 401, code, &format!("publish, {name}"));
        let resp = http.request(
            "POST",
            "/api/v1/messages/bulk",
            &headers,
            format!(r#"{{"messages":[{publish_body}]}}"#).as_bytes(),
        );
        assert_refused(&resp, 401, code, &format!("bulk, {name}"));
        let resp = http.request(
            "GET",
            &format!("/api/v1/poll?topics={topic}&timeout=1"),
            &headers,
            b"",
        );
        assert_refused(&resp, 401, code, &format!("poll, {name}"));
        // The upgrade, with the token in each place a client may put it.
        let query = format!("/ws?token={}", query_escape(&token));
        let mut up = upgrade_headers();
        let resp = relay.request("GET", &query, &up, b"");
        assert_refused(&resp, 401, code, &format!("upgrade ?token=, {name}"));
        up.push(("Authorization", &auth));
        let resp = relay.request("GET", "/ws", &up, b"");
        assert_refused(&resp, 401, code, &format!("upgrade header, {name}"));
        up.pop();
        let protocol = format!("bearer, bearer.{token}");
        // A subprotocol value must be a token; skip the shapes that cannot be one.
        if token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            up.push(("Sec-WebSocket-Protocol", &protocol));
            let resp = relay.request("GET", "/ws", &up, b"");
            assert_refused(&resp, 401, code, &format!("upgrade subprotocol, {name}"));
        }
        checked += 1;
    }
    assert!(checked >= 30);

    // No token at all, or one in the wrong scheme.
    for (name, headers) in [
        ("no Authorization", vec![]),
        ("empty bearer", vec![("Authorization", "Bearer ")]),
        ("scheme only", vec![("Authorization", "Bearer")]),
        (
            "Basic scheme",
            vec![("Authorization", "Basic dXNlcjpwYXNz")],
        ),
    ] {
        let resp = http.request(
            "POST",
            "/api/v1/messages",
            &headers,
            publish_body.as_bytes(),
        );
        assert_refused(&resp, 401, "AUTH_REQUIRED", name);
        let mut up = upgrade_headers();
        up.extend(headers.iter().copied());
        let resp = relay.request("GET", "/ws", &up, b"");
        assert_refused(&resp, 401, "AUTH_REQUIRED", &format!("upgrade, {name}"));
    }
    let resp = relay.request("GET", "/ws?token=", &upgrade_headers(), b"");
    assert_refused(&resp, 401, "AUTH_REQUIRED", "upgrade, empty ?token=");

    // Valid tokens without the permission a route needs: 403, whatever the token can do
    // elsewhere (admin does not imply read or write).
    let reader = read_token();
    let writer = write_token();
    let admin = token("ops", Permissions::ADMIN);
    let nothing = hs256(&claims(json!({"permissions": []})));
    for (name, token) in [
        ("read-only", &reader),
        ("admin-only", &admin),
        ("no permissions", &nothing),
    ] {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str())];
        let resp = http.request(
            "POST",
            "/api/v1/messages",
            &headers,
            publish_body.as_bytes(),
        );
        assert_refused(&resp, 403, "PERMISSION_DENIED", &format!("publish, {name}"));
        let resp = http.request(
            "POST",
            "/api/v1/messages/bulk",
            &headers,
            format!(r#"{{"messages":[{publish_body}]}}"#).as_bytes(),
        );
        assert_refused(&resp, 403, "PERMISSION_DENIED", &format!("bulk, {name}"));
    }
    for (name, token) in [
        ("write-only", &writer),
        ("admin-only", &admin),
        ("no permissions", &nothing),
    ] {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str())];
        let resp = http.request(
            "GET",
            &format!("/api/v1/poll?topics={topic}&timeout=1"),
            &headers,
            b"",
        );
        assert_refused(&resp, 403, "PERMISSION_DENIED", &format!("poll, {name}"));
        let resp = http.request(
            "POST",
            "/api/v1/ack",
            &headers,
            br#"{"message_ids":["1-0"],"client_id":"c"}"#,
        );
        assert_refused(&resp, 403, "PERMISSION_DENIED", &format!("ack, {name}"));
        let resp = relay.request(
            "GET",
            &format!("/ws?token={token}"),
            &upgrade_headers(),
            b"",
        );
        assert_refused(&resp, 403, "PERMISSION_DENIED", &format!("upgrade, {name}"));
    }
    // The read-only token's upgrade does work, and the session cannot publish by any means
    // (there is no publish frame): a made-up one is refused as an unknown type.
    let mut ws = Ws::connect(relay.addr, &reader);
    ws.send_json(&json!({"type": "publish", "topic": topic, "payload": 1}));
    ws.expect_error("UNKNOWN_MESSAGE_TYPE");
    ws.close();

    // Renewing a live session's token with a bad one (`auth` frame) is refused with the
    // same code as on HTTP, and the session goes on with its good token.
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({}));
    for (name, token, code) in bad_tokens() {
        ws.send_json(&json!({"type": "auth", "token": token}));
        let frame = ws.expect_type("error");
        assert_eq!(frame["code"], code, "auth frame, {name}: {frame}");
    }
    let receipt = relay.publish(&topic, r#""after the auth attempts""#);
    let got = ws.recv_delivery();
    assert_eq!(got["message_id"], receipt["message_id"]);
    ws.close();

    // After all that the warm connection still publishes with its good token, and nothing
    // forged landed: the topic holds exactly the legitimate messages.
    http.publish(&topic, r#""still fine""#);
    let resp = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
    let payloads: Vec<Value> = resp.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(
        payloads,
        vec![
            json!("warm the auth cache"),
            json!("after the auth attempts"),
            json!("still fine")
        ]
    );
    drop(http);
    baseline.assert_recovered(&relay, 20);
}
