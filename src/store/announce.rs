//! Cluster mode's publish: one script that appends a message to its topic's stream with an
//! ID Valkey assigns, and announces it to every relay node on the topic's channel.
//!
//! With `cluster.enabled` several relay processes publish to the same topics, so no node's
//! clock can name a topic's next message: Valkey's stream does (`XADD … *`). The same script
//! publishes the announcement, so nothing is stored without being announced and nothing is
//! announced that is not stored. Each announcement carries the topic's previous ID (kept in
//! `<prefix>:{<topic>}:l`), which lets a node that missed one (pub/sub is at-most-once) see
//! the gap and read it from the stream.
//!
//! Channel: `<prefix>:{<topic>}:n`, in the topic's slot like its keys; announced with
//! `PUBLISH` on a standalone Valkey, `SPUBLISH` (sharded pub/sub: only the topic's primary
//! sends it on) on a Valkey Cluster. Announcement:
//! `<prev> <id> <timestamp ms> <ttl ms or -> <metadata length>\n<metadata><payload>`.
//!
//! The script is called by its digest (`EVALSHA`), so its text is not sent per message;
//! a Valkey that answers `NOSCRIPT` (restarted, failed over, `SCRIPT FLUSH`) gets it once
//! with `EVAL`, which caches it again.
//!
//! This module speaks Valkey (the script, the channel and the announcement's bytes); when to
//! publish and what to do with an announcement is `topic`'s.

use std::rc::Rc;

use redis::Value;

use super::link::Reply;
use super::listener::Heard;
use super::{resp, MessageId, Store, StoreError, StreamEntry, Valkey};
use crate::config::ValkeyMode;
use crate::rt::now_ms;

/// The publish script, announcing with `$publish` (`PUBLISH`, or `SPUBLISH` on a Valkey
/// Cluster: the channel is in the slot of the keys, as a script's shard channel must be).
/// KEYS: stream, last ID, record. ARGV: channel, max length, oldest ID to keep, timestamp,
/// payload, metadata (empty: none), TTL (empty: none), then the record's fields when the
/// publisher asks for it to be created (only if the topic has none).
macro_rules! publish_script {
    ($publish:literal) => {
        concat!(
            "\
local prev = redis.call('GET', KEYS[2]) or '0-0'
local fields = {'p', ARGV[5], 't', ARGV[4]}
if ARGV[6] ~= '' then fields[#fields + 1] = 'm'; fields[#fields + 1] = ARGV[6] end
if ARGV[7] ~= '' then fields[#fields + 1] = 'l'; fields[#fields + 1] = ARGV[7] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
redis.call('SET', KEYS[2], id)
if #ARGV > 7 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 8))
end
local ttl = ARGV[7]
if ttl == '' then ttl = '-' end
redis.call('",
            $publish,
            "', ARGV[1], prev .. ' ' .. id .. ' ' .. ARGV[4] .. ' ' .. ttl .. ' ' ..
  #ARGV[6] .. '\\n' .. ARGV[6] .. ARGV[5])
return {prev, id}"
        )
    };
}

const PUBLISH_CLASSIC: &str = publish_script!("PUBLISH");
const PUBLISH_SHARDED: &str = publish_script!("SPUBLISH");

/// A script as Valkey caches it: its text and the SHA1 digest `EVALSHA` names it by.
pub(super) struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    fn new(text: &'static str) -> Script {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        let sha = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Script { text, sha }
    }

    /// The publish script for `mode`.
    pub(super) fn publish(mode: ValkeyMode) -> Script {
        Script::new(match mode {
            ValkeyMode::Standalone => PUBLISH_CLASSIC,
            ValkeyMode::Cluster => PUBLISH_SHARDED,
        })
    }
}

/// How a publish names its script: by digest (`EVALSHA`, the usual way: the script's text
/// is not sent per message), or with its text (`EVAL`, after Valkey answered `NOSCRIPT`; it
/// caches the script again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptBy {
    Digest,
    Text,
}

/// What a publish script answered: the topic's ID before, and the message's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub prev: MessageId,
    pub id: MessageId,
}

/// What a topic's deletion announces on its channel (see `Store::delete_topic`).
pub const DELETED: &[u8] = b"deleted";

/// A message as announced on its topic's channel.
#[derive(Debug, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// The topic's last ID before this message (`ZERO`: none known).
    pub prev: MessageId,
    pub entry: StreamEntry<'a>,
}

impl Store {
    /// Queues the cluster-mode publish of `entry` (its ID is ignored: Valkey assigns it) to
    /// `topic`; `record`: the record's fields to create it with if it has none. The reply
    /// is parsed with [`appended`]. Unlike other writes it is never sent twice: a second
    /// sending would publish the message twice, so a publish whose connection failed before
    /// Valkey answered fails (the producer may retry with its Idempotency-Key).
    pub fn announce(
        &self,
        topic: &str,
        entry: &StreamEntry<'_>,
        record: Option<&[(&str, &str)]>,
        by: ScriptBy,
    ) -> Option<Reply> {
        let v = self.valkey.as_ref()?;
        let min_id = now_ms().saturating_sub(v.retention_ms);
        let (call, script) = match by {
            ScriptBy::Digest => ("EVALSHA", v.publish.sha.as_str()),
            ScriptBy::Text => ("EVAL", v.publish.text),
        };
        let mut cmd = redis::cmd(call);
        cmd.arg(script)
            .arg(3)
            .arg(v.stream_key(topic))
            .arg(v.last_id_key(topic))
            .arg(v.record_key(topic))
            .arg(v.channel(topic))
            .arg(v.max_len)
            .arg(min_id)
            .arg(entry.timestamp_ms)
            .arg(entry.payload)
            .arg(entry.metadata.unwrap_or_default())
            .arg(entry.ttl_ms.map(|ttl| ttl.to_string()).unwrap_or_default());
        for (field, value) in record.unwrap_or_default() {
            cmd.arg(*field).arg(*value);
        }
        Some(v.link.write_once(&cmd))
    }

    /// Whether publishes are announced to other relay nodes (`cluster.enabled`).
    pub fn is_announced(&self) -> bool {
        self.listener.is_some()
    }

    /// The pub/sub connection's driver, to be spawned on the shard (cluster mode).
    pub fn listener_driver(&self) -> Option<impl std::future::Future<Output = ()>> {
        self.listener.as_ref().map(|l| Rc::clone(l).run())
    }

    /// Starts listening to `topic`'s announcements; resolves once everything announced from
    /// now on will be heard.
    pub async fn listen(&self, topic: &str) -> Result<(), StoreError> {
        match (&self.listener, self.channel(topic)) {
            (Some(listener), Some(channel)) => Ok(listener.listen(channel).await?),
            _ => Ok(()),
        }
    }

    pub fn unlisten(&self, topic: &str) {
        if let (Some(listener), Some(channel)) = (&self.listener, self.channel(topic)) {
            listener.unlisten(&channel);
        }
    }

    /// The next thing the pub/sub connection heard (never resolves outside cluster mode).
    pub async fn heard(&self) -> Heard {
        match &self.listener {
            Some(listener) => listener.next().await,
            None => std::future::pending().await,
        }
    }

    /// Cluster mode: whether every pub/sub connection the shard needs is up, and the topics
    /// it listens to.
    pub fn pubsub_state(&self) -> Option<(bool, u64)> {
        let listener = self.listener.as_ref()?;
        Some((listener.is_up(), listener.channels() as u64))
    }

    /// Cluster mode: each Valkey node the shard holds a pub/sub connection to, whether it
    /// is up, and the channels subscribed there.
    pub fn pubsub_connections(&self) -> Vec<(String, bool, u64)> {
        self.listener
            .as_ref()
            .map_or_else(Vec::new, |l| l.connections())
    }

    /// The channel on which `topic`'s messages are announced (`None` without Valkey).
    pub fn channel(&self, topic: &str) -> Option<Vec<u8>> {
        Some(self.valkey.as_ref()?.channel(topic).into_bytes())
    }

    /// The topic a channel of ours announces (see [`Store::channel`]).
    pub fn topic_of_channel<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let v = self.valkey.as_ref()?;
        let rest = channel
            .strip_prefix(v.prefix.as_bytes())?
            .strip_prefix(b":{")?;
        let topic = rest.strip_suffix(b"}:n")?;
        std::str::from_utf8(topic).ok()
    }
}

impl Valkey {
    pub(super) fn last_id_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:l", self.prefix)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:n", self.prefix)
    }
}

/// The IDs a publish script answered with.
pub fn appended(value: &Value) -> Result<Appended, StoreError> {
    let parsed = match value {
        Value::Array(ids) if ids.len() == 2 => {
            let id = |v: &Value| MessageId::parse(std::str::from_utf8(resp::bytes(v)?).ok()?);
            id(&ids[0]).zip(id(&ids[1]))
        }
        _ => None,
    };
    match parsed {
        Some((prev, id)) => Ok(Appended { prev, id }),
        None => Err(StoreError::Rejected(
            resp::server_error(value).unwrap_or_else(|| "unexpected publish reply".into()),
        )),
    }
}

/// Whether Valkey answered a script call with `NOSCRIPT`: it does not have the script
/// cached (a restarted or failed-over server, or `SCRIPT FLUSH`), and ran nothing.
pub fn script_missing(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Reads an announcement; `None` for bytes that are not one (nothing of ours sends them).
pub fn announcement(data: &[u8]) -> Option<Announcement<'_>> {
    let newline = data.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&data[..newline]).ok()?;
    let mut parts = head.split(' ');
    let prev = MessageId::parse(parts.next()?)?;
    let id = MessageId::parse(parts.next()?)?;
    let timestamp_ms = parts.next()?.parse().ok()?;
    let ttl_ms = match parts.next()? {
        "-" => None,
        ttl => Some(ttl.parse().ok()?),
    };
    let meta_len: usize = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let body = &data[newline + 1..];
    if meta_len > body.len() {
        return None;
    }
    let (metadata, payload) = body.split_at(meta_len);
    Some(Announcement {
        prev,
        entry: StreamEntry {
            id,
            payload,
            metadata: (meta_len > 0).then_some(metadata),
            timestamp_ms,
            ttl_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_read_back_with_and_without_metadata_and_ttl() {
        let read = announcement(b"0-0 17-3 1700 - 0\n{\"a\":1}").unwrap();
        assert_eq!(read.prev, MessageId::ZERO);
        assert_eq!(read.entry.id, MessageId::new(17, 3));
        assert_eq!(read.entry.timestamp_ms, 1700);
        assert_eq!(read.entry.ttl_ms, None);
        assert_eq!(read.entry.metadata, None);
        assert_eq!(read.entry.payload, b"{\"a\":1}");
        let read = announcement(b"5-1 6-0 9 3000 7\n{\"k\":2}\"text\n\"").unwrap();
        assert_eq!(read.prev, MessageId::new(5, 1));
        assert_eq!(read.entry.ttl_ms, Some(3000));
        assert_eq!(read.entry.metadata, Some(&b"{\"k\":2}"[..]));
        assert_eq!(read.entry.payload, b"\"text\n\"");
        for bad in [
            &b"0-0 1-0 9 - 8\n{}"[..],
            b"0-0 1-0 9 -\n1",
            b"x 1-0 9 - 0\n1",
            b"0-0 1-0 9 - 0 extra\n1",
            b"no newline",
        ] {
            assert_eq!(
                announcement(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_publish_script_announces_by_mode_and_is_named_by_its_sha1() {
        let classic = Script::publish(ValkeyMode::Standalone);
        let sharded = Script::publish(ValkeyMode::Cluster);
        assert!(classic.text.contains("redis.call('PUBLISH', ARGV[1]"));
        assert!(sharded.text.contains("redis.call('SPUBLISH', ARGV[1]"));
        assert_eq!(classic.text.replace("SPUBLISH", "PUBLISH"), classic.text);
        assert_eq!(
            sharded.text.replace("'SPUBLISH'", "'PUBLISH'"),
            classic.text
        );
        // The Lua string the announcement's header ends with is a newline escape.
        assert!(classic.text.contains(r"'\n'"));
        assert_eq!(sharded.sha.len(), 40);
        assert_ne!(sharded.sha, classic.sha);
        // SHA1 of "abc" (FIPS 180-2), as SCRIPT LOAD would answer for that text.
        assert_eq!(
            Script::new("abc").sha,
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert!(script_missing(
            &redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n").unwrap()
        ));
        assert!(!script_missing(&Value::Okay));
    }

    #[test]
    fn channels_map_back_to_topics() {
        let store = super::super::tests::valkey_store();
        let channel = store.channel("u/a.b").unwrap();
        assert_eq!(channel, b"pulsar:{u/a.b}:n");
        assert_eq!(store.topic_of_channel(&channel), Some("u/a.b"));
        assert_eq!(store.topic_of_channel(b"pulsar:{u/a.b}:s"), None);
        assert_eq!(store.topic_of_channel(b"other:{a}:n"), None);
    }

    #[test]
    fn script_replies_give_both_ids_and_errors_are_refusals() {
        let reply = Value::Array(vec![
            Value::BulkString(b"0-0".to_vec()),
            Value::BulkString(b"12-0".to_vec()),
        ]);
        assert_eq!(
            appended(&reply),
            Ok(Appended {
                prev: MessageId::ZERO,
                id: MessageId::new(12, 0)
            })
        );
        assert!(matches!(
            appended(&Value::Okay),
            Err(StoreError::Rejected(_))
        ));
    }
}
