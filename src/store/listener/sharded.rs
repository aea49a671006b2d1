//! Sharded pub/sub on a Valkey Cluster (`valkey.mode: cluster`): each channel is subscribed
//! with `SSUBSCRIBE` at the primary that serves its slot, over one connection per primary
//! that serves a channel the shard listens to.
//!
//! A topic's channel (`<prefix>:{<topic>}:n`) has the topic's slot, so the publish script
//! `SPUBLISH`es it on the primary that runs the script, and the announcement goes to the
//! connections subscribed there only (a classic `PUBLISH` on a Cluster is forwarded to
//! every node). Where a channel goes is the router's slot map ([`Cluster::owner_of`]); the
//! connections here are this module's own and carry nothing but subscriptions.
//!
//! A subscription ends without being asked when its slot leaves the primary (a migration
//! or a failover: Valkey pushes `sunsubscribe`), or when its connection is lost. Either way
//! the slot map is read again, the channel is subscribed where the map says (a channel
//! whose primary changed in the map moves there too), and once Valkey confirmed it the
//! channel is reported as [`Heard::Missed`]: only those topics are read back from their
//! streams. Everything here belongs to one shard: no locks.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use redis::Value;

use super::{push, Confirmation, Heard, Inbox, Watch};
use crate::config::ValkeyConfig;
use crate::rt::signal::{Signal, Slot};
use crate::rt::{sleep, spawn_local};
use crate::store::cluster::slots::{is_transient, redirection};
use crate::store::cluster::Cluster;
use crate::store::link::{Link, LinkError, Replies, BACKOFF_MAX, BACKOFF_MIN};
use crate::store::resp;
use crate::tls::Stream;

/// Least time between two placements of channels, however often asked: a channel placed
/// by a stale map is refused with `MOVED` and waits for the next one.
const PLACEMENT_GAP: Duration = Duration::from_millis(100);
/// How often channels that no primary serves (a failover under way) are tried again.
const PLACEMENT_RETRY: Duration = Duration::from_millis(250);
/// Channels confirmed again reported at once, at most, while more are being confirmed.
const MISSED_BATCH: usize = 1024;

pub struct Sharded {
    cluster: Rc<Cluster>,
    shard: usize,
    inbox: Inbox,
    /// Every channel listened to that has a primary, and that primary (subscribed there,
    /// or being subscribed).
    placed: RefCell<HashMap<Vec<u8>, Rc<Primary>>>,
    /// Channels listened to whose subscription ended and that wait for a primary, each
    /// with whether it was subscribed before (then it missed announcements).
    displaced: RefCell<HashMap<Vec<u8>, bool>>,
    /// Every primary a channel was ever placed at, by address; each connection's driver
    /// lives as long as the shard.
    primaries: RefCell<Vec<Rc<Primary>>>,
    /// Subscriptions asked for by [`Sharded::listen`] and not yet confirmed.
    confirming: RefCell<HashMap<Vec<u8>, Vec<Confirmation>>>,
    /// Raised when displaced channels wait to be placed.
    displacement: Signal,
    command_timeout: Duration,
}

/// One primary's pub/sub connection.
struct Primary {
    addr: String,
    dialer: Rc<Link>,
    /// The channels placed here.
    channels: RefCell<HashMap<Vec<u8>, Subscription>>,
    /// Commands not sent yet.
    outgoing: RefCell<Vec<u8>>,
    /// Commands sent and not answered yet, in order: an error answers the oldest, and
    /// names no channel.
    sent: RefCell<VecDeque<Sent>>,
    /// Channels confirmed again after a loss, not yet reported.
    missed: RefCell<Vec<Vec<u8>>>,
    wake: Signal,
    up: Cell<bool>,
    /// The last connection attempt failed.
    failing: Cell<bool>,
}

#[derive(Clone, Copy)]
struct Subscription {
    confirmed: bool,
    /// It was subscribed before and ended: its confirmation means "read back".
    missed: bool,
}

enum Sent {
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
}

impl Primary {
    fn new(addr: &str, dialer: Rc<Link>) -> Primary {
        Primary {
            addr: addr.to_string(),
            dialer,
            channels: RefCell::new(HashMap::new()),
            outgoing: RefCell::new(Vec::new()),
            sent: RefCell::new(VecDeque::new()),
            missed: RefCell::new(Vec::new()),
            wake: Signal::default(),
            up: Cell::new(false),
            failing: Cell::new(false),
        }
    }

    fn send(&self, command: Sent) {
        let (name, channel) = match &command {
            Sent::Subscribe(c) => ("SSUBSCRIBE", c),
            Sent::Unsubscribe(c) => ("SUNSUBSCRIBE", c),
        };
        let packed = redis::cmd(name).arg(channel).get_packed_command();
        self.outgoing.borrow_mut().extend_from_slice(&packed);
        self.sent.borrow_mut().push_back(command);
        self.wake.raise();
    }

    /// Takes the oldest command sent if it is this answer's (`subscribe`: an `ssubscribe`
    /// confirmation, else `sunsubscribe`); false when the answer was not asked for.
    fn answered(&self, subscribe: bool, channel: &[u8]) -> bool {
        let mut sent = self.sent.borrow_mut();
        let ours = match sent.front() {
            Some(Sent::Subscribe(c)) => subscribe && c == channel,
            Some(Sent::Unsubscribe(c)) => !subscribe && c == channel,
            None => false,
        };
        if ours {
            sent.pop_front();
        }
        ours
    }

    /// Needed: it has channels to serve.
    fn is_needed(&self) -> bool {
        !self.channels.borrow().is_empty()
    }
}

impl Sharded {
    pub(super) fn new(
        cluster: Rc<Cluster>,
        cfg: &ValkeyConfig,
        shard: usize,
        inbox: Inbox,
    ) -> Rc<Sharded> {
        Rc::new(Sharded {
            cluster,
            shard,
            inbox,
            placed: RefCell::new(HashMap::new()),
            displaced: RefCell::new(HashMap::new()),
            primaries: RefCell::new(Vec::new()),
            confirming: RefCell::new(HashMap::new()),
            displacement: Signal::default(),
            command_timeout: cfg.command_timeout,
        })
    }

    pub(super) fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Every channel has a primary, and the connection to each primary that serves one is
    /// up.
    pub fn is_up(&self) -> bool {
        self.displaced.borrow().is_empty()
            && self
                .primaries
                .borrow()
                .iter()
                .all(|p| p.up.get() || !p.is_needed())
    }

    pub fn channels(&self) -> usize {
        self.placed.borrow().len() + self.displaced.borrow().len()
    }

    /// Each primary with channels or an open connection: address, up, channels.
    pub fn connections(&self) -> Vec<(String, bool, u64)> {
        self.primaries
            .borrow()
            .iter()
            .filter(|p| p.up.get() || p.is_needed())
            .map(|p| (p.addr.clone(), p.up.get(), p.channels.borrow().len() as u64))
            .collect()
    }

    /// Listens to `channel` at its slot's primary; fails at once when the slot map names
    /// none or that primary's connection is failing, else once the connection failed.
    pub async fn listen(self: &Rc<Self>, channel: Vec<u8>) -> Result<(), LinkError> {
        let placed = self.placed.borrow().get(&channel).cloned();
        if let Some(p) = &placed {
            if p.channels
                .borrow()
                .get(&channel)
                .is_some_and(|s| s.confirmed)
            {
                return Ok(());
            }
        }
        if placed.is_none() && !self.displaced.borrow().contains_key(&channel) {
            let Some(addr) = self.cluster.owner_of(&channel) else {
                return Err(LinkError::Down);
            };
            let p = self.primary(&addr);
            if p.failing.get() && p.is_needed() {
                return Err(LinkError::Down);
            }
            self.place(&p, channel.clone(), false);
        }
        let confirmed: Confirmation = Rc::new(Slot::default());
        self.confirming
            .borrow_mut()
            .entry(channel)
            .or_default()
            .push(Rc::clone(&confirmed));
        confirmed.take().await
    }

    pub fn unlisten(&self, channel: &[u8]) {
        if let Some(p) = self.placed.borrow_mut().remove(channel) {
            if p.channels.borrow_mut().remove(channel).is_some() && p.up.get() {
                p.send(Sent::Unsubscribe(channel.to_vec()));
            }
        }
        self.displaced.borrow_mut().remove(channel);
        if let Some(waiters) = self.confirming.borrow_mut().remove(channel) {
            for waiter in waiters {
                waiter.fill(Err(LinkError::Down));
            }
        }
    }

    /// The connection to `addr`, made (and its driver started) on first use.
    fn primary(self: &Rc<Self>, addr: &str) -> Rc<Primary> {
        if let Some(p) = self.primaries.borrow().iter().find(|p| p.addr == addr) {
            return Rc::clone(p);
        }
        let p = Rc::new(Primary::new(addr, self.cluster.dialer(addr)));
        self.primaries.borrow_mut().push(Rc::clone(&p));
        spawn_local(Rc::clone(self).drive(Rc::clone(&p))).detach();
        p
    }

    fn place(&self, p: &Rc<Primary>, channel: Vec<u8>, missed: bool) {
        self.placed
            .borrow_mut()
            .insert(channel.clone(), Rc::clone(p));
        let subscription = Subscription {
            confirmed: false,
            missed,
        };
        p.channels
            .borrow_mut()
            .insert(channel.clone(), subscription);
        if p.up.get() {
            p.send(Sent::Subscribe(channel));
        } else {
            p.wake.raise();
        }
    }

    /// Places every displaced channel, and moves each channel whose slot the map now gives
    /// to another primary: unsubscribed at the old one, subscribed at the new one.
    fn rebalance(self: &Rc<Self>) {
        let mut moves: Vec<(Vec<u8>, bool, Option<Rc<Primary>>)> = self
            .displaced
            .borrow_mut()
            .drain()
            .map(|(channel, missed)| (channel, missed, None))
            .collect();
        for p in self.primaries.borrow().iter() {
            for (channel, sub) in p.channels.borrow().iter() {
                if self.cluster.owner_is(channel, &p.addr) == Some(false) {
                    let missed = sub.confirmed || sub.missed;
                    moves.push((channel.clone(), missed, Some(Rc::clone(p))));
                }
            }
        }
        for (channel, missed, from) in moves {
            if let Some(old) = from {
                old.channels.borrow_mut().remove(&channel);
                self.placed.borrow_mut().remove(&channel);
                if old.up.get() {
                    old.send(Sent::Unsubscribe(channel.clone()));
                }
            }
            match self.cluster.owner_of(&channel) {
                Some(addr) => {
                    let p = self.primary(&addr);
                    self.place(&p, channel, missed);
                }
                None => {
                    self.displaced.borrow_mut().insert(channel, missed);
                }
            }
        }
    }

    /// The placement driver: on every slot map change, and while channels wait for a
    /// primary.
    pub async fn run(self: Rc<Self>) {
        loop {
            let waiting = !self.displaced.borrow().is_empty();
            future::or(
                self.cluster.map_changed(),
                future::or(self.displacement.wait(), async {
                    if waiting {
                        sleep(PLACEMENT_RETRY).await
                    } else {
                        future::pending().await
                    }
                }),
            )
            .await;
            self.rebalance();
            sleep(PLACEMENT_GAP).await;
        }
    }

    /// One primary's connection: open while it has channels, subscribed to each.
    async fn drive(self: Rc<Self>, p: Rc<Primary>) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            if !p.is_needed() {
                p.wake.wait().await;
                continue;
            }
            match p.dialer.open().await {
                Ok((mut stream, replies)) => {
                    p.failing.set(false);
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    let err = self.serve(&p, &mut stream, replies).await;
                    self.went_down(&p, &err);
                    crate::log_line!(
                        "shard {}: Valkey pub/sub connection to {} lost: {err}",
                        self.shard,
                        p.addr
                    );
                }
                Err(err) => {
                    p.failing.set(true);
                    if failures.is_multiple_of(20) {
                        crate::log_line!(
                            "shard {}: cannot open a Valkey pub/sub connection to {}: {err}; \
                             retrying",
                            self.shard,
                            p.addr
                        );
                    }
                    failures += 1;
                    self.fail_first_subscriptions(&p, &err);
                }
            }
            // The primary may have failed over: its channels follow the map.
            self.cluster.ask_refresh();
            sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The connection is gone: channels listened to for the first time fail (their
    /// listeners could not be promised anything), the others are subscribed again with the
    /// next connection (or at their new primary) and reported missed then.
    fn went_down(&self, p: &Primary, err: &LinkError) {
        p.up.set(false);
        p.outgoing.borrow_mut().clear();
        p.sent.borrow_mut().clear();
        p.missed.borrow_mut().clear();
        self.fail_first_subscriptions(p, err);
        for sub in p.channels.borrow_mut().values_mut() {
            sub.missed |= sub.confirmed;
            sub.confirmed = false;
        }
    }

    fn fail_first_subscriptions(&self, p: &Primary, err: &LinkError) {
        let mut failed = Vec::new();
        p.channels.borrow_mut().retain(|channel, sub| {
            let first = !sub.confirmed && !sub.missed;
            if first {
                failed.push(channel.clone());
            }
            !first
        });
        for channel in failed {
            self.placed.borrow_mut().remove(&channel);
            for waiter in self
                .confirming
                .borrow_mut()
                .remove(&channel)
                .unwrap_or_default()
            {
                waiter.fill(Err(err.clone()));
            }
        }
    }

    async fn serve(&self, p: &Primary, stream: &mut Stream, mut replies: Replies) -> LinkError {
        let mut packed = Vec::new();
        {
            let mut sent = p.sent.borrow_mut();
            for channel in p.channels.borrow().keys() {
                packed
                    .extend_from_slice(&redis::cmd("SSUBSCRIBE").arg(channel).get_packed_command());
                sent.push_back(Sent::Subscribe(channel.clone()));
            }
        }
        // Up before the send: a channel placed meanwhile is sent after these.
        p.up.set(true);
        if let Err(e) = stream.send(&packed).await {
            return LinkError::Io(e.to_string());
        }
        let mut watch = Watch::new(self.command_timeout);
        loop {
            let next = watch.next_reply(stream, &mut replies, &p.outgoing, &p.wake, &self.inbox);
            let value = match next.await {
                Ok(value) => value,
                Err(err) => return err,
            };
            match push(&value) {
                Some((b"ssubscribe", channel, _)) => {
                    p.answered(true, channel);
                    self.confirmed(p, channel);
                }
                Some((b"sunsubscribe", channel, _)) => {
                    if !p.answered(false, channel) {
                        self.ended(p, channel);
                    }
                }
                Some((b"pong", _, _)) => {}
                _ => {
                    if resp::server_error(&value).is_some() {
                        let oldest = p.sent.borrow_mut().pop_front();
                        if let Some(Sent::Subscribe(channel)) = oldest {
                            self.refused(p, &channel, &value);
                        }
                    }
                }
            }
            let report = {
                let missed = p.missed.borrow();
                !missed.is_empty() && (p.sent.borrow().is_empty() || missed.len() >= MISSED_BATCH)
            };
            if report {
                let channels = std::mem::take(&mut *p.missed.borrow_mut());
                self.inbox.hear(Heard::Missed { channels });
            }
        }
    }

    fn confirmed(&self, p: &Primary, channel: &[u8]) {
        let here = match p.channels.borrow_mut().get_mut(channel) {
            Some(sub) => {
                if !sub.confirmed && sub.missed {
                    p.missed.borrow_mut().push(channel.to_vec());
                }
                sub.confirmed = true;
                sub.missed = false;
                true
            }
            None => false,
        };
        // A confirmation from a primary the channel has left since: its waiters wait for
        // the new primary's, unless nobody listens to it any more.
        let wanted = here || self.displaced.borrow().contains_key(channel);
        let wanted = wanted || self.placed.borrow().contains_key(channel);
        if here || !wanted {
            if let Some(waiters) = self.confirming.borrow_mut().remove(channel) {
                for waiter in waiters {
                    waiter.fill(if here { Ok(()) } else { Err(LinkError::Down) });
                }
            }
        }
    }

    /// Valkey ended a subscription unasked: the channel's slot left this primary.
    fn ended(&self, p: &Primary, channel: &[u8]) {
        let Some(sub) = p.channels.borrow_mut().remove(channel) else {
            return;
        };
        self.placed.borrow_mut().remove(channel);
        self.displaced
            .borrow_mut()
            .insert(channel.to_vec(), sub.confirmed || sub.missed);
        self.cluster.ask_refresh();
        self.displacement.raise();
    }

    /// Valkey refused a subscription: a redirection (the map was stale) or a cluster in
    /// transition is tried again at the next placement, and so is a channel that was
    /// subscribed before (its topic is loaded and must not go deaf); a first subscription
    /// refused for another reason fails.
    fn refused(&self, p: &Primary, channel: &[u8], value: &Value) {
        let retried = redirection(value).is_some() || is_transient(value);
        if !retried {
            crate::log_line!(
                "shard {}: Valkey at {} refused a subscription: {}",
                self.shard,
                p.addr,
                resp::server_error(value).unwrap_or_default()
            );
        }
        let first = p
            .channels
            .borrow()
            .get(channel)
            .is_some_and(|sub| !sub.confirmed && !sub.missed);
        if retried || !first {
            self.ended(p, channel);
            return;
        }
        p.channels.borrow_mut().remove(channel);
        self.placed.borrow_mut().remove(channel);
        for waiter in self
            .confirming
            .borrow_mut()
            .remove(channel)
            .unwrap_or_default()
        {
            waiter.fill(Err(LinkError::Protocol("subscription refused")));
        }
    }
}
