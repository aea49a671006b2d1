//! Requests cut off mid-way: closed, or held open until 408; slowloris is cut off; nothing half-received is published.

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::common::*;
use super::support::*;

/// Requests cut off at every interesting place; the complete JSON body in some of them
/// must not be published just because it parses.
fn truncated_requests(topic: &str, token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let body = format!(r#"{{"topic":"{topic}","payload":"truncated"}}"#);
    let head = |extra: &str| {
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: relay.test\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    vec![
        ("cut in the request line", b"POST /api/v1/mess".to_vec()),
        (
            "cut in a header name",
            b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthoriz".to_vec(),
        ),
        (
            "head without its final CRLF",
            format!(
                "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: {}\r\n",
                body.len()
            )
            .into_bytes(),
        ),
        (
            "complete JSON, Content-Length one byte longer",
            format!(
                "{}{body}",
                head(&format!("Content-Length: {}\r\n", body.len() + 1))
            )
            .into_bytes(),
        ),
        (
            "half the body",
            format!(
                "{}{}",
                head(&format!("Content-Length: {}\r\n", body.len())),
                &body[..body.len() / 2]
            )
            .into_bytes(),
        ),
        (
            "complete chunk, no last chunk",
            format!(
                "{}{:x}\r\n{body}\r\n",
                head("Transfer-Encoding: chunked\r\n"),
                body.len()
            )
            .into_bytes(),
        ),
        (
            "last chunk without the final CRLF",
            format!(
                "{}{:x}\r\n{body}\r\n0\r\n",
                head("Transfer-Encoding: chunked\r\n"),
                body.len()
            )
            .into_bytes(),
        ),
        (
            "cut inside a chunk",
            format!(
                "{}{:x}\r\n{}",
                head("Transfer-Encoding: chunked\r\n"),
                body.len(),
                &body[..10]
            )
            .into_bytes(),
        ),
        (
            "expect 100-continue, then nothing",
            head(&format!(
                "Expect: 100-continue\r\nContent-Length: {}\r\n",
                body.len()
            ))
            .into_bytes(),
        ),
    ]
}

#[test]
fn truncated_requests_then_a_close_have_no_effect() {
    let relay = Relay::start();
    let baseline = Baseline::take(&relay);
    let topic = topic_on("truncated", 1);
    let token = rw_token();
    for round in 0..3 {
        for (name, bytes) in truncated_requests(&topic, &token) {
            let mut stream = connect(relay.addr);
            stream.write_all(&bytes).unwrap();
            // Give the relay time to take the partial request in before the close.
            thread::sleep(Duration::from_millis(20));
            match round {
                // FIN: the relay sees EOF in the middle of a request.
                0 => {
                    stream.shutdown(Shutdown::Write).unwrap();
                    let got = read_until_close(&mut stream, PROMPT);
                    assert!(
                        got.closed,
                        "{name}: the relay kept a half-closed connection"
                    );
                    let text = got.text();
                    // Only `100 Continue` or an error may be said; never a success.
                    let statuses: Vec<&str> = text
                        .match_indices("HTTP/1.1 ")
                        .map(|(i, _)| &text[i + 9..i + 12])
                        .collect();
                    assert!(
                        statuses.iter().all(|s| *s == "100" || s.starts_with('4')),
                        "{name}: {text:?}"
                    );
                }
                // RST while the relay waits for the rest.
                1 => reset(stream),
                // Plain close without a half-close first.
                _ => drop(stream),
            }
        }
    }
    assert_topic_untouched(&relay, &topic);
    baseline.assert_recovered(&relay, 20);
}

#[test]
fn truncated_requests_held_open_get_408_and_slowloris_is_cut_off() {
    let relay = Relay::start_with(&[("PULSAR_SERVER_READ_TIMEOUT", "1s")]);
    let baseline = Baseline::take(&relay);
    let topic = topic_on("held-open", 0);
    let token = rw_token();
    let addr = relay.addr;
    let mut workers = Vec::new();
    for (name, bytes) in truncated_requests(&topic, &token) {
        workers.push(thread::spawn(move || {
            let mut http = Http::connect(addr);
            http.set_read_timeout(PROMPT);
            let started = Instant::now();
            http.send_raw(&bytes);
            let resp = http
                .try_read_response(true)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let elapsed = started.elapsed();
            assert_eq!(resp.status, 408, "{name}: {}", resp.text());
            assert_eq!(resp.code(), "REQUEST_TIMEOUT", "{name}");
            assert!(
                elapsed >= Duration::from_millis(900),
                "{name}: 408 after only {elapsed:?}"
            );
            http.assert_closed();
        }));
    }
    // Slowloris: a header section dripped one byte at a time keeps making progress, but the
    // deadline runs from the first byte, so the drip does not keep the request alive.
    let drip = thread::spawn(move || {
        let mut stream = connect(addr);
        let started = Instant::now();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for i in 0..200 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let byte = if i % 20 == 19 {
                        b'\n'
                    } else {
                        b'a' + (i % 20) as u8
                    };
                    let piece: &[u8] = if byte == b'\n' { b": v\r\n" } else { &[byte] };
                    if stream.write_all(piece).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let got = read_until_close(&mut stream, PROMPT);
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(got.closed, "slowloris: still open after {elapsed:?}");
        assert_eq!(got.status(), Some(408), "slowloris: {:?}", got.text());
        assert!(
            elapsed < Duration::from_secs(6),
            "slowloris kept its request alive for {elapsed:?}"
        );
    });
    for w in workers {
        w.join()
            .expect("a held-open request was not answered with 408");
    }
    drip.join().expect("slowloris");
    assert_topic_untouched(&relay, &topic);
    baseline.assert_recovered(&relay, 20);
}
