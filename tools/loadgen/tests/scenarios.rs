//! Every scenario, run briefly against a real relay: the `--json` summary must show the
//! load arrived and nothing was lost (an idle machine loses nothing at these rates).
//!
//! The relay binary belongs to another package, so Cargo does not hand us its path: it is
//! taken from the workspace's target directory and built first when it is not there.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const SECRET: &str = "pulsar-loadgen-test-secret-0123456789abcdef";
const LOADGEN: &str = env!("CARGO_BIN_EXE_pulsar-loadgen");

fn relay_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug/pulsar-relay");
        if !bin.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "pulsar-relay", "--bin", "pulsar-relay"])
                .current_dir(&root)
                .status()
                .expect("cannot run cargo to build pulsar-relay");
            assert!(status.success(), "building pulsar-relay failed");
        }
        bin
    })
}

/// A relay on an ephemeral port, killed on drop.
struct Relay {
    child: Child,
    url: String,
}

impl Relay {
    fn start() -> Relay {
        Relay::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Relay {
        let mut cmd = Command::new(relay_binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("PULSAR_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .env("PULSAR_SERVER_HTTP_PORT", "0")
            .env("PULSAR_SERVER_SHARDS", "2")
            .env("PULSAR_JWT_SECRET_KEY", SECRET)
            // No load shedding: a debug relay on a busy machine is often late by the
            // default limit, and these runs count every refusal as an error.
            .env("PULSAR_LIMITS_MAX_QUEUE_DELAY", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn pulsar-relay");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("pulsar-relay listening on ") {
                        break rest.split(' ').next().expect("a URL").to_string();
                    }
                }
                _ => {
                    let mut err = String::new();
                    let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
                    let _ = child.kill();
                    panic!("pulsar-relay did not start: {err}");
                }
            }
        };
        // Keep draining stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Relay { child, url }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(LOADGEN)
        .args(args)
        .env_remove("PULSAR_JWT_SECRET_KEY")
        .output()
        .expect("cannot run pulsar-loadgen")
}

/// Runs a scenario against `relay` with the test's secret and returns its JSON summary.
fn run(relay: &Relay, scenario: &str, args: &[&str]) -> Value {
    let mut all = vec!["--secret", SECRET];
    all.extend_from_slice(args);
    let (out, summary) = run_with(relay, scenario, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{scenario} failed:\n{stdout}\n{stderr}"
    );
    summary
}

/// Runs a scenario against `relay` for 1 s, with `args` (credentials included), and returns
/// its output and JSON summary, whatever its exit status.
fn run_with(relay: &Relay, scenario: &str, args: &[&str]) -> (Output, Value) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pulsar-loadgen-test-{}-{scenario}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("summary.json");
    let pid = relay.pid();
    let mut all = vec![
        scenario,
        "--url",
        &relay.url,
        "--warmup",
        "300ms",
        "--duration",
        "1s",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = loadgen(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("p99.9"), "no summary table:\n{stdout}");
    let text = std::fs::read_to_string(&json).expect("--json file written");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out,
        serde_json::from_str(&text).expect("--json output is JSON"),
    )
}

/// A read+write token limited to the topics matching `pattern`, signed with the test's
/// secret: publishing elsewhere is refused with 403.
fn token_for_topics(pattern: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "loadgen-test",
        "iat": now,
        "exp": now + 600,
        "permissions": ["read", "write"],
        "topics": [pattern],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

#[test]
fn publish_closed_loop() {
    let relay = Relay::start();
    let v = run(&relay, "publish", &["--connections", "4", "--topics", "3"]);
    assert_eq!(v["scenario"], "publish");
    assert!(u(&v, "count") > 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(
        v["cpu"]["server_cores"].as_f64().is_some_and(|c| c > 0.0),
        "the relay's CPU under load: {v:#}"
    );
    assert_server_cpu(&v, "message acknowledged");
}

/// The relay's CPU per message or delivery, which a run with `--server-pid` reports.
fn assert_server_cpu(v: &Value, per: &str) {
    let us = v["server_cpu_us"].as_f64();
    assert!(
        us.is_some_and(|us| us.is_finite() && us > 0.0),
        "server CPU per {per}: {v:#}"
    );
    assert_eq!(v["server_cpu_per"], per, "{v:#}");
    // All of the relay's CPU in the phase, over the headline count.
    let expected = v["cpu"]["server_cpu_s"].as_f64().unwrap() * 1e6 / u(v, "count") as f64;
    assert!(
        (us.unwrap() - expected).abs() <= 0.01 + expected * 1e-3,
        "{v:#}"
    );
}

#[test]
fn server_cpu_is_absent_without_a_server_pid() {
    let relay = Relay::start();
    let json = std::env::temp_dir().join(format!(
        "pulsar-loadgen-test-{}-no-pid.json",
        std::process::id()
    ));
    let out = loadgen(&[
        "publish",
        "--secret",
        SECRET,
        "--url",
        &relay.url,
        "--connections",
        "2",
        "--warmup",
        "0",
        "--duration",
        "500ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(u(&v, "count") > 0, "{v:#}");
    assert!(v.get("server_cpu_us").is_none(), "{v:#}");
    assert!(v["rows"]["publish"].get("server_cpu_us").is_none(), "{v:#}");
    assert!(!stdout.contains("server µs"), "{stdout}");
}

#[test]
fn publish_bulk_open_loop_keeps_its_rate() {
    let relay = Relay::start();
    let v = run(
        &relay,
        "publish",
        &["--connections", "2", "--rate", "2000", "--bulk", "10"],
    );
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    // The schedule is fixed: the requests intended within the measured phase carry
    // rate × duration messages, however late the generator's threads ran (a late thread
    // still sends what was due). Only where the phase's edges cut the two connections'
    // staggered schedules may one bulk per connection count or not.
    let expected = v["target_rate"].as_f64().unwrap() * v["duration_s"].as_f64().unwrap();
    let count = u(&v, "count") as f64;
    assert!(
        (count - expected).abs() <= 2.0 * 10.0,
        "{count} messages measured, {expected} scheduled: {v:#}"
    );
}

#[test]
fn fanout_loses_nothing() {
    let relay = Relay::start();
    let v = run(
        &relay,
        "fanout",
        &["--subscribers", "20", "--topics", "2", "--rate", "200"],
    );
    let published = u(&v, "published");
    assert!(published > 0, "{v:#}");
    assert_eq!(u(&v, "expected"), published * 10, "{v:#}");
    assert_eq!(u(&v, "delivered"), u(&v, "expected"), "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    // The headline is deliveries: CPU per delivery, and per message on the publish row,
    // ten deliveries per message here.
    assert_server_cpu(&v, "delivery");
    let publish = &v["rows"]["publish"];
    assert_eq!(publish["server_cpu_per"], "message acknowledged", "{v:#}");
    let ratio = publish["server_cpu_us"].as_f64().unwrap() / v["server_cpu_us"].as_f64().unwrap();
    let deliveries_per_message = u(&v, "count") as f64 / u(publish, "count") as f64;
    assert!(
        (ratio - deliveries_per_message).abs() < 0.01 * deliveries_per_message,
        "{ratio} vs {deliveries_per_message}: {v:#}"
    );
}

#[test]
fn e2e_measures_latency_and_writes_hgrm() {
    let relay = Relay::start();
    let hgrm =
        std::env::temp_dir().join(format!("pulsar-loadgen-test-{}.hgrm", std::process::id()));
    let v = run(
        &relay,
        "e2e",
        &[
            "--subscribers",
            "2",
            "--rate",
            "500",
            "--hgrm",
            hgrm.to_str().unwrap(),
        ],
    );
    assert!(u(&v, "count") > 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    let text = std::fs::read_to_string(&hgrm).expect("--hgrm file written");
    let _ = std::fs::remove_file(&hgrm);
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(
        text.contains(&format!("Total count    = {:>12}]", u(&v, "count"))),
        "{text}"
    );
}

/// A throwaway valkey-server on a free port (no persistence), killed on drop: the store
/// that cluster-mode relays share. The binary is `PULSAR_TEST_VALKEY_SERVER` (tools/test.sh
/// provisions one), else valkey-server or redis-server on PATH.
struct Valkey {
    child: Child,
    port: u16,
}

impl Valkey {
    fn start() -> Valkey {
        let binary = std::env::var_os("PULSAR_TEST_VALKEY_SERVER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let path = std::env::var_os("PATH").unwrap_or_default();
                ["valkey-server", "redis-server"].iter().find_map(|name| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join(name))
                        .find(|c| c.is_file())
                })
            })
            .expect("no valkey-server: run ./tools/test.sh, which provisions one");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port")
            .port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn valkey-server");
        let valkey = Valkey { child, port };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return valkey;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("valkey-server did not listen on port {port}");
    }

    /// A relay node in cluster mode on this Valkey (one shard), once `/ready` says its
    /// Valkey and pub/sub connections are up.
    fn node(&self) -> Relay {
        let port = self.port.to_string();
        let relay = Relay::start_with(&[
            ("PULSAR_CLUSTER_ENABLED", "true"),
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_VALKEY_HOST", "127.0.0.1"),
            ("PULSAR_VALKEY_PORT", &port),
            ("PULSAR_SERVER_SHARDS", "1"),
        ]);
        let host = relay.url.trim_start_matches("http://");
        let ready = || -> std::io::Result<bool> {
            use std::io::Write;
            let mut conn = std::net::TcpStream::connect(host)?;
            write!(
                conn,
                "GET /ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            Ok(answer.starts_with("HTTP/1.1 200"))
        };
        for _ in 0..500 {
            if ready().unwrap_or(false) {
                return relay;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the node at {host} did not become ready");
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fanout` with subscribers spread over two cluster-mode nodes and the publisher on a
/// third: every subscriber gets every message, whichever node it is on.
#[test]
fn fanout_spreads_subscribers_over_nodes_and_publishes_on_another() {
    let valkey = Valkey::start();
    let nodes = [valkey.node(), valkey.node(), valkey.node()];
    let v = run(
        &nodes[0],
        "fanout",
        &[
            "--url",
            &nodes[1].url,
            "--publish-url",
            &nodes[2].url,
            "--subscribers",
            "6",
            "--rate",
            "200",
        ],
    );
    let published = u(&v, "published");
    assert!(published > 0, "{v:#}");
    assert_eq!(u(&v, "delivered"), published * 6, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    let host = |relay: &Relay| relay.url.trim_start_matches("http://").to_string();
    assert_eq!(v["publish_url"], host(&nodes[2]), "{v:#}");
    assert_eq!(
        v["subscribe_urls"],
        serde_json::json!([host(&nodes[0]), host(&nodes[1])]),
        "{v:#}"
    );
}

/// Two relays that share nothing: the subscribers on the relay the publisher does not post
/// to get nothing, so the spread and `--publish-url` are what they say (every other
/// subscriber is on the second relay).
#[test]
fn e2e_subscribers_alternate_between_urls() {
    let (a, b) = (Relay::start(), Relay::start());
    let (out, v) = run_with(
        &a,
        "e2e",
        &[
            "--secret",
            SECRET,
            "--url",
            &b.url,
            "--publish-url",
            &b.url,
            "--subscribers",
            "4",
            "--rate",
            "200",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{v:#}");
    let published = u(&v, "published");
    assert!(published > 0, "{v:#}");
    // Subscribers 1 and 3 are on b, where the messages are published; 0 and 2 on a.
    assert_eq!(u(&v, "expected"), published * 4, "{v:#}");
    assert_eq!(u(&v, "delivered"), published * 2, "{v:#}");
    assert_eq!(u(&v, "lost"), published * 2, "{v:#}");
    assert!(
        v["setup"].as_str().unwrap().contains(&format!(
            "publishing on {}",
            b.url.trim_start_matches("http://")
        )),
        "{v:#}"
    );
}

#[test]
fn connections_reach_the_count() {
    let relay = Relay::start();
    // Three source addresses: connections bind to 127.0.0.1, .2 and .3 in turn.
    let v = run(
        &relay,
        "connections",
        &["--count", "300", "--source-addresses", "3"],
    );
    assert_eq!(u(&v, "source_addresses"), 3, "{v:#}");
    assert_eq!(u(&v, "connections"), 300, "{v:#}");
    assert_eq!(u(&v, "count"), 300, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert!(u(&v, "server_rss_before_kib") > 0, "{v:#}");
    assert!(u(&v, "server_rss_after_kib") > 0, "{v:#}");
}

#[test]
fn poll_receives_everything_published() {
    let relay = Relay::start();
    let v = run(
        &relay,
        "poll",
        &["--consumers", "2", "--topics", "2", "--rate", "500"],
    );
    let published = u(&v, "published");
    assert!(published > 0, "{v:#}");
    assert_eq!(u(&v, "received"), published, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
}

#[test]
fn bad_command_lines_exit_2_and_unreachable_relays_exit_1() {
    let out = loadgen(&["publish", "--conections", "4", "--secret", SECRET]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conections"));
    let out = loadgen(&["publish", "--url", "http://127.0.0.1:1", "--secret", SECRET]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    let out = loadgen(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("connections"));
}

#[test]
fn common_flags_may_come_before_the_scenario() {
    // As README's `L="target/release/pulsar-loadgen --secret $KEY --server-pid $PID"`
    // followed by `$L publish ...` writes it.
    let relay = Relay::start();
    let pid = relay.pid();
    let out = loadgen(&[
        "--secret",
        SECRET,
        "--server-pid",
        &pid,
        "--url",
        &relay.url,
        "publish",
        "--connections",
        "2",
        "--warmup",
        "0",
        "--duration",
        "500ms",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("(pid {pid})")), "{stdout}");
}

#[test]
fn a_run_with_errors_exits_3_unless_their_rate_is_tolerated() {
    let relay = Relay::start();
    // Every request refused: a token signed with another secret.
    let (out, v) = run_with(
        &relay,
        "publish",
        &[
            "--secret",
            "not-the-relay-secret-0123456789abcdef",
            "--connections",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{v:#}");
    assert!(u(&v, "errors") > 0, "{v:#}");
    assert_eq!(u(&v, "count"), 0, "{v:#}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAILED"), "{stderr}");

    // Half refused: the token covers topic <prefix>-0 only, the run publishes to two.
    let token = token_for_topics("half-0");
    let half = [
        "--token",
        &token,
        "--topic-prefix",
        "half",
        "--topics",
        "2",
        "--connections",
        "2",
        "--rate",
        "400",
    ];
    let (out, v) = run_with(&relay, "publish", &half);
    assert_eq!(out.status.code(), Some(3), "{v:#}");
    assert!(u(&v, "count") > 0 && u(&v, "errors") > 0, "{v:#}");
    let mut tolerant = half.to_vec();
    tolerant.extend_from_slice(&["--max-error-rate", "60%"]);
    let (out, v) = run_with(&relay, "publish", &tolerant);
    assert!(
        out.status.success(),
        "{v:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(u(&v, "errors") > 0, "{v:#}");
}

/// An element of a well-formed XML document: its name and attributes (entities left as
/// written).
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks that `text` is one well-formed XML element (after an optional declaration and
/// comments): tags nest and close, attributes are quoted and unique, `&` starts an
/// entity, no `<` stray in text or values. Returns the elements in document order.
fn xml_elements(text: &str) -> Result<Vec<Element>, String> {
    fn entities_ok(s: &str) -> bool {
        s.split('&').skip(1).all(|rest| {
            let Some(end) = rest.find(';') else {
                return false;
            };
            let name = &rest[..end];
            matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
                || name.strip_prefix('#').is_some_and(|n| {
                    n.parse::<u32>().is_ok()
                        || n.strip_prefix('x')
                            .is_some_and(|h| u32::from_str_radix(h, 16).is_ok())
                })
        })
    }
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
    }
    let mut rest = text.trim_start();
    if rest.starts_with("<?xml") {
        rest = &rest[rest.find("?>").ok_or("unclosed declaration")? + 2..];
    }
    let mut elements = Vec::new();
    let mut open: Vec<String> = Vec::new();
    let mut roots = 0;
    loop {
        let lt = rest.find('<').unwrap_or(rest.len());
        let content = &rest[..lt];
        if open.is_empty() && !content.trim().is_empty() {
            return Err(format!("text outside the root: {content:?}"));
        }
        if !entities_ok(content) {
            return Err(format!("bad entity in {content:?}"));
        }
        rest = &rest[lt..];
        if rest.is_empty() {
            break;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = &after[after.find("-->").ok_or("unclosed comment")? + 3..];
            continue;
        }
        let gt = rest.find('>').ok_or("unclosed tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name.trim() => continue,
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        }
        if open.is_empty() {
            roots += 1;
        }
        let (body, empty) = match tag.strip_suffix('/') {
            Some(b) => (b, true),
            None => (tag, false),
        };
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if !is_name(name) {
            return Err(format!("bad element name in <{tag}>"));
        }
        let mut attributes: Vec<(String, String)> = Vec::new();
        let mut attrs = body[name_end..].trim_start();
        while !attrs.is_empty() {
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without value in <{tag}>"))?;
            let attr = attrs[..eq].trim();
            let quoted = attrs[eq + 1..].trim_start();
            let quote = quoted.chars().next().filter(|q| *q == '"' || *q == '\'');
            let quote = quote.ok_or(format!("unquoted attribute in <{tag}>"))?;
            let end = quoted[1..].find(quote).ok_or("unclosed attribute value")?;
            let value = &quoted[1..1 + end];
            if !is_name(attr) || value.contains('<') || !entities_ok(value) {
                return Err(format!("bad attribute {attr}={value:?}"));
            }
            if attributes.iter().any(|(a, _)| a == attr) {
                return Err(format!("{attr} twice in <{tag}>"));
            }
            attributes.push((attr.to_string(), value.to_string()));
            attrs = quoted[end + 2..].trim_start();
        }
        if !empty {
            open.push(name.to_string());
        }
        elements.push(Element {
            name: name.to_string(),
            attributes,
        });
    }
    if !open.is_empty() {
        return Err(format!("unclosed elements {open:?}"));
    }
    if roots != 1 || elements.first().is_none_or(|e| e.name != "svg") {
        return Err("not exactly one <svg> root".into());
    }
    Ok(elements)
}

/// The series of an SVG picture from `plot` or `--svg`: their labels (as written, escaped)
/// and points, checked to be drawn left to right and upwards (latency never decreases as
/// the percentile rises; SVG's y grows downwards).
fn svg_series(path: &Path) -> Vec<(String, Vec<(f64, f64)>)> {
    let text = std::fs::read_to_string(path).expect("SVG written");
    let elements = xml_elements(&text).unwrap_or_else(|e| panic!("not well-formed: {e}\n{text}"));
    assert_eq!(
        text.matches("<polyline").count() + text.matches("<path").count(),
        elements.iter().filter(|e| e.name == "polyline").count(),
    );
    elements
        .iter()
        .filter(|e| e.name == "polyline")
        .map(|e| {
            assert_eq!(e.attribute("class"), Some("series"));
            let points: Vec<(f64, f64)> = e
                .attribute("points")
                .unwrap()
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            assert!(points.len() >= 3, "{points:?}");
            for pair in points.windows(2) {
                assert!(
                    pair[1].0 >= pair[0].0 && pair[1].1 <= pair[0].1,
                    "not monotonic: {pair:?}"
                );
            }
            let label = e.attribute("data-label").unwrap().to_string();
            (label, points)
        })
        .collect()
}

#[test]
fn plot_draws_one_labelled_series_per_hgrm_file() {
    let relay = Relay::start();
    let dir = std::env::temp_dir().join(format!("pulsar-loadgen-test-{}-plot", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (e2e, publish, direct) = (file("e2e.hgrm"), file("publish.hgrm"), file("e2e.svg"));
    run(
        &relay,
        "e2e",
        &["--rate", "500", "--hgrm", &e2e, "--svg", &direct],
    );
    run(
        &relay,
        "publish",
        &["--connections", "2", "--rate", "500", "--hgrm", &publish],
    );

    // A run's own picture: its headline latency, one series.
    let own = svg_series(Path::new(&direct));
    assert_eq!(own.len(), 1);
    assert!(own[0].0.starts_with("e2e delivery: "), "{}", own[0].0);

    let picture = file("latency.svg");
    let out = loadgen(&[
        "plot",
        &e2e,
        &publish,
        "-o",
        &picture,
        "--label",
        "e2e <1 subscriber>",
        "--label",
        "publish & ack",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let series = svg_series(Path::new(&picture));
    let labels: Vec<&str> = series.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["e2e &lt;1 subscriber&gt;", "publish &amp; ack"]);
    let text = std::fs::read_to_string(&picture).unwrap();
    for tick in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
        assert!(text.contains(&format!(">{tick}</text>")), "tick {tick}");
    }
    // Without labels, the legend names the files.
    let out = loadgen(&["plot", &e2e, &publish, "-o", &picture]);
    assert!(out.status.success());
    let series = svg_series(Path::new(&picture));
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].0, e2e);
    assert_eq!(series[1].0, publish);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plot_refuses_missing_and_foreign_files() {
    let dir = std::env::temp_dir().join(format!(
        "pulsar-loadgen-test-{}-plot-bad",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.hgrm");
    std::fs::write(
        &good,
        "       Value     Percentile TotalCount 1/(1-Percentile)\n\n       \
         0.100 0.000000000000          1           1.00\n       \
         0.200 0.500000000000          2           2.00\n       \
         0.250 0.900000000000          9          10.00\n       \
         0.300 1.000000000000         10\n",
    )
    .unwrap();
    let json = dir.join("summary.json");
    std::fs::write(&json, "{\"scenario\": \"publish\", \"count\": 10}\n").unwrap();
    let missing = dir.join("missing.hgrm");
    let picture = dir.join("out.svg");
    let path = |p: &Path| p.to_str().unwrap().to_string();

    let out = loadgen(&["plot", &path(&good), &path(&missing), "-o", &path(&picture)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read") && stderr.contains("missing.hgrm"),
        "{stderr}"
    );
    let out = loadgen(&["plot", &path(&good), &path(&json), "-o", &path(&picture)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("summary.json") && stderr.contains("not an HdrHistogram"),
        "{stderr}"
    );
    assert!(!picture.exists(), "no picture from bad input");
    // Bad command lines: no output named, labels that do not match the files.
    let out = loadgen(&["plot", &path(&good)]);
    assert_eq!(out.status.code(), Some(2));
    let out = loadgen(&[
        "plot",
        &path(&good),
        "-o",
        &path(&picture),
        "--label",
        "a",
        "--label",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one per file"));

    let out = loadgen(&["plot", &path(&good), "-o", &path(&picture)]);
    assert!(out.status.success());
    assert_eq!(svg_series(&picture).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA and a certificate it signed for 127.0.0.1, made with the `openssl` command in `dir`:
/// `ca.crt`, `relay.crt`, `relay.key`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("cannot run openssl (Debian package openssl; tools/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=loadgen test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "relay.key",
                "-out",
                "relay.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("relay.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        "relay.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "7",
        "-extfile",
        "relay.ext",
        "-out",
        "relay.crt",
    ]);
}

#[test]
fn publish_and_fanout_over_tls() {
    let dir = std::env::temp_dir().join(format!("pulsar-loadgen-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("relay.crt"), path("relay.key"), path("ca.crt"));
    let relay = Relay::start_with(&[
        ("PULSAR_SERVER_TLS_CERT_FILE", &cert),
        ("PULSAR_SERVER_TLS_KEY_FILE", &key),
    ]);
    assert!(relay.url.starts_with("https://"), "{}", relay.url);

    let v = run(&relay, "publish", &["--tls-ca", &ca, "--connections", "4"]);
    assert!(u(&v, "count") > 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    let v = run(
        &relay,
        "fanout",
        &["--tls-ca", &ca, "--subscribers", "5", "--rate", "200"],
    );
    assert!(u(&v, "count") > 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");

    // Without the CA the run cannot start, and says why.
    let out = loadgen(&[
        "publish",
        "--url",
        &relay.url,
        "--secret",
        SECRET,
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-ca"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
