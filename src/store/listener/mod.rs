//! One shard's pub/sub (cluster mode): the channels of the topics the shard listens to,
//! and what arrives on them.
//!
//! Two kinds, by `valkey.mode`: on a standalone Valkey one connection with classic
//! `SUBSCRIBE` ([`classic`]); on a Valkey Cluster sharded pub/sub, `SSUBSCRIBE` at the
//! primary of each channel's slot, one connection per primary that serves a channel the
//! shard listens to ([`sharded`]). Either way the shard asks to listen to a channel and is
//! told once Valkey confirmed the subscription (from then on every announcement on it
//! arrives, in the order Valkey published them), and takes what was heard as [`Heard`]
//! items; the listener does not know what the announcements mean.
//!
//! Pub/sub is at-most-once: what is published while a subscription is missing is lost. So
//! when subscriptions come back the listener says which ([`Heard::Resumed`] for all,
//! [`Heard::Missed`] for some): whoever listens must read what they may have missed from
//! the streams.

mod classic;
mod sharded;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use redis::Value;

use super::connection::Connection;
use super::link::{LinkError, Replies, IDLE_PING};
use super::resp;
use crate::config::ValkeyConfig;
use crate::metrics::ShardMetrics;
use crate::rt::signal::{Signal, Slot};
use crate::rt::sleep;
use crate::tls::client::ClientTls;
use crate::tls::Stream;
use classic::Classic;
use sharded::Sharded;

/// What the listener heard, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A message published on a channel this shard listens to.
    Message { channel: Vec<u8>, data: Vec<u8> },
    /// Every channel was subscribed again after a loss: what was published on any of them
    /// in between was not heard.
    Resumed,
    /// These channels were subscribed again (at their slot's primary) after a loss: what
    /// was published on them in between was not heard.
    Missed { channels: Vec<Vec<u8>> },
}

/// Most [`Heard`] items kept for the shard; beyond, the oldest messages are dropped and a
/// [`Heard::Resumed`] tells the shard to read them back (a shard this far behind is better
/// served by one stream read per topic than by a queue without bound).
const MAX_HEARD: usize = 100_000;

type Confirmation = Rc<Slot<Result<(), LinkError>>>;

/// What the connections heard, queued for the shard.
#[derive(Default)]
struct Inbox {
    heard: RefCell<VecDeque<Heard>>,
    signal: Signal,
}

impl Inbox {
    fn hear(&self, heard: Heard) {
        let mut queue = self.heard.borrow_mut();
        if queue.len() >= MAX_HEARD {
            queue.retain(|h| !matches!(h, Heard::Message { .. }));
            queue.push_back(Heard::Resumed);
        }
        queue.push_back(heard);
        drop(queue);
        self.signal.raise();
    }

    async fn next(&self) -> Heard {
        loop {
            if let Some(heard) = self.heard.borrow_mut().pop_front() {
                return heard;
            }
            self.signal.wait().await;
        }
    }
}

pub enum Listener {
    Classic(Rc<Classic>),
    Sharded(Rc<Sharded>),
}

impl Listener {
    /// Classic pub/sub on `cfg`'s server; sharded pub/sub when `link` is a Valkey
    /// Cluster's router (whose slot map says where each channel lives).
    pub fn new(
        cfg: &ValkeyConfig,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
        link: &Connection,
    ) -> Rc<Listener> {
        Rc::new(match link {
            Connection::Standalone(_) => {
                Listener::Classic(Classic::new(cfg, tls, shard, metrics, Inbox::default()))
            }
            Connection::Cluster(cluster) => Listener::Sharded(Sharded::new(
                Rc::clone(cluster),
                cfg,
                shard,
                Inbox::default(),
            )),
        })
    }

    /// Whether every pub/sub connection the shard needs is up (and, sharded, every
    /// listened channel has a primary to be subscribed at).
    pub fn is_up(&self) -> bool {
        match self {
            Listener::Classic(l) => l.is_up(),
            Listener::Sharded(l) => l.is_up(),
        }
    }

    /// Channels listened to (or being subscribed).
    pub fn channels(&self) -> usize {
        match self {
            Listener::Classic(l) => l.channels(),
            Listener::Sharded(l) => l.channels(),
        }
    }

    /// Each Valkey node the shard holds a pub/sub connection to: its address, whether the
    /// connection is up, and the channels subscribed (or being subscribed) there.
    pub fn connections(&self) -> Vec<(String, bool, u64)> {
        match self {
            Listener::Classic(l) => vec![(l.addr(), l.is_up(), l.channels() as u64)],
            Listener::Sharded(l) => l.connections(),
        }
    }

    /// Listens to `channel`; resolves once Valkey confirmed the subscription, or fails
    /// (at once while the connection it needs is known to be down): the caller cannot be
    /// promised what is published from now on.
    pub async fn listen(&self, channel: Vec<u8>) -> Result<(), LinkError> {
        match self {
            Listener::Classic(l) => l.listen(channel).await,
            Listener::Sharded(l) => l.listen(channel).await,
        }
    }

    /// Stops listening to `channel`.
    pub fn unlisten(&self, channel: &[u8]) {
        match self {
            Listener::Classic(l) => l.unlisten(channel),
            Listener::Sharded(l) => l.unlisten(channel),
        }
    }

    /// The next thing heard, waiting for it.
    pub async fn next(&self) -> Heard {
        match self {
            Listener::Classic(l) => l.inbox().next().await,
            Listener::Sharded(l) => l.inbox().next().await,
        }
    }

    /// The driver: keeps the needed connections up, subscribed to every wanted channel.
    pub async fn run(self: Rc<Self>) {
        match &*self {
            Listener::Classic(l) => Rc::clone(l).run().await,
            Listener::Sharded(l) => Rc::clone(l).run().await,
        }
    }
}

/// Waits on a subscribed connection for the next reply, a wake-up (something to send), or
/// an idle second, after which a PING checks the connection: no answer within
/// `valkey.command_timeout` is a lost connection (a stalled Valkey shows within a second
/// plus that timeout).
struct Watch {
    ping_sent: Option<Instant>,
    timeout: Duration,
}

impl Watch {
    fn new(timeout: Duration) -> Watch {
        Watch {
            ping_sent: None,
            timeout,
        }
    }

    /// Sends what `outgoing` holds, then waits for the next reply that is not a message
    /// (those heard on the way go to `inbox`): a confirmation, an unasked unsubscription, a
    /// PONG or an error; sends again whenever woken.
    async fn next_reply(
        &mut self,
        stream: &mut Stream,
        replies: &mut Replies,
        outgoing: &RefCell<Vec<u8>>,
        wake: &Signal,
        inbox: &Inbox,
    ) -> Result<Value, LinkError> {
        loop {
            let pending = std::mem::take(&mut *outgoing.borrow_mut());
            if !pending.is_empty() {
                stream
                    .send(&pending)
                    .await
                    .map_err(|e| LinkError::Io(e.to_string()))?;
            }
            let Some(value) = self.next(stream, replies, wake).await? else {
                continue;
            };
            match message(value) {
                Ok(heard) => inbox.hear(heard),
                Err(value) => return Ok(value),
            }
        }
    }

    /// The next reply (`None`: woken to send something).
    async fn next(
        &mut self,
        stream: &mut Stream,
        replies: &mut Replies,
        wake: &Signal,
    ) -> Result<Option<Value>, LinkError> {
        loop {
            let event = future::or(
                async { Some(replies.next(stream).await) },
                future::or(
                    async {
                        wake.wait().await;
                        None
                    },
                    async {
                        sleep(IDLE_PING).await;
                        Some(Err(LinkError::Timeout))
                    },
                ),
            )
            .await;
            match event {
                None => return Ok(None),
                Some(Ok(value)) => {
                    self.ping_sent = None;
                    return Ok(Some(value));
                }
                Some(Err(LinkError::Timeout)) => match self.ping_sent {
                    Some(at) if at.elapsed() > self.timeout => return Err(LinkError::Timeout),
                    Some(_) => {}
                    None => {
                        self.ping_sent = Some(Instant::now());
                        let ping = redis::cmd("PING").get_packed_command();
                        stream
                            .send(&ping)
                            .await
                            .map_err(|e| LinkError::Io(e.to_string()))?;
                    }
                },
                Some(Err(err)) => return Err(err),
            }
        }
    }
}

/// A `message` (classic) or `smessage` (sharded) push as heard, its channel and data moved
/// out of the reply (per message: no copy); any other value back.
fn message(value: Value) -> Result<Heard, Value> {
    let Value::Array(mut parts) = value else {
        return Err(value);
    };
    match parts.as_mut_slice() {
        [kind, Value::BulkString(channel), Value::BulkString(data)]
            if matches!(resp::bytes(kind), Some(b"message" | b"smessage")) =>
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
        for kind in [&b"message"[..], b"smessage"] {
            let heard = message(Value::Array(vec![bulk(kind), bulk(b"ch"), bulk(b"data")]));
            assert_eq!(
                heard,
                Ok(Heard::Message {
                    channel: b"ch".to_vec(),
                    data: b"data".to_vec()
                })
            );
        }
        let confirmation = Value::Array(vec![bulk(b"ssubscribe"), bulk(b"ch"), Value::Int(1)]);
        let back = message(confirmation.clone()).unwrap_err();
        assert_eq!(back, confirmation);
        assert_eq!(push(&back), Some((&b"ssubscribe"[..], &b"ch"[..], None)));
    }

    #[test]
    fn an_overflowing_inbox_drops_messages_for_one_resumption() {
        let inbox = Inbox::default();
        for i in 0..MAX_HEARD {
            inbox.hear(Heard::Message {
                channel: b"c".to_vec(),
                data: i.to_string().into_bytes(),
            });
        }
        inbox.hear(Heard::Missed {
            channels: vec![b"c".to_vec()],
        });
        let queue = inbox.heard.borrow();
        assert_eq!(queue.len(), 2);
        assert_eq!(queue[0], Heard::Resumed);
    }
}
