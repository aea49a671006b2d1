//! The relay process: spawning the real binary and reading its banner and output, running
//! it to completion, stopping it, `/ready`, and what it reports about itself (metrics,
//! resident memory).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

/// A `Command` for the binary with every inherited `PULSAR_*` variable removed, so the
/// developer's environment cannot change what a test runs.
pub fn relay_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("PULSAR_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl Relay {
    pub fn start() -> Relay {
        Relay::start_with(&[])
    }

    /// Starts the relay with the test defaults plus `env` (later entries win).
    ///
    /// Load shedding is off unless a test turns it on (`PULSAR_LIMITS_MAX_QUEUE_DELAY`):
    /// a debug build on a machine busy with other builds is often late by the default
    /// limit, and a test of something else must not get 503 `OVERLOADED` for it.
    pub fn start_with(env: &[(&str, &str)]) -> Relay {
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
            .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
            .env("PULSAR_JWT_SECRET_KEY", SECRET)
            .env("PULSAR_LIMITS_MAX_QUEUE_DELAY", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Relay::spawn(cmd)
    }

    /// Starts the relay from `cmd` (e.g. a [`relay_command`] with a `pre_exec` hook) and
    /// waits for its listening line.
    pub fn spawn(mut cmd: Command) -> Relay {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot spawn pulsar-relay");

        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str("[stderr] ");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = parse_listening_line(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str("[stdout] ");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => Relay {
                child,
                addr,
                output,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Give the reader threads a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "pulsar-relay did not print its listening line within 10 s (exit: {status:?})\n{}",
                    output.lock().unwrap()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay printed so far (stdout and stderr), for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn http(&self) -> Http {
        Http::connect(self.addr)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.http().request(method, path, headers, body)
    }

    /// `POST /auth/login` with a form body (the OAuth2 password grant).
    pub fn form_login(&self, username: &str, password: &str) -> Response {
        let body = format!("username={username}&password={password}&grant_type=password");
        self.request(
            "POST",
            "/auth/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    }

    /// A request with `token` as bearer and `body` as JSON (none when null).
    pub fn call(&self, method: &str, path: &str, token: &str, body: &Value) -> Response {
        let auth = auth_header(token);
        let text = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.request(method, path, &[auth.as_pair()], &text)
    }

    /// `POST /auth/token/refresh` with `refresh_token`.
    pub fn refresh(&self, refresh_token: &str) -> Response {
        let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
        self.request(
            "POST",
            "/auth/token/refresh",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Publishes `payload` (raw JSON text) to `topic` with a read-write token and returns
    /// the 201 receipt.
    pub fn publish(&self, topic: &str, payload: &str) -> Value {
        self.http().publish(topic, payload)
    }

    pub fn ws(&self) -> Ws {
        Ws::connect(self.addr, &rw_token())
    }

    /// Long-polls with a read-write token; `query` is appended after `?`.
    pub fn poll(&self, query: &str) -> Response {
        let mut http = self.http();
        http.set_read_timeout(Duration::from_secs(75));
        http.request(
            "GET",
            &format!("/api/v1/poll?{query}"),
            &[auth_header(&rw_token()).as_pair()],
            b"",
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line
        .strip_prefix("pulsar-relay listening on http://")
        .or_else(|| line.strip_prefix("pulsar-relay listening on https://"))?;
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok()
}

/// Runs the binary to completion (it must exit within 10 s) and returns its exit status,
/// stdout and stderr. `env` is applied on top of a `PULSAR_*`-free environment.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = relay_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot spawn pulsar-relay");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pulsar-relay {args:?} with {env:?} did not exit within 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out_thread.join().unwrap(),
        err_thread.join().unwrap(),
    )
}

impl Relay {
    /// Starts the relay (test defaults plus `env`) with stdout and stderr on a pipe whose
    /// reading end is already closed, as under `pulsar-relay 2>&1 | head -1` once `head`
    /// is gone or a log shipper that stopped: every line it writes fails (EPIPE). Its
    /// address cannot be read from the banner, so it gets a port that was free a moment
    /// ago; returns once `/health` answers.
    pub fn start_with_closed_output(env: &[(&str, &str)]) -> Relay {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port");
        let (reader, writer) = std::io::pipe().expect("cannot make a pipe");
        drop(reader);
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", addr.port().to_string())
            .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
            .env("PULSAR_JWT_SECRET_KEY", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(writer.try_clone().expect("cannot duplicate the pipe"))
            .stderr(writer);
        let mut relay = Relay {
            child: cmd.spawn().expect("cannot spawn pulsar-relay"),
            addr,
            output: Arc::new(Mutex::new(
                "(no output: stdout and stderr were closed)\n".to_owned(),
            )),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = relay.child.try_wait().expect("try_wait") {
                panic!("pulsar-relay exited at start-up with its output closed: {status}");
            }
            if let Ok(mut stream) = TcpStream::connect(addr) {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let request = encode_request("GET", "/health", &[], b"");
                let mut answer = [0u8; 12];
                if stream.write_all(&request).is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && answer.ends_with(b"200")
                {
                    return relay;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-relay with its output closed did not answer /health within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Relay {
    /// Starts a relay whose persistent tier is `valkey`, plus `env` (later entries win).
    pub fn start_on_valkey(valkey: &Valkey, env: &[(&str, &str)]) -> Relay {
        Relay::start_on_valkey_port(valkey.port, env)
    }

    /// Starts a relay whose persistent tier is whatever listens on `port` of 127.0.0.1
    /// (a Valkey, or a fault proxy in front of one), plus `env`.
    pub fn start_on_valkey_port(port: u16, env: &[(&str, &str)]) -> Relay {
        let port = port.to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_VALKEY_HOST", "127.0.0.1"),
            ("PULSAR_VALKEY_PORT", &port),
        ];
        all.extend_from_slice(env);
        Relay::start_with(&all)
    }

    /// Sends SIGKILL (no shutdown sequence at all) and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the relay wrote to stderr so far, one line each.
    pub fn stderr(&self) -> String {
        self.output()
            .lines()
            .filter_map(|l| l.strip_prefix("[stderr] "))
            .fold(String::new(), |mut out, l| {
                out.push_str(l);
                out.push('\n');
                out
            })
    }

    /// `GET /ready` on a fresh connection.
    pub fn ready(&self) -> Response {
        self.request("GET", "/ready", &[], b"")
    }

    /// Polls `GET /ready` until it answers 200; panics after `timeout`.
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_ready_status(200, timeout);
    }

    /// Polls `GET /ready` until it answers 503 and returns that response; panics after
    /// `timeout`.
    #[track_caller]
    pub fn wait_not_ready(&self, timeout: Duration) -> Response {
        self.wait_ready_status(503, timeout)
    }

    #[track_caller]
    fn wait_ready_status(&self, status: u16, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            // A relay starting up on a loaded machine may answer one probe late; only the
            // deadline decides.
            let mut http = self.http();
            http.send_request("GET", "/ready", &[], b"");
            let last = match http.try_read_response(true) {
                Ok(resp) if resp.status == status => return resp,
                Ok(resp) => format!("{}: {}", resp.status, resp.text()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "/ready is not {status} after {timeout:?} (last: {last})\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One scrape of `/metrics`.
pub struct Metrics {
    pub text: String,
}

impl Relay {
    /// Scrapes `/metrics` (with the Prometheus text content type).
    pub fn metrics(&self) -> Metrics {
        let resp = self.request("GET", "/metrics", &[], b"");
        resp.assert_status(200);
        assert!(
            resp.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
            "content type: {:?}",
            resp.header("content-type")
        );
        Metrics { text: resp.text() }
    }

    /// Resident memory of the relay process in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }
}

impl Metrics {
    /// The sum of every series of `name` (all label sets); panics when there is none.
    pub fn sum(&self, name: &str) -> f64 {
        let mut found = false;
        let mut sum = 0.0;
        for line in self.text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once(' ').map(|(_, v)| v),
                None => rest.strip_prefix(' '),
            };
            if let Some(v) = value {
                sum += v
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad sample {line:?}"));
                found = true;
            }
        }
        assert!(found, "no series {name} in /metrics:\n{}", self.text);
        sum
    }

    /// The value of one series (name with labels, exactly as exposed).
    pub fn value(&self, series: &str) -> f64 {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.text))
            .parse()
            .unwrap()
    }

    /// The largest per-shard value of gauge `name`.
    pub fn per_shard_max(&self, name: &str) -> f64 {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix("{shard="))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0, f64::max)
    }
}

/// Publishes through a fresh connection and checks the relay is still serving normally:
/// a WebSocket subscriber on a new connection receives the message.
pub fn assert_relay_still_serves(relay: &Relay) {
    for topic in topics_on_each_shard("still-serving") {
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], serde_json::json!({}));
        let receipt = relay.publish(&topic, r#"{"alive":true}"#);
        let got = ws.recv_delivery();
        assert_eq!(got["message_id"], receipt["message_id"]);
        assert_eq!(got["payload"], serde_json::json!({"alive": true}));
    }
}

/// Runs `poll` while another connection publishes `payload` to `topic` every 100 ms (from
/// 200 ms on) until the poll answered; returns the answer and the IDs published.
pub fn poll_while_publishing(
    relay: &Relay,
    topic: &str,
    payload: &str,
    poll: impl FnOnce() -> Response,
) -> (Response, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let addr = relay.addr;
        let topic = topic.to_string();
        let payload = payload.to_string();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut http = Http::connect(addr);
            let mut published = Vec::new();
            thread::sleep(Duration::from_millis(200));
            while !stop.load(Ordering::Acquire) && published.len() < 100 {
                published.push(id_of(&http.publish(&topic, &payload)).to_string());
                thread::sleep(Duration::from_millis(100));
            }
            published
        })
    };
    let resp = poll();
    stop.store(true, Ordering::Release);
    (resp, publisher.join().unwrap())
}

/// The IDs of a list of delivered messages (a poll's `messages`), in order.
pub fn ids_in(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not a message list: {messages}"))
        .iter()
        .map(|m| id_of(m).to_string())
        .collect()
}

/// Every ID of `topic` as `relay` replays it from the earliest, long-poll page after page.
pub fn replayed(relay: &Relay, topic: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    loop {
        let since = all.last().map_or("earliest", String::as_str);
        let resp = relay.poll(&format!(
            "topics={topic}&since={since}&timeout=1&limit=1000"
        ));
        resp.assert_status(200);
        let body = resp.json();
        all.extend(ids_in(&body["messages"]));
        if body["has_more"] != true {
            return all;
        }
    }
}
