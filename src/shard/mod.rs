//! The runtime: one pinned glommio executor per shard, and what each shard owns.
//!
//! A [`Shard`] owns, and is the only thread to touch: its listener and the connections it
//! accepted, the topics hashed to it ([`TopicTable`]), its local subscriber index, and its
//! ends of the mesh. Nothing here is behind a lock; state shared with other shards is sent
//! to its owner through [`mesh`]. The only process-wide state is [`Process`]: atomics that
//! the main thread and `/ready` read (shutdown flag, per-shard readiness).
//!
//! glommio stays behind this module: the protocol code sees `Shard`, `TcpStream` and the
//! spawn/sleep calls re-exported here, so the runtime could be swapped without touching it.

pub mod conns;
pub mod listener;
pub mod mesh;
pub mod owner;
pub mod quota;
pub mod signal;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};

pub use glommio::net::TcpStream;
pub use glommio::spawn_local;
pub use glommio::timer::sleep;

use crate::api::limits::PublishRates;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::{self, ShardMetrics};
use crate::store::{self, Store};
use crate::topic::subscribers::LocalSubscribers;
use crate::topic::{Message, RingLimits, ShardSet, TopicTable};
use conns::ConnTable;
use mesh::{Envelope, Mesh, MeshEnds};
use owner::{Op, OpResult};
use quota::{QuotaKey, QuotaSlot, Quotas};
use signal::Signal;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    /// Open client connections, all shards together (for `limits.max_connections`).
    pub connections: AtomicUsize,
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
        Ok(())
    }
}

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Config,
    pub auth: Authenticator,
    pub process: Arc<Process>,
    pub mesh: Mesh,
    pub topics: RefCell<TopicTable>,
    pub subscribers: RefCell<LocalSubscribers>,
    pub store: Store,
    pub metrics: Rc<ShardMetrics>,
    /// Publish rate buckets of the token subjects seen on this shard.
    pub publish_rates: PublishRates,
    /// Connection counts of the quota keys this shard owns.
    quotas: Quotas,
    /// The owned topics' last IDs have been read back from the persistent tier (always
    /// true for the memory backend); publishes wait for it.
    recovered: Cell<bool>,
    pub conns: ConnTable,
    stop_accepting: Signal,
    shutting_down: Cell<bool>,
}

impl Shard {
    /// Runs `op` on the shard that owns the topic: here, or through the mesh.
    pub async fn call(&self, owner: usize, op: Op) -> OpResult {
        if owner == self.id {
            let (result, tickets) = self.apply(self.id, op);
            owner::settle(result, tickets).await
        } else {
            self.mesh.call(owner, op).await
        }
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
            self.topics.borrow_mut().drop_interest(&topic, self.id);
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
        self.metrics.snapshot(metrics::Gauges {
            connections: self.conns.live() as u64,
            topics: topics.len() as u64,
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
                let (result, tickets) = self.apply(from, op);
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
            Envelope::DropInterest { from, topic } => {
                self.topics.borrow_mut().drop_interest(&topic, from)
            }
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
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
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
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
                .name(&format!("shard-{id}"))
                .spawn(move || async move {
                    // SAFETY: `fd` is a listening socket whose ownership moved here.
                    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                    shard_main(id, shards, config, auth, process, ends, listener).await
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.process.shutdown.store(true, Ordering::Release);
                    return Err(RuntimeError::Executor(executor_hint(&e.to_string())));
                }
            }
        }
        let mut failure = None;
        for handle in handles {
            if let Err(e) = handle.join() {
                self.process.shutdown.store(true, Ordering::Release);
                failure
                    .get_or_insert_with(|| RuntimeError::Executor(executor_hint(&e.to_string())));
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// io_uring is the usual reason an executor cannot start; say so plainly.
fn executor_hint(error: &str) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|v| v.trim() != "0")
        .unwrap_or(false);
    let mut msg = format!("cannot start a shard executor: {error}.");
    msg.push_str(
        " Pulsar Relay needs io_uring (Linux >= 5.8). Containers using Docker's default seccomp \
         profile block it; check also that kernel.io_uring_disabled is 0",
    );
    if disabled {
        msg.push_str(" (it is not on this host)");
    }
    msg.push_str(", and that RLIMIT_MEMLOCK allows at least 512 KiB per shard (ulimit -l).");
    msg
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
    let limits = RingLimits {
        messages_per_topic: config.storage.hot_tier_messages_per_topic,
        max_bytes: config.storage.hot_tier_max_bytes as usize,
    };
    let metrics = Rc::new(ShardMetrics::default());
    let (store, link) = Store::for_shard(&config, id, &metrics);
    let persistent = store.is_persistent();
    let publish_rates = PublishRates::new(
        config.limits.publish_rate,
        config.limits.publish_bytes_rate as u64,
    );
    let shard = Rc::new(Shard {
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
        subscribers: RefCell::new(LocalSubscribers::default()),
        publish_rates,
        quotas: Quotas::default(),
        store,
        metrics,
        recovered: Cell::new(!persistent),
        conns: ConnTable::default(),
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
        spawn_local(recover(Rc::clone(&shard))).detach();
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
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.stop_accepting.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let max = shard.config.limits.max_connections;
                if max > 0 && shard.process.connections.load(Ordering::Relaxed) >= max {
                    let why = "the relay is at its connection limit";
                    spawn_local(crate::api::refuse(stream, why)).detach();
                } else {
                    spawn_local(crate::api::serve(Rc::clone(shard), stream)).detach();
                }
            }
            Some(Err(e)) => {
                let backoff = match &e {
                    glommio::GlommioError::IoError(io) if listener::is_fd_exhaustion(io) => 100,
                    _ => 10,
                };
                eprintln!(
                    "shard {}: accept failed: {e}; retrying in {backoff} ms",
                    shard.id
                );
                sleep(Duration::from_millis(backoff)).await;
            }
        }
    }
}

/// Reads the owned topics back from the persistent tier, retrying until Valkey answers.
async fn recover(shard: Rc<Shard>) {
    let mut logged = false;
    let started = now_ms();
    loop {
        match shard.store.recover(shard.id, shard.count).await {
            Ok(topics) => {
                let mut table = shard.topics.borrow_mut();
                for t in topics {
                    table.restore(&t.topic, t.last_id, t.positions);
                    if let Some(record) = t.record {
                        table.restore_record(&t.topic, record);
                    }
                }
                shard.recovered.set(true);
                return;
            }
            Err(e) => {
                // The link is usually still connecting on the first tries; only a lasting
                // failure is worth a line.
                if !logged && now_ms() - started > 2000 {
                    eprintln!(
                        "shard {}: waiting for Valkey to recover topics: {e}",
                        shard.id
                    );
                    logged = true;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The shard's coarse clock: connection deadlines, and the shutdown sequence.
async fn housekeeping(shard: Rc<Shard>) {
    let grace = shard.config.server.shutdown_grace;
    let mut shutdown_started: Option<u64> = None;
    let mut drained = false;
    loop {
        sleep(conns::TICK).await;
        let now = now_ms();
        shard.conns.tick(now);
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
