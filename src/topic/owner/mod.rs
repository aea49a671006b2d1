//! The topics one shard owns, as its owner serves them: the handlers that requests from any
//! shard (this one included) run here, and the reading back of topic state from the
//! persistent tier that some of them wait for.
//!
//! Each handler answers at once or later ([`Answer`]): later when the writes it queued must
//! be confirmed first (persisted acks), or when the topic's state must be loaded first. The
//! logic itself is [`apply`]'s, which does no I/O; this module drives it with the shard's
//! store, its clock and its load queue. It is reached only through the shard's one way to
//! run work on an owner (`api::Shard::on_topic`), never from another shard's thread.
//!
//! Loading: at start-up a shard learns the highest ID its streams hold (its clock continues
//! above it) and the topics with durable consumers. Everything else stays in Valkey until
//! an operation needs it (one that depends on a topic's positions, record or stream extent;
//! publishing and live subscriptions without a consumer do not). Such an operation waits
//! while the owner reads the topic over its own link, after every write it queued for the
//! topic, so the read sees them. The operations waiting for one topic are applied in
//! arrival order once it is loaded, and so is a shard's notice that it lost interest (it
//! must not overtake the subscription it ends); a failed read fails them all.

pub mod apply;
mod follow;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, ShardMetrics};
use crate::rt::mesh::Answer;
use crate::rt::signal::Slot;
use crate::rt::{now_ms, sleep, spawn_local};
use crate::store::{MessageId, Store, StoreError, Ticket, TopicRecord};
use crate::topic::{
    owned_by, HistoryPage, Located, Message, Order, ShardSet, Snapshot, TopicLimits, TopicTable,
};
use apply::{Actor, Applied, PublishBatch, Receipt, RecordAnswer, Subscribe};
pub use follow::{PublishResult, Written};

/// An operation waiting for a topic's state, told whether the load succeeded.
type LoadedOp = Box<dyn FnOnce(&Owner, Result<(), StoreError>)>;

/// What waits for a topic's state to be read back.
enum Waiting {
    Op(LoadedOp),
    /// Shard `from` has no subscriber for the topic any more.
    DropInterest {
        from: usize,
    },
}

/// The topics a shard owns, with their persistence.
pub struct Owner {
    /// This owner itself, for the load tasks it starts.
    me: Weak<Owner>,
    shard: usize,
    shards: usize,
    table: RefCell<TopicTable>,
    store: Rc<Store>,
    metrics: Rc<ShardMetrics>,
    /// The topics being loaded, each with what waits for it, oldest first.
    loads: RefCell<HashMap<Arc<str>, VecDeque<Waiting>>>,
    /// The owned topics' last IDs have been read back from the persistent tier (always
    /// true for the memory backend); publishes wait for it.
    recovered: Cell<bool>,
    /// Cluster mode ([`follow`]): where heard messages go, the topics being caught up
    /// with, and the topics known to have a record.
    fanout: RefCell<Option<Fanout>>,
    behind: RefCell<HashMap<Arc<str>, follow::Behind>>,
    recorded: RefCell<HashSet<Arc<str>>>,
}

type Fanout = Box<dyn Fn(&Arc<Message>, ShardSet)>;

impl Owner {
    pub fn new(
        shard: usize,
        shards: usize,
        limits: TopicLimits,
        store: Rc<Store>,
        metrics: Rc<ShardMetrics>,
    ) -> Rc<Owner> {
        let persistent = store.is_persistent();
        Rc::new_cyclic(|me| Owner {
            me: Weak::clone(me),
            shard,
            shards,
            table: RefCell::new(TopicTable::new(
                limits,
                persistent,
                crate::topic::IdClock::new(shard, shards),
            )),
            store,
            metrics,
            loads: RefCell::new(HashMap::new()),
            recovered: Cell::new(!persistent),
            fanout: RefCell::new(None),
            behind: RefCell::new(HashMap::new()),
            recorded: RefCell::new(HashSet::new()),
        })
    }

    /// Starts reading back what the shard needs before it takes publishes (with a
    /// persistent tier).
    pub fn start(self: &Rc<Self>) {
        if self.store.is_persistent() {
            spawn_local(recover(Rc::clone(self))).detach();
        }
        if self.store.is_announced() {
            spawn_local(follow::follow(Rc::clone(self))).detach();
        }
    }

    /// Whether the owned topics were read back (always true without a persistent tier).
    pub fn is_recovered(&self) -> bool {
        self.recovered.get()
    }

    /// Publishes a batch of messages to topics this shard owns; `fanout` gets every new
    /// message with the shards to deliver it to. The answer may be given once the writes
    /// are confirmed ([`settled`]).
    pub fn publish(
        &self,
        batch: &PublishBatch,
        mut fanout: impl FnMut(&Arc<Message>, ShardSet),
    ) -> Applied<Result<Vec<Receipt>, StoreError>, (usize, Ticket)> {
        apply::publish(
            &mut self.table.borrow_mut(),
            &*self.store,
            self.recovered.get(),
            batch,
            now_ms(),
            |msg, shards| {
                metrics::add(&self.metrics.published, 1);
                fanout(msg, shards)
            },
        )
    }

    /// Registers shard `from`'s subscription and answers with its snapshot; `Err` when the
    /// topic's state could not be loaded.
    pub fn subscribe(
        &self,
        from: usize,
        req: Subscribe,
    ) -> Answer<Result<Snapshot, StoreError>, impl Future<Output = Result<Snapshot, StoreError>>>
    {
        let live = req.consumer.is_none() && req.cursor == crate::topic::Cursor::Live;
        let topic = Arc::clone(&req.topic);
        // In cluster mode even a live subscription needs the topic listened to, and a
        // consumer's position may have moved on another node.
        let cluster = self.store.is_announced();
        let needed = (!live || cluster).then_some(&topic);
        let fresh = cluster && req.consumer.is_some();
        self.when_loaded(needed, fresh, move |owner, loaded| {
            loaded.map(|()| {
                apply::subscribe(
                    &mut owner.table.borrow_mut(),
                    &*owner.store,
                    from,
                    &req,
                    now_ms(),
                )
            })
        })
    }

    /// Which topics hold each of `ids`, among `topics` (`None`: every topic the consumer
    /// reads here).
    pub fn locate(
        &self,
        consumer: &str,
        ids: &[MessageId],
        topics: Option<&[Box<str>]>,
    ) -> Vec<Located> {
        apply::locate(&self.table.borrow(), consumer, ids, topics)
    }

    /// Acknowledges `ids` in `topic` for `consumer`; an ID is not taken when the topic's
    /// state could not be loaded (as one the store cannot confirm).
    pub fn ack(
        &self,
        consumer: Box<str>,
        topic: Arc<str>,
        ids: Vec<MessageId>,
    ) -> Answer<Vec<bool>, impl Future<Output = Vec<bool>>> {
        self.when_loaded(
            Some(&Arc::clone(&topic)),
            false,
            move |owner, loaded| match loaded {
                Ok(()) => apply::ack(
                    &mut owner.table.borrow_mut(),
                    &*owner.store,
                    &consumer,
                    &topic,
                    &ids,
                ),
                Err(_) => vec![false; ids.len()],
            },
        )
    }

    /// Gives `topic` `record` unless it has one.
    pub fn create_record(
        &self,
        topic: Arc<str>,
        record: TopicRecord,
    ) -> Answer<RecordResult, impl Future<Output = RecordResult>> {
        self.record_op(&Arc::clone(&topic), move |owner| {
            apply::create_record(&mut owner.table.borrow_mut(), &*owner.store, &topic, record)
        })
    }

    /// `topic`'s record as it is.
    pub fn record(
        &self,
        topic: Arc<str>,
    ) -> Answer<RecordResult, impl Future<Output = RecordResult>> {
        self.record_op(&Arc::clone(&topic), move |owner| {
            (Ok(apply::record(&owner.table.borrow(), &topic)), Vec::new())
        })
    }

    /// Sets the description of `topic`'s record (`None` leaves it), if `actor` may.
    pub fn update_record(
        &self,
        topic: Arc<str>,
        description: Option<String>,
        actor: Actor,
    ) -> Answer<RecordResult, impl Future<Output = RecordResult>> {
        self.record_op(&Arc::clone(&topic), move |owner| {
            apply::update_record(
                &mut owner.table.borrow_mut(),
                &*owner.store,
                &topic,
                description,
                &actor,
            )
        })
    }

    /// Deletes `topic`'s record, retained messages and consumer positions, if `actor` may.
    pub fn delete_record(
        &self,
        topic: Arc<str>,
        actor: Actor,
    ) -> Answer<RecordResult, impl Future<Output = RecordResult>> {
        self.record_op(&Arc::clone(&topic), move |owner| {
            owner.forget_recorded(&topic);
            apply::delete_record(&mut owner.table.borrow_mut(), &*owner.store, &topic, &actor)
        })
    }

    /// One page of `topic`'s history as the owner can give it; `None` without a record.
    pub fn history(
        &self,
        topic: Arc<str>,
        order: Order,
        cursor: Option<MessageId>,
        limit: usize,
    ) -> Answer<HistoryResult, impl Future<Output = HistoryResult>> {
        self.record_op(&Arc::clone(&topic), move |owner| {
            let page = apply::history(
                &owner.table.borrow(),
                &topic,
                order,
                cursor,
                limit,
                now_ms(),
            );
            (Ok(page), Vec::new())
        })
    }

    /// The oldest `limit` records this shard holds that `owner_id` owns (any owner with
    /// `None`). With a persistent tier they span topics not in memory, so they are read
    /// from there.
    pub fn records(
        &self,
        owner_id: Option<Box<str>>,
        limit: usize,
    ) -> Answer<RecordsResult, impl Future<Output = RecordsResult>> {
        let scan = self.scan();
        match scan {
            Err(e) => Answer::Now(Err(e)),
            Ok(None) => Answer::Now(Ok(self.table.borrow().owned_by(owner_id.as_deref(), limit))),
            Ok(Some((store, mine))) => {
                Answer::Later(async move { store.records(mine, owner_id.as_deref(), limit).await })
            }
        }
    }

    /// How many records this shard holds.
    pub fn count_records(
        &self,
    ) -> Answer<Result<usize, StoreError>, impl Future<Output = Result<usize, StoreError>>> {
        match self.scan() {
            Err(e) => Answer::Now(Err(e)),
            Ok(None) => Answer::Now(Ok(self.table.borrow().records().count())),
            Ok(Some((store, mine))) => {
                Answer::Later(async move { store.count_records(mine).await })
            }
        }
    }

    /// Shard `from` has no subscriber for `topic` any more: applied now, or after what
    /// waits for the topic's load.
    pub fn lose_interest(&self, topic: &Arc<str>, from: usize) {
        if let Some(queue) = self.loads.borrow_mut().get_mut(topic) {
            queue.push_back(Waiting::DropInterest { from });
            return;
        }
        self.table.borrow_mut().drop_interest(topic, from);
        if self.store.is_announced() {
            self.release(topic);
        }
    }

    /// The shard's tick: evicts what the persistent tier confirmed since, and gives back
    /// table space.
    pub fn tick(&self) {
        let mut table = self.table.borrow_mut();
        table.confirmed(self.store.durable_upto());
        table.compact();
    }

    /// The busiest topics of this shard (see [`crate::topic::TopicTable::busiest`]).
    pub fn busiest(&self, since_ms: u64, n: usize) -> Vec<crate::topic::TopicLoad> {
        self.table.borrow().busiest(since_ms, n)
    }

    /// Topics in memory, their bytes, and the entries dropped so far (for metrics).
    pub fn gauges(&self) -> (usize, usize, u64) {
        let table = self.table.borrow();
        (table.len(), table.bytes(), table.dropped())
    }

    /// Where a listing is answered: `Ok(None)` from the table (no persistent tier), from
    /// the store's records of this shard's topics, or `Err` while recovering.
    #[allow(clippy::type_complexity)]
    fn scan(&self) -> Result<Option<(Rc<Store>, impl Fn(&str) -> bool)>, StoreError> {
        if !self.recovered.get() {
            return Err(StoreError::Recovering);
        }
        Ok(self
            .store
            .is_persistent()
            .then(|| (Rc::clone(&self.store), owned_by(self.shard, self.shards))))
    }

    /// A topic-record operation: refused while the shard recovers, run once the topic is
    /// loaded, answered once its writes are confirmed.
    fn record_op<X: 'static>(
        &self,
        topic: &Arc<str>,
        op: impl FnOnce(&Owner) -> Applied<Result<X, StoreError>, Ticket> + 'static,
    ) -> Answer<Result<X, StoreError>, impl Future<Output = Result<X, StoreError>>> {
        let recovered = self.recovered.get();
        let limit = self.store.ack_timeout();
        // Another node may have changed the record since it was read.
        let fresh = self.store.is_announced();
        settled(
            self.when_loaded(
                recovered.then_some(topic),
                fresh,
                move |owner, loaded| match loaded.and(if recovered {
                    Ok(())
                } else {
                    Err(StoreError::Recovering)
                }) {
                    Ok(()) => op(owner),
                    Err(e) => (Err(e), Vec::new()),
                },
            ),
            limit,
        )
    }

    /// Runs `op` now when it needs no topic loaded (`None`) or `topic` is in memory;
    /// otherwise queues it until the topic is read back (starting the read unless one is
    /// under way), at once, so that nothing the shard receives later for the topic
    /// overtakes it.
    /// With `fresh`, the topic's positions and record are read again even when loaded.
    fn when_loaded<T: 'static>(
        &self,
        topic: Option<&Arc<str>>,
        fresh: bool,
        op: impl FnOnce(&Owner, Result<(), StoreError>) -> T + 'static,
    ) -> Answer<T, impl Future<Output = T> + 'static> {
        let topic = match topic {
            Some(topic) if fresh || self.must_load(topic) => Arc::clone(topic),
            _ => return Answer::Now(op(self, Ok(()))),
        };
        let slot = Rc::new(Slot::default());
        let filled = Rc::clone(&slot);
        let waiting = Waiting::Op(Box::new(move |owner, loaded| {
            filled.fill(op(owner, loaded))
        }));
        let first = {
            let mut loads = self.loads.borrow_mut();
            match loads.get_mut(&topic) {
                Some(queue) => {
                    queue.push_back(waiting);
                    false
                }
                None => {
                    loads.insert(Arc::clone(&topic), VecDeque::from([waiting]));
                    true
                }
            }
        };
        // The read runs on its own task: the callers waiting for it may go away.
        if let (true, Some(owner)) = (first, self.me.upgrade()) {
            spawn_local(load(owner, topic)).detach();
        }
        Answer::Later(async move { slot.take().await })
    }

    fn must_load(&self, topic: &str) -> bool {
        let table = self.table.borrow();
        table.is_persistent() && !table.is_loaded(topic)
    }
}

/// What a topic-record operation answers.
pub type RecordResult = Result<RecordAnswer, StoreError>;
/// A history page, `None` when the topic has no record.
pub type HistoryResult = Result<Option<HistoryPage>, StoreError>;
/// Topic keys and records of one shard.
pub type RecordsResult = Result<Vec<(Arc<str>, TopicRecord)>, StoreError>;

/// The answer once its writes are confirmed: a failed write fails the whole publish (or
/// record change), since its caller must not be told it is safe. With `limit`, a write not
/// confirmed by then fails it too ([`StoreError::PersistTimeout`]); without, the caller
/// bounds the wait itself (a publish does, and may keep waiting past its answer).
pub fn settled<X: 'static>(
    answer: Answer<
        Applied<Result<X, StoreError>, Ticket>,
        impl Future<Output = Applied<Result<X, StoreError>, Ticket>> + 'static,
    >,
    limit: Option<Duration>,
) -> Answer<Result<X, StoreError>, impl Future<Output = Result<X, StoreError>> + 'static> {
    match answer {
        Answer::Now((result, tickets)) if tickets.is_empty() => Answer::Now(result),
        answer => Answer::Later(async move {
            let (result, tickets) = answer.get().await;
            let confirmed = match limit {
                Some(limit) => crate::store::confirmed_within(tickets, limit).await,
                None => {
                    let mut failure = None;
                    for ticket in tickets {
                        if let Err(e) = ticket.wait().await {
                            failure.get_or_insert(e);
                        }
                    }
                    failure.map_or(Ok(()), Err)
                }
            };
            confirmed.and(result)
        }),
    }
}

async fn load(owner: Rc<Owner>, topic: Arc<str>) {
    let cluster = owner.store.is_announced();
    loop {
        let refresh = owner.table.borrow().is_loaded(&topic);
        // Cluster mode: listening first, so that whatever is published after the read
        // below is heard (see `follow`).
        let listening = match (cluster && !refresh).then(|| owner.store.listen(&topic)) {
            Some(listen) => listen.await,
            None => Ok(()),
        };
        let stored = match listening {
            Ok(()) => owner.store.load_topic(&topic).await,
            Err(e) => Err(e),
        };
        metrics::add(&owner.metrics.topic_loads, 1);
        let mut queue = owner.loads.borrow_mut().remove(&topic).unwrap_or_default();
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                for waiting in queue {
                    match waiting {
                        Waiting::Op(op) => op(&owner, Err(e.clone())),
                        Waiting::DropInterest { from } => {
                            owner.table.borrow_mut().drop_interest(&topic, from)
                        }
                    }
                }
                if cluster {
                    owner.release(&topic);
                }
                return;
            }
        };
        if refresh {
            owner.table.borrow_mut().refresh(&topic, stored);
        } else {
            owner.table.borrow_mut().load(&topic, stored);
        }
        if cluster {
            owner.loaded(&topic);
        }
        while let Some(waiting) = queue.pop_front() {
            match waiting {
                Waiting::Op(_) if !owner.table.borrow().is_loaded(&topic) => {
                    // An operation before it made the shard drop the topic again (budget).
                    queue.push_front(waiting);
                    break;
                }
                Waiting::Op(op) => op(&owner, Ok(())),
                Waiting::DropInterest { from } => {
                    owner.table.borrow_mut().drop_interest(&topic, from)
                }
            }
        }
        if queue.is_empty() {
            // A look at a topic that has nothing leaves nothing behind (in cluster mode, a
            // topic without subscribers here is not listened to).
            if cluster {
                owner.release(&topic);
            } else {
                owner.table.borrow_mut().forget_if_idle(&topic);
            }
            return;
        }
        owner.loads.borrow_mut().insert(Arc::clone(&topic), queue);
    }
}

/// Reads what the shard needs from the persistent tier before it takes publishes,
/// retrying until Valkey answers.
async fn recover(owner: Rc<Owner>) {
    let mut logged = false;
    let started = now_ms();
    loop {
        match owner
            .store
            .recover(owned_by(owner.shard, owner.shards))
            .await
        {
            Ok(recovery) => {
                let mut table = owner.table.borrow_mut();
                table.advance_clock(recovery.last_id);
                // In cluster mode a topic is loaded only while it is listened to.
                if !owner.store.is_announced() {
                    for (topic, stored) in recovery.consumed {
                        table.load(&topic, stored);
                    }
                }
                owner.recovered.set(true);
                return;
            }
            Err(e) => {
                // The link is usually still connecting on the first tries; only a lasting
                // failure is worth a line.
                if !logged && now_ms() - started > 2000 {
                    crate::log_line!(
                        "shard {}: waiting for Valkey to recover topics: {e}",
                        owner.shard
                    );
                    logged = true;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
