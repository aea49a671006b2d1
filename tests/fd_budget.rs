//! File descriptors as a limited resource: with `limits.max_connections: 0` the relay
//! derives its connection cap from RLIMIT_NOFILE, keeping a reserve, so that one client
//! opening connections sheds load with 503s instead of exhausting the descriptors, and
//! health checks still get through. The relay runs with a small limit (set in a
//! `pre_exec` hook), so a few hundred connections are a flood.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const NOFILE: u64 = 256;

fn relay_with_fd_limit(nofile: u64) -> Relay {
    let mut cmd = relay_command();
    cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
        .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
        .env("PULSAR_JWT_SECRET_KEY", SECRET);
    // SAFETY: setrlimit(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Relay::spawn(cmd)
}

fn publish(relay: &Relay) -> Response {
    relay.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&rw_token()).as_pair()],
        br#"{"topic":"fd","payload":1}"#,
    )
}

#[test]
fn a_connection_flood_is_shed_before_the_descriptors_run_out() {
    let relay = relay_with_fd_limit(NOFILE);
    // More connections than the relay has descriptors, each stuck in its first request.
    let flood: Vec<TcpStream> = (0..NOFILE + 64)
        .map(|_| {
            let mut s = TcpStream::connect(relay.addr).expect("the kernel accepts the connect");
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    // Health checks and metrics still get through, once the connections of the flood that
    // were let wait for a health-check request (a second each) gave up. On a busy machine
    // the kernel's backlog may still hand the relay flood connections for a while, and
    // each takes such a slot again: hence a deadline per path rather than one success.
    for path in ["/health", "/ready", "/metrics"] {
        let deadline = Instant::now() + IO_TIMEOUT;
        while relay.request("GET", path, &[], b"").status != 200 {
            assert!(Instant::now() < deadline, "{path} never got through");
            thread::sleep(Duration::from_millis(100));
        }
    }
    // ... while other requests are shed, at once and with a clear answer.
    let started = Instant::now();
    let shed = publish(&relay);
    shed.assert_error(503, "TOO_MANY_CONNECTIONS");
    assert_eq!(shed.header("Retry-After"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(1));
    let output = relay.output();
    assert!(
        !output.contains("Too many open files") && !output.contains("accept failed"),
        "the relay ran out of descriptors:\n{output}"
    );

    // Once the flood leaves, the relay serves as before.
    drop(flood);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let resp = publish(&relay);
        if resp.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "still refusing: {}", resp.text());
        thread::sleep(Duration::from_millis(50));
    }
}
