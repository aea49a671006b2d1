//! What a topic's owner shard does for requests from any shard (itself included).
//!
//! These operations are the only way to reach a [`TopicTable`]: the caller's shard either
//! runs them directly (it owns the topic) or sends them through the mesh. Each runs to
//! completion without awaiting, so the owner applies requests in arrival order and the
//! per-topic order of IDs is the order in which publishes reached the owner.
//!
//! Persistence plugs in here: a publish is admitted only if the store's backlog has room
//! (so a refused publish changes nothing), every new message is queued for its stream, and
//! with persisted acks the caller gets tickets to await before answering the producer.

use std::ops::Range;
use std::sync::Arc;

use super::idempotency::Claim;
use crate::metrics;
use crate::store::{Store, StoreError, Ticket};
use crate::topic::{
    ConsumerKey, Cursor, Draft, Located, Message, MessageId, ShardSet, Snapshot, TopicTable,
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
    /// Which topics hold each of `ids`, among `topics` (`None`: every topic the consumer
    /// reads here).
    Locate {
        consumer: ConsumerKey,
        ids: Vec<MessageId>,
        topics: Option<Vec<Box<str>>>,
    },
    Ack {
        consumer: ConsumerKey,
        topic: Box<str>,
        ids: Vec<MessageId>,
    },
}

/// What a publish returns per message: the ID and the owner's timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub id: MessageId,
    pub timestamp_ms: u64,
}

pub enum OpResult {
    Published(Result<Vec<Receipt>, StoreError>),
    Subscribed(Snapshot),
    /// Per ID, where it is or may be.
    Located(Vec<Located>),
    /// For each acknowledged ID, whether the topic took it.
    Acked(Vec<bool>),
    /// A shard's metrics, answering a scrape (not a topic operation).
    Metrics(Box<metrics::Snapshot>),
    /// Whether a connection-quota slot was granted (not a topic operation).
    Admitted(bool),
    /// The directory's answer to an account operation (not a topic operation).
    Directory(crate::account::DirectoryReply),
    /// The owner's answer to an idempotency-key claim (not a topic operation).
    Claim(Claim),
    /// An idempotency key's answer is recorded (not a topic operation).
    Recorded,
}

/// Runs `op` against the owner's table. `fanout` receives every new message with the set
/// of shards to deliver it to. Returns the result and the writes to wait for before the
/// result may be sent (persisted acks).
pub fn apply(
    table: &mut TopicTable,
    store: &Store,
    recovered: bool,
    from: usize,
    op: Op,
    now_ms: u64,
    mut fanout: impl FnMut(&Arc<Message>, ShardSet),
) -> (OpResult, Vec<Ticket>) {
    let mut tickets = Vec::new();
    let result = match op {
        Op::Publish(batch) => {
            let admitted = if recovered {
                store.admit(batch.items.len())
            } else {
                Err(StoreError::Recovering)
            };
            let durable = store.durable_upto();
            let published = admitted.map(|()| {
                let body = &batch.body[..];
                batch
                    .items
                    .iter()
                    .map(|span| {
                        let draft = Draft {
                            topic: std::str::from_utf8(&body[span.topic.clone()])
                                .unwrap_or_default(),
                            payload: &body[span.payload.clone()],
                            metadata: span.metadata.clone().map(|r| &body[r]),
                            ttl_ms: span.ttl_ms,
                        };
                        let (msg, interested) = table.publish(&draft, now_ms, durable);
                        fanout(&msg, interested);
                        tickets.extend(store.append(&msg));
                        Receipt {
                            id: msg.id,
                            timestamp_ms: msg.timestamp_ms,
                        }
                    })
                    .collect()
            });
            OpResult::Published(published)
        }
        Op::Subscribe {
            topic,
            cursor,
            consumer,
            limit,
        } => {
            let (snapshot, created) =
                table.subscribe(&topic, from, &cursor, consumer.as_deref(), now_ms, limit);
            if let (Some(position), Some(key)) = (created, &consumer) {
                store.save_position(&topic, key, position);
            }
            OpResult::Subscribed(snapshot)
        }
        Op::Locate {
            consumer,
            ids,
            topics,
        } => OpResult::Located(
            ids.iter()
                .map(|id| table.locate(&consumer, *id, topics.as_deref()))
                .collect(),
        ),
        Op::Ack {
            consumer,
            topic,
            ids,
        } => OpResult::Acked(
            ids.iter()
                .map(|id| match table.ack(&consumer, &topic, *id) {
                    Some(moved) => {
                        if moved {
                            store.save_position(&topic, &consumer, *id);
                        }
                        true
                    }
                    None => false,
                })
                .collect(),
        ),
    };
    (result, tickets)
}

/// Waits for the writes a result depends on; a failed write fails the whole publish,
/// since its producer must not be told the messages are safe.
pub async fn settle(result: OpResult, tickets: Vec<Ticket>) -> OpResult {
    let mut failure = None;
    for ticket in tickets {
        if let Err(e) = ticket.wait().await {
            failure.get_or_insert(e);
        }
    }
    match (result, failure) {
        (OpResult::Published(_), Some(e)) => OpResult::Published(Err(e)),
        (result, _) => result,
    }
}
