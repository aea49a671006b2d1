//! README "Running several nodes" with its load balancer: nginx running
//! tools/deploy/nginx-cluster.conf (only its ports rewritten to the test's) in front of three
//! cluster-mode nodes on one Valkey. A WebSocket subscription, an SSE stream and a parked
//! long poll made through nginx receive a message published through nginx, whichever nodes
//! they landed on; then the node holding the WebSocket client is killed with SIGKILL, the
//! client reconnects through nginx with `since` and gets everything published meanwhile,
//! once and in order.
//!
//! nginx comes from `PULSAR_TEST_NGINX`, else `nginx` on PATH or /usr/sbin/nginx;
//! tools/test.sh installs it (Debian package nginx) when missing. No nginx fails the test.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The deployment file README quotes.
fn nginx_cluster_conf() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/deploy/nginx-cluster.conf"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PULSAR_TEST_NGINX").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .expect(
            "nginx is missing: run ./tools/test.sh (it installs the Debian package nginx) or \
             set PULSAR_TEST_NGINX",
        )
}

/// nginx in the foreground, as the invoking user (`master_process off`: one process, no
/// switch to another user), with its logs, pid and temporary files in a directory of its
/// own; killed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    /// `site`: the http-level configuration to include.
    fn start(site: &str, port: u16) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("pulsar-test-nginx-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("create the nginx directory");
        let d = dir.display();
        std::fs::write(dir.join("site.conf"), site).unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 access_log off;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n\
                 }}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn nginx");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            let log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nginx exited with {status}:\n{}", log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nginx did not listen on {addr}:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, dir, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The deployment file with its three upstream servers pointed at `nodes` and its listener
/// at `port`; each replaced text must occur exactly once, so the file the test runs is the
/// file README shows.
fn site_for(nodes: &[Relay], port: u16) -> String {
    let mut site = nginx_cluster_conf();
    let mut rewrite = |from: &str, to: &str| {
        assert_eq!(site.matches(from).count(), 1, "{from:?} in:\n{site}");
        site = site.replace(from, to);
    };
    for (node, readme_port) in nodes.iter().zip([8081, 8082, 8083]) {
        rewrite(
            &format!("127.0.0.1:{readme_port} "),
            &format!("{} ", node.addr),
        );
    }
    rewrite("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    site
}

fn ws_connections(node: &Relay) -> f64 {
    node.metrics().sum("pulsar_websocket_connections")
}

#[test]
fn nginx_in_front_of_three_nodes_serves_every_transport_and_survives_a_node_kill() {
    let valkey = Valkey::start();
    let env = [
        ("PULSAR_CLUSTER_ENABLED", "true"),
        ("PULSAR_SERVER_SHARDS", "1"),
    ];
    let mut nodes: Vec<Relay> = (0..3)
        .map(|_| Relay::start_on_valkey(&valkey, &env))
        .collect();
    for node in &nodes {
        node.wait_ready(READY_TIMEOUT);
    }
    let port = free_port();
    let nginx = Nginx::start(&site_for(&nodes, port), port);
    let lb = nginx.addr;
    let topic = "lb-news";

    // A subscriber of each kind, each through nginx.
    let mut ws = Ws::connect(lb, &rw_token());
    ws.subscribe(&[topic], json!({}));
    let mut sse = Sse::connect(lb, &read_token(), &format!("topics={topic}"));
    let poll = std::thread::spawn(move || {
        let mut http = Http::connect(lb);
        http.set_read_timeout(Duration::from_secs(20));
        let resp = http.request(
            "GET",
            &format!("/api/v1/poll?topics={topic}&since=earliest&timeout=15"),
            &[auth_header(&rw_token()).as_pair()],
            b"",
        );
        resp.assert_status(200);
        resp.json()
    });
    assert!(
        eventually(READY_TIMEOUT, || nodes
            .iter()
            .map(|n| n.metrics().sum("pulsar_polls_waiting"))
            .sum::<f64>()
            == 1.0),
        "the long poll did not park on any node"
    );

    let mut producer = Http::connect(lb);
    let first = id_of(&producer.publish(topic, r#"{"n":0}"#)).to_string();
    assert_eq!(id_of(&ws.recv_delivery()), first);
    assert_eq!(id_of(&sse.recv_delivery()), first);
    let polled: Value = poll.join().expect("the long poll");
    assert_eq!(
        polled["messages"].as_array().map(Vec::len),
        Some(1),
        "{polled}"
    );
    assert_eq!(id_of(&polled["messages"][0]), first);

    // Kill the node the WebSocket client is on; publish through nginx meanwhile.
    let on: Vec<usize> = (0..nodes.len())
        .filter(|&i| ws_connections(&nodes[i]) == 1.0)
        .collect();
    assert_eq!(on.len(), 1, "the WebSocket session is on exactly one node");
    nodes[on[0]].kill9();
    drop(ws);
    // A publish nginx was passing to the node as it died is answered 502: the producer
    // retries with its Idempotency-Key (README "Running several nodes"), which also keeps
    // a retry of one that did get through from publishing it twice.
    let meanwhile: Vec<String> = (1..=20)
        .map(|n| {
            let body = json!({"topic": topic, "payload": {"n": n}}).to_string();
            let auth = auth_header(&rw_token());
            let key = format!("lb-{n}");
            let headers = [auth.as_pair(), ("Idempotency-Key", key.as_str())];
            let answered = (0..5)
                .map(|_| producer.request("POST", "/api/v1/messages", &headers, body.as_bytes()))
                .find(|resp| resp.status != 502)
                .expect("a live node answers within five tries");
            answered.assert_status(201);
            id_of(&answered.json()).to_string()
        })
        .collect();

    // The client comes back through nginx (to a live node) from the last ID it saw.
    let mut ws = Ws::connect(lb, &rw_token());
    ws.subscribe(&[topic], json!({ "since": first }));
    let replayed: Vec<String> = (0..meanwhile.len())
        .map(|_| id_of(&ws.recv_delivery()).to_string())
        .collect();
    assert_eq!(
        replayed, meanwhile,
        "everything published meanwhile, in order"
    );
    // Once: the next delivery is the next publish, nothing repeated at the replay seam.
    let next = id_of(&producer.publish(topic, r#"{"n":21}"#)).to_string();
    assert_eq!(id_of(&ws.recv_delivery()), next);
    assert_eq!(ws.collect_until_pong(), Vec::<Value>::new());
}
