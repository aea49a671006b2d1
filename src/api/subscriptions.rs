//! A connection's set of topic subscriptions, registered with the local index and with
//! each topic's owner, and torn down with the connection.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::shard::Shard;
use crate::store::StoreError;
use crate::topic::owner::apply::Subscribe;
use crate::topic::subscribers::{Sink, Subscription};
use crate::topic::{history, owner_of, ConsumerKey, Cursor, Message, MessageId, Snapshot};

pub struct Subscriptions {
    shard: Rc<Shard>,
    by_topic: HashMap<Arc<str>, Rc<Subscription>>,
}

/// A subscription registered locally and with its owner, whose backlog the caller still
/// has to hand over with [`Subscription::finish_replay`].
pub struct Pending {
    pub sub: Rc<Subscription>,
    /// Persistent history (if the cursor reached back beyond the ring), then the ring.
    pub backlog: Vec<Arc<Message>>,
    /// Set when `backlog` stops short of the live edge: the caller must not go live.
    pub problem: Option<ReplayProblem>,
}

#[derive(Clone, Debug)]
pub enum ReplayProblem {
    /// More retained messages than the limit; `backlog` holds the oldest ones.
    Truncated,
    /// The persistent tier could not be read.
    Store(StoreError),
}

impl Subscriptions {
    pub fn new(shard: Rc<Shard>) -> Self {
        Subscriptions {
            shard,
            by_topic: HashMap::new(),
        }
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_topic.keys()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Subscribes to every topic from the same cursor; see [`Subscriptions::add_each`].
    pub async fn add(
        &mut self,
        topics: &[Arc<str>],
        cursor: &Cursor,
        consumer: Option<&ConsumerKey>,
        sink: &Rc<dyn Sink>,
        limit: usize,
    ) -> Vec<Pending> {
        let each = topics.iter().map(|topic| (topic, cursor));
        self.add_each(each, consumer, sink, limit).await
    }

    /// Subscribes to every topic, each from its own cursor (skipping ones already
    /// subscribed): registers each locally first, so nothing published from now on is
    /// missed, then asks the owners, all at once, for their snapshots.
    pub async fn add_each<'a>(
        &mut self,
        topics: impl IntoIterator<Item = (&'a Arc<str>, &'a Cursor)>,
        consumer: Option<&ConsumerKey>,
        sink: &Rc<dyn Sink>,
        limit: usize,
    ) -> Vec<Pending> {
        let mut subs = Vec::new();
        let mut calls = Vec::new();
        let from = self.shard.id();
        for (topic, cursor) in topics {
            if self.by_topic.contains_key(topic) {
                continue;
            }
            let start_after = match cursor {
                Cursor::After(id) => *id,
                Cursor::Live | Cursor::Earliest => MessageId::ZERO,
            };
            let sub = Subscription::new(Arc::clone(topic), start_after, Rc::clone(sink));
            self.shard.subscribers.borrow_mut().add(Rc::clone(&sub));
            self.by_topic.insert(Arc::clone(topic), Rc::clone(&sub));
            let req = Subscribe {
                topic: Arc::clone(topic),
                cursor: cursor.clone(),
                consumer: consumer.cloned(),
                limit,
            };
            subs.push(sub);
            calls.push((owner_of(topic, self.shard.count()), move |s: &Rc<Shard>| {
                s.topics.subscribe(from, req)
            }));
        }
        let snapshots = self.shard.on_topic_owners(calls).await;
        let mut pending = Vec::with_capacity(subs.len());
        for (sub, snapshot) in subs.into_iter().zip(snapshots) {
            match snapshot {
                Ok(snapshot) => pending.push(self.complete(sub, snapshot, limit).await),
                // The owner could not load the topic's state (consumer position, history).
                Err(e) => pending.push(Pending {
                    sub,
                    backlog: Vec::new(),
                    problem: Some(ReplayProblem::Store(e)),
                }),
            }
        }
        pending
    }

    /// Puts history from the persistent tier (read on this shard's own connection) in
    /// front of the owner's ring snapshot.
    async fn complete(&self, sub: Rc<Subscription>, snapshot: Snapshot, limit: usize) -> Pending {
        let Some(range) = &snapshot.history else {
            let problem = snapshot.truncated.then_some(ReplayProblem::Truncated);
            return Pending {
                sub,
                backlog: snapshot.backlog,
                problem,
            };
        };
        match history::read(&self.shard.store, &sub.topic, range, limit).await {
            Ok((history, true)) => Pending {
                sub,
                backlog: history,
                problem: Some(ReplayProblem::Truncated),
            },
            Ok((mut history, false)) => {
                let room = limit.saturating_sub(history.len());
                let truncated = snapshot.truncated || snapshot.backlog.len() > room;
                history.extend(snapshot.backlog.into_iter().take(room));
                Pending {
                    sub,
                    backlog: history,
                    problem: truncated.then_some(ReplayProblem::Truncated),
                }
            }
            Err(e) => Pending {
                sub,
                backlog: Vec::new(),
                problem: Some(ReplayProblem::Store(e)),
            },
        }
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        match self.by_topic.remove(topic) {
            Some(sub) => {
                release(&self.shard, &sub);
                true
            }
            None => false,
        }
    }
}

fn release(shard: &Rc<Shard>, sub: &Rc<Subscription>) {
    let last = shard.subscribers.borrow_mut().remove(sub);
    if last {
        shard.drop_interest(Arc::clone(&sub.topic));
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (_, sub) in self.by_topic.drain() {
            release(&self.shard, &sub);
        }
    }
}
