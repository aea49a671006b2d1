//! The deployment files of tools/deploy/ against the real relay: the Grafana dashboard asks
//! only for series the relay exports, with their real types and labels, and charts every
//! one; the relay serves (io_uring included) under the Docker seccomp profile and under the
//! systemd unit's sandbox; the unit and the Dockerfile run the binary, configuration and
//! port the relay really has; README's nginx configuration for several nodes is
//! nginx-cluster.conf (which tests/cluster_lb.rs runs) and the README's three nodes.

mod common;
#[cfg(target_arch = "x86_64")]
mod seccomp;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsar_relay::config::{parse_duration, Config};
use serde_json::{json, Value};

fn deploy_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/deploy")
        .join(name)
}

fn deploy_file(name: &str) -> String {
    let path = deploy_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&deploy_file("grafana-dashboard.json"))
        .expect("grafana-dashboard.json is JSON")
}

/// The cargo binary's name, as the tests run it.
fn bin_name() -> String {
    Path::new(BIN)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------------------

/// One metric family of the exposition.
#[derive(Default, Debug)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    /// Names of its samples (`_bucket`, `_sum` and `_count` for a histogram).
    samples: BTreeSet<String>,
}

fn exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).expect("sample has a value");
        let sample = &line[..end];
        let family = if families.contains_key(sample) {
            sample
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.strip_suffix(s))
                .filter(|base| families[*base].kind == "histogram")
                .unwrap_or_else(|| panic!("sample {sample} has no # TYPE"))
        };
        let family = families.get_mut(family).unwrap();
        family.samples.insert(sample.to_string());
        if let Some(labels) = line[end..].strip_prefix('{') {
            let labels = &labels[..labels.find('}').expect("closing brace")];
            for pair in labels.split(',') {
                let (key, _) = pair.split_once('=').expect("label=value");
                if key != "le" {
                    family.labels.insert(key.to_string());
                }
            }
        }
    }
    families
}

/// Every panel, rows' collapsed panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// `(panel title, PromQL)` of every query target.
fn panel_queries(dash: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("target has an expr");
            let title = panel["title"].as_str().unwrap_or("?");
            queries.push((title.to_string(), expr.to_string()));
        }
    }
    queries
}

/// A metric selector in a PromQL expression.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<String>,
    /// Followed by a range (`[5m]`): the argument of `rate` and friends.
    range: bool,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn selectors(expr: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pulsar_") {
        if rest[..at].chars().next_back().is_some_and(is_ident) {
            rest = &rest[at + 1..];
            continue;
        }
        let tail = &rest[at..];
        let len = tail.find(|c| !is_ident(c)).unwrap_or(tail.len());
        let name = tail[..len].to_string();
        let mut after = &tail[len..];
        let mut matchers = Vec::new();
        if let Some(body) = after.strip_prefix('{') {
            let close = body.find('}').expect("selector closes");
            for matcher in body[..close].split(',') {
                let key = matcher.split(['=', '!']).next().unwrap().trim();
                matchers.push(key.to_string());
            }
            after = &body[close + 1..];
        }
        let range = after.trim_start().starts_with('[');
        found.push(Selector {
            name,
            matchers,
            range,
        });
        rest = after;
    }
    found
}

/// Labels named in `by (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (").or_else(|| rest.find("by(")) {
        let body = &rest[rest[at..].find('(').unwrap() + at + 1..];
        let close = body.find(')').expect("by clause closes");
        labels.extend(body[..close].split(',').map(|l| l.trim().to_string()));
        rest = &body[close..];
    }
    labels
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

#[test]
fn dashboard_asks_only_for_series_the_relay_exports_and_charts_them_all() {
    let valkey = Valkey::start();
    // Cluster mode (one node is a cluster too) exports every series there is.
    let relay = Relay::start_on_valkey(&valkey, &[("PULSAR_CLUSTER_ENABLED", "true")]);
    relay.wait_ready(Duration::from_secs(10));
    // Traffic, so that labelled and latency series have samples.
    let topics = topics_on_each_shard("dash");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut ws = relay.ws();
    ws.subscribe(&names, json!({}));
    for topic in &topics {
        relay.publish(topic, "1");
    }
    ws.recv_delivery();
    ws.recv_delivery();
    relay.poll("topics=dash-x&timeout=1").assert_status(200);
    let metrics = relay.request("GET", "/metrics", &[], b"");
    metrics.assert_status(200);
    let families = exposition(&metrics.text());

    let dash = dashboard();
    let mut used = BTreeSet::new();
    let queries = panel_queries(&dash);
    assert!(!queries.is_empty(), "the dashboard has no queries");
    for (title, expr) in &queries {
        let found = selectors(expr);
        assert!(!found.is_empty(), "{title}: no relay series in {expr}");
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for sel in &found {
            let (family_name, family) = families
                .iter()
                .find(|(_, f)| f.samples.contains(&sel.name))
                .unwrap_or_else(|| {
                    panic!(
                        "{title}: {expr} asks for {}, which the relay does not export; it does: {:?}",
                        sel.name,
                        families.keys()
                    )
                });
            used.insert(family_name.clone());
            labels.extend(family.labels.iter().cloned());
            if sel.name.ends_with("_bucket") {
                labels.insert("le".into());
            }
            if sel.range {
                assert!(
                    family.kind == "counter" || family.kind == "histogram",
                    "{title}: {expr} takes a rate of {}, a {}",
                    sel.name,
                    family.kind
                );
            } else {
                assert_eq!(
                    family.kind, "gauge",
                    "{title}: {expr} reads {} without rate()",
                    sel.name
                );
            }
            assert!(
                sel.matchers.iter().any(|m| m == "instance"),
                "{title}: {expr}: {} does not follow the $instance variable",
                sel.name
            );
            for m in &sel.matchers {
                assert!(
                    family.labels.contains(m) || TARGET_LABELS.contains(&m.as_str()),
                    "{title}: {expr} matches on label {m}, which {} does not have",
                    sel.name
                );
            }
        }
        for label in grouping_labels(expr) {
            assert!(
                labels.contains(&label),
                "{title}: {expr} groups by {label}, which its series do not have"
            );
        }
    }
    let unused: Vec<&String> = families.keys().filter(|f| !used.contains(*f)).collect();
    assert!(
        unused.is_empty(),
        "the relay exports series no dashboard panel shows: {unused:?}"
    );
    // The instance variable lists the instances of a series that exists.
    let instance = variable(&dash, "instance");
    let query = instance["definition"].as_str().expect("definition");
    for sel in selectors(query) {
        assert!(
            families.values().any(|f| f.samples.contains(&sel.name)),
            "the instance variable asks for {}",
            sel.name
        );
    }
}

fn variable<'a>(dash: &'a Value, name: &str) -> &'a Value {
    dash["templating"]["list"]
        .as_array()
        .expect("templating list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no dashboard variable {name}"))
}

#[test]
fn dashboard_is_importable_with_a_data_source_on_every_panel() {
    let dash = dashboard();
    assert_eq!(variable(&dash, "DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable(&dash, "DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(variable(&dash, "instance")["type"], "query");
    let data_source = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    assert_eq!(variable(&dash, "instance")["datasource"], data_source);
    let mut ids = BTreeSet::new();
    for panel in panels(&dash) {
        let title = panel["title"].as_str().expect("panel title");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], data_source, "panel {title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"], data_source, "panel {title}");
            let r = target["refId"].as_str().expect("refId");
            assert!(refs.insert(r), "panel {title}: refId {r} twice");
        }
    }
    // Every query parses as PromQL: promtool checks them as recording rules, with the
    // dashboard's variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in panel_queries(&dash).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".+");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("pulsar-deploy-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool not found: run ./tools/test.sh (it installs Debian's prometheus)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The unit and the image run what the repository builds
// ---------------------------------------------------------------------------------------

/// A Dockerfile instruction with its continuation lines joined.
fn instruction(dockerfile: &str, keyword: &str) -> String {
    let mut joined = String::new();
    let mut inside = false;
    for line in dockerfile.lines() {
        if !inside && !line.starts_with(keyword) {
            continue;
        }
        inside = true;
        match line.strip_suffix('\\') {
            Some(part) => joined.push_str(part),
            None => {
                joined.push_str(line);
                return joined;
            }
        }
    }
    panic!("the Dockerfile has no {keyword} instruction")
}

/// The JSON array (exec form) at the end of an instruction.
fn exec_form(instruction: &str) -> Vec<String> {
    let start = instruction.find('[').expect("exec form");
    serde_json::from_str(&instruction[start..]).expect("exec form is a JSON array")
}

fn example_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    Config::load(Some(&path), Vec::new()).expect("config.example.yaml loads")
}

#[test]
fn unit_and_image_run_the_binary_config_and_port_the_relay_has() {
    let bin = bin_name();
    let config = example_config();
    let unit = deploy_file("pulsar-relay.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        Path::new(words[0]).file_name().unwrap().to_str(),
        Some(&*bin)
    );
    assert_eq!(words[1], "--config", "{exec}");
    let config_path = words[2];
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=");
    assert!(
        parse_duration(stop).unwrap() > config.server.shutdown_grace * 2,
        "TimeoutStopSec={stop} leaves the relay too little of its {:?} shutdown grace",
        config.server.shutdown_grace
    );
    for key in ["LimitNOFILE=", "LimitMEMLOCK=", "EnvironmentFile="] {
        assert!(
            unit.lines().any(|l| l.starts_with(key)),
            "the unit sets no {key}"
        );
    }

    let dockerfile = deploy_file("Dockerfile");
    assert_eq!(
        exec_form(&instruction(&dockerfile, "ENTRYPOINT")),
        [format!("/usr/local/bin/{bin}")]
    );
    assert_eq!(
        exec_form(&instruction(&dockerfile, "CMD")),
        ["--config", config_path]
    );
    let build = instruction(&dockerfile, "RUN --mount");
    assert!(build.contains(&format!("--bin {bin} ")), "{build}");
    assert!(build.contains(&format!("target/release/{bin} ")), "{build}");
    assert!(
        dockerfile.contains(&format!("COPY config.example.yaml {config_path}\n")),
        "the image's default configuration is not config.example.yaml at {config_path}"
    );
    let port = config.server.http_port.to_string();
    assert_eq!(instruction(&dockerfile, "EXPOSE"), format!("EXPOSE {port}"));
    assert!(dockerfile.contains(&format!("PULSAR_SERVER_HTTP_PORT={port}")));
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let rust = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    assert_eq!(
        instruction(&dockerfile, "ARG RUST_VERSION"),
        format!("ARG RUST_VERSION={rust}")
    );
}

/// README "Running several nodes" quotes nginx-cluster.conf, which tests/cluster_lb.rs runs
/// in front of three nodes: the quote is the file, and its upstream ports are the ones the
/// README starts its nodes on.
#[test]
fn readme_nginx_block_is_the_cluster_deploy_file() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Running several nodes")
        .expect("README has \"Running several nodes\"")..];
    let start = section.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert_eq!(block, deploy_file("nginx-cluster.conf"));
    let nodes_loop = section
        .lines()
        .find(|l| l.starts_with("for port in "))
        .expect("README starts its nodes in a `for port in …` loop");
    for port in nodes_loop["for port in ".len()..]
        .trim_end_matches("; do")
        .split(' ')
    {
        assert!(
            block.contains(&format!("server 127.0.0.1:{port} ")),
            "node port {port} is not an upstream of the nginx block"
        );
    }
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = deploy_file("pulsar-relay.service").replace(
        "ExecStart=/usr/local/bin/pulsar-relay",
        &format!("ExecStart={BIN}"),
    );
    let dir = std::env::temp_dir().join(format!("pulsar-deploy-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pulsar-relay.service");
    std::fs::write(&file, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys or syscall names, so any message counts as a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
}

// ---------------------------------------------------------------------------------------
// The relay under the Docker seccomp profile and the systemd sandbox
// ---------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod confined {
    use super::*;

    /// A relay started under a seccomp filter (and maybe another user), as a container runtime
    /// or systemd would start it.
    struct Confined {
        child: Child,
        addr: SocketAddr,
        stderr: Arc<Mutex<String>>,
    }

    impl Confined {
        fn output(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }

        fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the relay did not exit within {timeout:?}\n{}",
                    self.output()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }

        fn terminate(&self) {
            // SAFETY: kill(2) on our own child with a valid signal.
            let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(rc, 0, "kill(SIGTERM)");
        }
    }

    impl Drop for Confined {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn confine(cmd: &mut Command, filter: &seccomp::Filter, uid: Option<u32>) {
        use std::os::unix::process::CommandExt;
        // Changing user takes root; an unprivileged run keeps its own (the filter is the
        // part under test, the user is the deployment's choice).
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if let Some(uid) = uid.filter(|_| root) {
            // std drops the supplementary groups, then sets the group and the user, before the
            // closure below runs: the filter goes on last, as systemd does.
            cmd.uid(uid).gid(uid);
        }
        let program = filter.program();
        // SAFETY: the closure only makes prctl(2) calls on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || seccomp::install(&program));
        }
    }

    fn spawn_confined(
        filter: &seccomp::Filter,
        uid: Option<u32>,
        env: &[(&str, &str)],
    ) -> Confined {
        let mut cmd = relay_command();
        cmd.env("PULSAR_SERVER_HTTP_PORT", "0")
            .env("PULSAR_SERVER_SHARDS", SHARDS.to_string())
            .env("PULSAR_JWT_SECRET_KEY", SECRET)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        confine(&mut cmd, filter, uid);
        let mut child = cmd.spawn().expect("spawn the confined relay");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let addr = line
                    .strip_prefix("pulsar-relay listening on http://")
                    .and_then(|rest| rest.split_whitespace().next()?.parse::<SocketAddr>().ok());
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => Confined {
                child,
                addr,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "the confined relay did not start ({status:?})\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// Publishes to a topic of each shard, receives over WebSocket and long-poll, and returns
    /// the WebSocket session, still open.
    fn exercise(relay: &mut Confined) -> Ws {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A call the filter denies usually kills a shard: say so, with the relay's words.
            if let Some(status) = relay.child.try_wait().unwrap() {
                panic!("the confined relay exited ({status})\n{}", relay.output());
            }
            // A relay whose shard died may still accept and then reset: that is not ready.
            let ready = std::net::TcpStream::connect(relay.addr).ok().and_then(|_| {
                let mut http = Http::connect(relay.addr);
                http.send_request("GET", "/ready", &[], b"");
                http.try_read_response(true).ok()
            });
            match ready {
                Some(resp) if resp.status == 200 => break,
                last => assert!(
                    Instant::now() < deadline,
                    "/ready is not 200 under confinement: {last:?}\n{}",
                    relay.output()
                ),
            }
            thread::sleep(Duration::from_millis(50));
        }
        let topics = topics_on_each_shard("deploy");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut ws = Ws::connect(relay.addr, &rw_token());
        ws.subscribe(&names, json!({}));
        let mut http = Http::connect(relay.addr);
        for topic in &topics {
            for i in 0..3 {
                http.publish(topic, &i.to_string());
            }
        }
        let mut received = BTreeMap::<String, Vec<Value>>::new();
        for _ in 0..6 {
            let frame = ws.recv_delivery();
            let topic = frame["topic"].as_str().unwrap().to_string();
            received
                .entry(topic)
                .or_default()
                .push(frame["payload"].clone());
        }
        for topic in &topics {
            assert_eq!(received[topic], [json!(0), json!(1), json!(2)], "{topic}");
            let poll = Http::connect(relay.addr).request(
                "GET",
                &format!("/api/v1/poll?topics={topic}&since=earliest&timeout=1"),
                &[auth_header(&rw_token()).as_pair()],
                b"",
            );
            poll.assert_status(200);
            assert_eq!(poll.json()["messages"].as_array().unwrap().len(), 3);
        }
        ws
    }

    /// SIGTERM: WebSockets are closed with 1001 and the process exits 0.
    fn stop_gracefully(relay: &mut Confined, mut ws: Ws) {
        relay.terminate();
        ws.expect_close(1001);
        let status = relay.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM\n{}",
            relay.output()
        );
    }

    /// The uid the image runs as (`USER` in the Dockerfile).
    fn image_uid() -> u32 {
        let user = instruction(&deploy_file("Dockerfile"), "USER");
        let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
        uid.parse().expect("numeric USER")
    }

    fn docker_filter() -> seccomp::Filter {
        let profile: Value = serde_json::from_str(&deploy_file("seccomp-io_uring.json"))
            .expect("seccomp-io_uring.json is JSON");
        seccomp::Filter::from_docker_profile(&profile)
    }

    /// Runs the image's HEALTHCHECK command under `filter` against `port`.
    fn healthcheck(filter: &seccomp::Filter, port: u16) -> ExitStatus {
        let argv = exec_form(&instruction(&deploy_file("Dockerfile"), "HEALTHCHECK"));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("PULSAR_SERVER_HTTP_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        confine(&mut cmd, filter, Some(image_uid()));
        cmd.status().expect("run the HEALTHCHECK command")
    }

    #[test]
    fn relay_serves_under_the_docker_seccomp_profile() {
        let filter = docker_filter();
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(filter.allows(call), "the profile does not allow {call}");
        }
        let valkey = Valkey::start();
        let port = valkey.port.to_string();
        let env = [
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_VALKEY_HOST", "127.0.0.1"),
            ("PULSAR_VALKEY_PORT", port.as_str()),
        ];
        let mut relay = spawn_confined(&filter, Some(image_uid()), &env);
        let ws = exercise(&mut relay);
        assert!(
            healthcheck(&filter, relay.addr.port()).success(),
            "HEALTHCHECK fails against a serving relay"
        );
        // `docker exec <container> pulsar-relay token ...` runs under the same profile.
        let mut token = relay_command();
        token
            .args(["token", "--sub", "ops", "--permissions", "read"])
            .env("PULSAR_JWT_SECRET_KEY", SECRET)
            .stderr(Stdio::piped());
        confine(&mut token, &filter, Some(image_uid()));
        let minted = token.output().expect("run pulsar-relay token");
        assert!(
            minted.status.success()
                && String::from_utf8_lossy(&minted.stdout).matches('.').count() == 2,
            "token under the profile: {minted:?}"
        );
        stop_gracefully(&mut relay, ws);
        assert!(
            !healthcheck(&filter, relay.addr.port()).success(),
            "HEALTHCHECK passes with no relay listening"
        );
    }

    /// What Docker's default profile does to the relay: without io_uring no shard can start,
    /// and the relay says why.
    #[test]
    fn relay_explains_itself_when_the_profile_denies_io_uring() {
        let filter = docker_filter().without("io_uring_setup");
        let mut relay = spawn_confined(&filter, Some(image_uid()), &[]);
        let status = relay.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{}", relay.output());
        assert!(
            relay
                .output()
                .contains("Containers using Docker's default seccomp profile block it"),
            "{}",
            relay.output()
        );
    }

    /// The unit's `SystemCallFilter=`, `MemoryDenyWriteExecute=` and `RestrictAddressFamilies=`
    /// as seccomp rules, for an unprivileged user like `DynamicUser=` gives. The other sandbox
    /// options (namespaces, mounts, resource limits) need systemd itself to apply them.
    #[test]
    fn relay_serves_under_the_systemd_unit_syscall_filter() {
        let unit = deploy_file("pulsar-relay.service");
        let Some(filter) = seccomp::Filter::from_systemd_unit(&unit) else {
            eprintln!("note: systemd-analyze is not installed; the unit's filter was not tried");
            return;
        };
        for call in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "sched_setaffinity",
        ] {
            assert!(
                filter.allows(call),
                "the unit's filter does not allow {call}"
            );
        }
        let valkey = Valkey::start();
        let port = valkey.port.to_string();
        // `localhost` takes the name-service path (and its AF_UNIX attempts) under the filter.
        let env = [
            ("PULSAR_STORAGE_BACKEND", "valkey"),
            ("PULSAR_VALKEY_HOST", "localhost"),
            ("PULSAR_VALKEY_PORT", port.as_str()),
        ];
        let mut relay = spawn_confined(&filter, Some(65534), &env);
        let ws = exercise(&mut relay);
        stop_gracefully(&mut relay, ws);
    }
}
