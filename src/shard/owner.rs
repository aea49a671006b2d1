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
//!
//! Topic records (the Topics API) are kept here too: created explicitly or by the first
//! publish, changed and deleted only by the owner, and written through to the store.
//!
//! With a persistent tier, a topic's entry may have been dropped from memory (or never
//! made): [`plan`] says which operations must wait for its state to be loaded (the shard
//! runs them after `shard::loads` read it), and which read the store instead (record
//! listings).

use std::ops::Range;
use std::sync::Arc;

use super::idempotency::Claim;
use crate::metrics;
use crate::store::{Store, StoreError, Ticket};
use crate::topic::{
    display_name, owned_by, ConsumerKey, Cursor, Draft, HistoryPage, Located, Message, MessageId,
    Order, Refusal, ShardSet, Snapshot, TopicRecord, TopicTable,
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
    /// Who publishes: the owner of any topic record the batch creates.
    pub publisher: Arc<Publisher>,
}

/// The publisher's token subject and the name a created record's description shows. Made
/// once per verified token and shared (see `api::AuthCache`), so that a publish carries it
/// without allocating.
#[derive(Debug, PartialEq, Eq)]
pub struct Publisher {
    pub subject: Box<str>,
    pub name: Box<str>,
}

/// Who asks to change or delete a topic record.
pub struct Actor {
    pub subject: Box<str>,
    pub admin: bool,
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
    /// Topic records and history pages (the Topics API).
    Record(RecordOp),
}

pub enum RecordOp {
    /// Gives `topic` this record unless it has one.
    Create {
        topic: Arc<str>,
        record: TopicRecord,
    },
    Get {
        topic: Arc<str>,
    },
    /// Sets the description (`None` leaves it as it is).
    Update {
        topic: Arc<str>,
        description: Option<String>,
        actor: Actor,
    },
    /// Deletes the record, the retained messages and the consumer positions.
    Delete {
        topic: Arc<str>,
        actor: Actor,
    },
    /// One page of history; needs a record.
    History {
        topic: Arc<str>,
        order: Order,
        cursor: Option<MessageId>,
        limit: usize,
    },
    /// The oldest `limit` records this shard holds that `owner_id` owns, or of any owner
    /// with `None` (sent to every shard, each answering for its own table).
    List {
        owner_id: Option<Box<str>>,
        limit: usize,
    },
    /// How many records this shard holds (sent to every shard).
    Count,
}

/// What a topic-record operation found or did.
#[derive(Debug)]
pub enum RecordAnswer {
    Created(TopicRecord),
    /// A create found this record already there.
    Exists(TopicRecord),
    /// The record as it is (after an update).
    Found(TopicRecord),
    Deleted,
    Missing,
    /// The caller is neither the record's owner nor an admin.
    Forbidden,
    /// Without a persistent tier, the shard keeps as many created records as it may
    /// (`storage.max_topic_records_per_shard`).
    Full,
}

/// What a publish returns per message: the ID and the owner's timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub id: MessageId,
    pub timestamp_ms: u64,
}

pub enum OpResult {
    Published(Result<Vec<Receipt>, StoreError>),
    /// `Err`: the topic's state could not be loaded from the persistent tier.
    Subscribed(Result<Snapshot, StoreError>),
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
    Record(Result<RecordAnswer, StoreError>),
    /// `None`: the topic has no record.
    History(Result<Option<HistoryPage>, StoreError>),
    /// Topic keys and records of one shard.
    Records(Result<Vec<(Arc<str>, TopicRecord)>, StoreError>),
    RecordCount(Result<usize, StoreError>),
}

/// How the owner runs an operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Against the table, at once.
    Now,
    /// Once the topic's state was loaded from the persistent tier.
    Load(Arc<str>),
    /// Against the persistent tier's records: they span topics not in memory.
    Scan(Listing),
}

/// A question about every record of a shard.
#[derive(Debug, PartialEq, Eq)]
pub enum Listing {
    Owned {
        owner_id: Option<Box<str>>,
        limit: usize,
    },
    Count,
}

/// How `op` must run. Without a persistent tier everything is in memory; with one, an
/// operation that depends on a topic's positions, record or stream extent waits until the
/// topic is loaded (publishing and live subscriptions without a consumer do not).
pub fn plan(table: &TopicTable, recovered: bool, op: &Op) -> Plan {
    if !table.is_persistent() {
        return Plan::Now;
    }
    let topic: Arc<str> = match op {
        Op::Publish(_) | Op::Locate { .. } => return Plan::Now,
        Op::Subscribe {
            consumer: None,
            cursor: Cursor::Live,
            ..
        } => return Plan::Now,
        Op::Subscribe { topic, .. } => Arc::clone(topic),
        Op::Ack { topic, .. } if table.is_loaded(topic) => return Plan::Now,
        Op::Ack { topic, .. } => Arc::from(&**topic),
        Op::Record(_) if !recovered => return Plan::Now,
        Op::Record(RecordOp::List { owner_id, limit }) => {
            return Plan::Scan(Listing::Owned {
                owner_id: owner_id.clone(),
                limit: *limit,
            })
        }
        Op::Record(RecordOp::Count) => return Plan::Scan(Listing::Count),
        Op::Record(
            RecordOp::Create { topic, .. }
            | RecordOp::Get { topic }
            | RecordOp::Update { topic, .. }
            | RecordOp::Delete { topic, .. }
            | RecordOp::History { topic, .. },
        ) => Arc::clone(topic),
    };
    if table.is_loaded(&topic) {
        Plan::Now
    } else {
        Plan::Load(topic)
    }
}

/// Answers a record listing from the persistent tier.
pub async fn scan(store: &Store, shard: usize, shards: usize, listing: Listing) -> OpResult {
    match listing {
        Listing::Owned { owner_id, limit } => OpResult::Records(
            store
                .records(owned_by(shard, shards), owner_id.as_deref(), limit)
                .await,
        ),
        Listing::Count => OpResult::RecordCount(store.count_records(owned_by(shard, shards)).await),
    }
}

/// The answer to `op` when the state it needs could not be read (`e`).
pub fn refused(op: &Op, e: StoreError) -> OpResult {
    match op {
        Op::Publish(_) => OpResult::Published(Err(e)),
        Op::Subscribe { .. } => OpResult::Subscribed(Err(e)),
        // Like an ID the store cannot confirm: not taken.
        Op::Ack { ids, .. } => OpResult::Acked(vec![false; ids.len()]),
        Op::Locate { ids, .. } => {
            OpResult::Located(ids.iter().map(|_| Located::default()).collect())
        }
        Op::Record(op) => record_error(op, e),
    }
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
                let text = |range: &Range<usize>| {
                    std::str::from_utf8(&body[range.clone()]).unwrap_or_default()
                };
                batch
                    .items
                    .iter()
                    .map(|span| {
                        let draft = Draft {
                            topic: text(&span.topic),
                            payload: &body[span.payload.clone()],
                            metadata: span.metadata.clone().map(|r| &body[r]),
                            ttl_ms: span.ttl_ms,
                        };
                        let published = table.publish(&draft, now_ms, durable);
                        let msg = published.msg;
                        fanout(&msg, published.interested);
                        tickets.extend(store.append(
                            &msg.topic,
                            &msg.stream_entry(),
                            published.trim_due,
                        ));
                        if published.unrecorded {
                            let created = table.ensure_record(draft.topic, || {
                                let who = &batch.publisher;
                                TopicRecord::auto_created(&who.subject, &who.name, now_ms)
                            });
                            if let Some((record, may_exist)) = created {
                                tickets.extend(store.save_topic(
                                    draft.topic,
                                    display_name(draft.topic),
                                    &record,
                                    may_exist,
                                ));
                            }
                        }
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
            OpResult::Subscribed(Ok(snapshot))
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
        Op::Record(op) if !recovered => record_error(&op, StoreError::Recovering),
        Op::Record(op) => apply_to_records(table, store, op, now_ms, &mut tickets),
    };
    (result, tickets)
}

/// The topic-record operations (Topics API). Changes are written through to the store;
/// their tickets go to `tickets`.
fn apply_to_records(
    table: &mut TopicTable,
    store: &Store,
    op: RecordOp,
    now_ms: u64,
    tickets: &mut Vec<Ticket>,
) -> OpResult {
    match op {
        RecordOp::Create { topic, record } => {
            OpResult::Record(
                store
                    .admit(1)
                    .map(|()| match table.create_record(&topic, record) {
                        Ok(created) => {
                            tickets.extend(store.save_topic(
                                &topic,
                                display_name(&topic),
                                &created,
                                false,
                            ));
                            RecordAnswer::Created(created)
                        }
                        Err(Refusal::Exists(existing)) => RecordAnswer::Exists(existing),
                        Err(Refusal::Full) => RecordAnswer::Full,
                    }),
            )
        }
        RecordOp::Get { topic } => OpResult::Record(Ok(table
            .record(&topic)
            .map_or(RecordAnswer::Missing, |r| RecordAnswer::Found(r.clone())))),
        RecordOp::Update {
            topic,
            description,
            actor,
        } => OpResult::Record(store.admit(1).map(|()| {
            let Some(record) = table.record(&topic) else {
                return RecordAnswer::Missing;
            };
            if !record.may_be_changed_by(&actor.subject, actor.admin) {
                return RecordAnswer::Forbidden;
            }
            let Some(text) = description else {
                return RecordAnswer::Found(record.clone());
            };
            match table.describe(&topic, text) {
                Some(Ok(record)) => {
                    tickets.extend(store.save_topic(&topic, display_name(&topic), &record, false));
                    RecordAnswer::Found(record)
                }
                Some(Err(_)) => RecordAnswer::Full,
                None => RecordAnswer::Missing,
            }
        })),
        RecordOp::Delete { topic, actor } => {
            OpResult::Record(store.admit(1).map(|()| match table.record(&topic) {
                None => RecordAnswer::Missing,
                Some(record) if !record.may_be_changed_by(&actor.subject, actor.admin) => {
                    RecordAnswer::Forbidden
                }
                Some(_) => {
                    table.delete(&topic);
                    tickets.extend(store.delete_topic(&topic));
                    RecordAnswer::Deleted
                }
            }))
        }
        RecordOp::History {
            topic,
            order,
            cursor,
            limit,
        } => OpResult::History(Ok(table.history_page(&topic, order, cursor, limit, now_ms))),
        RecordOp::List { owner_id, limit } => {
            OpResult::Records(Ok(table.owned_by(owner_id.as_deref(), limit)))
        }
        RecordOp::Count => OpResult::RecordCount(Ok(table.records().count())),
    }
}

/// The answer to a topic-record operation that cannot be served (`e`): for instance while
/// the shard still reads its topics back from the persistent tier.
fn record_error(op: &RecordOp, e: StoreError) -> OpResult {
    match op {
        RecordOp::History { .. } => OpResult::History(Err(e)),
        RecordOp::List { .. } => OpResult::Records(Err(e)),
        RecordOp::Count => OpResult::RecordCount(Err(e)),
        RecordOp::Create { .. }
        | RecordOp::Get { .. }
        | RecordOp::Update { .. }
        | RecordOp::Delete { .. } => OpResult::Record(Err(e)),
    }
}

/// Waits for the writes a result depends on; a failed write fails the whole publish (or
/// record change), since its caller must not be told it is safe.
pub async fn settle(result: OpResult, tickets: Vec<Ticket>) -> OpResult {
    let mut failure = None;
    for ticket in tickets {
        if let Err(e) = ticket.wait().await {
            failure.get_or_insert(e);
        }
    }
    match (result, failure) {
        (OpResult::Published(_), Some(e)) => OpResult::Published(Err(e)),
        (OpResult::Record(_), Some(e)) => OpResult::Record(Err(e)),
        (result, _) => result,
    }
}
