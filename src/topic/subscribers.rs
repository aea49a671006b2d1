//! The shard-local subscriber index: which of this shard's connections want which topic.
//!
//! Every shard keeps its own index and is the only one to touch it. The owner of a topic
//! sends each message once per interested shard; this index then hands the same
//! `Arc<Message>` to every local subscription. A subscription filters by its cursor, which
//! is what makes the seam between a replayed snapshot and live traffic exact: nothing
//! twice, nothing skipped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::id::MessageId;
use super::message::Message;

/// Where a subscription's messages go: a WebSocket session's outbound queue or a parked
/// long-poll request.
pub trait Sink {
    fn offer(&self, msg: &Arc<Message>);
}

pub struct Subscription {
    pub topic: Arc<str>,
    /// The last message handed to the sink (or the exclusive starting point).
    cursor: Cell<MessageId>,
    /// Until the owner's snapshot is handed over, live messages wait here. The caller may
    /// hold a snapshot for a moment (a multi-topic subscribe answers once all owners did),
    /// and anything published after the snapshot was taken must not be lost meanwhile.
    replaying: Cell<bool>,
    held: RefCell<Vec<Arc<Message>>>,
    sink: Rc<dyn Sink>,
}

impl Subscription {
    pub fn new(topic: Arc<str>, start_after: MessageId, sink: Rc<dyn Sink>) -> Rc<Self> {
        Rc::new(Subscription {
            topic,
            cursor: Cell::new(start_after),
            replaying: Cell::new(true),
            held: RefCell::new(Vec::new()),
            sink,
        })
    }

    pub fn cursor(&self) -> MessageId {
        self.cursor.get()
    }

    fn offer(&self, msg: &Arc<Message>) {
        if msg.id > self.cursor.get() {
            self.cursor.set(msg.id);
            self.sink.offer(msg);
        }
    }

    /// Hands over the owner's snapshot, then what arrived meanwhile, and switches to live
    /// delivery. Held messages that the snapshot already contained are skipped by the
    /// cursor, since IDs only grow.
    pub fn finish_replay(&self, backlog: &[Arc<Message>]) {
        for msg in backlog {
            self.offer(msg);
        }
        for msg in self.held.take() {
            self.offer(&msg);
        }
        self.replaying.set(false);
    }

    /// Hands over a backlog that stops short of the live edge (more was retained than a
    /// replay may carry). Live messages must not follow it, or the cursor would jump over
    /// the rest: they are dropped, and the subscription stays out of live delivery.
    pub fn finish_truncated(&self, backlog: &[Arc<Message>]) {
        for msg in backlog {
            self.offer(msg);
        }
        self.held.take();
    }

    fn deliver(&self, msg: &Arc<Message>) {
        if self.replaying.get() {
            self.held.borrow_mut().push(Arc::clone(msg));
        } else {
            self.offer(msg);
        }
    }
}

#[derive(Default)]
pub struct LocalSubscribers {
    by_topic: HashMap<Arc<str>, Vec<Rc<Subscription>>>,
}

impl LocalSubscribers {
    pub fn add(&mut self, sub: Rc<Subscription>) {
        self.by_topic
            .entry(Arc::clone(&sub.topic))
            .or_default()
            .push(sub);
    }

    /// Removes a subscription; true when it was this shard's last one for the topic, so the
    /// owner can stop sending it.
    pub fn remove(&mut self, sub: &Rc<Subscription>) -> bool {
        let Some(list) = self.by_topic.get_mut(&sub.topic) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| !Rc::ptr_eq(s, sub));
        if list.is_empty() && before > 0 {
            self.by_topic.remove(&sub.topic);
            return true;
        }
        false
    }

    /// Hands `msg` to every local subscription of its topic; false if it had expired.
    pub fn deliver(&self, msg: &Arc<Message>, now_ms: u64) -> bool {
        if msg.is_expired(now_ms) {
            return false;
        }
        if let Some(list) = self.by_topic.get(&msg.topic) {
            for sub in list {
                sub.deliver(msg);
            }
        }
        true
    }

    pub fn topics(&self) -> usize {
        self.by_topic.len()
    }

    /// This shard's subscriptions (sessions and parked polls) to `topic`.
    pub fn count(&self, topic: &str) -> usize {
        self.by_topic.get(topic).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::message::{test_message, Draft};
    use std::cell::RefCell;

    #[derive(Default)]
    struct Collect(RefCell<Vec<u64>>);
    impl Sink for Collect {
        fn offer(&self, msg: &Arc<Message>) {
            self.0.borrow_mut().push(msg.id.ms);
        }
    }

    fn msg(ms: u64) -> Arc<Message> {
        test_message(ms, None)
    }

    #[test]
    fn snapshot_then_live_has_no_gap_and_no_duplicate() {
        let sink = Rc::new(Collect::default());
        let sub = Subscription::new(Arc::from("t"), MessageId::ZERO, sink.clone());
        let mut index = LocalSubscribers::default();
        index.add(Rc::clone(&sub));
        // 3 arrived before the snapshot reply (so the snapshot has it too); 4 was published
        // after the snapshot while the caller still held it.
        index.deliver(&msg(3), 0);
        index.deliver(&msg(4), 0);
        assert!(sink.0.borrow().is_empty(), "nothing before the snapshot");
        sub.finish_replay(&[msg(2), msg(3)]);
        index.deliver(&msg(4), 0);
        index.deliver(&msg(5), 0);
        assert_eq!(*sink.0.borrow(), [2, 3, 4, 5]);
    }

    #[test]
    fn a_truncated_replay_does_not_jump_to_live_messages() {
        let sink = Rc::new(Collect::default());
        let sub = Subscription::new(Arc::from("t"), MessageId::ZERO, sink.clone());
        let mut index = LocalSubscribers::default();
        index.add(Rc::clone(&sub));
        index.deliver(&msg(9), 0);
        sub.finish_truncated(&[msg(2), msg(3)]);
        index.deliver(&msg(10), 0);
        assert_eq!(*sink.0.borrow(), [2, 3]);
        assert_eq!(sub.cursor(), MessageId::new(3, 0), "resume point");
    }

    #[test]
    fn remove_reports_the_last_subscription_of_a_topic() {
        let sink: Rc<dyn Sink> = Rc::new(Collect::default());
        let a = Subscription::new(Arc::from("t"), MessageId::ZERO, Rc::clone(&sink));
        let b = Subscription::new(Arc::from("t"), MessageId::ZERO, sink);
        let mut index = LocalSubscribers::default();
        index.add(Rc::clone(&a));
        index.add(Rc::clone(&b));
        assert!(!index.remove(&a));
        assert!(index.remove(&b));
        assert!(!index.remove(&b));
        assert_eq!(index.topics(), 0);
    }

    #[test]
    fn expired_messages_are_not_delivered() {
        let sink = Rc::new(Collect::default());
        let sub = Subscription::new(Arc::from("t"), MessageId::ZERO, sink.clone());
        sub.finish_replay(&[]);
        let mut index = LocalSubscribers::default();
        index.add(sub);
        let draft = Draft {
            topic: "t",
            payload: b"1",
            metadata: None,
            ttl_ms: Some(5),
        };
        let expiring = Arc::new(Message::build(
            MessageId::new(9, 0),
            Arc::from("t"),
            100,
            &draft,
        ));
        index.deliver(&expiring, 200);
        assert!(sink.0.borrow().is_empty());
    }
}
