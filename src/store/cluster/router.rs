//! One shard's view of a Valkey Cluster: the slot map, a [`Node`] (queue and pipelined
//! connection) per primary, and where each command goes.
//!
//! Commands are routed by the hash slot of their key. Each node sends everything queued
//! for it as one pipeline per round trip, so group commit works per primary. A `MOVED`
//! answer re-routes the command and records the slot's new primary (and asks for a
//! refresh); an `ASK` answer re-sends that one command to the named node after `ASKING`;
//! `TRYAGAIN`/`CLUSTERDOWN` put a write back for a later round trip. The slot map is read
//! with `CLUSTER SLOTS` at start, whenever a node connection fails or a `MOVED` arrives,
//! and every few seconds; a primary that failed is followed to the replica promoted in its
//! place by that refresh.
//!
//! Order: a topic's writes carry growing explicit stream IDs, and a retried `XADD` refused
//! as "equal or smaller" counts as done, so one slot's writes must reach Valkey in the
//! order they were queued. Two rules keep it: redirected commands are appended to their
//! new node in reply order, before anything queued later is moved; and while a slot's old
//! primary still has a pipeline out, new commands for the slot go to that old primary too
//! (they come back redirected, in order) until its round trip ends.
//!
//! This module owns routing and the map; it does not build commands or read their values
//! (that is the store's), and it never touches a socket itself (that is [`Node`]'s).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use redis::Value;

use super::node::{split_addr, Node, Request};
use super::sentinel::Sentinels;
use super::slots::{command_key, is_transient, key_slot, redirection, SlotMap};
use crate::config::ValkeyConfig;
use crate::metrics::{self, ShardMetrics};
use crate::rt::signal::Slot;
use crate::rt::{now_ms, sleep, spawn_local};
use crate::store::link::{
    idle, Link, LinkError, ReplicaWait, Replies, Reply, BACKOFF_MAX, BACKOFF_MIN,
};
use crate::store::resp;
use crate::store::retry::connect_failure;
use crate::store::retry::Kind;
use crate::tls::client::ClientTls;
use crate::tls::Stream;

/// How often the slot map is read while every primary is up.
const REFRESH_PERIOD: Duration = Duration::from_secs(5);
/// How often while a primary is down or a slot has none (a failover is under way).
const REFRESH_DEGRADED: Duration = Duration::from_millis(250);
/// Least time between two refreshes, however often one is asked for.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Pause after a round trip that answered `TRYAGAIN`/`CLUSTERDOWN` before the retry.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(50);

pub struct Cluster {
    cfg: ValkeyConfig,
    /// TLS for every node's connection (`valkey.use_tls`).
    tls: Option<ClientTls>,
    /// The `WAIT` each primary's pipeline of awaited writes ends with (replicated acks).
    replicas: Option<ReplicaWait>,
    shard: usize,
    metrics: Rc<ShardMetrics>,
    /// Where to ask for the slot map when no known node answers.
    seeds: Vec<String>,
    map: RefCell<SlotMap>,
    /// Every node that ever served slots, by address (drivers live as long as the shard).
    nodes: RefCell<Vec<Rc<Node>>>,
    /// The node of each of the map's addresses, by [`SlotMap::owner_index`]: routing a
    /// command is a slot lookup and an index, no address comparison.
    by_index: RefCell<Vec<Rc<Node>>>,
    /// The nodes serving slots, in slot order (see [`SlotMap::primaries`]).
    primaries: RefCell<Vec<Rc<Node>>>,
    /// Slots whose primary changed while the old one had a pipeline out: slot → old node.
    draining: RefCell<HashMap<u16, Rc<Node>>>,
    /// Writes for slots no node serves yet (before the first map, or a slot unassigned).
    held: RefCell<VecDeque<Request>>,
    pending_writes: Cell<usize>,
    /// Their packed bytes, bounded by `storage.max_pending_bytes`.
    pending_bytes: Cell<usize>,
    refresh: crate::rt::signal::Signal,
    /// Raised when a slot's primary changed in the map (for the sharded pub/sub listener).
    map_changed: crate::rt::signal::Signal,
    /// A slot map was read and every slot has a primary.
    complete: Cell<bool>,
    /// The data-loss sentinels seen on the primaries.
    sentinels: Sentinels,
}

impl Cluster {
    pub fn new(
        cfg: ValkeyConfig,
        tls: Option<ClientTls>,
        shard: usize,
        metrics: Rc<ShardMetrics>,
        replicas: Option<ReplicaWait>,
    ) -> Rc<Cluster> {
        let mut seeds: Vec<String> = cfg.nodes.clone();
        let own = format!("{}:{}", cfg.host, cfg.port);
        if !seeds.contains(&own) {
            seeds.push(own);
        }
        Rc::new(Cluster {
            sentinels: Sentinels::new(&cfg.key_prefix),
            cfg,
            tls,
            replicas,
            shard,
            metrics,
            seeds,
            map: RefCell::new(SlotMap::default()),
            nodes: RefCell::new(Vec::new()),
            by_index: RefCell::new(Vec::new()),
            primaries: RefCell::new(Vec::new()),
            draining: RefCell::new(HashMap::new()),
            held: RefCell::new(VecDeque::new()),
            pending_writes: Cell::new(0),
            pending_bytes: Cell::new(0),
            refresh: Default::default(),
            map_changed: Default::default(),
            complete: Cell::new(false),
        })
    }

    /// Up when every slot has a primary and this shard's connection to each is up.
    pub fn is_up(&self) -> bool {
        self.complete.get() && self.primaries.borrow().iter().all(|n| n.up.get())
    }

    pub fn pending_writes(&self) -> usize {
        self.pending_writes.get()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.get()
    }

    /// Each primary of the slot map and whether this shard's connection to it is up.
    pub fn primary_states(&self) -> Vec<(String, bool)> {
        self.primaries
            .borrow()
            .iter()
            .map(|n| (n.addr.clone(), n.up.get()))
            .collect()
    }

    /// The address of the primary the slot map names for `key`'s slot (a sharded pub/sub
    /// channel has a slot like a key); `None` before the first map or while no primary
    /// serves the slot.
    pub fn owner_of(&self, key: &[u8]) -> Option<String> {
        self.map.borrow().owner(key_slot(key)).map(str::to_string)
    }

    /// Whether the slot map names `addr` as the primary of `key`'s slot (`None`: it names
    /// none).
    pub fn owner_is(&self, key: &[u8], addr: &str) -> Option<bool> {
        self.map
            .borrow()
            .owner(key_slot(key))
            .map(|owner| owner == addr)
    }

    /// Resolves once a slot's primary changed in the map since the last call (one waiter:
    /// the shard's pub/sub listener).
    pub async fn map_changed(&self) {
        self.map_changed.wait().await
    }

    /// Asks for the slot map to be read again soon (a connection elsewhere saw a sign that
    /// it changed).
    pub fn ask_refresh(&self) {
        self.refresh.raise();
    }

    /// A link that dials `addr` with the cluster's settings (AUTH, TLS), for a connection
    /// of another kind than the router's (pub/sub); its own driver is never run.
    pub fn dialer(&self, addr: &str) -> Rc<Link> {
        let (host, port) = split_addr(addr);
        Link::new(
            ValkeyConfig {
                host,
                port,
                ..self.cfg.clone()
            },
            self.tls.clone(),
            self.shard,
            Rc::clone(&self.metrics),
            None,
        )
    }

    /// Queues a write for the primary of its key's slot; kept (and followed through
    /// redirections and failovers) until a primary answers it.
    pub fn write(&self, cmd: &redis::Cmd, want_reply: bool) -> Option<Reply> {
        let reply = want_reply.then(|| Rc::new(Slot::default()));
        self.pending_writes.set(self.pending_writes.get() + 1);
        let slot = command_key(cmd).map(key_slot);
        let req = Request::new(cmd, slot, reply.clone(), true);
        self.pending_bytes
            .set(self.pending_bytes.get() + req.packed.len());
        self.route(req);
        reply
    }

    /// Queues a write sent at most once: it fails when its connection is lost after it was
    /// sent (a redirection still follows it, since the node that refused it applied nothing).
    pub fn write_once(&self, cmd: &redis::Cmd) -> Reply {
        let reply: Reply = Rc::new(Slot::default());
        self.pending_writes.set(self.pending_writes.get() + 1);
        let slot = command_key(cmd).map(key_slot);
        let mut req = Request::new(cmd, slot, Some(Rc::clone(&reply)), true);
        req.kind = Kind::Once;
        self.pending_bytes
            .set(self.pending_bytes.get() + req.packed.len());
        self.route(req);
        reply
    }

    /// Sends a read to the primary of its key's slot. As on the standalone link, a read
    /// whose connection turned out to be closed is sent once more on a fresh one (to the
    /// slot's primary then), and a read for a primary that is down waits for the next
    /// connection attempt; it fails at once only while no primary serves its slot.
    pub async fn read(&self, cmd: &redis::Cmd) -> Result<Value, LinkError> {
        let reply: Reply = Rc::new(Slot::default());
        let slot = command_key(cmd).map(key_slot);
        self.route(Request::new(cmd, slot, Some(Rc::clone(&reply)), false));
        reply.take().await
    }

    /// Sends several reads at once (each to its primary) and waits for all their replies.
    pub async fn read_all(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, LinkError> {
        let replies: Vec<Reply> = cmds
            .iter()
            .map(|cmd| {
                let reply: Reply = Rc::new(Slot::default());
                let slot = command_key(cmd).map(key_slot);
                self.route(Request::new(cmd, slot, Some(Rc::clone(&reply)), false));
                reply
            })
            .collect();
        let mut values = Vec::with_capacity(replies.len());
        for reply in replies {
            values.push(reply.take().await?);
        }
        Ok(values)
    }

    /// Sends a keyless read (`SCAN`) to the `index`th primary (see [`SlotMap::primaries`]);
    /// `Ok(None)` when there is no such primary.
    pub async fn read_on(
        &self,
        index: usize,
        cmd: &redis::Cmd,
    ) -> Result<Option<Value>, LinkError> {
        let Some(node) = self.primaries.borrow().get(index).cloned() else {
            return Ok(None);
        };
        let reply: Reply = Rc::new(Slot::default());
        node.push(Request::new(cmd, None, Some(Rc::clone(&reply)), false));
        reply.take().await.map(Some)
    }

    /// Brings `by_index` and `primaries` in line with the slot map (after it changed).
    fn sync_nodes(self: &Rc<Self>) {
        let addresses = self.map.borrow().addresses().to_vec();
        let by_index: Vec<Rc<Node>> = addresses.iter().map(|a| self.node_for(a)).collect();
        let primaries: Vec<Rc<Node>> = self
            .map
            .borrow()
            .primaries()
            .into_iter()
            .filter_map(|addr| self.node(addr))
            .collect();
        *self.by_index.borrow_mut() = by_index;
        *self.primaries.borrow_mut() = primaries;
    }

    /// The node the slot map says serves `slot`.
    fn owner(&self, slot: u16) -> Option<Rc<Node>> {
        let index = self.map.borrow().owner_index(slot)?;
        self.by_index.borrow().get(index).cloned()
    }

    fn node(&self, addr: &str) -> Option<Rc<Node>> {
        self.nodes.borrow().iter().find(|n| n.addr == addr).cloned()
    }

    /// The node for `addr`, created (and its driver started) on first use.
    fn node_for(self: &Rc<Self>, addr: &str) -> Rc<Node> {
        if let Some(node) = self.node(addr) {
            return node;
        }
        let node = Rc::new(Node::new(
            addr,
            &self.cfg,
            self.tls.as_ref(),
            self.shard,
            &self.metrics,
        ));
        self.nodes.borrow_mut().push(Rc::clone(&node));
        spawn_local(Rc::clone(self).drive(Rc::clone(&node))).detach();
        node
    }

    /// The node a request for `slot` goes to now: the old primary while it drains, else
    /// the slot map's.
    fn target(&self, slot: Option<u16>) -> Option<Rc<Node>> {
        match slot {
            Some(slot) => {
                if let Some(old) = self.draining.borrow().get(&slot) {
                    return Some(Rc::clone(old));
                }
                self.owner(slot)
            }
            None => {
                let primaries = self.primaries.borrow();
                primaries
                    .iter()
                    .find(|n| n.up.get())
                    .or(primaries.first())
                    .cloned()
            }
        }
    }

    fn route(&self, req: Request) {
        match self.target(req.slot) {
            Some(node) => node.push(req),
            None if req.is_write() => {
                self.held.borrow_mut().push_back(req);
                self.refresh.raise();
            }
            None => fail(req, LinkError::Down),
        }
    }

    /// Moves the queued requests of `node` whose slot another primary now serves to that
    /// primary, in order, and ends the slots' draining through `node`. Called when `node`
    /// has no pipeline out, so nothing older for those slots is anywhere else.
    fn rehome(self: &Rc<Self>, node: &Rc<Node>) {
        self.draining
            .borrow_mut()
            .retain(|_, old| !Rc::ptr_eq(old, node));
        let queued: Vec<Request> = node.queue.borrow_mut().drain(..).collect();
        let mut stay = VecDeque::with_capacity(queued.len());
        for req in queued {
            // A command sent on after ASK stays with the node that asked for it, unless
            // that node serves nothing any more.
            let owner = match req.slot {
                Some(slot) if !req.asking || node.retired.get() => self.owner(slot),
                _ => None,
            };
            match owner {
                Some(owner) if !Rc::ptr_eq(&owner, node) => {
                    let mut req = req;
                    req.asking = false;
                    owner.push(req);
                }
                _ => stay.push_back(req),
            }
        }
        *node.queue.borrow_mut() = stay;
        if !node.queue.borrow().is_empty() {
            node.wake.raise();
        }
    }

    /// Installs a newly read slot map: changed slots follow their new primaries (see the
    /// order rules above), primaries no longer in the map retire, held writes go out.
    fn apply_map(self: &Rc<Self>, newer: SlotMap) {
        let changed = self.map.borrow().changes(&newer);
        if !changed.is_empty() {
            self.map_changed.raise();
        }
        let mut old_owners: Vec<Rc<Node>> = Vec::new();
        for slot in changed {
            if let Some(old) = self.owner(slot) {
                if old.in_flight.get() {
                    self.draining.borrow_mut().insert(slot, Rc::clone(&old));
                }
                if !old_owners.iter().any(|n| Rc::ptr_eq(n, &old)) {
                    old_owners.push(old);
                }
            }
        }
        let primaries: Vec<String> = newer.primaries().iter().map(|a| a.to_string()).collect();
        self.complete.set(newer.is_complete());
        *self.map.borrow_mut() = newer;
        self.sync_nodes();
        for node in self.primaries.borrow().iter() {
            if node.retired.replace(false) {
                node.wake.raise();
            }
        }
        for node in self.nodes.borrow().iter() {
            if !primaries.contains(&node.addr) && !node.retired.replace(true) {
                node.wake.raise();
            }
        }
        for old in old_owners {
            if !old.in_flight.get() {
                self.rehome(&old);
            }
        }
        let held: Vec<Request> = self.held.borrow_mut().drain(..).collect();
        for req in held {
            self.route(req);
        }
    }

    /// Reads the slot map and installs it, now and whenever asked, at least every
    /// [`REFRESH_PERIOD`].
    pub async fn run(self: Rc<Self>) {
        let mut failures = 0u32;
        loop {
            match self.fetch_map().await {
                Ok(map) => {
                    failures = 0;
                    metrics::add(&self.metrics.valkey_map_refreshes, 1);
                    self.apply_map(map);
                }
                Err(err) => {
                    if failures.is_multiple_of(20) {
                        crate::log_line!(
                            "shard {}: cannot read the Valkey Cluster slot map from {}: {err}; \
                             retrying",
                            self.shard,
                            self.seeds.join(", ")
                        );
                    }
                    failures += 1;
                }
            }
            let period = if self.is_up() {
                REFRESH_PERIOD
            } else {
                REFRESH_DEGRADED
            };
            future::or(self.refresh.wait(), sleep(period)).await;
            sleep(REFRESH_GAP).await;
        }
    }

    /// `CLUSTER SLOTS` from a connected primary, else from each known node and seed over a
    /// connection of its own.
    async fn fetch_map(self: &Rc<Self>) -> Result<SlotMap, String> {
        let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let mut last = String::from("no node to ask");
        let up: Vec<Rc<Node>> = self
            .nodes
            .borrow()
            .iter()
            .filter(|n| n.up.get() && !n.retired.get())
            .cloned()
            .collect();
        for node in up {
            let reply: Reply = Rc::new(Slot::default());
            node.push(Request::new(&cmd, None, Some(Rc::clone(&reply)), false));
            match reply.take().await {
                Ok(value) => match usable_map(&value, &split_addr(&node.addr).0) {
                    Ok(map) => return Ok(map),
                    Err(e) => last = format!("{}: {e}", node.addr),
                },
                Err(e) => last = format!("{}: {e}", node.addr),
            }
        }
        let mut candidates: Vec<String> =
            self.nodes.borrow().iter().map(|n| n.addr.clone()).collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        for addr in candidates {
            match self.ask_once(&addr, &cmd).await {
                Ok(value) => match usable_map(&value, &split_addr(&addr).0) {
                    Ok(map) => return Ok(map),
                    Err(e) => last = format!("{addr}: {e}"),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// One command over a connection of its own to `addr` (closed afterwards).
    async fn ask_once(&self, addr: &str, cmd: &redis::Cmd) -> Result<Value, LinkError> {
        let (mut stream, mut replies) = self.dialer(addr).open().await?;
        let mut packed = Vec::new();
        let batch = [Request::new(cmd, None, None, false)];
        let (mut values, _) = Node::round_trip(
            &mut stream,
            &mut replies,
            &mut packed,
            &batch,
            self.cfg.command_timeout,
            None,
        )
        .await?;
        values.pop().ok_or(LinkError::Protocol("no reply"))
    }

    /// A node's driver: keeps its connection up while the node serves slots (or still has
    /// commands), one pipeline per round trip.
    async fn drive(self: Rc<Self>, node: Rc<Node>) {
        let mut backoff = BACKOFF_MIN;
        let mut seed = now_ms() ^ ((self.shard as u64) << 32) | 1;
        let mut failures = 0u32;
        loop {
            if node.retired.get() && node.queue.borrow().is_empty() {
                node.wake.wait().await;
                continue;
            }
            match self.connect(&node).await {
                Ok(mut stream) => {
                    if failures > 0 {
                        crate::log_line!(
                            "shard {}: Valkey connection to {} restored",
                            self.shard,
                            node.addr
                        );
                    }
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    node.up.set(true);
                    // Reads left queued (re-sent or new) wait for the next connection.
                    let lost = self.serve(&node, &mut stream).await;
                    node.up.set(false);
                    if let Some(err) = lost {
                        crate::log_line!(
                            "shard {}: Valkey connection to {} lost: {err}",
                            self.shard,
                            node.addr
                        );
                        self.refresh.raise();
                    } else {
                        continue;
                    }
                }
                Err(err) => {
                    if failures.is_multiple_of(20) {
                        crate::log_line!(
                            "shard {}: cannot connect to Valkey at {}: {err}; retrying",
                            self.shard,
                            node.addr
                        );
                    }
                    failures += 1;
                    self.fail_reads(&node, &err);
                    self.refresh.raise();
                }
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let jitter = Duration::from_millis(seed % (backoff.as_millis() as u64 / 2 + 1));
            sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens a connection to `node` and checks the data-loss sentinels of its slots.
    async fn connect(&self, node: &Node) -> Result<Stream, LinkError> {
        let (mut stream, mut buf) = node.open().await?;
        let keys = self.sentinels.keys_on(&self.map.borrow(), &node.addr);
        self.sentinels
            .check(node, &mut stream, &mut buf, keys)
            .await?;
        Ok(stream)
    }

    /// Fails the node's queued reads: the connection attempt they waited for failed.
    fn fail_reads(&self, node: &Node, err: &LinkError) {
        let mut failed = Vec::new();
        node.queue.borrow_mut().retain_mut(|req| {
            if req.is_write() {
                return true;
            }
            failed.push(req.reply.take());
            false
        });
        let err = connect_failure(err);
        for reply in failed.into_iter().flatten() {
            reply.fill(Err(err.clone()));
        }
    }

    /// Pipelines the node's queue until the connection fails (`Some`) or the node retired
    /// with nothing left to send (`None`).
    async fn serve(self: &Rc<Self>, node: &Rc<Node>, stream: &mut Stream) -> Option<LinkError> {
        let mut replies = Replies::default();
        let mut packed = Vec::new();
        loop {
            if node.queue.borrow().is_empty() {
                if node.retired.get() {
                    return None;
                }
                // Watched like the standalone link's: Valkey closing an idle connection
                // shows at once, and a PING every second checks the rest.
                match idle(&node.wake, stream).await {
                    Err(err) => {
                        metrics::add(&self.metrics.valkey_errors, 1);
                        return Some(err);
                    }
                    Ok(false) if node.queue.borrow().is_empty() => {
                        node.push(Request::new(&redis::cmd("PING"), None, None, false));
                    }
                    Ok(_) => {}
                }
                continue;
            }
            let batch: Vec<Request> = node.queue.borrow_mut().drain(..).collect();
            let wait = self
                .replicas
                .filter(|_| batch.iter().any(|r| r.is_write() && r.reply.is_some()));
            node.in_flight.set(true);
            let started = Instant::now();
            let outcome = Node::round_trip(
                stream,
                &mut replies,
                &mut packed,
                &batch,
                self.cfg.command_timeout,
                wait,
            )
            .await;
            node.in_flight.set(false);
            match outcome {
                Ok((values, counted)) => {
                    let micros = started.elapsed().as_micros() as u64;
                    let short = wait.zip(counted).and_then(|(w, c)| self.too_few(w, &c));
                    if self.settle(node, batch, values, micros, short) {
                        sleep(TRANSIENT_PAUSE).await;
                    }
                }
                Err(err) => {
                    metrics::add(&self.metrics.valkey_errors, 1);
                    // Unanswered writes go back to the front, in their order, and so do
                    // reads once when the connection turned out closed; `rehome` sends
                    // them on to a slot's new primary.
                    let mut queue = node.queue.borrow_mut();
                    for mut req in batch.into_iter().rev() {
                        match req.kind.after_failure(&err) {
                            Some(kind) => {
                                req.kind = kind;
                                queue.push_front(req);
                            }
                            None => {
                                // A write sent at most once fails: it leaves the backlog.
                                if req.is_write() {
                                    self.pending_writes.set(self.pending_writes.get() - 1);
                                    self.pending_bytes
                                        .set(self.pending_bytes.get() - req.packed.len());
                                }
                                fail(req, err.clone())
                            }
                        }
                    }
                    drop(queue);
                    self.rehome(node);
                    return Some(err);
                }
            }
        }
    }

    /// The failure awaited writes get when the pipeline's `WAIT` counted fewer replicas
    /// than wanted (`None` when enough did).
    fn too_few(&self, wait: ReplicaWait, counted: &Value) -> Option<LinkError> {
        let got = match counted {
            Value::Int(n) => (*n).max(0) as u64,
            _ => 0,
        };
        if got >= u64::from(wait.replicas) {
            return None;
        }
        metrics::add(&self.metrics.valkey_replica_timeouts, 1);
        Some(LinkError::Replicas {
            got,
            wanted: wait.replicas,
        })
    }

    /// Hands out one round trip's replies, following redirections; true when a write met
    /// a transient cluster error and was put back (the node then pauses before retrying).
    /// `short`: the pipeline's `WAIT` counted too few replicas, so the writes it applied
    /// are answered with that failure (the primary has them; they may still replicate).
    fn settle(
        self: &Rc<Self>,
        node: &Rc<Node>,
        batch: Vec<Request>,
        values: Vec<Value>,
        micros: u64,
        short: Option<LinkError>,
    ) -> bool {
        let mut again = Vec::new();
        let mut moved = false;
        let mut others: Vec<Rc<Node>> = Vec::new();
        for (mut req, value) in batch.into_iter().zip(values) {
            if let Some((ask, slot, addr)) = redirection(&value) {
                if ask {
                    metrics::add(&self.metrics.valkey_asked, 1);
                } else {
                    metrics::add(&self.metrics.valkey_moved, 1);
                    // The slot's primary in our map may be a third node with commands for
                    // it out: those go first (they come back redirected too).
                    if let Some(old) = self.owner(slot).filter(|o| !Rc::ptr_eq(o, node)) {
                        if old.in_flight.get() {
                            self.draining.borrow_mut().insert(slot, old);
                        } else {
                            others.push(old);
                        }
                    }
                    self.map.borrow_mut().assign(slot, &addr);
                    moved = true;
                }
                req.asking = ask;
                self.node_for(&addr).push(req);
                continue;
            }
            if req.is_write() && is_transient(&value) {
                again.push(req);
                continue;
            }
            let value = req.kind.answer(value);
            if req.is_write() {
                self.pending_writes.set(self.pending_writes.get() - 1);
                self.pending_bytes
                    .set(self.pending_bytes.get() - req.packed.len());
                self.metrics.valkey_latency.borrow_mut().record(micros);
                let refused = resp::server_error(&value).is_some();
                if refused {
                    metrics::add(&self.metrics.valkey_errors, 1);
                } else {
                    metrics::add(&self.metrics.valkey_writes, 1);
                }
                if let (Some(err), false, Some(reply)) = (&short, refused, &req.reply) {
                    reply.fill(Err(err.of_write(value)));
                    continue;
                }
            }
            if let Some(reply) = req.reply {
                reply.fill(Ok(value));
            }
        }
        let pause = !again.is_empty();
        {
            let mut queue = node.queue.borrow_mut();
            for req in again.into_iter().rev() {
                queue.push_front(req);
            }
        }
        if moved {
            self.sync_nodes();
            self.map_changed.raise();
            self.refresh.raise();
        }
        // Only when a slot left this node (here or by a refresh during the round trip):
        // most round trips move nothing and should not walk the queue.
        let draining = self.draining.borrow().values().any(|n| Rc::ptr_eq(n, node));
        if moved || draining || node.retired.get() {
            self.rehome(node);
        }
        for other in others {
            self.rehome(&other);
        }
        pause
    }
}

fn fail(mut req: Request, err: LinkError) {
    if let Some(reply) = req.reply.take() {
        reply.fill(Err(err));
    }
}

/// A `CLUSTER SLOTS` reply as a slot map, refused when it assigns no slot at all (a node
/// not yet joined to its cluster).
fn usable_map(value: &Value, asked_host: &str) -> Result<SlotMap, String> {
    let map = SlotMap::from_cluster_slots(value, asked_host)?;
    if map.primaries().is_empty() {
        return Err("the node serves no slots (is the cluster set up?)".into());
    }
    Ok(map)
}
