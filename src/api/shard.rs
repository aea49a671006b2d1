//! What runs on each shard: the relay's state there, the one typed way to reach the shard
//! that owns a piece of state, the fan-out of new messages, the account directory's
//! plumbing, and the shard's housekeeping.
//!
//! A [`Shard`] owns, and is the only thread to touch: the connections it accepted (through
//! the runtime's [`Core`]), the topics hashed to it (`topic::Owner`), the idempotency keys
//! and connection quotas hashed to it, its local subscriber index, its copy of the account
//! state and its link to the persistent tier. Nothing here is behind a lock; state owned
//! by another shard is reached with one of the `on_*` helpers below, each a typed call
//! (`rt::mesh::on_shard`) whose work runs on the owner and whose answer comes back. Adding a
//! cross-shard operation means writing the owner-side handler and calling it through the
//! helper of its kind of state; nothing else changes.
//!
//! The only process-wide state besides the runtime's is [`Health`]: atomics that `/ready`
//! reads (each shard's persistent tier, the accounts loaded).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::account_nodes::{self, NodeAccounts};
use super::idempotency::{Keys, Scope};
use super::limits::{LoginRates, PublishRates};
use super::quota::{QuotaKey, Quotas};
use crate::account::{AccountError, AccountSync, Accounts, Directory, DirectoryOp, DirectoryReply};
use crate::auth::Authenticator;
use crate::config::{Config, Cores};
use crate::metrics::{self, ShardMetrics};
use crate::rt::budget::Admission;
use crate::rt::conns::ConnTable;
use crate::rt::lateness::{self, Lateness};
use crate::rt::mesh::{self, Answer};
use crate::rt::{
    now_ms, sleep, spawn_local, Core, Host, Process, Settings, ShardPlacement, TcpStream,
};
use crate::store::Store;
use crate::tls::client::ClientTls;
use crate::tls::server::{Acceptor, ServerTls};
use crate::topic::subscribers::LocalSubscribers;
use crate::topic::{self, owner_of, Message, ShardSet, TopicLimits};

/// The shard that holds the account directory.
pub const DIRECTORY_SHARD: usize = 0;

/// How often expired refresh tokens and deny-list entries are dropped.
const ACCOUNT_SWEEP_MS: u64 = 60_000;

/// Readiness facts of the relay's own state, shared by all shards (atomics only).
pub struct Health {
    /// Per shard, refreshed every tick: the persistent tier is usable (always true for the
    /// memory backend).
    store_ok: Vec<AtomicBool>,
    /// The directory shard has loaded the user accounts.
    accounts_ready: AtomicBool,
}

/// The relay as the runtime starts it: what every shard is built from.
pub struct Relay {
    config: Config,
    auth: Authenticator,
    health: Arc<Health>,
    tls: Transport,
}

/// The TLS the relay speaks: on its listener (HTTPS/WSS) and to Valkey, loaded and checked
/// before the shards start.
#[derive(Clone, Default)]
pub struct Transport {
    pub listener: Option<ServerTls>,
    pub valkey: Option<ClientTls>,
}

impl Relay {
    /// The runtime settings `config` asks for.
    pub fn settings(config: &Config) -> Settings {
        Settings {
            host: config.server.host.clone(),
            port: config.server.http_port,
            // A topic's interested shards are a `ShardSet`, which has room for so many.
            shards: config.shard_count().clamp(1, ShardSet::MAX_SHARDS),
            placement: match config.server.cores {
                Cores::Shared => ShardPlacement::Floating,
                Cores::Dedicated => ShardPlacement::Pinned,
            },
            max_connections: config.limits.max_connections,
            shutdown_grace: config.server.shutdown_grace,
        }
    }

    pub fn new(config: Config, auth: Authenticator, shards: usize, tls: Transport) -> Relay {
        Relay {
            config,
            auth,
            tls,
            health: Arc::new(Health {
                store_ok: (0..shards).map(|_| AtomicBool::new(false)).collect(),
                accounts_ready: AtomicBool::new(false),
            }),
        }
    }

    /// Builds the shard the runtime placed in `core` and starts its background work.
    pub fn shard(&self, core: Core<Shard>) -> Rc<Shard> {
        let config = self.config.clone();
        let metrics = Rc::new(ShardMetrics::default());
        let (store, link) = Store::for_shard(&config, self.tls.valkey.as_ref(), core.id, &metrics);
        let store = Rc::new(store);
        let max_queue_delay = config.limits.max_queue_delay;
        let limits = TopicLimits {
            messages_per_topic: config.storage.hot_tier_messages_per_topic,
            max_bytes: config.storage.hot_tier_max_bytes as usize,
            max_kept_records: config.storage.max_topic_records_per_shard,
        };
        let topics = topic::Owner::new(
            core.id,
            core.count,
            limits,
            Rc::clone(&store),
            Rc::clone(&metrics),
        );
        let shard = Rc::new(Shard {
            publish_rates: PublishRates::new(
                config.limits.publish_rate,
                config.limits.publish_bytes_rate as u64,
            ),
            login_rates: LoginRates::new(config.accounts.login_rate),
            keys: Keys::new(config.limits.idempotency_window.as_millis() as u64),
            quotas: Quotas::default(),
            topics,
            subscribers: RefCell::new(LocalSubscribers::default()),
            accounts: Rc::new(Accounts::default()),
            node_accounts: (config.cluster.enabled && core.id == DIRECTORY_SHARD)
                .then(|| Rc::new(NodeAccounts::new())),
            store,
            metrics,
            config,
            auth: self.auth.clone(),
            health: Arc::clone(&self.health),
            tls: self.tls.listener.as_ref().map(ServerTls::acceptor),
            accounts_swept: Cell::new(now_ms()),
            lateness: Rc::new(Lateness::new(max_queue_delay, std::time::Instant::now())),
            core,
        });
        lateness::start(&shard.lateness);
        if let Some(link) = link {
            spawn_local(link.run()).detach();
        }
        if let Some(listener) = shard.store.listener_driver() {
            spawn_local(listener).detach();
            let fanned = Rc::downgrade(&shard);
            shard.topics.set_fanout(move |msg, shards| {
                if let Some(shard) = fanned.upgrade() {
                    shard.fan_out(msg, shards);
                }
            });
        }
        shard.topics.start();
        if shard.id() == DIRECTORY_SHARD {
            spawn_local(open_directory(Rc::clone(&shard))).detach();
        }
        // The memory backend has nothing to wait for; Valkey's state is then kept by the tick.
        shard.health.store_ok[shard.id()].store(!shard.store.is_persistent(), Ordering::Release);
        shard
    }
}

pub struct Shard {
    core: Core<Shard>,
    pub config: Config,
    pub auth: Authenticator,
    health: Arc<Health>,
    pub store: Rc<Store>,
    pub metrics: Rc<ShardMetrics>,
    /// The topics this shard owns.
    pub topics: Rc<topic::Owner>,
    /// This shard's subscriptions, by topic.
    pub subscribers: RefCell<LocalSubscribers>,
    /// This shard's copy of the account state (and the directory on [`DIRECTORY_SHARD`]).
    pub accounts: Rc<Accounts>,
    /// In cluster mode, on [`DIRECTORY_SHARD`]: this node's place among the others.
    node_accounts: Option<Rc<NodeAccounts>>,
    /// The idempotency keys this shard owns.
    pub keys: Keys,
    /// The connection counts of the quota keys this shard owns.
    pub quotas: Quotas,
    /// Publish rate buckets of the token subjects seen on this shard.
    pub publish_rates: PublishRates,
    /// Login and token-refresh attempts of the client addresses seen on this shard.
    pub login_rates: LoginRates,
    /// The listener's TLS handshake, when it speaks HTTPS/WSS.
    pub tls: Option<Acceptor>,
    accounts_swept: Cell<u64>,
    /// How late this shard's work runs; publishes are refused while it is too late.
    pub lateness: Rc<Lateness>,
}

impl Shard {
    pub fn id(&self) -> usize {
        self.core.id
    }

    /// How many shards run.
    pub fn count(&self) -> usize {
        self.core.count
    }

    pub fn process(&self) -> &Process {
        &self.core.process
    }

    pub fn conns(&self) -> &ConnTable {
        &self.core.conns
    }

    pub fn is_shutting_down(&self) -> bool {
        self.core.is_shutting_down()
    }

    /// `Err` naming the first failing check, for `/ready`.
    pub fn readiness(&self) -> Result<(), String> {
        self.core.process.serving()?;
        let health = &self.health;
        if let Some(shard) = health
            .store_ok
            .iter()
            .position(|s| !s.load(Ordering::Acquire))
        {
            return Err(format!(
                "valkey: shard {shard} cannot use Valkey (unreachable, or still recovering its topics)"
            ));
        }
        if !health.accounts_ready.load(Ordering::Acquire) {
            return Err("accounts: the user accounts are still loading".to_owned());
        }
        Ok(())
    }

    /// Runs `work` on the shard that owns `topic` (its topics are `topics` there).
    pub async fn on_topic<R, L, F>(self: &Rc<Self>, topic: &str, work: F) -> R
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_shard(self, owner_of(topic, self.count()), work).await
    }

    /// Runs each `(owner shard, work)` at once (work grouped by the owners of its topics)
    /// and resolves to the answers in the same order.
    pub async fn on_topic_owners<R, L, F>(
        self: &Rc<Self>,
        work: impl IntoIterator<Item = (usize, F)>,
    ) -> Vec<R>
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_shards(self, work).await
    }

    /// Runs `work` on the shard that owns the idempotency key `scope` (its keys are `keys`
    /// there).
    pub async fn on_key<R, L, F>(self: &Rc<Self>, scope: &Scope, work: F) -> R
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_shard(self, scope.owner(self.count()), work).await
    }

    /// Runs `work` on the shard that counts the connections of `key` (`quotas` there).
    pub async fn on_quota<R, L, F>(self: &Rc<Self>, key: &QuotaKey, work: F) -> R
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_shard(self, key.owner(self.count()), work).await
    }

    /// Runs `work` on the shard that holds the account directory.
    pub async fn on_directory<R, L, F>(self: &Rc<Self>, work: F) -> R
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_shard(self, DIRECTORY_SHARD, work).await
    }

    /// Runs the work `make` builds on every shard, this one included, for questions each
    /// shard answers about its own state; the answers are in shard order.
    pub async fn on_every_shard<R, L, F>(self: &Rc<Self>, make: impl Fn() -> F) -> Vec<R>
    where
        F: FnOnce(&Rc<Shard>) -> Answer<R, L> + Send + 'static,
        R: Send + 'static,
        L: Future<Output = R> + 'static,
    {
        mesh::on_every_shard(self, make).await
    }

    /// Runs `work` on shard `to` without waiting for it.
    pub fn post(self: &Rc<Self>, to: usize, work: impl FnOnce(&Rc<Shard>) + Send + 'static) {
        mesh::post(self, to, work)
    }

    /// Sends a new message once to each interested shard; local subscribers get it
    /// directly. The fan-out of the topic owner's publish handler.
    pub fn fan_out(&self, msg: &Arc<Message>, shards: ShardSet) {
        for shard in shards.iter() {
            if shard == self.id() {
                self.deliver_locally(msg, msg.timestamp_ms);
            } else {
                self.core.mesh.note(shard, Arc::clone(msg));
            }
        }
    }

    /// Hands a message to this shard's subscribers.
    fn deliver_locally(&self, msg: &Arc<Message>, now_ms: u64) {
        if !self.subscribers.borrow().deliver(msg, now_ms) {
            metrics::add(&self.metrics.expired, 1);
        }
    }

    /// Tells `topic`'s owner that this shard no longer has subscribers for it.
    pub fn drop_interest(self: &Rc<Self>, topic: Arc<str>) {
        let from = self.id();
        self.post(owner_of(&topic, self.count()), move |owner| {
            owner.topics.lose_interest(&topic, from)
        });
    }

    /// Runs an account operation on the directory shard and returns its answer; by then
    /// this shard's replica already reflects the change (the mesh is FIFO per pair, and
    /// the directory sends the change before the answer).
    pub async fn directory(self: &Rc<Self>, op: DirectoryOp) -> DirectoryReply {
        if self.config.cluster.enabled {
            return self
                .on_directory(move |dir| dir.apply_across_nodes(op))
                .await;
        }
        self.on_directory(move |dir| dir.apply_directory(op)).await
    }

    /// Applies an account operation here (the directory shard) in cluster mode: committed
    /// through Valkey before the replicas learn of it (`account_nodes`).
    fn apply_across_nodes(
        self: &Rc<Self>,
        op: DirectoryOp,
    ) -> Answer<DirectoryReply, impl Future<Output = DirectoryReply>> {
        let shard = Rc::clone(self);
        Answer::Later(async move {
            match shard.node_accounts.clone() {
                Some(node) => account_nodes::apply(shard, node, op).await,
                None => DirectoryReply::Failed(AccountError::Unavailable),
            }
        })
    }

    /// Applies an account operation here (the directory shard): replicas first, then the
    /// persistent tier's writes, whose confirmation the answer waits for. A write that
    /// fails to persist makes the answer a failure: the change happened in memory but may
    /// not survive a restart.
    fn apply_directory(
        self: &Rc<Self>,
        op: DirectoryOp,
    ) -> Answer<DirectoryReply, impl Future<Output = DirectoryReply>> {
        let Some(applied) = self.accounts.apply(op, now_ms()) else {
            return Answer::Now(DirectoryReply::Failed(AccountError::Unavailable));
        };
        for sync in applied.syncs {
            self.broadcast_accounts(sync);
        }
        let tickets = self.store.write_accounts(applied.writes);
        let reply = applied.reply;
        if tickets.is_empty() {
            return Answer::Now(reply);
        }
        // Tickets come only with a limit (persisted or replicated acks).
        let limit = self.store.ack_timeout().unwrap_or_default();
        Answer::Later(async move {
            match crate::store::confirmed_within(tickets, limit).await {
                Ok(()) => reply,
                Err(_) => DirectoryReply::Failed(AccountError::Unavailable),
            }
        })
    }

    /// Applies an account change here and sends it to every other shard's replica.
    pub(super) fn broadcast_accounts(self: &Rc<Self>, sync: AccountSync) {
        self.accounts.apply_sync(&sync);
        let sync = Arc::new(sync);
        for shard in (0..self.count()).filter(|s| *s != self.id()) {
            let sync = Arc::clone(&sync);
            self.post(shard, move |s| s.accounts.apply_sync(&sync));
        }
    }

    /// Every shard's metrics, this one's included, indexed by shard.
    pub async fn scrape_all(self: &Rc<Self>) -> Vec<metrics::Snapshot> {
        self.on_every_shard(|| |s: &Rc<Shard>| Answer::now(s.metrics_snapshot()))
            .await
    }

    pub(super) fn metrics_snapshot(&self) -> metrics::Snapshot {
        let (topics, hot_tier_bytes, dropped) = self.topics.gauges();
        self.metrics.topics_dropped.set(dropped);
        let mut snapshot = self.metrics.snapshot(
            metrics::Gauges {
                connections: self.conns().live() as u64,
                topics: topics as u64,
                subscribed_topics: self.subscribers.borrow().topics() as u64,
                hot_tier_bytes: hot_tier_bytes as u64,
                mesh_backlog: (0..self.count())
                    .map(|s| self.core.mesh.backlog(s) as u64)
                    .sum(),
                valkey_backlog: self.store.pending_writes() as u64,
                valkey_up: self.store.link_up(),
                pubsub: self.store.pubsub_state(),
                queue_delay_micros: self.lateness.peak(std::time::Instant::now()).as_micros()
                    as u64,
                ..metrics::Gauges::default()
            },
            self.store.primary_states(),
        );
        snapshot.pubsub_connections = self.store.pubsub_connections();
        snapshot
    }
}

impl Host for Shard {
    type Note = Arc<Message>;

    fn core(&self) -> &Core<Shard> {
        &self.core
    }

    fn on_note(self: &Rc<Self>, msg: Arc<Message>) {
        self.deliver_locally(&msg, now_ms());
    }

    fn serve(
        self: &Rc<Self>,
        stream: TcpStream,
        admission: Admission,
    ) -> impl Future<Output = ()> + 'static {
        super::serve(Rc::clone(self), stream, admission)
    }

    fn tick(&self, now: u64) {
        if now.saturating_sub(self.accounts_swept.get()) >= ACCOUNT_SWEEP_MS {
            self.accounts_swept.set(now);
            if let Some(writes) = self.accounts.sweep(now) {
                drop(self.store.write_accounts(writes));
                self.store.prune_denied(now);
            }
        }
        self.keys.sweep(now);
        self.metrics.sample(now);
        self.topics.tick();
        let store_ok = self.topics.is_recovered() && self.store.health().is_ok();
        self.health.store_ok[self.id()].store(store_ok, Ordering::Release);
    }

    fn settled(&self) -> bool {
        // Writes already accepted go out before the process exits (unless Valkey is gone).
        self.store.pending_writes() == 0 || self.store.health().is_err()
    }
}

/// Loads the accounts (retrying until Valkey answers), ensures the bootstrap administrator,
/// and hands every shard its replica.
/// In cluster mode the directory then follows the other nodes' changes.
async fn open_directory(shard: Rc<Shard>) {
    let started = now_ms();
    let mut logged = false;
    loop {
        let opened = match shard.node_accounts.clone() {
            Some(node) => account_nodes::load(&shard, &node).await,
            None => shard.store.load_accounts().await.map(|loaded| {
                let refresh_ttl = shard.config.accounts.refresh_token_ttl.as_millis() as u64;
                let dir =
                    Directory::restore(loaded.users, loaded.tokens, loaded.denied, refresh_ttl);
                let snapshot = shard.accounts.open(dir);
                shard.broadcast_accounts(snapshot);
            }),
        };
        match opened {
            Ok(()) => break,
            Err(e) => {
                if !logged && now_ms() - started > 2000 {
                    crate::log_line!("accounts: waiting for Valkey to load user accounts: {e}");
                    logged = true;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if let Some(node) = shard.node_accounts.clone() {
        spawn_local(account_nodes::follow(Rc::clone(&shard), node)).detach();
    }
    if let Err(e) = super::accounts::ensure_bootstrap_admin(&shard).await {
        crate::log_line!("accounts: bootstrap administrator not set up: {e}");
    }
    shard.broadcast_accounts(AccountSync::Ready);
    shard.health.accounts_ready.store(true, Ordering::Release);
}
