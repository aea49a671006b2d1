//! How a shard reaches Valkey: one [`Link`] to a standalone server, or a [`Cluster`]
//! router with a connection per primary (`valkey.mode`).
//!
//! Both take the same writes and reads; the store speaks to this and never asks which one
//! it has, except through [`Connection::scan`], where a cluster's keys are spread over its
//! primaries and each must be scanned.

use std::rc::Rc;

use redis::Value;

use super::cluster::Cluster;
use super::link::{Link, LinkError, ReplicaWait, Reply};
use super::{resp, StoreError};
use crate::config::{ValkeyConfig, ValkeyMode};
use crate::metrics::ShardMetrics;
use crate::tls::client::ClientTls;

#[derive(Clone)]
pub enum Connection {
    Standalone(Rc<Link>),
    Cluster(Rc<Cluster>),
}

impl Connection {
    /// `replicas`: the `WAIT` each pipeline of awaited writes ends with (`storage.ack:
    /// replicated`); in cluster mode each primary's pipeline sends its own.
    pub fn new(
        cfg: &ValkeyConfig,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
        replicas: Option<ReplicaWait>,
    ) -> Connection {
        match cfg.mode {
            ValkeyMode::Standalone => Connection::Standalone(Link::new(
                cfg.clone(),
                tls.cloned(),
                shard,
                Rc::clone(metrics),
                replicas,
            )),
            ValkeyMode::Cluster => Connection::Cluster(Cluster::new(
                cfg.clone(),
                tls.cloned(),
                shard,
                Rc::clone(metrics),
                replicas,
            )),
        }
    }

    /// The driver to spawn on the shard: the link's, or the cluster's slot-map refresher
    /// (which starts one driver per primary itself).
    pub async fn run(self) {
        match self {
            Connection::Standalone(link) => link.run().await,
            Connection::Cluster(cluster) => cluster.run().await,
        }
    }

    pub fn is_up(&self) -> bool {
        match self {
            Connection::Standalone(link) => link.is_up(),
            Connection::Cluster(cluster) => cluster.is_up(),
        }
    }

    pub fn pending_writes(&self) -> usize {
        match self {
            Connection::Standalone(link) => link.pending_writes(),
            Connection::Cluster(cluster) => cluster.pending_writes(),
        }
    }

    /// The bytes of those writes (each holds its own copy of its message).
    pub fn pending_bytes(&self) -> usize {
        match self {
            Connection::Standalone(link) => link.pending_bytes(),
            Connection::Cluster(cluster) => cluster.pending_bytes(),
        }
    }

    /// Each primary this shard writes to and whether its connection is up (a standalone
    /// server is the one primary).
    pub fn primary_states(&self, cfg: &ValkeyConfig) -> Vec<(String, bool)> {
        match self {
            Connection::Standalone(link) => {
                vec![(format!("{}:{}", cfg.host, cfg.port), link.is_up())]
            }
            Connection::Cluster(cluster) => cluster.primary_states(),
        }
    }

    pub fn write(&self, cmd: &redis::Cmd, want_reply: bool) -> Option<Reply> {
        match self {
            Connection::Standalone(link) => link.write(cmd, want_reply),
            Connection::Cluster(cluster) => cluster.write(cmd, want_reply),
        }
    }

    /// A write sent at most once: it fails rather than being sent again after a lost
    /// connection (see `link::Kind::Once`).
    pub fn write_once(&self, cmd: &redis::Cmd) -> Reply {
        match self {
            Connection::Standalone(link) => link.write_once(cmd),
            Connection::Cluster(cluster) => cluster.write_once(cmd),
        }
    }

    pub async fn read(&self, cmd: &redis::Cmd) -> Result<Value, LinkError> {
        match self {
            Connection::Standalone(link) => link.read(cmd).await,
            Connection::Cluster(cluster) => cluster.read(cmd).await,
        }
    }

    pub async fn read_all(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, LinkError> {
        match self {
            Connection::Standalone(link) => link.read_all(cmds).await,
            Connection::Cluster(cluster) => cluster.read_all(cmds).await,
        }
    }

    /// One SCAN step over every key matching `pattern`: the next cursor (`"0"` when done)
    /// and the keys found. On a cluster the cursor also names the primary being scanned
    /// (`<primary>-<cursor>`), and primaries are scanned one after another in slot order.
    pub async fn scan(
        &self,
        cursor: &str,
        pattern: &str,
        count: usize,
    ) -> Result<(String, Vec<Vec<u8>>), StoreError> {
        let scan = |cursor: &str| {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .clone()
        };
        match self {
            Connection::Standalone(link) => scan_reply(link.read(&scan(cursor)).await?),
            Connection::Cluster(cluster) => {
                let (index, inner) = match cursor.split_once('-') {
                    Some((index, inner)) => (index.parse::<usize>().unwrap_or(0), inner),
                    None => (0, cursor),
                };
                let Some(reply) = cluster.read_on(index, &scan(inner)).await? else {
                    return Ok(("0".into(), Vec::new()));
                };
                let (next, keys) = scan_reply(reply)?;
                let next = if next != "0" {
                    format!("{index}-{next}")
                } else {
                    format!("{}-0", index + 1)
                };
                Ok((next, keys))
            }
        }
    }
}

fn scan_reply(reply: Value) -> Result<(String, Vec<Vec<u8>>), StoreError> {
    let Value::Array(mut parts) = reply else {
        return Err(StoreError::Unavailable(
            resp::server_error(&reply).unwrap_or_else(|| "unexpected SCAN reply".into()),
        ));
    };
    let keys = match parts.pop() {
        Some(Value::Array(keys)) if parts.len() == 1 => keys,
        _ => return Err(StoreError::Unavailable("unexpected SCAN reply".into())),
    };
    let next = String::from_utf8_lossy(resp::bytes(&parts[0]).unwrap_or(b"0")).into_owned();
    let keys = keys
        .iter()
        .filter_map(resp::bytes)
        .map(<[u8]>::to_vec)
        .collect();
    Ok((next, keys))
}
