//! One shard's pub/sub connection (cluster mode): the channels of the topics the shard
//! listens to, and what arrives on them.
//!
//! A connection in subscribe mode carries nothing else, so it is apart from the shard's
//! command link. The shard asks to listen to a channel and is told once Valkey confirmed the
//! subscription (from then on every announcement on it arrives here, in the order Valkey
//! published them); it stops listening when it no longer needs the topic. Announcements and
//! the connection's comings and goings are queued as [`Heard`] for the shard to take; the
//! listener does not know what they mean.
//!
//! Pub/sub is at-most-once: what is published while the connection is down is lost. So when
//! the connection comes back and every channel is subscribed again, the listener says
//! [`Heard::Resumed`]: whoever listens must read what it may have missed from the streams.
//! An idle connection is pinged every second, so a stalled Valkey shows as a lost connection
//! within `valkey.command_timeout` plus a second.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use redis::Value;

use super::link::{Link, LinkError, Replies, BACKOFF_MAX, BACKOFF_MIN, IDLE_PING};
use super::resp;
use crate::config::{ValkeyConfig, ValkeyMode};
use crate::metrics::ShardMetrics;
use crate::rt::signal::{Signal, Slot};
use crate::rt::sleep;
use crate::tls::client::ClientTls;
use crate::tls::Stream;

/// What the listener heard, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A message published on a channel this shard listens to.
    Message { channel: Vec<u8>, data: Vec<u8> },
    /// The connection was lost and is back, with every channel subscribed again: what was
    /// published in between was not heard.
    Resumed,
}

/// Most [`Heard`] items kept for the shard; beyond, the oldest messages are dropped and a
/// [`Heard::Resumed`] tells the shard to read them back (a shard this far behind is better
/// served by one stream read per topic than by a queue without bound).
const MAX_HEARD: usize = 100_000;

type Confirmation = Rc<Slot<Result<(), LinkError>>>;

pub struct Listener {
    /// Dial (with AUTH, TLS) the node the subscriptions go to: the server, or a Cluster's
    /// seeds in turn.
    dialers: Vec<Rc<Link>>,
    shard: usize,
    /// The channels the shard wants, whether the connection is up or not.
    wanted: RefCell<HashSet<Vec<u8>>>,
    /// Subscriptions asked for and not yet confirmed, each with who waits for it.
    confirming: RefCell<HashMap<Vec<u8>, Vec<Confirmation>>>,
    /// SUBSCRIBE and UNSUBSCRIBE commands not sent yet.
    outgoing: RefCell<Vec<u8>>,
    wake: Signal,
    heard: RefCell<VecDeque<Heard>>,
    heard_signal: Signal,
    up: Cell<bool>,
    command_timeout: Duration,
}

impl Listener {
    /// A listener for `cfg`'s server; with a Valkey Cluster, for its seed nodes in turn (a
    /// message published on any node reaches subscribers on every node).
    pub fn new(
        cfg: &ValkeyConfig,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
    ) -> Rc<Listener> {
        let mut addresses = vec![(cfg.host.clone(), cfg.port)];
        if cfg.mode == ValkeyMode::Cluster {
            for node in &cfg.nodes {
                if let Some((host, port)) = node.rsplit_once(':') {
                    if let Ok(port) = port.parse() {
                        addresses.insert(addresses.len() - 1, (host.to_string(), port));
                    }
                }
            }
        }
        let dialers = addresses
            .into_iter()
            .map(|(host, port)| {
                let mut node = cfg.clone();
                node.host = host;
                node.port = port;
                Link::new(node, tls.cloned(), shard, Rc::clone(metrics), None)
            })
            .collect();
        Rc::new(Listener {
            dialers,
            shard,
            wanted: RefCell::new(HashSet::new()),
            confirming: RefCell::new(HashMap::new()),
            outgoing: RefCell::new(Vec::new()),
            wake: Signal::default(),
            heard: RefCell::new(VecDeque::new()),
            heard_signal: Signal::default(),
            up: Cell::new(false),
            command_timeout: cfg.command_timeout,
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Channels listened to (or being subscribed).
    pub fn channels(&self) -> usize {
        self.wanted.borrow().len()
    }

    /// Listens to `channel`; resolves once Valkey confirmed the subscription, or fails at
    /// once while the connection is down (the caller cannot be promised what is published
    /// from now on).
    pub async fn listen(&self, channel: Vec<u8>) -> Result<(), LinkError> {
        if !self.up.get() {
            return Err(LinkError::Down);
        }
        let confirmed: Confirmation = Rc::new(Slot::default());
        let first = {
            let mut confirming = self.confirming.borrow_mut();
            let waiters = confirming.entry(channel.clone()).or_default();
            waiters.push(Rc::clone(&confirmed));
            waiters.len() == 1
        };
        if first {
            self.wanted.borrow_mut().insert(channel.clone());
            self.queue("SUBSCRIBE", &channel);
        }
        confirmed.take().await
    }

    /// Stops listening to `channel`.
    pub fn unlisten(&self, channel: &[u8]) {
        if self.wanted.borrow_mut().remove(channel) {
            self.queue("UNSUBSCRIBE", channel);
        }
    }

    /// The next thing heard, waiting for it.
    pub async fn next(&self) -> Heard {
        loop {
            if let Some(heard) = self.heard.borrow_mut().pop_front() {
                return heard;
            }
            self.heard_signal.wait().await;
        }
    }

    fn queue(&self, command: &str, channel: &[u8]) {
        if self.up.get() {
            let packed = redis::cmd(command).arg(channel).get_packed_command();
            self.outgoing.borrow_mut().extend_from_slice(&packed);
            self.wake.raise();
        }
    }

    fn hear(&self, heard: Heard) {
        let mut queue = self.heard.borrow_mut();
        if queue.len() >= MAX_HEARD {
            queue.retain(|h| !matches!(h, Heard::Message { .. }));
            queue.push_back(Heard::Resumed);
        }
        queue.push_back(heard);
        drop(queue);
        self.heard_signal.raise();
    }

    /// The driver: keeps the connection up, subscribed to every wanted channel.
    pub async fn run(self: Rc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut dialer = 0;
        let mut connected_before = false;
        loop {
            let link = &self.dialers[dialer % self.dialers.len()];
            match link.open().await {
                Ok((mut stream, replies)) => {
                    backoff = BACKOFF_MIN;
                    let err = self.serve(&mut stream, replies, connected_before).await;
                    connected_before = true;
                    self.went_down(&err);
                    crate::log_line!(
                        "shard {}: Valkey pub/sub connection lost: {err}",
                        self.shard
                    );
                }
                Err(_) => dialer += 1,
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The connection is gone: nobody waits for a confirmation that cannot come, and a
    /// channel whose listening failed is not subscribed again.
    fn went_down(&self, err: &LinkError) {
        self.up.set(false);
        self.outgoing.borrow_mut().clear();
        let mut wanted = self.wanted.borrow_mut();
        for (channel, waiters) in self.confirming.borrow_mut().drain() {
            wanted.remove(&channel);
            for waiter in waiters {
                waiter.fill(Err(err.clone()));
            }
        }
    }

    async fn serve(&self, stream: &mut Stream, mut replies: Replies, resumed: bool) -> LinkError {
        let wanted: Vec<Vec<u8>> = self.wanted.borrow().iter().cloned().collect();
        // Subscribed again before anything is heard, so that the resumption covers every
        // channel: messages published before a channel's confirmation are read back.
        let mut resubscribing: HashSet<Vec<u8>> = HashSet::new();
        if !wanted.is_empty() {
            let mut cmd = redis::cmd("SUBSCRIBE");
            for channel in &wanted {
                cmd.arg(channel);
                resubscribing.insert(channel.clone());
            }
            if let Err(e) = stream.send(&cmd.get_packed_command()).await {
                return LinkError::Io(e.to_string());
            }
        }
        let mut resume_due = resumed;
        if resubscribing.is_empty() && resume_due {
            self.hear(Heard::Resumed);
            resume_due = false;
        }
        self.up.set(true);
        let mut ping_sent: Option<std::time::Instant> = None;
        loop {
            let outgoing = std::mem::take(&mut *self.outgoing.borrow_mut());
            if !outgoing.is_empty() {
                if let Err(e) = stream.send(&outgoing).await {
                    return LinkError::Io(e.to_string());
                }
            }
            let event = future::or(
                async { Some(replies.next(stream).await) },
                future::or(
                    async {
                        self.wake.wait().await;
                        None
                    },
                    async {
                        sleep(IDLE_PING).await;
                        Some(Err(LinkError::Timeout))
                    },
                ),
            )
            .await;
            let value = match event {
                None => continue,
                Some(Ok(value)) => value,
                Some(Err(LinkError::Timeout)) => {
                    match ping_sent {
                        Some(at) if at.elapsed() > self.command_timeout => {
                            return LinkError::Timeout
                        }
                        Some(_) => {}
                        None => {
                            ping_sent = Some(std::time::Instant::now());
                            let ping = redis::cmd("PING").get_packed_command();
                            if let Err(e) = stream.send(&ping).await {
                                return LinkError::Io(e.to_string());
                            }
                        }
                    }
                    continue;
                }
                Some(Err(err)) => return err,
            };
            ping_sent = None;
            let value = match message(value) {
                Ok(heard) => {
                    self.hear(heard);
                    continue;
                }
                Err(value) => value,
            };
            match push(&value) {
                Some((b"subscribe", channel, _)) => {
                    if resubscribing.remove(channel) && resubscribing.is_empty() && resume_due {
                        self.hear(Heard::Resumed);
                        resume_due = false;
                    }
                    if let Some(waiters) = self.confirming.borrow_mut().remove(channel) {
                        let ok = self.wanted.borrow().contains(channel);
                        for waiter in waiters {
                            waiter.fill(if ok { Ok(()) } else { Err(LinkError::Down) });
                        }
                    }
                }
                Some((b"unsubscribe" | b"pong", _, _)) => {}
                _ => {
                    if let Some(e) = resp::server_error(&value) {
                        crate::log_line!(
                            "shard {}: Valkey refused a subscription: {e}",
                            self.shard
                        );
                        return LinkError::Protocol("subscription refused");
                    }
                }
            }
        }
    }
}

/// A `message` push as heard, its channel and data moved out of the reply (per message:
/// no copy); any other value back.
fn message(value: Value) -> Result<Heard, Value> {
    let Value::Array(mut parts) = value else {
        return Err(value);
    };
    match parts.as_mut_slice() {
        [kind, Value::BulkString(channel), Value::BulkString(data)]
            if resp::bytes(kind) == Some(&b"message"[..]) =>
        {
            Ok(Heard::Message {
                channel: std::mem::take(channel),
                data: std::mem::take(data),
            })
        }
        _ => Err(Value::Array(parts)),
    }
}

/// Any other push on a subscribed connection: its kind, channel and data.
type Push<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

fn push(value: &Value) -> Option<Push<'_>> {
    let Value::Array(parts) = value else {
        return None;
    };
    let kind = resp::bytes(parts.first()?)?;
    let channel = parts.get(1).and_then(resp::bytes).unwrap_or_default();
    let data = parts.get(2).and_then(resp::bytes);
    Some((kind, channel, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &[u8]) -> Value {
        Value::BulkString(text.to_vec())
    }

    #[test]
    fn message_pushes_are_heard_and_other_pushes_read_as_such() {
        let heard = message(Value::Array(vec![
            bulk(b"message"),
            bulk(b"ch"),
            bulk(b"data"),
        ]));
        assert_eq!(
            heard,
            Ok(Heard::Message {
                channel: b"ch".to_vec(),
                data: b"data".to_vec()
            })
        );
        let confirmation = Value::Array(vec![bulk(b"subscribe"), bulk(b"ch"), Value::Int(1)]);
        let back = message(confirmation.clone()).unwrap_err();
        assert_eq!(back, confirmation);
        assert_eq!(push(&back), Some((&b"subscribe"[..], &b"ch"[..], None)));
    }
}
