//! Reading the owned topics' state back from the persistent tier: at start-up, and on
//! demand for a topic whose entry was dropped from memory (or never made).
//!
//! At start-up a shard learns the highest ID its streams hold (its clock continues above
//! it) and the topics with durable consumers. Everything else stays in Valkey until an
//! operation needs it: such an operation (see `owner::plan`) waits here while the owner
//! reads the topic over its own link, after every write it queued for the topic, so the read
//! sees them. The operations waiting for one topic are applied in arrival order once it is
//! loaded, and so is a shard's notice that it lost interest (it must not overtake the
//! subscription it ends); a failed read fails them all. This module owns only the waiting
//! lists; the table is the shard's.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::owner::{self, Op, OpResult, Plan};
use super::{now_ms, sleep, spawn_local, Shard};
use crate::metrics;
use crate::rt::signal::Slot;
use crate::store::Ticket;
use crate::topic::owned_by;

/// An operation's result and the writes to wait for before sending it.
pub type Applied = (OpResult, Vec<Ticket>);

enum Waiting {
    Op {
        from: usize,
        op: Op,
        slot: Rc<Slot<Applied>>,
    },
    /// Shard `from` has no subscriber for the topic any more.
    DropInterest { from: usize },
}

/// The topics being loaded, each with what waits for it, oldest first.
#[derive(Default)]
pub struct Loads(RefCell<HashMap<Arc<str>, VecDeque<Waiting>>>);

impl Shard {
    /// Starts an operation this shard owns: applied at once, or queued until what it
    /// needs was read from the persistent tier.
    pub(super) fn start(&self, from: usize, op: Op) -> Started {
        match self.plan(&op) {
            Plan::Now => Started::Done(self.apply(from, op)),
            Plan::Load(topic) => Started::Later(Later::Loading(self.after_load(topic, from, op))),
            Plan::Scan(listing) => Started::Later(Later::Scan(listing)),
        }
    }

    /// Shard `from` has no subscriber for `topic` any more: applied now, or after what
    /// waits for the topic's load.
    pub(super) fn lose_interest(&self, topic: &Arc<str>, from: usize) {
        if let Some(queue) = self.loads.0.borrow_mut().get_mut(topic) {
            queue.push_back(Waiting::DropInterest { from });
            return;
        }
        self.topics.borrow_mut().drop_interest(topic, from);
    }

    /// Queues `op` to be applied once `topic` is loaded, starting the read unless one is
    /// under way; its result arrives in the slot. Queued at once, so that nothing the
    /// shard receives later for the topic overtakes it.
    pub(super) fn after_load(&self, topic: Arc<str>, from: usize, op: Op) -> Rc<Slot<Applied>> {
        let slot = Rc::new(Slot::default());
        let waiting = Waiting::Op {
            from,
            op,
            slot: Rc::clone(&slot),
        };
        let first = {
            let mut loads = self.loads.0.borrow_mut();
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
        if let (true, Some(shard)) = (first, self.me.upgrade()) {
            spawn_local(load(shard, topic)).detach();
        }
        slot
    }
}

async fn load(shard: Rc<Shard>, topic: Arc<str>) {
    loop {
        let stored = shard.store.load_topic(&topic).await;
        metrics::add(&shard.metrics.topic_loads, 1);
        let mut queue = shard
            .loads
            .0
            .borrow_mut()
            .remove(&topic)
            .unwrap_or_default();
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                for waiting in queue {
                    match waiting {
                        Waiting::Op { op, slot, .. } => {
                            slot.fill((owner::refused(&op, e.clone()), Vec::new()))
                        }
                        Waiting::DropInterest { from } => {
                            shard.topics.borrow_mut().drop_interest(&topic, from)
                        }
                    }
                }
                return;
            }
        };
        shard.topics.borrow_mut().load(&topic, stored);
        while let Some(waiting) = queue.pop_front() {
            match waiting {
                Waiting::Op { ref op, .. } if matches!(shard.plan(op), Plan::Load(_)) => {
                    // An operation before it made the shard drop the topic again (budget).
                    queue.push_front(waiting);
                    break;
                }
                Waiting::Op { from, op, slot } => slot.fill(shard.apply(from, op)),
                Waiting::DropInterest { from } => {
                    shard.topics.borrow_mut().drop_interest(&topic, from)
                }
            }
        }
        if queue.is_empty() {
            // A look at a topic that has nothing leaves nothing behind.
            shard.topics.borrow_mut().forget_if_idle(&topic);
            return;
        }
        shard.loads.0.borrow_mut().insert(Arc::clone(&topic), queue);
    }
}

/// How an operation addressed to this shard as owner got under way.
pub(super) enum Started {
    Done(Applied),
    Later(Later),
}

/// An operation that needs the persistent tier first.
pub(super) enum Later {
    /// Waiting for its topic to be loaded.
    Loading(Rc<Slot<Applied>>),
    /// To be answered from the persistent tier's records.
    Scan(owner::Listing),
}

impl Later {
    pub(super) async fn finish(self, shard: &Shard) -> Applied {
        match self {
            Later::Loading(slot) => slot.take().await,
            Later::Scan(listing) => {
                let result = owner::scan(&shard.store, shard.id, shard.count, listing).await;
                (result, Vec::new())
            }
        }
    }
}

/// Reads what the shard needs from the persistent tier before it takes publishes,
/// retrying until Valkey answers.
pub(super) async fn recover(shard: Rc<Shard>) {
    let mut logged = false;
    let started = now_ms();
    loop {
        match shard.store.recover(owned_by(shard.id, shard.count)).await {
            Ok(recovery) => {
                let mut table = shard.topics.borrow_mut();
                table.advance_clock(recovery.last_id);
                for (topic, stored) in recovery.consumed {
                    table.load(&topic, stored);
                }
                shard.recovered.set(true);
                return;
            }
            Err(e) => {
                // The link is usually still connecting on the first tries; only a lasting
                // failure is worth a line.
                if !logged && now_ms() - started > 2000 {
                    crate::log_line!(
                        "shard {}: waiting for Valkey to recover topics: {e}",
                        shard.id
                    );
                    logged = true;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
