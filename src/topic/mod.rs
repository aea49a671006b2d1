//! Topics: who owns them, their IDs, their hot-tier rings and consumer positions, the
//! messages and how they are read back, and the subscriber index of each shard.
//!
//! Ownership is `owner_of(topic) = fnv1a64(topic) % shards`, a fixed hash so that every
//! shard (and every restart) agrees without coordination. A [`TopicTable`] holds the
//! topics one shard owns and is touched only by that shard's executor; everything another
//! shard wants from it runs there as a call through the mesh (`rt::mesh`), handled by the
//! [`Owner`]. The table never does I/O; the owner persists through `store`, the layer below.
//! This module knows nothing of HTTP or of the shards' other state.

pub mod budget;
mod entry;
pub mod history;
pub mod id;
pub mod message;
pub mod owner;
pub mod record;
pub mod ring;
pub mod subscribers;
mod table;

use std::sync::Arc;

pub use id::{Cursor, IdClock, MessageId};
pub use message::{Draft, Message};
pub use owner::Owner;
pub use record::TopicRecord;
pub use table::{
    HistoryPage, Located, Order, Published, Refusal, Snapshot, TopicLimits, TopicTable,
    STREAM_TRIM_INTERVAL_MS,
};

/// The shard that owns `topic`: the runtime's fixed key hash of its key (see
/// `rt::owner`), so every shard and every restart agrees.
pub fn owner_of(topic: &str, shards: usize) -> usize {
    crate::rt::owner::owner_of(topic.as_bytes(), shards)
}

/// Which topic keys found in the persistent tier shard `shard` of `shards` owns: valid
/// topic keys hashed to it (anything else under the key prefix is not a topic of ours).
pub fn owned_by(shard: usize, shards: usize) -> impl Fn(&str) -> bool {
    move |key| valid_topic_key(key) && owner_of(key, shards) == shard
}

/// Topic names: 1–255 bytes of ASCII letters, digits and `_ - . :`. The delivery JSON is
/// assembled without escaping on the strength of this rule.
pub fn valid_topic_name(topic: &str) -> bool {
    (1..=255).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Joins a namespace (a token subject, with `server.topic_namespace: per_user`) to a bare
/// topic name in a topic key; bare names never contain it.
pub const NAMESPACE_SEPARATOR: char = '/';

/// The key of topic `name` in `namespace` (`None`: the global namespace).
pub fn topic_key(namespace: Option<&str>, name: &str) -> Arc<str> {
    match namespace {
        None => Arc::from(name),
        Some(ns) => Arc::from(format!("{ns}{NAMESPACE_SEPARATOR}{name}")),
    }
}

/// The bare name a topic key shows on the wire: consumers in a namespace never see it.
pub fn display_name(key: &str) -> &str {
    key.rsplit(NAMESPACE_SEPARATOR).next().unwrap_or(key)
}

/// Namespaces are token subjects; these keep a key printable and its Valkey hash tag
/// (`{…}`) intact.
pub fn valid_namespace(ns: &str) -> bool {
    (1..=200).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'"' | b'\\'))
}

/// A topic key: a valid name, optionally behind a valid namespace.
pub fn valid_topic_key(key: &str) -> bool {
    match key.rsplit_once(NAMESPACE_SEPARATOR) {
        Some((ns, name)) => valid_namespace(ns) && valid_topic_name(name),
        None => valid_topic_name(key),
    }
}

/// A set of shard indexes (the shards with local subscribers for a topic).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ShardSet(u128);

impl ShardSet {
    pub const MAX_SHARDS: usize = 128;

    pub fn insert(&mut self, shard: usize) {
        self.0 |= 1 << shard;
    }

    pub fn remove(&mut self, shard: usize) {
        self.0 &= !(1 << shard);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..Self::MAX_SHARDS).filter(move |s| self.0 & (1 << s) != 0)
    }
}

/// Identifies a durable consumer: the token subject and the client-chosen `client_id`.
pub type ConsumerKey = Box<str>;

pub fn consumer_key(subject: &str, client_id: &str) -> ConsumerKey {
    format!("{subject}\u{0}{client_id}").into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_show_their_bare_name() {
        let key = topic_key(Some("3f2a-uuid"), "jobs");
        assert_eq!(&*key, "3f2a-uuid/jobs");
        assert_eq!(display_name(&key), "jobs");
        assert_eq!(display_name("jobs"), "jobs");
        assert!(valid_topic_key(&key));
        assert!(valid_topic_key("jobs.a"));
        assert!(
            !valid_topic_key("a/b/"),
            "the bare part must be a valid name"
        );
        assert!(
            !valid_topic_key("{x}/jobs"),
            "braces would break the Valkey hash tag"
        );
        assert!(!valid_topic_key("/jobs"));
    }

    #[test]
    fn owner_hash_is_stable_and_spreads() {
        // Fixed values: changing the hash would move topics between shards on upgrade.
        assert_eq!(owner_of("jobs", 2), owner_of("jobs", 2));
        assert_eq!(owner_of("", 7), 0xcbf2_9ce4_8422_2325u64 as usize % 7);
        let on_zero = (0..100)
            .filter(|i| owner_of(&format!("t{i}"), 2) == 0)
            .count();
        assert!((30..=70).contains(&on_zero), "{on_zero} of 100 on shard 0");
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a.b-c_d:1"));
        assert!(valid_topic_name(&"x".repeat(255)));
        assert!(!valid_topic_name(&"x".repeat(256)));
        for bad in ["", "a b", "a/b", "é", "a\"b", "a{b}"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
    }
}
