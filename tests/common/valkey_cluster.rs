//! A real Valkey Cluster per test: 3 primaries and 3 replicas on loopback, each its own
//! `valkey-server` process with `cluster-enabled yes` and its own directory, joined by the
//! harness itself (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`). The cluster bus listens on
//! port + 10000, so the ports are chosen below 55000. Every process is killed on drop.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A node's failure is noticed after this long (milliseconds); a replica takes over a
/// failed primary a little after it.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

pub struct ClusterNode {
    pub port: u16,
    pub id: String,
    child: Option<Child>,
}

pub struct ValkeyCluster {
    /// Primaries first (slots 0-5460, 5461-10922, 10923-16383), then their replicas in the
    /// same order.
    pub nodes: Vec<ClusterNode>,
    root: std::path::PathBuf,
}

/// Next port block to try: each cluster takes 6 consecutive ports (and 6 bus ports 10000
/// above them); the start is spread by process ID so parallel test binaries rarely collide.
static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

fn port_block() -> u16 {
    let _ = NEXT_BASE.compare_exchange(
        0,
        20000 + (std::process::id() % 2000) as u16 * 10,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let base = NEXT_BASE.fetch_add(6, Ordering::Relaxed);
        let base = 20000 + (base - 20000) % 24000;
        let free = (0..6).all(|i| {
            [base + i, base + i + 10000]
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
}

impl ValkeyCluster {
    /// Starts and joins the cluster; returns once every node reports `cluster_state:ok`
    /// and every replica is in sync with its primary.
    pub fn start() -> ValkeyCluster {
        for attempt in 0..3 {
            match ValkeyCluster::try_start() {
                Ok(cluster) => return cluster,
                Err(e) if attempt < 2 => eprintln!("Valkey Cluster did not start ({e}); retrying"),
                Err(e) => panic!("Valkey Cluster did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn try_start() -> Result<ValkeyCluster, String> {
        let base = port_block();
        let root =
            std::env::temp_dir().join(format!("pulsar-test-cluster-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut cluster = ValkeyCluster {
            nodes: Vec::new(),
            root,
        };
        for i in 0..6 {
            let port = base + i;
            let mut node = ClusterNode {
                port,
                id: String::new(),
                child: None,
            };
            cluster.spawn(&mut node)?;
            cluster.nodes.push(node);
        }
        let started = Instant::now();
        for node in &mut cluster.nodes {
            wait_until(Duration::from_secs(10), || {
                RespClient::connect(node.port, IO_TIMEOUT)
                    .and_then(|mut c| c.command(&["PING"]))
                    .is_ok_and(|r| r == Resp::Simple("PONG".into()))
            })
            .map_err(|_| format!("node {} did not answer PING", node.port))?;
            node.id = cluster_command(node.port, &["CLUSTER", "MYID"])
                .text()
                .ok_or("no CLUSTER MYID")?;
        }
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (from, to)) in cluster.nodes.iter().zip(ranges) {
            let (from, to) = (from.to_string(), to.to_string());
            expect_ok(cluster_command(
                node.port,
                &["CLUSTER", "ADDSLOTSRANGE", &from, &to],
            ))?;
        }
        let first = cluster.nodes[0].port;
        for node in &cluster.nodes[1..] {
            expect_ok(cluster_command(
                first,
                &["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()],
            ))?;
        }
        // A replica can only follow a primary it knows.
        for i in 3..6 {
            let (replica, primary) = (cluster.nodes[i].port, cluster.nodes[i - 3].id.clone());
            wait_until(Duration::from_secs(10), || {
                matches!(
                    cluster_command(replica, &["CLUSTER", "REPLICATE", &primary]),
                    Resp::Simple(_)
                )
            })
            .map_err(|_| format!("node {replica} could not replicate {primary}"))?;
        }
        for node in &cluster.nodes {
            wait_until(Duration::from_secs(10), || {
                info_field(node.port, "CLUSTER", &["INFO"], "cluster_state").as_deref()
                    == Some("ok")
                    && known_nodes(node.port) == 6
            })
            .map_err(|_| format!("node {} did not reach cluster_state:ok", node.port))?;
        }
        for node in &cluster.nodes[3..] {
            wait_until(Duration::from_secs(10), || {
                info_field(node.port, "INFO", &["replication"], "master_link_status").as_deref()
                    == Some("up")
            })
            .map_err(|_| format!("replica {} did not sync", node.port))?;
        }
        eprintln!(
            "Valkey Cluster on ports {base}-{} ready in {:?}",
            base + 5,
            started.elapsed()
        );
        Ok(cluster)
    }

    fn spawn(&self, node: &mut ClusterNode) -> Result<(), String> {
        let dir = self.root.join(node.port.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("valkey.log"))
            .map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(valkey_server_binary())
            .args(["--port", &node.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
            ])
            // A replica may always take over, however long its link was down.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--appendonly", "no", "--save", ""])
            // Replicas sync at once (the default waits 5 s for more replicas to join).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot spawn {:?}: {e}", valkey_server_binary()))?;
        node.child = Some(child);
        Ok(())
    }

    /// `PULSAR_*` variables for a relay on this cluster: one seed as host/port, the others
    /// in `valkey.nodes`.
    pub fn relay_env(&self) -> Vec<(String, String)> {
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        vec![
            ("PULSAR_STORAGE_BACKEND".into(), "valkey".into()),
            ("PULSAR_VALKEY_MODE".into(), "cluster".into()),
            ("PULSAR_VALKEY_HOST".into(), "127.0.0.1".into()),
            ("PULSAR_VALKEY_PORT".into(), self.nodes[0].port.to_string()),
            ("PULSAR_VALKEY_NODES".into(), others.join(",")),
        ]
    }

    /// A node that is running (to ask about the cluster).
    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node")
            .port
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        cluster_command(self.live_port(), &["CLUSTER", "KEYSLOT", key]).int() as u16
    }

    /// The index (in `nodes`) of the primary that serves `slot` now.
    pub fn owner_of(&self, slot: u16) -> usize {
        let port = self.live_port();
        let slots = cluster_command(port, &["CLUSTER", "SLOTS"]);
        for range in slots.items() {
            let parts = range.items();
            if (parts[0].int()..=parts[1].int()).contains(&i64::from(slot)) {
                let owner = parts[2].items()[1].int() as u16;
                return self.index_of(owner);
            }
        }
        panic!("no primary serves slot {slot}");
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is not in the cluster"))
    }

    /// Runs one command for `key`'s slot on the primary that serves it (following `MOVED`).
    #[track_caller]
    pub fn command(&self, key: &str, args: &[&str]) -> Resp {
        let mut port = self.nodes[self.owner_of(self.slot_of(key))].port;
        for _ in 0..5 {
            match cluster_command(port, args) {
                Resp::Error(e) if e.starts_with("MOVED") => {
                    let addr = e.split_whitespace().nth(2).expect("MOVED address");
                    port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
                }
                other => return other,
            }
        }
        panic!("{args:?} kept being redirected");
    }

    /// The IDs of `XRANGE key - +` on the primary serving `key`.
    pub fn stream_ids(&self, key: &str) -> Vec<String> {
        self.command(key, &["XRANGE", key, "-", "+"])
            .items()
            .iter()
            .map(|e| e.items()[0].text().expect("entry ID"))
            .collect()
    }

    /// Moves `slot` from its primary to the primary `to` (an index in `nodes`) the way
    /// `valkey-cli --cluster reshard` does: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of
    /// each key (one at a time, `pause` apart, so clients meet `ASK` in between), then
    /// `SETSLOT NODE` everywhere.
    pub fn migrate_slot(&self, slot: u16, to: usize, pause: Duration) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let slot_text = slot.to_string();
        expect_ok(cluster_command(
            dst.port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &src.id],
        ))
        .unwrap();
        expect_ok(cluster_command(
            src.port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &dst.id],
        ))
        .unwrap();
        loop {
            let keys = cluster_command(src.port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "10"]);
            let keys: Vec<String> = keys.items().iter().filter_map(Resp::text).collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let dst_port = dst.port.to_string();
                let reply = cluster_command(
                    src.port,
                    &["MIGRATE", "127.0.0.1", &dst_port, &key, "0", "5000"],
                );
                assert!(
                    matches!(&reply, Resp::Simple(s) if s == "OK" || s == "NOKEY"),
                    "MIGRATE {key}: {reply:?}"
                );
                thread::sleep(pause);
            }
        }
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let reply = cluster_command(
                node.port,
                &["CLUSTER", "SETSLOT", &slot_text, "NODE", &dst.id],
            );
            // A replica refuses SETSLOT; it learns the change from its primary.
            assert!(
                matches!(&reply, Resp::Simple(_)) || node.port != src.port && node.port != dst.port,
                "SETSLOT NODE on {}: {reply:?}",
                node.port
            );
        }
    }

    /// SIGKILL of node `index` (no shutdown at all).
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the replica that took over from the failed primary `index`, once the
    /// cluster says so (`None` if none did within `timeout`).
    pub fn wait_promoted(&self, index: usize, timeout: Duration) -> Option<usize> {
        let replica = index + 3;
        wait_until(timeout, || {
            info_field(self.nodes[replica].port, "INFO", &["replication"], "role").as_deref()
                == Some("master")
        })
        .ok()
        .map(|_| replica)
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.root.join(n.port.to_string()).join("valkey.log"))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node {} ---\n{}\n",
                    n.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

impl Drop for ValkeyCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Relay {
    /// Starts a relay in cluster mode on `cluster`, plus `env` (later entries win).
    pub fn start_on_cluster(cluster: &ValkeyCluster, env: &[(&str, &str)]) -> Relay {
        let base = cluster.relay_env();
        let mut all: Vec<(&str, &str)> =
            base.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        Relay::start_with(&all)
    }
}

/// One command on a fresh connection to `port`; an unreachable node reads as an error.
pub fn cluster_command(port: u16, args: &[&str]) -> Resp {
    RespClient::connect(port, IO_TIMEOUT)
        .and_then(|mut c| c.command(args))
        .unwrap_or_else(|e| Resp::Error(format!("IO {e}")))
}

fn expect_ok(reply: Resp) -> Result<(), String> {
    match reply {
        Resp::Simple(s) if s == "OK" => Ok(()),
        other => Err(format!("expected OK, got {other:?}")),
    }
}

/// A `field:value` line of an `INFO`-style text reply.
fn info_field(port: u16, command: &str, args: &[&str], field: &str) -> Option<String> {
    let mut all = vec![command];
    all.extend_from_slice(args);
    let text = cluster_command(port, &all).text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Nodes that `port` knows and has finished its handshake with.
fn known_nodes(port: u16) -> usize {
    cluster_command(port, &["CLUSTER", "NODES"])
        .text()
        .map_or(0, |t| {
            t.lines().filter(|l| !l.contains("handshake")).count()
        })
}

fn wait_until(timeout: Duration, check: impl FnMut() -> bool) -> Result<(), ()> {
    if eventually(timeout, check) {
        Ok(())
    } else {
        Err(())
    }
}
