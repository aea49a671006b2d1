//! Cluster mode on a topic's owner: publishing through Valkey, which names the IDs, and
//! following what every node publishes to the topics this node has subscribers for.
//!
//! A node listens to a topic's channel exactly while the topic is loaded here, and it is
//! loaded exactly while some shard of this node has subscribers for it (a topic loaded for
//! another reason, an ack or a record change, is let go as soon as that is done). Loading
//! subscribes to the channel first and reads the topic's last ID after Valkey confirmed it,
//! so every later message is heard.
//!
//! The ring is fed only from what is heard, this node's own publishes included, in the
//! order Valkey published them: a message whose previous ID is the topic's last ID here is
//! appended and fanned out; one already here is skipped; one after a gap (an announcement
//! lost while the pub/sub connection was down, or heard while the topic was still being
//! loaded) makes the owner read the stream from its last ID up to that message before it
//! delivers anything newer. When the connection comes back, every listened topic is read up
//! to the stream's end the same way. So subscribers see each message once, in ID order,
//! whichever node published it.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::Owner;
use crate::metrics;
use crate::rt::mesh::Answer;
use crate::rt::{now_ms, sleep, spawn_local};
use crate::store::link::{LinkError, Reply};
use crate::store::{
    announced, announcement, script_missing, Heard, MessageId, ScriptBy, StoreError, StreamEntry,
    StreamRange, DELETED,
};
use crate::topic::owner::apply::{DraftSpan, PublishBatch, Publisher, Receipt};
use crate::topic::{Message, TopicRecord};

/// Stream entries read per round trip while catching up with a gap.
const REPAIR_PAGE: usize = 1000;
/// "Up to the stream's end" for a catch-up.
const END: MessageId = MessageId::new(u64::MAX, u64::MAX);
/// Wait before a failed catch-up read is tried again.
const REPAIR_RETRY: Duration = Duration::from_millis(200);
/// Topics remembered as having a record: a publish to any other asks Valkey to create its
/// record if it has none. Forgotten all at once when full (one more check per topic).
const MAX_RECORDED: usize = 65_536;

/// What Valkey made of a cluster-mode publish batch of which it wrote at least one
/// message (a batch it wrote nothing of fails as a whole).
#[derive(Debug)]
pub struct Written {
    /// A receipt per message, in order; those of the messages in `refused` name none.
    pub receipts: Vec<Receipt>,
    /// The messages (by index) Valkey refused, or of which it cannot be known whether
    /// Valkey took them, and why; the others stand.
    pub refused: Vec<(usize, StoreError)>,
    /// With replicated acks: too few replicas confirmed the messages written.
    pub unreplicated: Option<StoreError>,
}

pub type PublishResult = Result<Written, StoreError>;

impl Owner {
    /// Publishes a batch through Valkey, which assigns each message's ID in the same step
    /// that announces it to every node (this one included: its ring is fed from what it
    /// hears). Answered once Valkey answered every message, with each message's outcome:
    /// a bulk publish some of whose messages Valkey refused (a key of the wrong type, out
    /// of memory) still learns the IDs of those it wrote.
    pub fn publish_announced(
        &self,
        batch: &PublishBatch,
    ) -> Answer<PublishResult, impl Future<Output = PublishResult> + 'static> {
        let admitted = if self.recovered.get() {
            self.store.admit(batch.items.len())
        } else {
            Err(StoreError::Recovering)
        };
        if let Err(e) = admitted {
            return Answer::Now(Err(e));
        }
        let now = now_ms();
        let replies: Vec<_> = batch
            .items
            .iter()
            .map(|span| {
                let (reply, unrecorded) =
                    self.announce(&batch.body, &batch.publisher, span, now, ScriptBy::Digest);
                (reply, unrecorded, span.clone())
            })
            .collect();
        let owner = self.me.upgrade();
        let (body, publisher) = (Arc::clone(&batch.body), Arc::clone(&batch.publisher));
        Answer::Later(async move {
            let mut receipts = Vec::with_capacity(replies.len());
            let (mut refused, mut unreplicated) = (Vec::new(), None);
            for (item, (reply, mut unrecorded, span)) in replies.into_iter().enumerate() {
                let mut answer = match reply {
                    Some(reply) => reply.take().await,
                    None => Err(LinkError::Down),
                };
                if let (Ok(value), Some(owner)) = (&answer, &owner) {
                    if script_missing(value) {
                        // NOSCRIPT: Valkey ran nothing, so sending the message again (with
                        // the script's text, which caches it again) cannot publish it
                        // twice. The at-most-once rule of these writes (`write_once`) is
                        // about a publish that may have run, whose connection was lost
                        // before its answer; this one certainly did not. Its ID is then
                        // later than those of the batch's next messages if another client
                        // cached the script again in between (after a SCRIPT FLUSH with
                        // publishers on other nodes): delivery follows the IDs, as always.
                        let (again, recorded) =
                            owner.announce(&body, &publisher, &span, now, ScriptBy::Text);
                        unrecorded = recorded;
                        answer = match again {
                            Some(again) => again.take().await,
                            None => Err(LinkError::Down),
                        };
                    }
                }
                let announced = match announced(answer) {
                    Ok(announced) => announced,
                    Err(e) => {
                        refused.push((item, e));
                        receipts.push(Receipt {
                            id: MessageId::ZERO,
                            timestamp_ms: now,
                        });
                        continue;
                    }
                };
                if let Some(owner) = &owner {
                    metrics::add(&owner.metrics.published, 1);
                    match unrecorded {
                        Some(topic) => owner.remember_recorded(topic),
                        // The topic had no last ID, so it was deleted since its record was
                        // remembered here (on a node this one did not hear, having no
                        // subscriber for it), and the record went with it.
                        None if announced.ids.prev == MessageId::ZERO => {
                            let topic =
                                std::str::from_utf8(&body[span.topic.clone()]).unwrap_or_default();
                            let record =
                                TopicRecord::auto_created(&publisher.subject, &publisher.name, now);
                            owner.record_again(topic, &record).await;
                        }
                        None => {}
                    }
                }
                unreplicated = unreplicated.or(announced.unreplicated);
                receipts.push(Receipt {
                    id: announced.ids.id,
                    timestamp_ms: now,
                });
            }
            if refused.len() == receipts.len() {
                // Nothing written: the batch failed as a whole, with its first failure.
                let first = refused.into_iter().next().map(|(_, e)| e);
                return Err(first.unwrap_or_else(|| StoreError::Rejected("empty batch".into())));
            }
            Ok(Written {
                receipts,
                refused,
                unreplicated,
            })
        })
    }

    /// Queues the publish of one message of a batch (`span` of `body`), with the record
    /// to create for its topic unless this owner knows it has one; the reply to wait for,
    /// and the topic when a record was asked for.
    fn announce(
        &self,
        body: &[u8],
        publisher: &Publisher,
        span: &DraftSpan,
        now: u64,
        by: ScriptBy,
    ) -> (Option<Reply>, Option<Arc<str>>) {
        let topic = std::str::from_utf8(&body[span.topic.clone()]).unwrap_or_default();
        let entry = StreamEntry {
            id: MessageId::ZERO,
            payload: &body[span.payload.clone()],
            metadata: span.metadata.clone().map(|r| &body[r]),
            timestamp_ms: now,
            ttl_ms: span.ttl_ms,
        };
        let unrecorded = !self.recorded.borrow().contains(topic);
        let record =
            unrecorded.then(|| TopicRecord::auto_created(&publisher.subject, &publisher.name, now));
        let fields = record.as_ref().map(|r| self.record_fields(topic, r));
        let fields: Option<Vec<(&str, &str)>> = fields
            .as_ref()
            .map(|f| f.iter().map(|(k, v)| (*k, v.as_str())).collect());
        let reply = self.store.announce(topic, &entry, fields.as_deref(), by);
        (reply, unrecorded.then(|| Arc::<str>::from(topic)))
    }

    fn record_fields(&self, topic: &str, record: &TopicRecord) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("topic_id", record.topic_id.clone()),
            ("topic_name", crate::topic::display_name(topic).to_string()),
            ("owner_id", record.owner_id.clone()),
            ("created_at", record.created_at_ms.to_string()),
        ];
        if let Some(description) = &record.description {
            fields.push(("description", description.clone()));
        }
        fields
    }

    /// Writes the record of a topic this node remembered as recorded, if it has none:
    /// answered once Valkey did (whatever it said: the message stands without it).
    async fn record_again(&self, topic: &str, record: &TopicRecord) {
        let name = crate::topic::display_name(topic);
        if let Some(ticket) = self.store.save_topic(topic, name, record, true) {
            let _ = ticket.wait().await;
        }
    }

    fn remember_recorded(&self, topic: Arc<str>) {
        let mut recorded = self.recorded.borrow_mut();
        if recorded.len() >= MAX_RECORDED {
            recorded.clear();
        }
        recorded.insert(topic);
    }

    /// A topic's record was deleted here: a later publish must create it again.
    pub(super) fn forget_recorded(&self, topic: &str) {
        self.recorded.borrow_mut().remove(topic);
    }

    /// Sets where messages heard from Valkey go: the shards with subscribers for them.
    pub fn set_fanout(&self, fanout: impl Fn(&Arc<Message>, crate::topic::ShardSet) + 'static) {
        *self.fanout.borrow_mut() = Some(Box::new(fanout));
    }

    /// An announcement heard on `channel`.
    fn hear(&self, channel: &[u8], data: &[u8]) {
        let Some(topic) = self.store.topic_of_channel(channel) else {
            return;
        };
        if data == DELETED {
            self.forget_recorded(topic);
            self.table.borrow_mut().deleted_elsewhere(topic);
            return;
        }
        let Some(heard) = announcement(data) else {
            return;
        };
        // Milliseconds: the timestamp is the publishing node's, in ms.
        let lag_ms = now_ms().saturating_sub(heard.entry.timestamp_ms);
        self.metrics
            .announce_lag
            .borrow_mut()
            .record(lag_ms.saturating_mul(1000));
        let id = heard.entry.id;
        if let Some(behind) = self.behind.borrow_mut().get_mut(topic) {
            // A catch-up is under way (or waits for the load): it reads this one too.
            behind.heard = behind.heard.max(id);
            return;
        }
        if self.loads.borrow().contains_key(topic) {
            // Heard before the topic's last ID was read: the load may or may not see it.
            self.behind
                .borrow_mut()
                .insert(Arc::from(topic), Behind::upto(id));
            return;
        }
        let Some((name, last)) = self.table.borrow().loaded(topic) else {
            return;
        };
        if id <= last {
            return;
        }
        if heard.prev == last {
            self.deliver(Message::from_entry(&name, heard.entry));
            return;
        }
        metrics::add(&self.metrics.cluster_gaps, 1);
        self.catch_up(name, id);
    }

    /// Reads `topic` from its last ID here up to `target` (at least) before anything
    /// newer is delivered.
    fn catch_up(&self, topic: Arc<str>, target: MessageId) {
        let mut behind = self.behind.borrow_mut();
        if let Some(b) = behind.get_mut(&topic) {
            b.target = b.target.max(target);
            return;
        }
        behind.insert(Arc::clone(&topic), Behind::upto(target));
        drop(behind);
        if let Some(owner) = self.me.upgrade() {
            spawn_local(catch_up(owner, topic)).detach();
        }
    }

    /// A topic finished loading: what was heard meanwhile is read back.
    pub(super) fn loaded(&self, topic: &Arc<str>) {
        let behind = self.behind.borrow_mut().remove(topic);
        if let Some(behind) = behind {
            let target = behind.target.max(behind.heard);
            if self
                .table
                .borrow()
                .last_id(topic)
                .is_some_and(|l| l < target)
            {
                self.catch_up(Arc::clone(topic), target);
            }
        }
    }

    fn deliver(&self, msg: Message) {
        let published = self.table.borrow_mut().append(msg, now_ms());
        if let (Some(published), Some(fanout)) = (published, &*self.fanout.borrow()) {
            fanout(&published.msg, published.interested);
        }
    }

    /// The pub/sub connection came back: everything listened to is read to its end.
    fn resume(&self) {
        let topics = self.table.borrow().loaded_topics();
        for topic in topics {
            self.catch_up(topic, END);
        }
    }

    /// Some channels were subscribed again: their topics are read to their end.
    fn resume_channels(&self, channels: &[Vec<u8>]) {
        for channel in channels {
            let loaded = self
                .store
                .topic_of_channel(channel)
                .and_then(|topic| self.table.borrow().loaded(topic));
            if let Some((topic, _)) = loaded {
                self.catch_up(topic, END);
            }
        }
    }

    /// Cluster mode: stops listening to `topic` unless a shard still has subscribers for it.
    pub(super) fn release(&self, topic: &str) {
        if self.loads.borrow().contains_key(topic) {
            return;
        }
        if self.table.borrow_mut().forget_unwatched(topic) {
            self.behind.borrow_mut().remove(topic);
            self.store.unlisten(topic);
        }
    }
}

/// Cluster mode: takes what the pub/sub connection hears, for as long as the shard runs.
pub(super) async fn follow(owner: Rc<Owner>) {
    loop {
        match owner.store.heard().await {
            Heard::Message { channel, data } => owner.hear(&channel, &data),
            Heard::Resumed => {
                metrics::add(&owner.metrics.cluster_resumes, 1);
                owner.resume();
            }
            Heard::Missed { channels } => {
                metrics::add(&owner.metrics.cluster_resumes, 1);
                owner.resume_channels(&channels);
            }
        }
    }
}

async fn catch_up(owner: Rc<Owner>, topic: Arc<str>) {
    loop {
        let Some(behind) = owner.behind.borrow().get(&topic).copied() else {
            return;
        };
        let Some(last) = owner.table.borrow().last_id(&topic) else {
            owner.behind.borrow_mut().remove(&topic);
            return;
        };
        let until = behind.until();
        if until <= last {
            owner.behind.borrow_mut().remove(&topic);
            return;
        }
        let range = StreamRange {
            after: Some(last),
            until,
            until_inclusive: true,
        };
        let read = owner
            .store
            .history(&topic, &range, REPAIR_PAGE, |entry| {
                Message::from_entry(&topic, entry)
            })
            .await;
        let (messages, more) = match read {
            Ok(read) => read,
            Err(_) => {
                sleep(REPAIR_RETRY).await;
                continue;
            }
        };
        for msg in messages {
            owner.deliver(msg);
        }
        if more {
            continue;
        }
        // The range is read; expired entries in it were skipped, not delivered, and
        // nothing up to its end is missing any more.
        if until != END {
            owner.table.borrow_mut().advance(&topic, until);
        }
        // What was heard during the read may have been published after it: read on.
        let mut all = owner.behind.borrow_mut();
        let Some(b) = all.get_mut(&topic) else {
            return;
        };
        let last = owner.table.borrow().last_id(&topic).unwrap_or(END);
        if b.heard > last {
            b.target = b.heard;
        } else {
            all.remove(&topic);
            return;
        }
    }
}

/// How far a topic's catch-up reads: `target` (or the stream's end), and the newest ID
/// heard while it runs, which it reads up to as well.
#[derive(Clone, Copy)]
pub(super) struct Behind {
    target: MessageId,
    heard: MessageId,
}

impl Behind {
    fn upto(id: MessageId) -> Behind {
        Behind {
            target: id,
            heard: MessageId::ZERO,
        }
    }

    fn until(self) -> MessageId {
        if self.target == END {
            END
        } else {
            self.target.max(self.heard)
        }
    }
}
