//! What a topic's owner shard does for requests from any shard (itself included).
//!
//! These operations are the only way to reach a [`TopicTable`]: the caller's shard either
//! runs them directly (it owns the topic) or sends them through the mesh. Each runs to
//! completion without awaiting, so the owner applies requests in arrival order and the
//! per-topic order of IDs is the order in which publishes reached the owner.

use std::ops::Range;
use std::sync::Arc;

use crate::topic::{
    ConsumerKey, Cursor, Draft, Message, MessageId, ShardSet, Snapshot, TopicTable,
};

/// One message of a publish request, as byte ranges into the request body so that the
/// producer's bytes travel to the owner without being copied or re-encoded.
pub struct DraftSpan {
    pub topic: Range<usize>,
    pub payload: Range<usize>,
    pub metadata: Option<Range<usize>>,
    pub ttl_ms: Option<u64>,
}

pub struct PublishBatch {
    pub body: Arc<Vec<u8>>,
    pub items: Vec<DraftSpan>,
}

pub enum Op {
    Publish(PublishBatch),
    Subscribe {
        topic: Arc<str>,
        cursor: Cursor,
        consumer: Option<ConsumerKey>,
        limit: usize,
    },
    Ack {
        consumer: ConsumerKey,
        ids: Vec<MessageId>,
        /// Restrict to these topics; `None` means every topic the consumer reads here.
        topics: Option<Vec<Box<str>>>,
    },
}

/// What a publish returns per message: the ID and the owner's timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub id: MessageId,
    pub timestamp_ms: u64,
}

pub enum OpResult {
    Published(Vec<Receipt>),
    Subscribed(Snapshot),
    /// For each acknowledged ID, whether a topic on this shard took it.
    Acked(Vec<bool>),
}

/// Runs `op` against the owner's table. `fanout` receives every new message with the set
/// of shards to deliver it to.
pub fn apply(
    table: &mut TopicTable,
    from: usize,
    op: Op,
    now_ms: u64,
    mut fanout: impl FnMut(&Arc<Message>, ShardSet),
) -> OpResult {
    match op {
        Op::Publish(batch) => {
            let body = &batch.body[..];
            let receipts = batch
                .items
                .iter()
                .map(|span| {
                    let draft = Draft {
                        topic: std::str::from_utf8(&body[span.topic.clone()]).unwrap_or_default(),
                        payload: &body[span.payload.clone()],
                        metadata: span.metadata.clone().map(|r| &body[r]),
                        ttl_ms: span.ttl_ms,
                    };
                    let (msg, interested) = table.publish(&draft, now_ms);
                    fanout(&msg, interested);
                    Receipt {
                        id: msg.id,
                        timestamp_ms: msg.timestamp_ms,
                    }
                })
                .collect();
            OpResult::Published(receipts)
        }
        Op::Subscribe {
            topic,
            cursor,
            consumer,
            limit,
        } => OpResult::Subscribed(table.subscribe(
            &topic,
            from,
            &cursor,
            consumer.as_deref(),
            now_ms,
            limit,
        )),
        Op::Ack {
            consumer,
            ids,
            topics,
        } => OpResult::Acked(
            ids.iter()
                .map(|id| table.ack(&consumer, *id, topics.as_deref()))
                .collect(),
        ),
    }
}
