//! Classic pub/sub on a standalone Valkey: one connection per shard, `SUBSCRIBE` and
//! `UNSUBSCRIBE`.
//!
//! A connection in subscribe mode carries nothing else, so it is apart from the shard's
//! command link. When the connection comes back and every channel is subscribed again, the
//! listener says [`Heard::Resumed`]: every listened topic may have missed announcements.
//! An idle connection is pinged every second, so a stalled Valkey shows as a lost connection
//! within `valkey.command_timeout` plus a second.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::{push, Confirmation, Heard, Inbox, Watch};
use crate::config::ValkeyConfig;
use crate::metrics::ShardMetrics;
use crate::rt::signal::{Signal, Slot};
use crate::rt::sleep;
use crate::store::link::{Link, LinkError, Replies, BACKOFF_MAX, BACKOFF_MIN};
use crate::store::resp;
use crate::tls::client::ClientTls;
use crate::tls::Stream;

pub struct Classic {
    /// Dials (with AUTH, TLS) the server.
    dialer: Rc<Link>,
    shard: usize,
    /// The channels the shard wants, whether the connection is up or not.
    wanted: RefCell<HashSet<Vec<u8>>>,
    /// Subscriptions asked for and not yet confirmed, each with who waits for it.
    confirming: RefCell<HashMap<Vec<u8>, Vec<Confirmation>>>,
    /// SUBSCRIBE and UNSUBSCRIBE commands not sent yet.
    outgoing: RefCell<Vec<u8>>,
    wake: Signal,
    inbox: Inbox,
    up: Cell<bool>,
    command_timeout: Duration,
}

impl Classic {
    pub(super) fn new(
        cfg: &ValkeyConfig,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
        inbox: Inbox,
    ) -> Rc<Classic> {
        Rc::new(Classic {
            dialer: Link::new(cfg.clone(), tls.cloned(), shard, Rc::clone(metrics), None),
            shard,
            wanted: RefCell::new(HashSet::new()),
            confirming: RefCell::new(HashMap::new()),
            outgoing: RefCell::new(Vec::new()),
            wake: Signal::default(),
            inbox,
            up: Cell::new(false),
            command_timeout: cfg.command_timeout,
        })
    }

    pub(super) fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// The server's address.
    pub(super) fn addr(&self) -> String {
        self.dialer.addr()
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

    fn queue(&self, command: &str, channel: &[u8]) {
        if self.up.get() {
            let packed = redis::cmd(command).arg(channel).get_packed_command();
            self.outgoing.borrow_mut().extend_from_slice(&packed);
            self.wake.raise();
        }
    }

    /// The driver: keeps the connection up, subscribed to every wanted channel.
    pub async fn run(self: Rc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            if let Ok((mut stream, replies)) = self.dialer.open().await {
                backoff = BACKOFF_MIN;
                let err = self.serve(&mut stream, replies, connected_before).await;
                connected_before = true;
                self.went_down(&err);
                crate::log_line!(
                    "shard {}: Valkey pub/sub connection lost: {err}",
                    self.shard
                );
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
            self.inbox.hear(Heard::Resumed);
            resume_due = false;
        }
        self.up.set(true);
        let mut watch = Watch::new(self.command_timeout);
        loop {
            let next = watch.next_reply(
                stream,
                &mut replies,
                &self.outgoing,
                &self.wake,
                &self.inbox,
            );
            let value = match next.await {
                Ok(value) => value,
                Err(err) => return err,
            };
            match push(&value) {
                Some((b"subscribe", channel, _)) => {
                    if resubscribing.remove(channel) && resubscribing.is_empty() && resume_due {
                        self.inbox.hear(Heard::Resumed);
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
