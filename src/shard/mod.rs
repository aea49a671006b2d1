//! The runtime: one pinned glommio executor per shard, and what each shard owns.
//!
//! A [`Shard`] owns, and is the only thread to touch: its listener and the connections it
//! accepted, the topics hashed to it ([`TopicTable`]), the publish idempotency keys hashed
//! to it ([`idempotency::Table`]), its local subscriber index, and its ends of the mesh.
//! Nothing here is behind a lock; state shared with other shards is sent to its owner
//! through [`mesh`]. The only process-wide state is [`Process`]: atomics that the main
//! thread and `/ready` read (shutdown flag, per-shard readiness).
//!
//! glommio stays behind this module: the protocol code sees `Shard`, `TcpStream` and the
//! spawn/sleep calls re-exported here, so the runtime could be swapped without touching it.

pub mod idempotency;
pub mod loads;
pub mod mesh;
pub mod owner;
pub mod quota;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};

pub use crate::rt::{blocking, now_ms, sleep, spawn_local, TcpStream};

use crate::account::directory::Applied;
use crate::account::{self, AccountError, AccountSync, Directory, DirectoryOp, DirectoryReply};
use crate::api::limits::{LoginRates, PublishRates};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::{self, ShardMetrics};
use crate::rt::budget::{Admission, ConnectionBudget};
use crate::rt::conns::{self, ConnCtl, ConnTable};
use crate::rt::signal::{Signal, Slot};
use crate::rt::{executor, listener};
use crate::store::{self, Store};
use crate::topic::subscribers::LocalSubscribers;
use crate::topic::{Message, ShardSet, TopicLimits, TopicTable};
use idempotency::{Claim, Recorded, Scope, Waiter};
use loads::Started;
use mesh::{Envelope, Mesh, MeshEnds};
use owner::{Op, OpResult, Plan};
use quota::{QuotaKey, QuotaSlot, Quotas};

/// Process-wide facts, shared by all shards and the main thread (atomics only).
pub struct Process {
    pub shutdown: AtomicBool,
    /// Per shard: listener accepting and mesh connected.
    pub serving: Vec<AtomicBool>,
    /// Per shard, refreshed every tick: the persistent tier is usable (always true for the
    /// memory backend).
    pub store_ok: Vec<AtomicBool>,
    /// Shards that still have open connections during shutdown.
    draining: AtomicUsize,
    /// Open client connections, all shards together (checked against `budget`).
    pub connections: AtomicUsize,
    /// How many connections are served, from `limits.max_connections` and RLIMIT_NOFILE.
    pub budget: ConnectionBudget,
    /// The directory shard has loaded the user accounts.
    pub accounts_ready: AtomicBool,
    pub local_addr: SocketAddr,
}

impl Process {
    /// `Err` naming the first failing check, for `/ready`.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(shard) = self.serving.iter().position(|s| !s.load(Ordering::Acquire)) {
            return Err(format!("shard {shard} is not serving"));
        }
        if let Some(shard) = self
            .store_ok
            .iter()
            .position(|s| !s.load(Ordering::Acquire))
        {
            return Err(format!(
                "valkey: shard {shard} cannot use Valkey (unreachable, or still recovering its topics)"
            ));
        }
        if !self.accounts_ready.load(Ordering::Acquire) {
            return Err("accounts: the user accounts are still loading".to_owned());
        }
        Ok(())
    }
}

pub struct Shard {
    /// This shard itself, for the tasks it spawns on its own behalf.
    me: Weak<Shard>,
    pub id: usize,
    pub count: usize,
    pub config: Config,
    pub auth: Authenticator,
    pub process: Arc<Process>,
    pub mesh: Mesh,
    pub topics: RefCell<TopicTable>,
    /// Topics being read back from the persistent tier, with the operations waiting.
    loads: loads::Loads,
    pub subscribers: RefCell<LocalSubscribers>,
    pub store: Store,
    pub metrics: Rc<ShardMetrics>,
    /// Publish rate buckets of the token subjects seen on this shard.
    pub publish_rates: PublishRates,
    /// Login and token-refresh attempts of the client addresses seen on this shard.
    pub login_rates: LoginRates,
    /// Connection counts of the quota keys this shard owns.
    quotas: Quotas,
    /// The idempotency keys this shard owns.
    idempotency: RefCell<idempotency::Table<Waiter>>,
    /// The owned topics' last IDs have been read back from the persistent tier (always
    /// true for the memory backend); publishes wait for it.
    recovered: Cell<bool>,
    pub conns: ConnTable,
    /// This shard's read copy of the user accounts and the logout deny-list.
    pub accounts: RefCell<account::Replica>,
    /// The authoritative account state: on [`DIRECTORY_SHARD`] only, once loaded.
    directory: RefCell<Option<Directory>>,
    /// Counts account changes applied to the replica.
    account_generation: Cell<u64>,
    /// Open sessions per token subject that account changes must reach (see
    /// [`Shard::watch_account`]); as many entries as such sessions.
    account_watchers: RefCell<HashMap<String, Vec<Weak<ConnCtl>>>>,
    stop_accepting: Signal,
    shutting_down: Cell<bool>,
}

/// A session's registration for account changes (see [`Shard::watch_account`]).
pub struct AccountWatch {
    shard: Rc<Shard>,
    subject: String,
    ctl: Weak<ConnCtl>,
}

impl Drop for AccountWatch {
    fn drop(&mut self) {
        let mut watchers = self.shard.account_watchers.borrow_mut();
        if let Some(list) = watchers.get_mut(&self.subject) {
            list.retain(|w| !w.ptr_eq(&self.ctl));
            if list.is_empty() {
                watchers.remove(&self.subject);
            }
        }
    }
}

/// The shard that holds the account directory.
pub const DIRECTORY_SHARD: usize = 0;

impl Shard {
    /// Runs an account operation on the directory shard and returns its answer; by then
    /// this shard's replica already reflects the change.
    pub async fn directory(&self, op: DirectoryOp) -> DirectoryReply {
        if self.id == DIRECTORY_SHARD {
            let (reply, tickets) = self.apply_directory(op);
            settle_directory(reply, tickets).await
        } else {
            match self.mesh.directory(DIRECTORY_SHARD, op).await {
                OpResult::Directory(reply) => reply,
                _ => DirectoryReply::Failed(AccountError::Unavailable),
            }
        }
    }

    /// Applies an account operation here (the directory shard): replicas first, then the
    /// persistent tier's writes, whose tickets the reply waits for.
    fn apply_directory(&self, op: DirectoryOp) -> (DirectoryReply, Vec<store::Ticket>) {
        let applied = match self.directory.borrow_mut().as_mut() {
            Some(dir) => dir.apply(op, now_ms()),
            None => {
                return (
                    DirectoryReply::Failed(AccountError::Unavailable),
                    Vec::new(),
                )
            }
        };
        let Applied {
            reply,
            syncs,
            writes,
        } = applied;
        for sync in syncs {
            self.broadcast_accounts(sync);
        }
        (reply, self.store.write_accounts(writes))
    }

    fn broadcast_accounts(&self, sync: AccountSync) {
        self.apply_account_sync(&sync);
        let sync = Arc::new(sync);
        for shard in (0..self.count).filter(|s| *s != self.id) {
            self.mesh.send(shard, Envelope::Accounts(Arc::clone(&sync)));
        }
    }

    /// Updates the replica and wakes the sessions of the subject the change concerns, so
    /// that a logout or a deactivation ends them now rather than at their token's expiry.
    fn apply_account_sync(&self, sync: &AccountSync) {
        self.accounts.borrow_mut().apply(sync);
        self.account_generation
            .set(self.account_generation.get().wrapping_add(1));
        let Some(subject) = sync.subject() else {
            return;
        };
        if let Some(watchers) = self.account_watchers.borrow().get(subject) {
            for ctl in watchers.iter().filter_map(Weak::upgrade) {
                ctl.signal.raise();
            }
        }
    }

    /// Registers a long-lived session (WebSocket) whose access depends on account state;
    /// it is woken by every change for `subject` until the guard is dropped. Sessions
    /// compare [`Shard::account_generation`] to know when to check their token again.
    pub fn watch_account(self: &Rc<Self>, subject: &str, ctl: &Rc<ConnCtl>) -> AccountWatch {
        let ctl = Rc::downgrade(ctl);
        self.account_watchers
            .borrow_mut()
            .entry(subject.to_owned())
            .or_default()
            .push(Weak::clone(&ctl));
        AccountWatch {
            shard: Rc::clone(self),
            subject: subject.to_owned(),
            ctl,
        }
    }

    /// Changes as account state changes (any subject): a cheap "anything new?" check.
    pub fn account_generation(&self) -> u64 {
        self.account_generation.get()
    }

    /// Runs `op` on the shard that owns the topic: here, or through the mesh.
    pub async fn call(&self, owner: usize, op: Op) -> OpResult {
        if owner == self.id {
            let (result, tickets) = match self.start(self.id, op) {
                Started::Done(applied) => applied,
                Started::Later(later) => later.finish(self).await,
            };
            owner::settle(result, tickets).await
        } else {
            self.mesh.call(owner, op).await
        }
    }

    fn plan(&self, op: &Op) -> Plan {
        owner::plan(&self.topics.borrow(), self.recovered.get(), op)
    }

    fn apply(&self, from: usize, op: Op) -> (OpResult, Vec<store::Ticket>) {
        let mut topics = self.topics.borrow_mut();
        owner::apply(
            &mut topics,
            &self.store,
            self.recovered.get(),
            from,
            op,
            now_ms(),
            |msg, shards| {
                metrics::add(&self.metrics.published, 1);
                self.fan_out(msg, shards)
            },
        )
    }

    /// Hands a message to this shard's subscribers.
    fn deliver_locally(&self, msg: &Arc<Message>, now_ms: u64) {
        if !self.subscribers.borrow().deliver(msg, now_ms) {
            metrics::add(&self.metrics.expired, 1);
        }
    }

    /// Sends a new message once to each interested shard; local subscribers get it directly.
    fn fan_out(&self, msg: &Arc<Message>, shards: ShardSet) {
        for shard in shards.iter() {
            if shard == self.id {
                self.deliver_locally(msg, msg.timestamp_ms);
            } else {
                self.mesh.send(shard, Envelope::Deliver(Arc::clone(msg)));
            }
        }
    }

    /// Tells the owner this shard no longer has subscribers for `topic`.
    pub fn drop_interest(&self, owner: usize, topic: Arc<str>) {
        if owner == self.id {
            self.lose_interest(&topic, self.id);
        } else {
            self.mesh.send(
                owner,
                Envelope::DropInterest {
                    from: self.id,
                    topic,
                },
            );
        }
    }

    /// A connection slot for `key`, if fewer than `limit` are held process-wide.
    pub async fn acquire_quota(self: &Rc<Self>, key: QuotaKey, limit: u32) -> Option<QuotaSlot> {
        let owner = key.owner(self.count);
        let admitted = if owner == self.id {
            self.quotas.admit(key.clone(), limit)
        } else {
            matches!(
                self.mesh.admit(owner, key.clone(), limit).await,
                OpResult::Admitted(true)
            )
        };
        admitted.then(|| QuotaSlot::new(Rc::clone(self), key))
    }

    fn release_quota(&self, key: QuotaKey) {
        let owner = key.owner(self.count);
        if owner == self.id {
            self.quotas.release(&key);
        } else {
            self.mesh.send(owner, Envelope::Release(key));
        }
    }

    /// Claims an idempotency key at its owner. The claim of a key being published is
    /// answered only once that publish recorded its answer or gave the key up; callers
    /// bound the wait.
    pub async fn claim_key(&self, scope: Arc<Scope>, body_hash: u64) -> Claim {
        let owner = scope.owner(self.count);
        if owner != self.id {
            return match self.mesh.claim(owner, scope, body_hash).await {
                OpResult::Claim(claim) => claim,
                _ => Claim::Busy,
            };
        }
        let slot = Rc::new(Slot::default());
        let waiter = Waiter::Local(Rc::clone(&slot));
        let answer = self
            .idempotency
            .borrow_mut()
            .claim(scope, body_hash, now_ms(), waiter);
        match answer {
            Some(claim) => claim,
            None => slot.take().await,
        }
    }

    /// Records the answer of a claimed key at its owner (and with `persist` in Valkey,
    /// through the owner's link) and hands it to the duplicates waiting for it. Returns
    /// once the answer is kept; with persisted acks, once Valkey confirmed it.
    pub async fn record_key(
        &self,
        scope: Arc<Scope>,
        claim: u64,
        record: Arc<Recorded>,
        persist: bool,
    ) {
        let owner = scope.owner(self.count);
        if owner != self.id {
            self.mesh.record(owner, scope, claim, record, persist).await;
        } else if let Some(ticket) = self.keep_record(&scope, claim, record, persist) {
            // A refused write leaves the answer in memory only; the publish stands.
            let _ = ticket.wait().await;
        }
    }

    fn keep_record(
        &self,
        scope: &Scope,
        claim: u64,
        record: Arc<Recorded>,
        persist: bool,
    ) -> Option<store::Ticket> {
        let kept =
            self.idempotency
                .borrow_mut()
                .record(scope, claim, Arc::clone(&record), now_ms());
        let (waiters, answer) = kept?;
        self.answer_waiters(waiters, &answer);
        let window = self.config.limits.idempotency_window;
        persist
            .then(|| {
                self.store
                    .keep_answer(scope.parts(), &record.encode(), window)
            })
            .flatten()
    }

    /// Gives a claimed key up (its publish failed), so that a retry can publish.
    pub fn release_key(&self, scope: Arc<Scope>, claim: u64) {
        let owner = scope.owner(self.count);
        if owner == self.id {
            let waiters = self.idempotency.borrow_mut().release(&scope, claim);
            self.answer_waiters(waiters, &Claim::Released);
        } else {
            self.mesh.send(owner, Envelope::ReleaseKey { scope, claim });
        }
    }

    fn answer_waiters(&self, waiters: Vec<Waiter>, answer: &Claim) {
        for waiter in waiters {
            match waiter {
                Waiter::Local(slot) => slot.fill(answer.clone()),
                Waiter::Remote { shard, call } => self.mesh.send(
                    shard,
                    Envelope::Reply {
                        id: call,
                        result: OpResult::Claim(answer.clone()),
                    },
                ),
            }
        }
    }

    /// Runs the op `make` builds on every shard, this one included, for questions each
    /// shard answers about its own table; the results are in shard order.
    pub async fn call_all(&self, make: impl Fn() -> Op) -> Vec<OpResult> {
        let mut all = Vec::with_capacity(self.count);
        for shard in 0..self.count {
            all.push(self.call(shard, make()).await);
        }
        all
    }

    /// Every shard's metrics, this one's included, indexed by shard.
    pub async fn scrape_all(&self) -> Vec<metrics::Snapshot> {
        let mut all = Vec::with_capacity(self.count);
        for shard in 0..self.count {
            if shard == self.id {
                all.push(self.metrics_snapshot());
            } else if let OpResult::Metrics(snapshot) = self.mesh.scrape(shard).await {
                all.push(*snapshot);
            }
        }
        all
    }

    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let topics = self.topics.borrow();
        self.metrics.topics_dropped.set(topics.dropped());
        self.metrics.snapshot(metrics::Gauges {
            connections: self.conns.live() as u64,
            topics: topics.len() as u64,
            subscribed_topics: self.subscribers.borrow().topics() as u64,
            hot_tier_bytes: topics.bytes() as u64,
            mesh_backlog: (0..self.count).map(|s| self.mesh.backlog(s) as u64).sum(),
            valkey_backlog: self.store.pending_writes() as u64,
            valkey_up: self.store.link_up(),
            ..metrics::Gauges::default()
        })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    fn on_envelope(self: &Rc<Self>, env: Envelope) {
        match env {
            Envelope::Call { from, id, op } => {
                let (result, tickets) = match self.start(from, op) {
                    Started::Done(applied) => applied,
                    Started::Later(later) => {
                        let shard = Rc::clone(self);
                        spawn_local(async move {
                            let (result, tickets) = later.finish(&shard).await;
                            let result = owner::settle(result, tickets).await;
                            shard.mesh.send(from, Envelope::Reply { id, result });
                        })
                        .detach();
                        return;
                    }
                };
                if tickets.is_empty() {
                    self.mesh.send(from, Envelope::Reply { id, result });
                } else {
                    let shard = Rc::clone(self);
                    spawn_local(async move {
                        let result = owner::settle(result, tickets).await;
                        shard.mesh.send(from, Envelope::Reply { id, result });
                    })
                    .detach();
                }
            }
            Envelope::Reply { id, result } => self.mesh.complete(id, result),
            Envelope::Deliver(msg) => self.deliver_locally(&msg, now_ms()),
            Envelope::Scrape { from, id } => {
                let result = OpResult::Metrics(Box::new(self.metrics_snapshot()));
                self.mesh.send(from, Envelope::Reply { id, result });
            }
            Envelope::Admit {
                from,
                id,
                key,
                limit,
            } => {
                let result = OpResult::Admitted(self.quotas.admit(key, limit));
                self.mesh.send(from, Envelope::Reply { id, result });
            }
            Envelope::Release(key) => self.quotas.release(&key),
            Envelope::Claim {
                from,
                id,
                scope,
                body_hash,
            } => {
                let waiter = Waiter::Remote {
                    shard: from,
                    call: id,
                };
                let answer =
                    self.idempotency
                        .borrow_mut()
                        .claim(scope, body_hash, now_ms(), waiter);
                if let Some(claim) = answer {
                    let result = OpResult::Claim(claim);
                    self.mesh.send(from, Envelope::Reply { id, result });
                }
            }
            Envelope::Record {
                from,
                id,
                scope,
                claim,
                record,
                persist,
            } => {
                let ticket = self.keep_record(&scope, claim, record, persist);
                let shard = Rc::clone(self);
                let reply = move || {
                    let result = OpResult::Recorded;
                    shard.mesh.send(from, Envelope::Reply { id, result });
                };
                match ticket {
                    None => reply(),
                    Some(ticket) => {
                        spawn_local(async move {
                            let _ = ticket.wait().await;
                            reply();
                        })
                        .detach();
                    }
                }
            }
            Envelope::ReleaseKey { scope, claim } => self.release_key(scope, claim),
            Envelope::DropInterest { from, topic } => self.lose_interest(&topic, from),
            Envelope::Directory { from, id, op } => {
                let (reply, tickets) = self.apply_directory(op);
                let shard = Rc::clone(self);
                spawn_local(async move {
                    let result = OpResult::Directory(settle_directory(reply, tickets).await);
                    shard.mesh.send(from, Envelope::Reply { id, result });
                })
                .detach();
            }
            Envelope::Accounts(sync) => self.apply_account_sync(&sync),
        }
    }

    fn begin_shutdown(&self) {
        if !self.shutting_down.replace(true) {
            self.stop_accepting.raise();
            self.conns.begin_shutdown();
        }
    }
}

/// Why the relay could not start or stopped abnormally.
#[derive(Debug)]
pub enum RuntimeError {
    Bind(SocketAddr, io::Error),
    Executor(String),
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            RuntimeError::Executor(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// A bound but not yet running relay; [`Runtime::run`] blocks until shutdown completes.
pub struct Runtime {
    config: Config,
    auth: Authenticator,
    listeners: Vec<StdListener>,
    process: Arc<Process>,
}

impl Runtime {
    pub fn bind(config: Config, auth: Authenticator) -> Result<Runtime, RuntimeError> {
        let shards = config
            .shard_count()
            .clamp(1, crate::topic::ShardSet::MAX_SHARDS);
        let addr = resolve(&config.server.host, config.server.http_port)?;
        let (listeners, local_addr) =
            listener::bind_all(addr, shards).map_err(|e| RuntimeError::Bind(addr, e))?;
        let process = Arc::new(Process {
            shutdown: AtomicBool::new(false),
            serving: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            store_ok: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            draining: AtomicUsize::new(shards),
            connections: AtomicUsize::new(0),
            budget: ConnectionBudget::for_process(config.limits.max_connections, shards),
            accounts_ready: AtomicBool::new(false),
            local_addr,
        });
        Ok(Runtime {
            config,
            auth,
            listeners,
            process,
        })
    }

    pub fn process(&self) -> Arc<Process> {
        Arc::clone(&self.process)
    }

    /// Starts every shard and waits for them to finish (after `process.shutdown` is set).
    pub fn run(self) -> Result<(), RuntimeError> {
        let shards = self.listeners.len();
        let allowed = executor::allowed_cpus().map_err(|e| {
            RuntimeError::Executor(format!("cannot read the CPUs this process may use: {e}"))
        })?;
        let mut handles = Vec::with_capacity(shards);
        for ((id, listener), ends) in self
            .listeners
            .into_iter()
            .enumerate()
            .zip(mesh::build(shards))
        {
            let config = self.config.clone();
            let auth = self.auth.clone();
            let process = Arc::clone(&self.process);
            let fd = listener.into_raw_fd();
            let cpu = executor::cpu_for(id, &allowed);
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("shard-{id}"))
                .spawn(move || async move {
                    // SAFETY: `fd` is a listening socket whose ownership moved here.
                    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                    shard_main(id, shards, config, auth, process, ends, listener).await
                });
            match spawned {
                Ok(handle) => handles.push((id, cpu, handle)),
                Err(e) => {
                    self.process.shutdown.store(true, Ordering::Release);
                    return Err(RuntimeError::Executor(executor::explain(
                        id,
                        cpu,
                        &e.to_string(),
                    )));
                }
            }
        }
        let mut failure = None;
        for (id, cpu, handle) in handles {
            if let Err(e) = handle.join() {
                self.process.shutdown.store(true, Ordering::Release);
                failure.get_or_insert_with(|| {
                    RuntimeError::Executor(executor::explain(id, cpu, &e.to_string()))
                });
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, RuntimeError> {
    use std::net::ToSocketAddrs;
    let unresolved = || {
        RuntimeError::Bind(
            SocketAddr::from(([0, 0, 0, 0], port)),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve host {host:?}"),
            ),
        )
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|_| unresolved())?
        .next()
        .ok_or_else(unresolved)
}

async fn shard_main(
    id: usize,
    count: usize,
    config: Config,
    auth: Authenticator,
    process: Arc<Process>,
    ends: MeshEnds,
    listener: glommio::net::TcpListener,
) {
    let (mesh, receivers) = Mesh::connect(id, ends).await;
    let limits = TopicLimits {
        messages_per_topic: config.storage.hot_tier_messages_per_topic,
        max_bytes: config.storage.hot_tier_max_bytes as usize,
        max_kept_records: config.storage.max_topic_records_per_shard,
    };
    let metrics = Rc::new(ShardMetrics::default());
    let (store, link) = Store::for_shard(&config, id, &metrics);
    let persistent = store.is_persistent();
    let publish_rates = PublishRates::new(
        config.limits.publish_rate,
        config.limits.publish_bytes_rate as u64,
    );
    let login_rates = LoginRates::new(config.accounts.login_rate);
    let idempotency = idempotency::Table::new(
        config.limits.idempotency_window.as_millis() as u64,
        idempotency::Bounds::DEFAULT,
    );
    let shard = Rc::new_cyclic(|me| Shard {
        me: Weak::clone(me),
        id,
        count,
        config,
        auth,
        process: Arc::clone(&process),
        mesh,
        topics: RefCell::new(TopicTable::new(
            limits,
            persistent,
            crate::topic::IdClock::new(id, count),
        )),
        loads: loads::Loads::default(),
        subscribers: RefCell::new(LocalSubscribers::default()),
        publish_rates,
        login_rates,
        quotas: Quotas::default(),
        idempotency: RefCell::new(idempotency),
        store,
        metrics,
        recovered: Cell::new(!persistent),
        conns: ConnTable::default(),
        accounts: RefCell::new(account::Replica::default()),
        directory: RefCell::new(None),
        account_generation: Cell::new(0),
        account_watchers: RefCell::new(HashMap::new()),
        stop_accepting: Signal::default(),
        shutting_down: Cell::new(false),
    });
    for (_, receiver) in receivers {
        let shard = Rc::clone(&shard);
        spawn_local(async move {
            while let Some(env) = receiver.recv().await {
                shard.on_envelope(env);
            }
        })
        .detach();
    }
    if let Some(link) = link {
        spawn_local(link.run()).detach();
        spawn_local(loads::recover(Rc::clone(&shard))).detach();
    }
    if id == DIRECTORY_SHARD {
        spawn_local(open_directory(Rc::clone(&shard))).detach();
    }
    let housekeeping = spawn_local(housekeeping(Rc::clone(&shard)));
    // The memory backend has nothing to wait for; Valkey's state is then kept by the tick.
    process.store_ok[id].store(!persistent, Ordering::Release);
    process.serving[id].store(true, Ordering::Release);
    accept_loop(&shard, listener).await;
    process.serving[id].store(false, Ordering::Release);
    housekeeping.await;
}

async fn accept_loop(shard: &Rc<Shard>, listener: glommio::net::TcpListener) {
    let mut last_logged_ms = 0;
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.stop_accepting.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let open = shard.process.connections.load(Ordering::Relaxed);
                match shard.process.budget.admit(open) {
                    Admission::Shed => {
                        let why = "the relay is at its connection limit";
                        spawn_local(crate::api::refuse(stream, why)).detach();
                    }
                    admission => {
                        let serve = crate::api::serve(Rc::clone(shard), stream, admission);
                        spawn_local(serve).detach();
                    }
                }
            }
            Some(Err(e)) => {
                let backoff = match &e {
                    glommio::GlommioError::IoError(io) if listener::is_fd_exhaustion(io) => 100,
                    _ => 10,
                };
                // A lasting failure would otherwise fill the log ten lines a second.
                if now_ms().saturating_sub(last_logged_ms) >= 10_000 {
                    last_logged_ms = now_ms();
                    crate::log_line!(
                        "shard {}: accept failed: {e}; retrying every {backoff} ms (logged once per 10 s)",
                        shard.id
                    );
                }
                sleep(Duration::from_millis(backoff)).await;
            }
        }
    }
}

/// A directory write failed to persist: the change happened in memory but may not survive
/// a restart, so the caller is told it did not succeed.
async fn settle_directory(reply: DirectoryReply, tickets: Vec<store::Ticket>) -> DirectoryReply {
    for ticket in tickets {
        if ticket.wait().await.is_err() {
            return DirectoryReply::Failed(AccountError::Unavailable);
        }
    }
    reply
}

/// Loads the accounts (retrying until Valkey answers), ensures the bootstrap administrator,
/// and hands every shard its replica.
async fn open_directory(shard: Rc<Shard>) {
    let started = now_ms();
    let mut logged = false;
    let loaded = loop {
        match shard.store.load_accounts().await {
            Ok(loaded) => break loaded,
            Err(e) => {
                if !logged && now_ms() - started > 2000 {
                    crate::log_line!("accounts: waiting for Valkey to load user accounts: {e}");
                    logged = true;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let refresh_ttl = shard.config.accounts.refresh_token_ttl.as_millis() as u64;
    let dir = Directory::restore(loaded.users, loaded.tokens, loaded.denied, refresh_ttl);
    let snapshot = dir.snapshot();
    *shard.directory.borrow_mut() = Some(dir);
    shard.broadcast_accounts(snapshot);
    if let Err(e) = crate::api::accounts::ensure_bootstrap_admin(&shard).await {
        crate::log_line!("accounts: bootstrap administrator not set up: {e}");
    }
    shard.broadcast_accounts(AccountSync::Ready);
    shard.process.accounts_ready.store(true, Ordering::Release);
}

/// How often expired refresh tokens and deny-list entries are dropped.
const ACCOUNT_SWEEP_MS: u64 = 60_000;

fn sweep_accounts(shard: &Shard, now: u64) {
    shard.accounts.borrow_mut().sweep(now);
    let writes = match shard.directory.borrow_mut().as_mut() {
        Some(dir) => dir.sweep(now),
        None => return,
    };
    drop(shard.store.write_accounts(writes));
    shard.store.prune_denied(now);
}

/// The shard's coarse clock: connection deadlines, and the shutdown sequence.
async fn housekeeping(shard: Rc<Shard>) {
    let grace = shard.config.server.shutdown_grace;
    let mut shutdown_started: Option<u64> = None;
    let mut drained = false;
    let mut swept = now_ms();
    loop {
        sleep(conns::TICK).await;
        let now = now_ms();
        shard.conns.tick(now);
        if now.saturating_sub(swept) >= ACCOUNT_SWEEP_MS {
            swept = now;
            sweep_accounts(&shard, now);
        }
        shard.idempotency.borrow_mut().sweep(now);
        {
            let mut topics = shard.topics.borrow_mut();
            topics.confirmed(shard.store.durable_upto());
            topics.compact();
        }
        let store_ok = shard.recovered.get() && shard.store.health().is_ok();
        shard.process.store_ok[shard.id].store(store_ok, Ordering::Release);
        if shutdown_started.is_none() && shard.process.shutdown.load(Ordering::Acquire) {
            shutdown_started = Some(now);
            shard.begin_shutdown();
        }
        let Some(started) = shutdown_started else {
            continue;
        };
        // Writes already accepted go out before the process exits (unless Valkey is gone).
        let writes_done = shard.store.pending_writes() == 0 || shard.store.health().is_err();
        if !drained && shard.conns.live() == 0 && writes_done {
            drained = true;
            shard.process.draining.fetch_sub(1, Ordering::AcqRel);
        }
        // Stay up (answering mesh calls) until every shard drained, or the grace ran out.
        let all_drained = shard.process.draining.load(Ordering::Acquire) == 0;
        if all_drained || now.saturating_sub(started) >= grace.as_millis() as u64 {
            return;
        }
    }
}
