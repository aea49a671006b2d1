//! One primary of a Valkey Cluster as one shard sees it: its address, the queue of commands
//! routed to it, and one pipelined round trip at a time over its connection.
//!
//! The connection is opened by a [`Link`]'s handshake (connect, AUTH), so standalone and
//! cluster connections are set up in one place; the link's own driver is never run for a
//! node. Which command goes to which node, and what happens to a reply
//! that redirects, is the router's: this module only moves bytes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use redis::Value;

use crate::config::ValkeyConfig;
use crate::metrics::ShardMetrics;
use crate::rt::signal::Signal;
use crate::rt::sleep;
use crate::store::link::{Link, LinkError, ReplicaWait, Replies, Reply};
use crate::store::retry::Kind;
use crate::tls::client::ClientTls;
use crate::tls::Stream;

/// One command on its way to a node.
pub(super) struct Request {
    pub packed: Vec<u8>,
    /// The hash slot of its key; `None` for commands any node answers.
    pub slot: Option<u16>,
    pub reply: Option<Reply>,
    /// Write or read, and whether it went out before on a connection that failed (see
    /// [`Kind::after_failure`]: a write's node, or the replica promoted in its place, may
    /// have applied it).
    pub kind: Kind,
    /// Sent after `ASKING` (the node an `ASK` named serves this one command for the slot).
    pub asking: bool,
}

impl Request {
    pub fn new(cmd: &redis::Cmd, slot: Option<u16>, reply: Option<Reply>, write: bool) -> Self {
        Request {
            packed: cmd.get_packed_command(),
            slot,
            reply,
            kind: if write { Kind::WRITE } else { Kind::READ },
            asking: false,
        }
    }

    pub fn is_write(&self) -> bool {
        self.kind.is_write()
    }
}

pub(super) struct Node {
    pub addr: String,
    dialer: Rc<Link>,
    pub queue: RefCell<VecDeque<Request>>,
    pub wake: Signal,
    pub up: Cell<bool>,
    /// A pipeline is out: its requests are in neither the queue nor answered yet.
    pub in_flight: Cell<bool>,
    /// Serves no slot in the slot map: its connection closes once its queue is empty.
    pub retired: Cell<bool>,
}

impl Node {
    pub fn new(
        addr: &str,
        cfg: &ValkeyConfig,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
    ) -> Node {
        let (host, port) = split_addr(addr);
        let cfg = ValkeyConfig {
            host,
            port,
            ..cfg.clone()
        };
        Node {
            addr: addr.to_string(),
            dialer: Link::new(cfg, tls.cloned(), shard, Rc::clone(metrics), None),
            queue: RefCell::new(VecDeque::new()),
            wake: Signal::default(),
            up: Cell::new(false),
            in_flight: Cell::new(false),
            retired: Cell::new(false),
        }
    }

    pub fn push(&self, req: Request) {
        self.queue.borrow_mut().push_back(req);
        self.wake.raise();
    }

    /// Opens and authenticates a connection to the node (its sentinels are the
    /// router's to check).
    pub async fn open(&self) -> Result<(Stream, Replies), LinkError> {
        self.dialer.open().await
    }

    /// The link whose handshake opens this node's connections.
    pub fn dialer(&self) -> &Link {
        &self.dialer
    }

    /// Sends `batch` as one pipeline and reads one reply per request (an `ASKING` before a
    /// request adds its own reply, which is read and dropped here), within `limit`. With
    /// `wait`, the pipeline ends with `WAIT`, whose reply (the replicas counted) comes
    /// last; the limit grows by its timeout.
    pub async fn round_trip(
        stream: &mut Stream,
        replies: &mut Replies,
        packed: &mut Vec<u8>,
        batch: &[Request],
        limit: Duration,
        wait: Option<ReplicaWait>,
    ) -> Result<(Vec<Value>, Option<Value>), LinkError> {
        packed.clear();
        for req in batch {
            if req.asking {
                packed.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
            }
            packed.extend_from_slice(&req.packed);
        }
        let mut limit = limit;
        if let Some(wait) = wait {
            limit += wait.append_to(packed);
        }
        let exchange = async {
            stream
                .send(packed)
                .await
                .map_err(|e| LinkError::Io(e.to_string()))?;
            let mut values = Vec::with_capacity(batch.len());
            for req in batch {
                if req.asking {
                    replies.next(stream).await?;
                }
                values.push(replies.next(stream).await?);
            }
            let counted = match wait {
                Some(_) => Some(replies.next(stream).await?),
                None => None,
            };
            Ok((values, counted))
        };
        future::or(exchange, async {
            sleep(limit).await;
            Err(LinkError::Timeout)
        })
        .await
    }
}

/// `host:port` (the port after the last colon, so an IPv6 host keeps its colons); a
/// missing or bad port reads as 6379.
pub(super) fn split_addr(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(6379),
        ),
        None => (addr.to_string(), 6379),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_at_the_last_colon() {
        assert_eq!(split_addr("127.0.0.1:7000"), ("127.0.0.1".into(), 7000));
        assert_eq!(split_addr("[::1]:7001"), ("::1".into(), 7001));
        assert_eq!(split_addr("valkey-0"), ("valkey-0".into(), 6379));
    }
}
