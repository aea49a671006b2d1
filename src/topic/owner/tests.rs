//! The owner's logic ([`apply`]) on its own: a table, a clock reading, and a recorder in
//! place of the persistent tier, so that every write an operation asks for is seen.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::sync::Arc;

use super::apply::{
    self, Actor, DraftSpan, Persist, PublishBatch, Publisher, RecordAnswer, Subscribe,
};
use crate::store::{MessageId, StoreError, StoredTopic};
use crate::topic::{Cursor, IdClock, Message, TopicLimits, TopicRecord, TopicTable};

#[derive(Debug, PartialEq, Eq)]
enum Write {
    Append {
        topic: String,
        id: MessageId,
    },
    Position {
        topic: String,
        consumer: String,
        id: MessageId,
    },
    Record {
        topic: String,
        owner: String,
        if_absent: bool,
    },
    Delete {
        topic: String,
    },
}

/// A persistent tier that keeps a list of what it was asked to write.
#[derive(Default)]
struct Recorder {
    writes: RefCell<Vec<Write>>,
    full: Cell<bool>,
}

impl Recorder {
    fn take(&self) -> Vec<Write> {
        self.writes.take()
    }
}

impl Persist for Recorder {
    type Ticket = ();

    fn admit(&self, _: usize) -> Result<(), StoreError> {
        if self.full.get() {
            Err(StoreError::BacklogFull)
        } else {
            Ok(())
        }
    }

    fn durable_upto(&self) -> Option<MessageId> {
        None
    }

    fn append(&self, msg: &Message, _: bool) -> Option<()> {
        self.writes.borrow_mut().push(Write::Append {
            topic: msg.topic.to_string(),
            id: msg.id,
        });
        Some(())
    }

    fn save_position(&self, topic: &str, consumer: &str, id: MessageId) {
        self.writes.borrow_mut().push(Write::Position {
            topic: topic.into(),
            consumer: consumer.into(),
            id,
        });
    }

    fn save_record(&self, topic: &str, record: &TopicRecord, if_absent: bool) -> Option<()> {
        self.writes.borrow_mut().push(Write::Record {
            topic: topic.into(),
            owner: record.owner_id.clone(),
            if_absent,
        });
        Some(())
    }

    fn delete_topic(&self, topic: &str) -> Option<()> {
        self.writes.borrow_mut().push(Write::Delete {
            topic: topic.into(),
        });
        Some(())
    }
}

fn table(persistent: bool) -> TopicTable {
    TopicTable::new(
        TopicLimits {
            messages_per_topic: 100,
            max_bytes: 1 << 20,
            max_kept_records: 10,
        },
        persistent,
        IdClock::new(0, 1),
    )
}

/// A batch publishing `payload` to each of `topics`, by `alice`.
fn batch(topics: &[&str]) -> PublishBatch {
    let mut body = Vec::new();
    let span = |text: &str, body: &mut Vec<u8>| -> Range<usize> {
        let start = body.len();
        body.extend_from_slice(text.as_bytes());
        start..body.len()
    };
    let items = topics
        .iter()
        .map(|topic| DraftSpan {
            topic: span(topic, &mut body),
            payload: span("1", &mut body),
            metadata: None,
            ttl_ms: None,
        })
        .collect();
    PublishBatch {
        body: Arc::new(body),
        items,
        publisher: Arc::new(Publisher {
            subject: "alice".into(),
            name: "Alice".into(),
        }),
    }
}

fn subscribe(topic: &str, consumer: Option<&str>) -> Subscribe {
    Subscribe {
        topic: Arc::from(topic),
        cursor: Cursor::Live,
        consumer: consumer.map(Box::from),
        limit: 100,
    }
}

#[test]
fn a_publish_delivers_to_interested_shards_persists_and_makes_each_record_once() {
    let (mut t, store) = (table(true), Recorder::default());
    t.load("t", StoredTopic::default());
    apply::subscribe(&mut t, &store, 1, &subscribe("t", None), 5);
    let mut delivered = Vec::new();
    let (receipts, tickets) = apply::publish(
        &mut t,
        &store,
        true,
        &batch(&["t", "t", "u"]),
        10,
        |msg, shards| delivered.push((msg.topic.to_string(), shards.iter().collect::<Vec<_>>())),
    );
    let receipts = receipts.unwrap();
    assert_eq!(receipts.len(), 3);
    assert!(
        receipts.windows(2).all(|r| r[0].id < r[1].id),
        "IDs grow in publish order"
    );
    assert_eq!(
        delivered,
        [
            ("t".into(), vec![1]),
            ("t".into(), vec![1]),
            ("u".into(), vec![])
        ]
    );
    let appended = |i: usize, topic: &str| Write::Append {
        topic: topic.into(),
        id: receipts[i].id,
    };
    let made = |topic: &str, if_absent| Write::Record {
        topic: topic.into(),
        owner: "alice".into(),
        if_absent,
    };
    // `t` was loaded (the tier holds no record for it); `u` was not, so its record is
    // written only where none exists.
    assert_eq!(
        store.take(),
        [
            appended(0, "t"),
            made("t", false),
            appended(1, "t"),
            appended(2, "u"),
            made("u", true)
        ]
    );
    assert_eq!(tickets.len(), 5, "every write is waited for");
}

#[test]
fn a_refused_publish_changes_nothing() {
    let (mut t, store) = (table(true), Recorder::default());
    let (recovering, _) = apply::publish(&mut t, &store, false, &batch(&["t"]), 10, |_, _| {
        panic!("nothing is delivered")
    });
    assert_eq!(recovering.unwrap_err(), StoreError::Recovering);
    store.full.set(true);
    let (full, _) = apply::publish(&mut t, &store, true, &batch(&["t"]), 10, |_, _| {
        panic!("nothing is delivered")
    });
    assert_eq!(full.unwrap_err(), StoreError::BacklogFull);
    assert!(store.take().is_empty());
    assert!(t.is_empty(), "no topic was made");
}

#[test]
fn a_new_durable_consumer_starts_at_the_head_and_is_persisted_once() {
    let (mut t, store) = (table(true), Recorder::default());
    t.load("t", StoredTopic::default());
    let (receipts, _) = apply::publish(&mut t, &store, true, &batch(&["t"]), 10, |_, _| {});
    let head = receipts.unwrap()[0].id;
    store.take();
    let snapshot = apply::subscribe(&mut t, &store, 0, &subscribe("t", Some("c")), 11);
    assert!(
        snapshot.backlog.is_empty(),
        "a live cursor starts after the head"
    );
    assert_eq!(
        store.take(),
        [Write::Position {
            topic: "t".into(),
            consumer: "c".into(),
            id: head
        }]
    );
    apply::subscribe(&mut t, &store, 1, &subscribe("t", Some("c")), 12);
    assert!(
        store.take().is_empty(),
        "an existing position is not written again"
    );
}

#[test]
fn acks_persist_only_positions_that_move() {
    let (mut t, store) = (table(false), Recorder::default());
    // The consumer starts before anything was published.
    apply::subscribe(&mut t, &store, 0, &subscribe("t", Some("c")), 9);
    let (receipts, _) = apply::publish(&mut t, &store, true, &batch(&["t", "t"]), 10, |_, _| {});
    let ids: Vec<MessageId> = receipts.unwrap().iter().map(|r| r.id).collect();
    store.take();
    assert_eq!(apply::ack(&mut t, &store, "c", "t", &[ids[1]]), [true]);
    assert_eq!(
        apply::ack(&mut t, &store, "c", "t", &[ids[0]]),
        [true],
        "cumulative"
    );
    let beyond = MessageId::new(ids[1].ms + 1, 0);
    assert_eq!(apply::ack(&mut t, &store, "c", "t", &[beyond]), [false]);
    assert_eq!(apply::ack(&mut t, &store, "c", "other", &[ids[0]]), [false]);
    assert_eq!(
        store.take(),
        [Write::Position {
            topic: "t".into(),
            consumer: "c".into(),
            id: ids[1]
        }],
        "only the ack that moved the position is written"
    );
    let located = apply::locate(&t, "c", &[ids[0], beyond], None);
    assert_eq!(located[0].held, [Arc::from("t")]);
    assert!(located[1].held.is_empty());
}

#[test]
fn records_change_only_by_their_owner_or_an_admin_and_are_written_through() {
    let (mut t, store) = (table(false), Recorder::default());
    let record = TopicRecord::new("alice", 1, None);
    let created = apply::create_record(&mut t, &store, "t", record.clone()).0;
    assert_eq!(created, Ok(RecordAnswer::Created(record.clone())));
    let again = apply::create_record(&mut t, &store, "t", TopicRecord::new("bob", 2, None)).0;
    assert_eq!(again, Ok(RecordAnswer::Exists(record.clone())));
    let bob = Actor {
        subject: "bob".into(),
        admin: false,
    };
    let admin = Actor {
        subject: "root".into(),
        admin: true,
    };
    let refused = apply::update_record(&mut t, &store, "t", Some("x".into()), &bob).0;
    assert_eq!(refused, Ok(RecordAnswer::Forbidden));
    let (described, tickets) = apply::update_record(&mut t, &store, "t", Some("x".into()), &admin);
    let Ok(RecordAnswer::Found(changed)) = described else {
        panic!("{described:?}");
    };
    assert_eq!(changed.description.as_deref(), Some("x"));
    assert_eq!(tickets.len(), 1);
    assert_eq!(
        apply::delete_record(&mut t, &store, "t", &bob).0,
        Ok(RecordAnswer::Forbidden)
    );
    let owner = Actor {
        subject: "alice".into(),
        admin: false,
    };
    assert_eq!(
        apply::delete_record(&mut t, &store, "t", &owner).0,
        Ok(RecordAnswer::Deleted)
    );
    assert_eq!(apply::record(&t, "t"), RecordAnswer::Missing);
    let written = |if_absent| Write::Record {
        topic: "t".into(),
        owner: "alice".into(),
        if_absent,
    };
    assert_eq!(
        store.take(),
        [
            written(false),
            written(false),
            Write::Delete { topic: "t".into() }
        ]
    );
    store.full.set(true);
    let refused = apply::create_record(&mut t, &store, "t", record).0;
    assert_eq!(
        refused,
        Err(StoreError::BacklogFull),
        "a full backlog takes no change"
    );
    assert_eq!(apply::record(&t, "t"), RecordAnswer::Missing);
}
