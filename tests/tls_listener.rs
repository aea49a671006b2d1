//! HTTPS and WSS on the relay's own listener (`server.tls_cert_file` / `tls_key_file`):
//! publish and subscribe over TLS, a client that does not trust the certificate, plain
//! HTTP sent to the TLS port, certificate reload on SIGHUP while sessions stay open, and
//! bad files refused at start. Certificates are made per test with `openssl`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::json;
use tungstenite::client::IntoClientRequest;

fn start_tls_relay(pki: &Pki) -> Relay {
    let cert = pki.path("server.crt");
    let key = pki.path("server.key");
    Relay::start_with(&[
        ("PULSAR_SERVER_TLS_CERT_FILE", &cert),
        ("PULSAR_SERVER_TLS_KEY_FILE", &key),
    ])
}

fn https(relay: &Relay, pki: &Pki) -> Http<TlsStream> {
    Http::over(connect_tls(relay.addr, &pki.path("ca.crt")).expect("TLS handshake with the relay"))
}

fn wss(relay: &Relay, ca: &str) -> Ws<TlsStream> {
    let stream = connect_tls(relay.addr, ca).expect("TLS handshake with the relay");
    let req = format!(
        "wss://localhost:{}/ws?token={}",
        relay.addr.port(),
        rw_token()
    )
    .into_client_request()
    .unwrap();
    match Ws::upgrade(stream, req) {
        WsConnect::Open(ws) => *ws,
        WsConnect::Refused(status) => panic!("WSS upgrade refused with {status}"),
    }
}

fn publish_over(http: &mut Http<TlsStream>, topic: &str, text: &str) -> serde_json::Value {
    let body = json!({"topic": topic, "payload": {"text": text}}).to_string();
    let resp = http.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&rw_token()).as_pair(),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    resp.assert_status(201);
    resp.json()
}

#[test]
fn https_publish_reaches_a_wss_subscriber() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    assert!(
        eventually(IO_TIMEOUT, || relay
            .output()
            .contains("listening on https://")),
        "{}",
        relay.output()
    );
    let mut ws = wss(&relay, &pki.path("ca.crt"));
    ws.subscribe(&["secure"], json!({}));

    let mut http = https(&relay, &pki);
    assert_eq!(
        http.stream.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    let receipt = publish_over(&mut http, "secure", "over tls");
    // Keep-alive works over TLS too: a second request on the same session.
    let second = publish_over(&mut http, "secure", "again");

    let first = ws.recv_delivery();
    assert_eq!(first["message_id"], receipt["message_id"]);
    assert_eq!(first["payload"]["text"], "over tls");
    assert_eq!(ws.recv_delivery()["message_id"], second["message_id"]);
}

#[test]
fn tls_1_2_and_1_3_are_both_served() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.der("ca.crt").into()).unwrap();
        let config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = connect_tls_with(relay.addr, std::sync::Arc::new(config))
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        let mut http = Http::over(stream);
        http.request("GET", "/health", &[], b"").assert_status(200);
    }
}

#[test]
fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    let err = connect_tls(relay.addr, &pki.path("other-ca.crt"))
        .map(|_| ())
        .expect_err("a client trusting another CA completed the handshake");
    let text = err.to_string();
    assert!(
        text.contains("UnknownIssuer") || text.contains("invalid peer certificate"),
        "{text}"
    );
    // The relay is unharmed, and counts the failure (once the shard that had the
    // connection has seen the client's alert).
    let failures = || {
        let resp = https(&relay, &pki).request("GET", "/metrics", &[], b"");
        resp.assert_status(200);
        Metrics { text: resp.text() }.sum("pulsar_tls_handshake_failures_total")
    };
    assert!(
        eventually(IO_TIMEOUT, || failures() == 1.0),
        "{}",
        failures()
    );
}

#[test]
fn plain_http_to_the_tls_port_gets_nothing_served() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    let mut stream = TcpStream::connect(relay.addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(&encode_request("GET", "/health", &[], b""))
        .unwrap();
    let mut answer = Vec::new();
    // Ends at EOF or a reset; a timeout would mean the relay left it hanging.
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the relay neither answered nor closed: {e}"),
    }
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plain HTTP was served on the TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // At most a TLS alert record (content type 21).
    assert!(
        answer.is_empty() || answer[0] == 21,
        "unexpected bytes {answer:?}"
    );
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_open_sessions() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    let old_der = pki.der("server.crt");
    let mut old_session = wss(&relay, &pki.path("ca.crt"));
    old_session.subscribe(&["rotation"], json!({}));
    let mut old_http = https(&relay, &pki);
    assert_eq!(peer_leaf(&old_http.stream), old_der);

    // A new certificate from another CA, written over the configured files.
    pki.ca("next-ca");
    pki.issue("next-ca", "next");
    std::fs::copy(pki.path("next.crt"), pki.path("server.crt")).unwrap();
    std::fs::copy(pki.path("next.key"), pki.path("server.key")).unwrap();
    let new_der = pki.der("server.crt");
    assert!(
        connect_tls(relay.addr, &pki.path("next-ca.crt")).is_err(),
        "the new certificate is served before SIGHUP"
    );
    hangup(&relay);
    assert!(
        eventually(IO_TIMEOUT, || relay
            .output()
            .contains("TLS certificate reloaded")),
        "{}",
        relay.output()
    );

    let mut new_http = Http::over(
        connect_tls(relay.addr, &pki.path("next-ca.crt")).expect("handshake with the new cert"),
    );
    assert_eq!(peer_leaf(&new_http.stream), new_der);
    assert!(
        connect_tls(relay.addr, &pki.path("ca.crt")).is_err(),
        "a new connection still got the old certificate"
    );
    // The sessions opened before the reload carry on: a publish on the old HTTPS
    // connection and one on the new reach the WSS session opened before it.
    let a = publish_over(&mut old_http, "rotation", "old connection");
    let b = publish_over(&mut new_http, "rotation", "new connection");
    assert_eq!(old_session.recv_delivery()["message_id"], a["message_id"]);
    assert_eq!(old_session.recv_delivery()["message_id"], b["message_id"]);
}

#[test]
fn a_bad_file_on_sighup_keeps_the_certificate_in_use() {
    let pki = Pki::new();
    let relay = start_tls_relay(&pki);
    std::fs::write(pki.path("server.crt"), "not a certificate\n").unwrap();
    hangup(&relay);
    assert!(
        eventually(IO_TIMEOUT, || relay.output().contains("NOT reloaded")),
        "{}",
        relay.output()
    );
    assert!(relay.output().contains("server.crt"), "{}", relay.output());
    https(&relay, &pki)
        .request("GET", "/health", &[], b"")
        .assert_status(200);
}

#[test]
fn bad_certificate_or_key_stops_the_relay_at_start() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "hello\n").unwrap();
    let missing = pki.path("missing.crt");
    let cases: [(&str, String, String, &str); 4] = [
        (
            "missing file",
            missing.clone(),
            pki.path("server.key"),
            "missing.crt",
        ),
        (
            "not PEM",
            pki.path("garbage.pem"),
            pki.path("server.key"),
            "no PEM certificate",
        ),
        (
            "no key in the key file",
            pki.path("server.crt"),
            pki.path("server.crt"),
            "no PEM private key",
        ),
        (
            "key of another certificate",
            pki.path("server.crt"),
            pki.path("client.key"),
            "does not belong to the certificate",
        ),
    ];
    for (what, cert, key, expected) in cases {
        let (status, _, stderr) = run_binary(
            &[],
            &[
                ("PULSAR_SERVER_HTTP_PORT", "0"),
                ("PULSAR_SERVER_TLS_CERT_FILE", &cert),
                ("PULSAR_SERVER_TLS_KEY_FILE", &key),
            ],
        );
        assert_eq!(status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("server TLS") && stderr.contains(expected),
            "{what}: {stderr}"
        );
    }
}

fn hangup(relay: &Relay) {
    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    let rc = unsafe { libc::kill(relay.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP) failed");
}

fn peer_leaf(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server sent a certificate")
        .to_vec()
}
