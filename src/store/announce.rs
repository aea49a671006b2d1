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
//! Channel: `<prefix>:{<topic>}:n`, in the topic's slot like its keys. Announcement:
//! `<prev> <id> <timestamp ms> <ttl ms or -> <metadata length>\n<metadata><payload>`.
//!
//! This module speaks Valkey (the script, the channel and the announcement's bytes); when to
//! publish and what to do with an announcement is `topic`'s.

use std::rc::Rc;

use redis::Value;

use super::link::Reply;
use super::listener::Heard;
use super::{resp, MessageId, Store, StoreError, StreamEntry, Valkey};
use crate::rt::now_ms;

/// KEYS: stream, last ID, record. ARGV: channel, max length, oldest ID to keep, timestamp,
/// payload, metadata (empty: none), TTL (empty: none), then the record's fields when the
/// publisher asks for it to be created (only if the topic has none).
const PUBLISH: &str = "\
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
redis.call('PUBLISH', ARGV[1], prev .. ' ' .. id .. ' ' .. ARGV[4] .. ' ' .. ttl .. ' ' ..
  #ARGV[6] .. '\\n' .. ARGV[6] .. ARGV[5])
return {prev, id}";

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
    ) -> Option<Reply> {
        let v = self.valkey.as_ref()?;
        let min_id = now_ms().saturating_sub(v.retention_ms);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUBLISH)
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

    /// Cluster mode: whether the pub/sub connection is up, and the topics it listens to.
    pub fn pubsub_state(&self) -> Option<(bool, u64)> {
        let listener = self.listener.as_ref()?;
        Some((listener.is_up(), listener.channels() as u64))
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
