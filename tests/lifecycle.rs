//! The process: start-up, graceful shutdown on SIGTERM, configuration errors and the
//! `token` subcommand.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn sigterm_closes_websockets_with_1001_answers_parked_polls_and_exits_0() {
    let mut relay = Relay::start();
    let topics = topics_on_each_shard("shutdown");

    // Several WebSocket sessions, so both shards hold some.
    let mut sockets: Vec<Ws> = (0..4).map(|_| relay.ws()).collect();
    for ws in &mut sockets {
        ws.subscribe(&[&topics[0], &topics[1]], json!({}));
    }
    // Parked polls, each on a connection proven open by a first request.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let mut http = relay.http();
            http.request("GET", "/health", &[], b"").assert_status(200);
            let token = rw_token();
            http.send_request(
                "GET",
                &format!("/api/v1/poll?topics={},{}&timeout=60", topics[0], topics[1]),
                &[auth_header(&token).as_pair()],
                b"",
            );
            http.set_read_timeout(Duration::from_secs(20));
            thread::spawn(move || {
                let started = Instant::now();
                let resp = http.try_read_response(true);
                (resp, started.elapsed())
            })
        })
        .collect();
    // Let the polls reach the relay and park (not an assertion: they are answered at
    // shutdown either way, and the 60 s timeout is far away).
    thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    relay.terminate();

    for ws in &mut sockets {
        ws.set_read_timeout(Duration::from_secs(10));
        ws.expect_close(1001);
    }
    for poll in polls {
        let (resp, elapsed) = poll.join().unwrap();
        let resp = resp.unwrap_or_else(|e| panic!("parked poll not answered: {e}"));
        resp.assert_status(200);
        assert_eq!(resp.json()["messages"], json!([]));
        assert!(
            elapsed < Duration::from_secs(15),
            "poll answered after {elapsed:?}"
        );
    }
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("relay still running 10 s after SIGTERM\n{}", relay.output()));
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        relay.output()
    );
    assert!(took < Duration::from_secs(7), "shutdown took {took:?}");
}

#[test]
fn idle_relay_exits_0_on_sigterm_and_stops_listening() {
    let mut relay = Relay::start();
    relay.request("GET", "/health", &[], b"").assert_status(200);
    relay.terminate();
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("relay still running 10 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", relay.output());
    assert!(
        std::net::TcpStream::connect(relay.addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn bad_port_value_exits_2_naming_the_key() {
    let (status, _out, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HTTP_PORT", "notanumber"),
            ("PULSAR_JWT_SECRET_KEY", SECRET),
        ],
    );
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("server.http_port"), "stderr: {err}");
    // In words an operator knows, out of range too.
    for bad in ["notanumber", "70000"] {
        let (status, _, err) = run_binary(
            &[],
            &[
                ("PULSAR_SERVER_HTTP_PORT", bad),
                ("PULSAR_JWT_SECRET_KEY", SECRET),
            ],
        );
        assert_eq!(status.code(), Some(2), "stderr: {err}");
        assert!(
            err.contains("a port number from 1 to 65535"),
            "{bad}: stderr: {err}"
        );
        assert!(!err.contains("u16"), "{bad}: stderr: {err}");
    }
}

#[test]
fn public_bind_without_secret_exits_2() {
    let (status, out, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HOST", "0.0.0.0"),
            ("PULSAR_SERVER_HTTP_PORT", "0"),
        ],
    );
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("jwt.secret_key"), "stderr: {err}");
    assert!(!out.contains("listening"), "it listened: {out}");

    // A short secret is refused as well.
    let (status, _, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HOST", "0.0.0.0"),
            ("PULSAR_SERVER_HTTP_PORT", "0"),
            ("PULSAR_JWT_SECRET_KEY", "short"),
        ],
    );
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("jwt.secret_key"), "stderr: {err}");
}

#[test]
fn unknown_config_key_and_bad_arguments_exit_2() {
    let (status, _, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HTTP_PROT", "0"),
            ("PULSAR_JWT_SECRET_KEY", SECRET),
        ],
    );
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    assert!(err.to_lowercase().contains("http_prot"), "stderr: {err}");

    let (status, _, err) = run_binary(&["--frobnicate"], &[]);
    assert_eq!(status.code(), Some(2), "stderr: {err}");
}

#[test]
fn token_subcommand_mints_a_token_the_relay_accepts() {
    let relay = Relay::start();
    let (status, out, err) = run_binary(
        &[
            "token",
            "--sub",
            "alice",
            "--permissions",
            "read,write",
            "--ttl",
            "1h",
        ],
        &[("PULSAR_JWT_SECRET_KEY", SECRET)],
    );
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    let token = out.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {out:?}");

    let topic = topic_on("minted", 0);
    let mut ws = Ws::connect(relay.addr, &token);
    ws.subscribe(&[&topic], json!({}));
    let resp = relay.request(
        "POST",
        "/api/v1/messages",
        &[auth_header(&token).as_pair()],
        format!(r#"{{"topic":"{topic}","payload":"from alice"}}"#).as_bytes(),
    );
    resp.assert_status(201);
    assert_eq!(ws.recv_delivery()["message_id"], resp.json()["message_id"]);

    // Read-only by default: publishing with it is refused.
    let (status, out, _) = run_binary(
        &["token", "--sub", "bob"],
        &[("PULSAR_JWT_SECRET_KEY", SECRET)],
    );
    assert_eq!(status.code(), Some(0));
    let reader = out.trim();
    relay
        .request(
            "POST",
            "/api/v1/messages",
            &[auth_header(reader).as_pair()],
            format!(r#"{{"topic":"{topic}","payload":1}}"#).as_bytes(),
        )
        .assert_error(403, "PERMISSION_DENIED");

    // Without a secret there is nothing to sign with.
    let (status, _, err) = run_binary(&["token", "--sub", "carol"], &[]);
    assert_eq!(status.code(), Some(2), "stderr: {err}");
}

#[test]
fn a_port_another_process_listens_on_stops_the_relay_with_exit_1() {
    let first = Relay::start();
    // A second relay: its listeners set SO_REUSEPORT like the first one's, which the kernel
    // would let share the port and split the connections.
    let port = first.addr.port().to_string();
    let (status, out, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HTTP_PORT", &port),
            ("PULSAR_SERVER_SHARDS", "2"),
            ("PULSAR_JWT_SECRET_KEY", SECRET),
        ],
    );
    assert_eq!(status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("already in use"),
        "stderr: {err}"
    );
    assert!(!out.contains("listening"), "it listened: {out}");
    assert_relay_still_serves(&first);

    // Any other program's listener too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port().to_string();
    let (status, _, err) = run_binary(
        &[],
        &[
            ("PULSAR_SERVER_HTTP_PORT", &port),
            ("PULSAR_JWT_SECRET_KEY", SECRET),
        ],
    );
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("already in use"), "stderr: {err}");
}

#[test]
fn closed_stdout_and_stderr_neither_stop_serving_nor_shutdown() {
    // Every line fails: the banner, the bootstrap administrator's line that shard 0 writes
    // once it serves, and "shutting down" on SIGTERM.
    let mut relay = Relay::start_with_closed_output(&[
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "admin"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "12345678"),
    ]);
    // Ready only once shard 0 is past its bootstrap line.
    relay.wait_ready(Duration::from_secs(10));
    assert_relay_still_serves(&relay);

    let signalled = Instant::now();
    relay.terminate();
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("relay still running 10 s after SIGTERM with its output closed");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // server.shutdown_grace is 5 s, and an idle relay needs none of it.
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[test]
fn a_short_secret_is_served_with_a_warning_and_the_placeholder_refused() {
    let relay = Relay::start_with(&[("PULSAR_JWT_SECRET_KEY", "12345")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.stderr().contains("WARNING") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let err = relay.stderr();
    assert!(
        err.contains("WARNING: jwt.secret_key is only 5 bytes long") && err.contains("32 bytes"),
        "stderr: {err}"
    );
    // Still served on loopback.
    relay.request("GET", "/health", &[], b"").assert_status(200);

    // Minting with it warns on stderr and keeps stdout the bare token.
    let (status, out, err) = run_binary(
        &["token", "--sub", "alice"],
        &[("PULSAR_JWT_SECRET_KEY", "12345")],
    );
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(out.trim().split('.').count(), 3, "stdout: {out}");
    assert!(err.contains("WARNING"), "stderr: {err}");

    // A strong secret gets no warning.
    let (_, _, err) = run_binary(
        &["token", "--sub", "alice"],
        &[("PULSAR_JWT_SECRET_KEY", SECRET)],
    );
    assert!(!err.contains("WARNING"), "stderr: {err}");

    // The documentation's placeholder, taken literally, is no secret at all.
    for args in [&[][..], &["token", "--sub", "alice"][..]] {
        let (status, out, err) = run_binary(
            args,
            &[
                ("PULSAR_JWT_SECRET_KEY", "..."),
                ("PULSAR_SERVER_HTTP_PORT", "0"),
            ],
        );
        assert_eq!(status.code(), Some(2), "{args:?}: stderr: {err}");
        assert!(err.contains("placeholder"), "stderr: {err}");
        assert!(!out.contains("listening"), "it listened: {out}");
    }
}

/// A CPU set that leaves out CPU 0 (`docker --cpuset-cpus=1`, systemd's `CPUAffinity=`, a
/// cgroup cpuset), with `server.cores: dedicated`: the shard is pinned to a CPU of the set
/// and the relay serves. Before,
/// shard 0 asked for CPU 0: inside a cpuset that refused it and no shard started; under a
/// plain affinity mask it ran outside the mask. Where this test may make a cgroup cpuset
/// (root, cgroup v1) the relay runs in one; elsewhere under an affinity mask only.
#[test]
fn a_cpu_set_without_cpu_0_is_used_as_it_is() {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    // The highest CPU the test may use: CPU 1 or above on any machine with two.
    let cpu = allowed_cpus().into_iter().max().expect("some CPU");
    let cpuset = Cpuset::make(cpu);
    let join = cpuset
        .as_ref()
        .map(|c| CString::new(format!("{}/cgroup.procs", c.dir)).unwrap());
    let mut cmd = relay_command();
    cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
        .env("PULSAR_SERVER_SHARDS", "1")
        .env("PULSAR_SERVER_CORES", "dedicated")
        .env("PULSAR_JWT_SECRET_KEY", SECRET);
    // SAFETY: between fork and exec the child only makes system calls on memory prepared
    // before the fork (no allocation): it joins the cpuset, or narrows its own affinity.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(path) = &join {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let relay = Relay::spawn(cmd);
    relay.request("GET", "/ready", &[], b"").assert_status(200);
    assert_eq!(
        shard_cpus(relay.pid(), "shard-0"),
        cpu.to_string(),
        "the shard runs on the CPU of the set ({})",
        if cpuset.is_some() {
            "cgroup cpuset"
        } else {
            "affinity mask"
        }
    );
    let topic = "pinned";
    let receipt = relay.publish(topic, r#"{"n":1}"#);
    let resp = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
    resp.assert_status(200);
    assert_eq!(
        resp.json()["messages"][0]["message_id"],
        receipt["message_id"]
    );
    drop(relay);
}

/// `server.cores`: `dedicated` pins shard *i* to the *i*-th allowed CPU, `shared` (the
/// default) leaves every shard free to run on any CPU the process may use.
#[test]
fn dedicated_cores_pin_each_shard_and_shared_cores_leave_them_free() {
    let allowed = allowed_cpus();
    let spawn = |cores: Option<&str>| {
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
            .env("PULSAR_SERVER_SHARDS", "2")
            .env("PULSAR_JWT_SECRET_KEY", SECRET);
        if let Some(cores) = cores {
            cmd.env("PULSAR_SERVER_CORES", cores);
        }
        let relay = Relay::spawn(cmd);
        relay.wait_ready(Duration::from_secs(10));
        relay
    };

    let dedicated = spawn(Some("dedicated"));
    for shard in 0..2 {
        assert_eq!(
            shard_cpus(dedicated.pid(), &format!("shard-{shard}")),
            allowed[shard % allowed.len()].to_string(),
            "dedicated: shard {shard} pinned to its CPU"
        );
    }
    dedicated.publish("placed", r#"{"n":1}"#);
    drop(dedicated);

    let shared = spawn(None);
    let process = process_cpus(shared.pid());
    for shard in 0..2 {
        assert_eq!(
            shard_cpus(shared.pid(), &format!("shard-{shard}")),
            process,
            "shared (default): shard {shard} may run on every CPU the process may"
        );
    }
    shared.publish("placed", r#"{"n":1}"#);
    drop(shared);

    let mut cmd = relay_command();
    cmd.env("PULSAR_SERVER_CORES", "pinned");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown value is a config error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PULSAR_SERVER_CORES") && stderr.contains("dedicated"),
        "names the variable and the accepted values: {stderr}"
    );
}

/// The `Cpus_allowed_list` of process `pid` itself.
fn process_cpus(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity(2) fills the zeroed set; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The `Cpus_allowed_list` of the threads of shard executor `name` (glommio names them
/// `<name>-<executor id>`), all of which must agree.
fn shard_cpus(pid: u32, name: &str) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the relay's threads");
    let mut lists: Vec<String> = tasks
        .flatten()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            comm.trim().starts_with(&format!("{name}-"))
        })
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .expect("Cpus_allowed_list")
                .trim()
                .to_owned()
        })
        .collect();
    lists.dedup();
    assert_eq!(lists.len(), 1, "threads of {name}: {lists:?}");
    lists.remove(0)
}

/// A cgroup v1 cpuset holding one CPU, removed when dropped (after its processes ended);
/// `None` where this process may not make one.
struct Cpuset {
    dir: String,
}

impl Cpuset {
    fn make(cpu: usize) -> Option<Cpuset> {
        let root = "/sys/fs/cgroup/cpuset";
        let mems = std::fs::read_to_string(format!("{root}/cpuset.mems")).ok()?;
        let dir = format!("{root}/pulsar-test-{}", std::process::id());
        std::fs::create_dir(&dir).ok()?;
        let set = Cpuset { dir };
        let written = std::fs::write(format!("{}/cpuset.cpus", set.dir), cpu.to_string())
            .and_then(|()| std::fs::write(format!("{}/cpuset.mems", set.dir), mems.trim()));
        written.ok().map(|()| set)
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
