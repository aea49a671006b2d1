//! What a topic's owner does for each request, as plain functions: each takes the table
//! and its inputs (the clock reading, whether the shard recovered, the batch) and returns
//! its answer with the writes to wait for. None does I/O: persistence goes through
//! [`Persist`] (the shard's `Store`, or a recorder in tests), new messages to the fan-out
//! callback. Each runs to completion without awaiting, so the owner applies requests in
//! arrival order and the per-topic order of IDs is the order in which publishes reached it.
//!
//! Persistence plugs in here: a publish is admitted only if the store's backlog has room (so
//! a refused publish changes nothing), every new message is queued for its stream, and with
//! persisted acks the caller gets tickets to await before answering the producer. Topic
//! records (the Topics API) are created explicitly or by the first publish, changed and
//! deleted only here, and written through.

use std::ops::Range;
use std::sync::Arc;

use crate::store::{self, MessageId, Store, StoreError};
use crate::topic::{
    display_name, ConsumerKey, Cursor, Draft, HistoryPage, Located, Message, Order, Refusal,
    ShardSet, Snapshot, TopicRecord, TopicTable,
};

/// Where the owner's writes go: the persistent tier, which only queues them (the link
/// sends them), and answers whether it can take more.
pub trait Persist {
    /// Resolves once a write is confirmed.
    type Ticket;
    /// Whether `writes` more writes fit in the backlog.
    fn admit(&self, writes: usize) -> Result<(), StoreError>;
    /// How far this shard's writes are confirmed (`None` without a persistent tier).
    fn durable_upto(&self) -> Option<MessageId>;
    fn append(&self, msg: &Message, trim: bool) -> Option<Self::Ticket>;
    fn save_position(&self, topic: &str, consumer: &str, id: MessageId);
    fn save_record(
        &self,
        topic: &str,
        record: &TopicRecord,
        if_absent: bool,
    ) -> Option<Self::Ticket>;
    fn delete_topic(&self, topic: &str) -> Option<Self::Ticket>;
}

impl Persist for Store {
    type Ticket = store::Ticket;

    fn admit(&self, writes: usize) -> Result<(), StoreError> {
        Store::admit(self, writes)
    }

    fn durable_upto(&self) -> Option<MessageId> {
        Store::durable_upto(self)
    }

    fn append(&self, msg: &Message, trim: bool) -> Option<store::Ticket> {
        Store::append(self, &msg.topic, &msg.stream_entry(), trim)
    }

    fn save_position(&self, topic: &str, consumer: &str, id: MessageId) {
        Store::save_position(self, topic, consumer, id)
    }

    fn save_record(
        &self,
        topic: &str,
        record: &TopicRecord,
        if_absent: bool,
    ) -> Option<store::Ticket> {
        self.save_topic(topic, display_name(topic), record, if_absent)
    }

    fn delete_topic(&self, topic: &str) -> Option<store::Ticket> {
        Store::delete_topic(self, topic)
    }
}

/// An answer and the writes to wait for before it may be given.
pub type Applied<T, K> = (T, Vec<K>);

/// One message of a publish request, as byte ranges into the request body so that the
/// producer's bytes travel to the owner without being copied or re-encoded.
#[derive(Clone)]
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

/// What a publish returns per message: the ID and the owner's timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub id: MessageId,
    pub timestamp_ms: u64,
}

/// A subscription's registration with the owner.
pub struct Subscribe {
    pub topic: Arc<str>,
    pub cursor: Cursor,
    pub consumer: Option<ConsumerKey>,
    /// Most retained messages the snapshot carries.
    pub limit: usize,
}

/// Who asks to change or delete a topic record.
pub struct Actor {
    pub subject: Box<str>,
    pub admin: bool,
}

/// What a topic-record operation found or did.
#[derive(Debug, PartialEq, Eq)]
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

/// Publishes a batch whose topics this shard owns. `fanout` receives every new message
/// with the set of shards to deliver it to. Refused as a whole (nothing published) while
/// the shard still recovers or when the store's backlog has no room for the batch.
pub fn publish<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    recovered: bool,
    batch: &PublishBatch,
    now_ms: u64,
    mut fanout: impl FnMut(&Arc<Message>, ShardSet),
) -> Applied<Result<Vec<Receipt>, StoreError>, (usize, P::Ticket)> {
    // Each with its item's index: one refused write fails that item alone.
    let mut tickets = Vec::new();
    let admitted = if recovered {
        persist.admit(batch.items.len())
    } else {
        Err(StoreError::Recovering)
    };
    let durable = persist.durable_upto();
    let published = admitted.map(|()| {
        let body = &batch.body[..];
        let text =
            |range: &Range<usize>| std::str::from_utf8(&body[range.clone()]).unwrap_or_default();
        batch
            .items
            .iter()
            .enumerate()
            .map(|(item, span)| {
                let draft = Draft {
                    topic: text(&span.topic),
                    payload: &body[span.payload.clone()],
                    metadata: span.metadata.clone().map(|r| &body[r]),
                    ttl_ms: span.ttl_ms,
                };
                let published = table.publish(&draft, now_ms, durable);
                let msg = published.msg;
                fanout(&msg, published.interested);
                let appended = persist.append(&msg, published.trim_due);
                tickets.extend(appended.map(|t| (item, t)));
                if published.unrecorded {
                    let created = table.ensure_record(draft.topic, || {
                        let who = &batch.publisher;
                        TopicRecord::auto_created(&who.subject, &who.name, now_ms)
                    });
                    if let Some((record, may_exist)) = created {
                        let saved = persist.save_record(draft.topic, &record, may_exist);
                        tickets.extend(saved.map(|t| (item, t)));
                    }
                }
                Receipt {
                    id: msg.id,
                    timestamp_ms: msg.timestamp_ms,
                }
            })
            .collect()
    });
    (published, tickets)
}

/// Registers shard `from` as interested in the topic and takes the snapshot after the
/// subscriber's starting point; a consumer position it creates is persisted.
pub fn subscribe<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    from: usize,
    req: &Subscribe,
    now_ms: u64,
) -> Snapshot {
    let (snapshot, created) = table.subscribe(
        &req.topic,
        from,
        &req.cursor,
        req.consumer.as_deref(),
        now_ms,
        req.limit,
    );
    if let (Some(position), Some(key)) = (created, &req.consumer) {
        persist.save_position(&req.topic, key, position);
    }
    snapshot
}

/// Per ID, which topics hold it or may, among `topics` (`None`: every topic the consumer
/// reads here).
pub fn locate(
    table: &TopicTable,
    consumer: &str,
    ids: &[MessageId],
    topics: Option<&[Box<str>]>,
) -> Vec<Located> {
    ids.iter()
        .map(|id| table.locate(consumer, *id, topics))
        .collect()
}

/// Acknowledges `ids` in `topic` for `consumer`: per ID, whether the topic took it. A
/// position that moved is persisted.
pub fn ack<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    consumer: &str,
    topic: &str,
    ids: &[MessageId],
) -> Vec<bool> {
    ids.iter()
        .map(|id| match table.ack(consumer, topic, *id) {
            Some(moved) => {
                if moved {
                    persist.save_position(topic, consumer, *id);
                }
                true
            }
            None => false,
        })
        .collect()
}

/// Gives `topic` `record` unless it has one.
pub fn create_record<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    topic: &str,
    record: TopicRecord,
) -> Applied<Result<RecordAnswer, StoreError>, P::Ticket> {
    let mut tickets = Vec::new();
    let answer = persist
        .admit(1)
        .map(|()| match table.create_record(topic, record) {
            Ok(created) => {
                tickets.extend(persist.save_record(topic, &created, false));
                RecordAnswer::Created(created)
            }
            Err(Refusal::Exists(existing)) => RecordAnswer::Exists(existing),
            Err(Refusal::Full) => RecordAnswer::Full,
        });
    (answer, tickets)
}

/// The record of `topic`, as it is.
pub fn record(table: &TopicTable, topic: &str) -> RecordAnswer {
    table
        .record(topic)
        .map_or(RecordAnswer::Missing, |r| RecordAnswer::Found(r.clone()))
}

/// Sets the description of `topic`'s record (`None` leaves it as it is), if `actor` may.
pub fn update_record<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    topic: &str,
    description: Option<String>,
    actor: &Actor,
) -> Applied<Result<RecordAnswer, StoreError>, P::Ticket> {
    let mut tickets = Vec::new();
    let answer = persist.admit(1).map(|()| {
        let Some(record) = table.record(topic) else {
            return RecordAnswer::Missing;
        };
        if !record.may_be_changed_by(&actor.subject, actor.admin) {
            return RecordAnswer::Forbidden;
        }
        let Some(text) = description else {
            return RecordAnswer::Found(record.clone());
        };
        match table.describe(topic, text) {
            Some(Ok(record)) => {
                tickets.extend(persist.save_record(topic, &record, false));
                RecordAnswer::Found(record)
            }
            Some(Err(_)) => RecordAnswer::Full,
            None => RecordAnswer::Missing,
        }
    });
    (answer, tickets)
}

/// Deletes `topic`'s record, retained messages and consumer positions, if `actor` may.
pub fn delete_record<P: Persist>(
    table: &mut TopicTable,
    persist: &P,
    topic: &str,
    actor: &Actor,
) -> Applied<Result<RecordAnswer, StoreError>, P::Ticket> {
    let mut tickets = Vec::new();
    let answer = persist.admit(1).map(|()| match table.record(topic) {
        None => RecordAnswer::Missing,
        Some(record) if !record.may_be_changed_by(&actor.subject, actor.admin) => {
            RecordAnswer::Forbidden
        }
        Some(_) => {
            table.delete(topic);
            tickets.extend(persist.delete_topic(topic));
            RecordAnswer::Deleted
        }
    });
    (answer, tickets)
}

/// One page of `topic`'s history; `None` when it has no record.
pub fn history(
    table: &TopicTable,
    topic: &str,
    order: Order,
    cursor: Option<MessageId>,
    limit: usize,
    now_ms: u64,
) -> Option<HistoryPage> {
    table.history_page(topic, order, cursor, limit, now_ms)
}
