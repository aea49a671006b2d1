//! The persistent tier: what the relay keeps beyond the hot tier, and where.
//!
//! With `storage.backend: memory` there is nothing beyond the hot tier and every method
//! here is a no-op or an empty answer. With `valkey`, each shard owns one
//! [`connection::Connection`] (a [`link::Link`] to a standalone server, or a
//! [`cluster::Cluster`] router with a connection per primary) and writes through it only
//! for the topics it owns (the owner is the only writer of a topic's stream); any shard may
//! read any stream for history. No command names keys of two hash slots (see the layout).
//!
//! Key layout (the `{topic}` hash tag keeps a topic's keys in one Valkey Cluster slot):
//! - `<prefix>:{<topic>}:s` — the topic's stream ([`stream`]). Entry ID = message ID;
//!   fields `p` (payload JSON), `t` (timestamp ms), optional `m` (metadata JSON) and `l`
//!   (TTL ms). Written with `XADD … MAXLEN ~ <storage.max_messages_per_topic> <id> …`, and
//!   trimmed to `storage.persistent_tier_retention` with `XTRIM … MINID ~` at most every
//!   10 s per topic (while the topic is in memory; its owner tracks when).
//! - `<prefix>:{<topic>}:c` — hash of durable consumer positions ([`topics`]): consumer
//!   key → last acknowledged message ID.
//! - `<prefix>:{<topic>}:t` — the topic's record (Topics API, [`topics`]): fields
//!   `topic_id`, `topic_name` (bare name), `owner_id`, `created_at` (ms) and, when set,
//!   `description`. Deleting a topic deletes all three keys.
//!
//! A topic the owner dropped from memory lives on in these keys: [`Store::load_topic`]
//! reads its positions, record and last ID back before anything depends on them, and
//! record listings ([`Store::records`]) read the records from here.
//! - `<prefix>:{<topic>}:l` — cluster mode: the stream's last ID, for announcements
//!   (see [`announce`]); `<prefix>:{<topic>}:n` is the topic's pub/sub channel.
//! - `<prefix>:{<topic>}:r` — the ID of a message whose replication a retried publish
//!   checked ([`Store::replicated`]); a marker for `WAIT`, expiring with the idempotency
//!   window.
//! - `<prefix>:{relay}:epoch` — sentinel that reveals a Valkey that lost its data; on a
//!   cluster also `<prefix>:{relay.<n>}:epoch`, one per primary (`cluster::sentinel`).
//! - `<prefix>:idem:{<subject>}:<endpoint>:<key>` — the first answer given to a publish
//!   with an `Idempotency-Key` (see `api::idempotency`), expiring with the window.
//! - `<prefix>:{accounts}:…` — user accounts ([`accounts`]).
//!
//! This module speaks Valkey: keys, commands and the rows read back. It knows the shape of
//! what it stores (stream entries, positions, topic records, accounts) but not the rules
//! that change them: topics, accounts and the API decide; the store writes and reads.

pub mod accounts;
mod announce;
pub mod cluster;
mod connection;
pub mod link;
pub mod listener;
pub mod resp;
mod retry;
mod stream;
mod topics;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use redis::Value;

use crate::config::{AckMode, Backend, Config};
use crate::metrics::ShardMetrics;
use crate::rt::sleep;
use crate::tls::client::ClientTls;
pub use announce::{
    announcement, appended, script_missing, Announcement, Appended, ScriptBy, DELETED,
};
use connection::Connection;
use link::{LinkError, ReplicaWait, Reply};
pub use listener::Heard;
use listener::Listener;
pub use stream::{MessageId, StreamEntry, StreamRange};
pub use topics::{by_age, Recovery, StoredTopic, TopicRecord};

/// Why the persistent tier could not take or give something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// `storage.max_pending_writes` writes, or `storage.max_pending_bytes` of them, are
    /// already waiting for Valkey.
    BacklogFull,
    /// After a start, the owner is still reading its topics' last IDs from Valkey.
    Recovering,
    Unavailable(String),
    Rejected(String),
    /// Valkey did not confirm a write within `storage.ack_timeout`; it may still do so.
    PersistTimeout,
    /// Valkey has the write, but fewer than `storage.min_replicas` replicas confirmed it
    /// within `storage.replica_timeout`.
    ReplicationTimeout {
        got: u64,
        wanted: u32,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::BacklogFull => f.write_str("too many writes are waiting for Valkey"),
            StoreError::Recovering => {
                f.write_str("the relay is still recovering its topics from Valkey")
            }
            StoreError::Unavailable(e) => write!(f, "Valkey is unavailable: {e}"),
            StoreError::Rejected(e) => write!(f, "Valkey refused the write: {e}"),
            StoreError::PersistTimeout => f.write_str(
                "Valkey did not confirm the write within storage.ack_timeout; it may still be \
                 written: retry with the same Idempotency-Key",
            ),
            StoreError::ReplicationTimeout { got, wanted } => write!(
                f,
                "Valkey has the write, but only {got} of {wanted} replicas confirmed it within \
                 storage.replica_timeout; it is published: a retry with the same \
                 Idempotency-Key checks its replication again (one without a key publishes \
                 it again)"
            ),
        }
    }
}

impl From<LinkError> for StoreError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Replicas { got, wanted } | LinkError::Unreplicated { got, wanted, .. } => {
                StoreError::ReplicationTimeout { got, wanted }
            }
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Resolves once Valkey confirmed one write (with replicated acks: and its replicas).
pub struct Ticket(Reply);

impl Ticket {
    pub async fn wait(self) -> Result<(), StoreError> {
        // A re-sent XADD that Valkey had already applied is answered as done by the link.
        match self.0.take().await? {
            value @ Value::ServerError(_) => Err(StoreError::Rejected(
                resp::server_error(&value).unwrap_or_default(),
            )),
            _ => Ok(()),
        }
    }
}

/// A cluster-mode publish as Valkey answered it (see [`Store::announce`]).
#[derive(Debug)]
pub struct Announced {
    pub ids: Appended,
    /// With replicated acks: too few replicas confirmed it. The primary holds it all the
    /// same, under these IDs.
    pub unreplicated: Option<StoreError>,
}

/// Reads a cluster-mode publish's answer: its IDs, or why Valkey did not take it (or why
/// it cannot be known whether it did).
pub fn announced(answer: Result<Value, LinkError>) -> Result<Announced, StoreError> {
    match answer {
        Ok(value) => Ok(Announced {
            ids: appended(&value)?,
            unreplicated: None,
        }),
        Err(LinkError::Unreplicated {
            got,
            wanted,
            applied,
        }) => Ok(Announced {
            ids: appended(&applied)?,
            unreplicated: Some(StoreError::ReplicationTimeout { got, wanted }),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Waits for every ticket, at most `limit`: the first failure, or
/// [`StoreError::PersistTimeout`] when they are not all confirmed by then (the writes stay
/// queued).
pub async fn confirmed_within(tickets: Vec<Ticket>, limit: Duration) -> Result<(), StoreError> {
    if tickets.is_empty() {
        return Ok(());
    }
    futures_lite::future::or(
        async {
            let mut failure = None;
            for ticket in tickets {
                if let Err(e) = ticket.wait().await {
                    failure.get_or_insert(e);
                }
            }
            failure.map_or(Ok(()), Err)
        },
        async {
            sleep(limit).await;
            Err(StoreError::PersistTimeout)
        },
    )
    .await
}

struct Valkey {
    link: Connection,
    cfg: crate::config::ValkeyConfig,
    prefix: String,
    max_pending: usize,
    max_pending_bytes: usize,
    max_len: u64,
    retention_ms: u64,
    /// Cluster mode's publish script (see [`announce`]).
    publish: announce::Script,
    /// Stream writes not yet answered, oldest first. The link answers in order and IDs
    /// of one shard only grow, so the front tells how far writes are confirmed.
    unconfirmed: RefCell<VecDeque<(MessageId, Reply)>>,
    confirmed: Cell<MessageId>,
}

pub struct Store {
    valkey: Option<Valkey>,
    /// Cluster mode (`cluster.enabled`): the pub/sub connection that hears the other
    /// nodes' publishes, and the sign that publishes go through [`Store::announce`].
    listener: Option<Rc<Listener>>,
    /// Writes come with tickets (`persisted` and `replicated` acks).
    persisted_acks: bool,
    /// `storage.ack_timeout` when writes come with tickets.
    ack_timeout: Option<Duration>,
}

impl Store {
    pub fn memory() -> Store {
        Store {
            valkey: None,
            listener: None,
            persisted_acks: false,
            ack_timeout: None,
        }
    }

    /// The store for one shard; for Valkey also the link driver, to be spawned.
    pub fn for_shard(
        config: &Config,
        tls: Option<&ClientTls>,
        shard: usize,
        metrics: &Rc<ShardMetrics>,
    ) -> (Store, Option<Connection>) {
        if config.storage.backend == Backend::Memory {
            return (Store::memory(), None);
        }
        let replicas = (config.ack_mode() == AckMode::Replicated).then_some(ReplicaWait {
            replicas: config.storage.min_replicas,
            timeout: config.storage.replica_timeout,
        });
        let link = Connection::new(&config.valkey, tls, shard, metrics, replicas);
        let listener = config
            .cluster
            .enabled
            .then(|| Listener::new(&config.valkey, tls, shard, metrics, &link));
        let store = Store {
            listener,
            valkey: Some(Valkey {
                link: link.clone(),
                cfg: config.valkey.clone(),
                prefix: config.valkey.key_prefix.clone(),
                max_pending: config.storage.max_pending_writes,
                max_pending_bytes: config.storage.max_pending_bytes as usize,
                max_len: config.storage.max_messages_per_topic,
                retention_ms: config.storage.persistent_tier_retention.as_millis() as u64,
                publish: announce::Script::publish(config.valkey.mode),
                unconfirmed: RefCell::new(VecDeque::new()),
                confirmed: Cell::new(MessageId::ZERO),
            }),
            persisted_acks: matches!(config.ack_mode(), AckMode::Persisted | AckMode::Replicated),
            ack_timeout: Some(config.storage.ack_timeout),
        };
        (store, Some(link))
    }

    pub fn is_persistent(&self) -> bool {
        self.valkey.is_some()
    }

    /// `storage.ack_timeout`: how long a request may wait for its writes' tickets; `None`
    /// when writes come without tickets (nothing to wait for).
    pub fn ack_timeout(&self) -> Option<Duration> {
        self.ack_timeout.filter(|_| self.persisted_acks)
    }

    /// Whether `n` more writes fit in the backlog. Checked before a publish is accepted, so
    /// that a refused publish changes nothing. The byte bound is checked as "not yet
    /// reached", so the backlog's memory stays under `max_pending_bytes` plus one request
    /// (at most `limits.max_body_bytes` of messages).
    pub fn admit(&self, n: usize) -> Result<(), StoreError> {
        match &self.valkey {
            Some(v)
                if v.link.pending_writes() + n > v.max_pending
                    || v.link.pending_bytes() >= v.max_pending_bytes =>
            {
                Err(StoreError::BacklogFull)
            }
            _ => Ok(()),
        }
    }

    /// Queues `SET <answer key> <value> PX <window>` for the first answer given to a
    /// publish with an `Idempotency-Key` (`subject`, `endpoint`, `key`), written by the
    /// key's owner shard; with persisted acks, the ticket to wait for.
    pub fn keep_answer(
        &self,
        (subject, endpoint, key): (&str, &str, &str),
        value: &[u8],
        window: Duration,
    ) -> Option<Ticket> {
        let v = self.valkey.as_ref()?;
        let cmd = redis::cmd("SET")
            .arg(v.answer_key(subject, endpoint, key))
            .arg(value)
            .arg("PX")
            .arg(window.as_millis() as u64)
            .clone();
        v.link.write(&cmd, self.persisted_acks).map(Ticket)
    }

    /// The answer kept in Valkey for an idempotency key, if any (always `None` without a
    /// persistent tier). Any shard may read it.
    pub async fn answer(
        &self,
        (subject, endpoint, key): (&str, &str, &str),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(None);
        };
        let cmd = redis::cmd("GET")
            .arg(v.answer_key(subject, endpoint, key))
            .clone();
        match v.link.read(&cmd).await? {
            Value::BulkString(value) => Ok(Some(value)),
            Value::Nil => Ok(None),
            other => Err(StoreError::Unavailable(
                resp::server_error(&other).unwrap_or_else(|| "unexpected GET reply".into()),
            )),
        }
    }

    /// Cluster mode: claims an idempotency key in Valkey, so that two nodes given the same
    /// key at once do not both publish. The key's answer if it has one, else `marker` is
    /// set (for `ttl`, so that a node that died holding it does not hold it longer) unless
    /// another node's marker is there.
    pub async fn claim_answer(
        &self,
        (subject, endpoint, key): (&str, &str, &str),
        marker: &str,
        ttl: Duration,
    ) -> Result<ClaimedAnswer, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(ClaimedAnswer::Mine);
        };
        let cmd = redis::cmd("EVAL")
            .arg(CLAIM_ANSWER)
            .arg(1)
            .arg(v.answer_key(subject, endpoint, key))
            .arg(marker)
            .arg(ttl.as_millis() as u64)
            .clone();
        match v.link.read(&cmd).await? {
            Value::Nil => Ok(ClaimedAnswer::Mine),
            Value::BulkString(value) if value.starts_with(CLAIM_MARKER.as_bytes()) => {
                Ok(ClaimedAnswer::Pending)
            }
            Value::BulkString(value) => Ok(ClaimedAnswer::Answer(value)),
            other => Err(StoreError::Unavailable(
                resp::server_error(&other).unwrap_or_else(|| "unexpected claim reply".into()),
            )),
        }
    }

    /// Cluster mode: gives up a claim made with `marker`, unless it was replaced by the
    /// answer.
    pub fn release_answer(&self, (subject, endpoint, key): (&str, &str, &str), marker: &str) {
        if let Some(v) = &self.valkey {
            let cmd = redis::cmd("EVAL")
                .arg(RELEASE_ANSWER)
                .arg(1)
                .arg(v.answer_key(subject, endpoint, key))
                .arg(marker)
                .clone();
            v.link.write(&cmd, false);
        }
    }

    /// `Err` with the reason while the persistent tier cannot take writes (or, in cluster
    /// mode, the shard cannot hear the other nodes' publishes).
    pub fn health(&self) -> Result<(), String> {
        match (&self.valkey, &self.listener) {
            (Some(v), _) if !v.link.is_up() => Err(format!(
                "Valkey is unreachable ({} writes waiting)",
                v.link.pending_writes()
            )),
            (_, Some(listener)) if !listener.is_up() => {
                Err("the Valkey pub/sub connection is down".into())
            }
            _ => Ok(()),
        }
    }

    pub fn link_up(&self) -> bool {
        self.valkey.as_ref().is_some_and(|v| v.link.is_up())
    }

    pub fn pending_writes(&self) -> usize {
        self.valkey.as_ref().map_or(0, |v| v.link.pending_writes())
    }

    /// Each Valkey primary this shard writes to and whether its connection is up.
    pub fn primary_states(&self) -> Vec<(String, bool)> {
        self.valkey
            .as_ref()
            .map_or_else(Vec::new, |v| v.link.primary_states(&v.cfg))
    }
}

/// What [`Store::claim_answer`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimedAnswer {
    /// This request publishes.
    Mine,
    /// The key's kept answer.
    Answer(Vec<u8>),
    /// Another node is publishing with the key.
    Pending,
}

/// Starts every claim marker: never the start of a kept answer (a status code).
pub const CLAIM_MARKER: &str = "pending ";

const CLAIM_ANSWER: &str = "local v = redis.call('GET', KEYS[1]) \
     if v then return v end \
     redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return false";

const RELEASE_ANSWER: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('DEL', KEYS[1]) end return 0";

impl Valkey {
    fn stream_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:s", self.prefix)
    }

    fn positions_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:c", self.prefix)
    }

    fn answer_key(&self, subject: &str, endpoint: &str, key: &str) -> String {
        format!("{}:idem:{{{subject}}}:{endpoint}:{key}", self.prefix)
    }

    fn marker_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:r", self.prefix)
    }

    fn record_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:t", self.prefix)
    }

    /// The topic and kind of one of our topic keys (the topic as the braces hold it: the
    /// callers decide which topics are theirs).
    fn key_of(&self, key: &[u8]) -> Option<(String, KeyKind)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let (topic, suffix) = rest.rsplit_once("}:")?;
        let kind = match suffix {
            "s" => KeyKind::Stream,
            "c" => KeyKind::Positions,
            "t" => KeyKind::Record,
            _ => return None,
        };
        Some((topic.to_string(), kind))
    }
}

/// Which of a topic's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Stream,
    Positions,
    Record,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Valkey store for `config`'s defaults (its link is never run).
    pub(super) fn valkey_store() -> Store {
        let (store, _) = Store::for_shard(
            &Config {
                storage: crate::config::StorageConfig {
                    backend: Backend::Valkey,
                    ..Default::default()
                },
                ..Default::default()
            },
            None,
            0,
            &Rc::new(ShardMetrics::default()),
        );
        store
    }

    #[test]
    fn in_cluster_mode_nothing_in_memory_waits_for_valkey() {
        let (store, _) = Store::for_shard(
            &Config {
                storage: crate::config::StorageConfig {
                    backend: Backend::Valkey,
                    ..Default::default()
                },
                cluster: crate::config::ClusterConfig { enabled: true },
                ..Default::default()
            },
            None,
            0,
            &Rc::new(ShardMetrics::default()),
        );
        assert!(store.is_announced());
        // Rings hold only messages heard from Valkey: all evictable.
        assert_eq!(store.durable_upto(), None);
        assert_eq!(valkey_store().durable_upto(), Some(MessageId::ZERO));
    }

    #[test]
    fn keys_map_back_to_topics() {
        let store = valkey_store();
        let v = store.valkey.as_ref().unwrap();
        assert_eq!(v.stream_key("a.b"), "pulsar:{a.b}:s");
        let key = |k: &[u8]| v.key_of(k);
        assert_eq!(
            key(b"pulsar:{a.b}:s"),
            Some(("a.b".into(), KeyKind::Stream))
        );
        assert_eq!(
            key(b"pulsar:{a.b}:c"),
            Some(("a.b".into(), KeyKind::Positions))
        );
        assert_eq!(
            key(b"pulsar:{u/a.b}:t"),
            Some(("u/a.b".into(), KeyKind::Record))
        );
        assert_eq!(v.record_key("u/a.b"), "pulsar:{u/a.b}:t");
        assert_eq!(key(b"pulsar:{relay}:epoch"), None);
        assert_eq!(key(b"other:{a}:s"), None);
        assert_eq!(
            v.answer_key("alice", "single", "k1"),
            "pulsar:idem:{alice}:single:k1"
        );
    }
}
