//! The table's own tests: IDs, rings, cursors, positions, records, history pages, and
//! the byte budget with the entries it drops.

use super::*;

fn table(per_topic: usize, max_bytes: usize, persistent: bool) -> TopicTable {
    TopicTable::new(
        TopicLimits {
            messages_per_topic: per_topic,
            max_bytes,
            max_kept_records: 1000,
        },
        persistent,
        IdClock::new(0, 1),
    )
}

fn publish(t: &mut TopicTable, topic: &str, now: u64) -> Arc<Message> {
    let draft = Draft {
        topic,
        payload: b"{}",
        metadata: None,
        ttl_ms: None,
    };
    t.publish(&draft, now, None).msg
}

fn ids(snapshot: &Snapshot) -> Vec<MessageId> {
    snapshot.backlog.iter().map(|m| m.id).collect()
}

#[test]
fn ids_increase_per_topic_even_within_one_millisecond() {
    let mut t = table(100, 1 << 20, false);
    let a = publish(&mut t, "x", 5).id;
    let b = publish(&mut t, "x", 5).id;
    let c = publish(&mut t, "x", 4).id;
    assert!(a < b && b < c, "{a} {b} {c}");
    let other = publish(&mut t, "y", 5).id;
    assert!(
        other > c,
        "one clock for all of the shard's topics: IDs are unique"
    );
}

#[test]
fn interest_is_per_shard_and_reported_with_each_publish() {
    let mut t = table(100, 1 << 20, false);
    t.subscribe("x", 1, &Cursor::Live, None, 0, 10);
    let draft = Draft {
        topic: "x",
        payload: b"1",
        metadata: None,
        ttl_ms: None,
    };
    assert_eq!(
        t.publish(&draft, 1, None)
            .interested
            .iter()
            .collect::<Vec<_>>(),
        [1]
    );
    t.drop_interest("x", 1);
    assert!(t.publish(&draft, 2, None).interested.is_empty());
}

#[test]
fn cursors_select_the_snapshot() {
    let mut t = table(100, 1 << 20, false);
    let m: Vec<_> = (1..=4).map(|i| publish(&mut t, "x", i).id).collect();
    let (live, _) = t.subscribe("x", 0, &Cursor::Live, None, 10, 100);
    assert!(live.backlog.is_empty());
    let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
    assert_eq!(ids(&all), m);
    let (after, _) = t.subscribe("x", 0, &Cursor::After(m[1]), None, 10, 100);
    assert_eq!(ids(&after), &m[2..]);
    assert!(after.history.is_none(), "memory backend has no history");
}

#[test]
fn ring_is_bounded_by_count() {
    let mut t = table(3, 1 << 20, false);
    for i in 1..=5 {
        publish(&mut t, "x", i);
    }
    let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
    assert_eq!(all.backlog.len(), 3);
    assert_eq!(all.backlog[0].id, MessageId::new(3, 0));
}

#[test]
fn unpersisted_messages_are_not_evicted() {
    let mut t = table(2, 1 << 20, true);
    t.load("x", StoredTopic::default());
    let draft = Draft {
        topic: "x",
        payload: b"{}",
        metadata: None,
        ttl_ms: None,
    };
    let first = t.publish(&draft, 1, Some(MessageId::ZERO)).msg.id;
    for ms in 2..=4 {
        t.publish(&draft, ms, Some(MessageId::ZERO));
    }
    let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
    assert_eq!(
        all.backlog.len(),
        4,
        "nothing confirmed: the ring keeps all"
    );
    t.publish(&draft, 5, Some(first));
    let (all, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 10, 100);
    assert_eq!(all.backlog.len(), 4, "only the confirmed one could go");
    assert!(all.backlog.iter().all(|m| m.id != first));
}

/// Bytes a table holds after publishing `n` messages to one topic.
fn cost_of(n: u64) -> usize {
    let mut probe = table(100, 1 << 20, false);
    for i in 0..n {
        publish(&mut probe, "probe", i);
    }
    probe.bytes()
}

#[test]
fn byte_budget_evicts_the_coldest_topic_first() {
    let both = {
        let mut probe = table(100, 1 << 20, false);
        for i in 0..5 {
            publish(&mut probe, "cold", i);
            publish(&mut probe, "hot", i);
        }
        publish(&mut probe, "hot", 5);
        probe.bytes()
    };
    let budget = both * 10 / 11;
    assert!(cost_of(6) < budget * 9 / 10, "the hot topic alone fits");
    let mut t = table(100, budget, false);
    for i in 0..5 {
        publish(&mut t, "cold", i);
    }
    for i in 10..16 {
        publish(&mut t, "hot", i);
    }
    assert!(t.bytes() <= budget);
    let (cold, _) = t.subscribe("cold", 0, &Cursor::Earliest, None, 100, 100);
    let (hot, _) = t.subscribe("hot", 0, &Cursor::Earliest, None, 100, 100);
    assert_eq!(
        hot.backlog.len(),
        6,
        "the recently published topic keeps everything"
    );
    assert!(
        cold.backlog.len() < 5,
        "the cold topic paid for the overflow"
    );
}

#[test]
fn a_new_consumer_starts_at_the_head_and_resumes_after_its_ack() {
    let mut t = table(100, 1 << 20, false);
    publish(&mut t, "x", 1);
    let (first, created) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 2, 100);
    assert!(first.backlog.is_empty());
    assert_eq!(created, Some(MessageId::new(1, 0)));
    let a = publish(&mut t, "x", 3).id;
    let b = publish(&mut t, "x", 4).id;
    // Not acknowledged yet: a reconnect gets both again.
    let (again, created) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 5, 100);
    assert_eq!(ids(&again), [a, b]);
    assert_eq!(created, None);
    assert_eq!(t.locate("c", a, None).held, [Arc::<str>::from("x")]);
    assert_eq!(
        t.locate("other", a, None),
        Located::default(),
        "not this consumer's topic"
    );
    assert_eq!(
        t.locate("c", MessageId::new(3, 7), None),
        Located::default(),
        "no such ID"
    );
    assert_eq!(t.ack("c", "x", a), Some(true));
    assert_eq!(t.ack("c", "x", a), Some(false), "idempotent");
    let (resumed, _) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 6, 100);
    assert_eq!(ids(&resumed), [b]);
    assert_eq!(
        t.ack("c", "x", MessageId::new(99, 0)),
        None,
        "beyond the topic's last ID"
    );
    assert_eq!(t.ack("c", "nope", a), None, "unknown topic");
}

fn record() -> TopicRecord {
    TopicRecord::new("alice", 1, None)
}

#[test]
fn records_are_created_once_and_only_on_request() {
    let mut t = table(100, 1 << 20, false);
    t.subscribe("x", 0, &Cursor::Live, None, 0, 10);
    publish(&mut t, "x", 1);
    assert!(
        t.record("x").is_none(),
        "neither subscribers nor the table make one"
    );
    assert!(t.history_page("x", Order::Desc, None, 10, 2).is_none());
    let first = t.create_record("x", record()).unwrap();
    assert_eq!(
        t.create_record("x", record()).unwrap_err(),
        Refusal::Exists(first)
    );
    assert!(
        t.ensure_record("x", record).is_none(),
        "an existing record stays"
    );
    assert!(t.ensure_record("y", record).is_none(), "no such topic");
    publish(&mut t, "y", 3);
    assert!(t.ensure_record("y", record).is_some());
    assert_eq!(t.records().count(), 2);
}

#[test]
fn owned_records_are_listed_oldest_first_and_bounded() {
    let mut t = table(100, 1 << 20, false);
    for (name, owner, at) in [("c", "alice", 3), ("a", "alice", 5), ("b", "bob", 1)] {
        t.create_record(name, TopicRecord::new(owner, at, None))
            .unwrap();
    }
    t.create_record("d", TopicRecord::new("alice", 3, None))
        .unwrap();
    let names = |limit| {
        t.owned_by(Some("alice"), limit)
            .into_iter()
            .map(|(key, _)| key.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(10), ["c", "d", "a"], "by time, then by name");
    assert_eq!(names(2), ["c", "d"]);
}

#[test]
fn history_pages_run_both_ways_from_exclusive_cursors() {
    let mut t = table(100, 1 << 20, false);
    t.create_record("x", record()).unwrap();
    let m: Vec<_> = (1..=5).map(|i| publish(&mut t, "x", i).id).collect();
    let page = |order, cursor, limit| {
        let p = t.history_page("x", order, cursor, limit, 10).unwrap();
        assert!(
            p.stream.is_none(),
            "memory backend: the ring is all there is"
        );
        p.ring.iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(page(Order::Desc, None, 2), [m[4], m[3]]);
    assert_eq!(page(Order::Desc, Some(m[3]), 2), [m[2], m[1]]);
    assert_eq!(page(Order::Asc, None, 2), [m[0], m[1]]);
    assert_eq!(page(Order::Asc, Some(m[1]), 10), &m[2..]);
    assert!(page(Order::Desc, Some(m[0]), 10).is_empty());
}

#[test]
fn history_pages_name_the_stream_span_older_than_the_ring() {
    let mut t = table(2, 1 << 20, true);
    t.load("x", StoredTopic::default());
    t.create_record("x", record()).unwrap();
    let m: Vec<_> = (1..=4)
        .map(|i| {
            let draft = Draft {
                topic: "x",
                payload: b"{}",
                metadata: None,
                ttl_ms: None,
            };
            t.publish(&draft, i, Some(MessageId::new(i, 0))).msg.id
        })
        .collect();
    // The ring holds m[2], m[3]; m[0], m[1] are only in the stream.
    let desc = t.history_page("x", Order::Desc, None, 3, 10).unwrap();
    assert_eq!(desc.ring.len(), 2);
    assert_eq!(
        desc.stream,
        Some(StreamRange {
            after: None,
            until: m[2],
            until_inclusive: false
        })
    );
    let full = t.history_page("x", Order::Desc, None, 2, 10).unwrap();
    assert_eq!(full.stream, None, "the ring filled the page");
    let older = t.history_page("x", Order::Desc, Some(m[1]), 3, 10).unwrap();
    assert!(older.ring.is_empty());
    assert_eq!(older.stream.unwrap().until, m[1]);
    let asc = t.history_page("x", Order::Asc, Some(m[0]), 3, 10).unwrap();
    assert_eq!(asc.ring.len(), 2);
    assert_eq!(
        asc.stream,
        Some(StreamRange {
            after: Some(m[0]),
            until: m[2],
            until_inclusive: false
        })
    );
    let in_ring = t.history_page("x", Order::Asc, Some(m[2]), 3, 10).unwrap();
    assert_eq!(in_ring.stream, None);
}

#[test]
fn delete_drops_messages_and_positions_but_keeps_subscribers() {
    let mut t = table(100, 1 << 20, false);
    t.create_record("x", record()).unwrap();
    t.subscribe("x", 1, &Cursor::Live, Some("c"), 0, 10);
    let last = publish(&mut t, "x", 1).id;
    let before = t.bytes();
    assert!(t.delete("x"));
    assert!(!t.delete("x"), "already gone");
    assert!(t.bytes() < before);
    assert_eq!(t.bytes(), t.recount());
    assert!(t.record("x").is_none());
    let draft = Draft {
        topic: "x",
        payload: b"{}",
        metadata: None,
        ttl_ms: None,
    };
    let Published {
        msg, interested, ..
    } = t.publish(&draft, 1, None);
    assert!(msg.id > last, "IDs never go backwards");
    assert_eq!(interested.iter().collect::<Vec<_>>(), [1]);
    t.create_record("x", record()).unwrap();
    let page = t.history_page("x", Order::Asc, None, 10, 2).unwrap();
    assert_eq!(page.ring.len(), 1, "only what came after the delete");

    t.create_record("lonely", record()).unwrap();
    assert!(t.delete("lonely"));
    assert_eq!(t.len(), 1, "an entry nobody subscribes to goes entirely");
}

#[test]
fn history_is_requested_only_when_the_ring_may_miss_messages() {
    let mut t = table(2, 1 << 20, true);
    t.load("x", StoredTopic::default());
    let first = publish(&mut t, "x", 1).id;
    let (s, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 1, 10);
    assert_eq!(s.history, None, "nothing evicted yet");
    publish(&mut t, "x", 2);
    let third = publish(&mut t, "x", 3).id;
    let (s, _) = t.subscribe("x", 0, &Cursor::Earliest, None, 3, 10);
    let oldest = s.backlog[0].id;
    assert_eq!(
        s.history,
        Some(StreamRange {
            after: None,
            until: oldest,
            until_inclusive: false
        })
    );
    let (s, _) = t.subscribe("x", 0, &Cursor::After(first), None, 3, 10);
    assert!(s.history.is_some());
    let (s, _) = t.subscribe("x", 0, &Cursor::After(third), None, 3, 10);
    assert_eq!(s.history, None, "cursor inside the ring");

    let mut restarted = table(10, 1 << 20, true);
    restarted.load(
        "x",
        StoredTopic {
            last_id: third,
            positions: vec![(Box::from("c"), first)],
            first_id: Some(first),
            record: None,
        },
    );
    let (s, created) = restarted.subscribe("x", 0, &Cursor::Live, Some("c"), 4, 10);
    assert_eq!(created, None, "position came back from the store");
    assert_eq!(
        s.history,
        Some(StreamRange {
            after: Some(first),
            until: third,
            until_inclusive: true
        })
    );
    assert!(
        publish(&mut restarted, "x", 1).id > third,
        "IDs continue after a restart"
    );
}

fn table_with(max_bytes: usize, max_kept_records: usize, persistent: bool) -> TopicTable {
    TopicTable::new(
        TopicLimits {
            messages_per_topic: 100,
            max_bytes,
            max_kept_records,
        },
        persistent,
        IdClock::new(0, 1),
    )
}

#[test]
fn a_subscription_to_a_new_name_leaves_nothing_behind() {
    for persistent in [false, true] {
        let mut t = table(100, 1 << 20, persistent);
        t.subscribe("x", 1, &Cursor::Live, None, 0, 10);
        t.subscribe("x", 0, &Cursor::Live, None, 0, 10);
        assert_eq!(t.len(), 1);
        assert!(t.bytes() > 0, "the entry is counted");
        t.drop_interest("x", 1);
        assert_eq!(t.len(), 1, "shard 0 still subscribes");
        t.drop_interest("x", 0);
        assert_eq!((t.len(), t.dropped()), (0, 1));
        assert_eq!(t.bytes(), t.recount(), "only the map's free slots are left");
    }
}

#[test]
fn many_distinct_topics_stay_within_the_budget() {
    let budget = 64 << 10;
    let mut t = table_with(budget, 10, false);
    for i in 0..20_000u64 {
        publish(&mut t, &format!("topic-{i}"), i);
        assert!(t.bytes() <= budget, "{} bytes after {i} topics", t.bytes());
    }
    assert_eq!(t.bytes(), t.recount());
    let per_topic = {
        let mut probe = table(100, 1 << 20, false);
        publish(&mut probe, "probe", 0);
        probe.bytes() - probe.slots
    };
    assert!(
        t.len() * per_topic <= budget,
        "{} entries of about {per_topic} bytes",
        t.len(),
    );
    assert!(t.len() > 10, "recent topics stay");
    assert_eq!(t.dropped() as usize + t.len(), 20_000);
    let (recent, _) = t.subscribe("topic-19999", 0, &Cursor::Earliest, None, 20_000, 10);
    assert_eq!(
        recent.backlog.len(),
        1,
        "the newest topic keeps its message"
    );
}

#[test]
fn subscribers_durable_consumers_and_kept_records_hold_their_topics() {
    let budget = 32 << 10;
    let mut t = table_with(budget, 10, false);
    t.subscribe("watched", 1, &Cursor::Live, None, 0, 10);
    t.subscribe("durable", 0, &Cursor::Live, Some("c"), 0, 10);
    t.drop_interest("durable", 0);
    t.create_record("created", record()).unwrap();
    let acked = publish(&mut t, "durable", 1).id;
    publish(&mut t, "watched", 1);
    publish(&mut t, "created", 1);
    for i in 0..5_000u64 {
        publish(&mut t, &format!("flood-{i}"), 10 + i);
    }
    assert!(t.bytes() <= budget);
    let draft = Draft {
        topic: "watched",
        payload: b"{}",
        metadata: None,
        ttl_ms: None,
    };
    let later = t.publish(&draft, 9_000, None);
    assert_eq!(later.interested.iter().collect::<Vec<_>>(), [1]);
    assert!(later.msg.id > acked);
    assert!(t.record("created").is_some(), "a created record is kept");
    assert_eq!(
        t.ack("c", "durable", acked),
        Some(true),
        "the consumer's topic and position are still there"
    );
    assert_eq!(t.ack("c", "durable", acked), Some(false));
    assert_eq!(t.bytes(), t.recount());
}

#[test]
fn positions_go_only_when_messages_cannot_make_room() {
    let budget = 32 << 10;
    let mut t = table_with(budget, 10, false);
    // Offline durable consumers of topics with nothing retained: only their positions.
    let mut i = 0u64;
    while t.dropped() == 0 {
        let name = format!("offline-{i}");
        t.subscribe(&name, 0, &Cursor::Live, Some("c"), i, 10);
        t.drop_interest(&name, 0);
        i += 1;
        assert!(i < 10_000, "positions are never dropped");
    }
    assert!(t.bytes() <= budget);
    assert!(
        t.len() as u64 > i / 2,
        "only the coldest went: {} of {i}",
        t.len()
    );
    let newest = format!("offline-{}", i - 1);
    let (again, created) = t.subscribe(&newest, 0, &Cursor::Live, Some("c"), i, 10);
    assert_eq!(created, None, "the most recent position is still there");
    assert!(again.backlog.is_empty());
    assert_eq!(t.bytes(), t.recount());
}

#[test]
fn created_records_have_a_limit_of_their_own_without_a_persistent_tier() {
    let mut t = table_with(1 << 20, 2, false);
    t.create_record("a", record()).unwrap();
    t.create_record("b", record()).unwrap();
    assert_eq!(t.create_record("c", record()), Err(Refusal::Full));
    assert_eq!(t.len(), 2, "a refused create leaves nothing");
    publish(&mut t, "auto", 1);
    assert!(
        t.ensure_record("auto", record).is_some(),
        "publishes still make records"
    );
    assert_eq!(
        t.describe("auto", "mine".into()),
        Some(Err(Refusal::Full)),
        "a changed record would be kept too"
    );
    assert_eq!(
        t.describe("a", "still".into())
            .unwrap()
            .unwrap()
            .description
            .as_deref(),
        Some("still")
    );
    assert!(t.delete("a"));
    t.create_record("c", record()).unwrap();
    assert_eq!(t.describe("nope", "x".into()), None);

    let mut valkey = table_with(1 << 20, 2, true);
    for name in ["a", "b", "c"] {
        valkey.load(name, StoredTopic::default());
        valkey.create_record(name, record()).unwrap();
    }
}

#[test]
fn a_dropped_topic_comes_back_with_higher_ids() {
    let mut t = table_with(16 << 10, 10, false);
    let first = publish(&mut t, "back", 100).id;
    t.ensure_record("back", record).unwrap();
    let mut i = 0;
    while t.record("back").is_some() {
        publish(&mut t, &format!("flood-{i}"), 200 + i);
        i += 1;
        assert!(i < 10_000, "the cold topic is never dropped");
    }
    // The wall clock went back: the shard's clock still moves forward.
    let again = publish(&mut t, "back", 10).id;
    assert!(again > first, "{again} after {first}");
    assert!(
        t.ensure_record("back", record).is_some(),
        "it comes back as a new topic"
    );
}

#[test]
fn an_entry_not_loaded_takes_the_stored_state_when_loaded() {
    let mut t = table(100, 1 << 20, true);
    let published = publish(&mut t, "x", 50).id;
    assert!(!t.is_loaded("x"));
    let (made, may_exist) = t.ensure_record("x", record).unwrap();
    assert!(
        may_exist,
        "the persistent tier may hold the topic's older record"
    );
    let stored = TopicRecord::new("bob", 1, Some("original".into()));
    let position = MessageId::new(20, 0);
    t.load(
        "x",
        StoredTopic {
            last_id: published,
            first_id: Some(MessageId::new(10, 0)),
            positions: vec![(Box::from("c"), position)],
            record: Some(stored.clone()),
        },
    );
    assert!(t.is_loaded("x"));
    assert_ne!(t.record("x"), Some(&made));
    assert_eq!(t.record("x"), Some(&stored), "the stored record wins");
    let (s, created) = t.subscribe("x", 0, &Cursor::Live, Some("c"), 60, 10);
    assert_eq!(created, None);
    assert_eq!(ids(&s), [published]);
    assert_eq!(
        s.history,
        Some(StreamRange {
            after: Some(position),
            until: published,
            until_inclusive: false
        }),
        "older messages are in the stream"
    );
    // Loading again changes nothing: the entry knows better now.
    t.load("x", StoredTopic::default());
    assert_eq!(t.record("x"), Some(&stored));
    assert_eq!(t.bytes(), t.recount());
}

#[test]
fn the_running_byte_count_matches_the_entries() {
    let mut t = table_with(24 << 10, 5, false);
    let mut seed = 11u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    for step in 0..20_000u64 {
        let name = format!("t{}", next(300));
        match next(8) {
            0 => {
                t.subscribe(
                    &name,
                    next(2) as usize,
                    &Cursor::Earliest,
                    Some("c"),
                    step,
                    10,
                );
            }
            1 => t.drop_interest(&name, next(2) as usize),
            2 => {
                let _ = t.create_record(&name, record());
            }
            3 => {
                t.delete(&name);
            }
            4 => {
                let id = MessageId::new(step.saturating_sub(next(50)), 0);
                t.ack("c", &name, id);
            }
            _ => {
                let published = publish(&mut t, &name, step);
                if published.id.seq == 0 {
                    t.ensure_record(&name, record);
                }
            }
        }
        assert_eq!(t.bytes(), t.recount(), "after step {step}");
    }
}

#[test]
fn busiest_ranks_topics_by_recent_messages_then_retained() {
    let mut t = table(100, 1 << 20, false);
    for now in [1_000, 9_000, 9_500] {
        publish(&mut t, "steady", now);
    }
    for now in [1_000, 1_000, 1_000] {
        publish(&mut t, "old", now);
    }
    for now in [9_100, 9_200] {
        publish(&mut t, "burst", now);
    }
    t.subscribe("watched", 1, &Cursor::Live, None, 0, 10);
    let busiest = t.busiest(9_000, 10);
    let ranked: Vec<(&str, usize, usize, bool)> = busiest
        .iter()
        .map(|l| (&*l.topic, l.recent, l.retained, l.subscribed))
        .collect();
    assert_eq!(
        ranked,
        [
            ("steady", 2, 3, false),
            ("burst", 2, 2, false),
            ("watched", 0, 0, true),
        ],
        "quiet topics without subscribers are left out"
    );
    assert_eq!(t.busiest(9_000, 1).len(), 1);
}

/// A message as cluster mode hears it: its ID from the stream.
fn heard(topic: &str, ms: u64) -> Message {
    let draft = Draft {
        topic,
        payload: b"{\"heard\":true,\"padding\":\"................................\"}",
        metadata: None,
        ttl_ms: None,
    };
    Message::build(MessageId::new(ms, 0), Arc::from(topic), ms, &draft)
}

#[test]
fn heard_messages_go_only_to_loaded_topics_in_id_order_once() {
    let mut t = table(100, 1 << 20, true);
    assert!(
        t.append(heard("x", 5), 5).is_none(),
        "not loaded: not listened to"
    );
    t.load(
        "x",
        StoredTopic {
            last_id: MessageId::new(4, 0),
            ..Default::default()
        },
    );
    t.subscribe("x", 0, &Cursor::Live, None, 0, 10);
    let first = t.append(heard("x", 5), 5).expect("newer than the last ID");
    assert_eq!(first.interested.iter().collect::<Vec<_>>(), [0]);
    assert!(t.append(heard("x", 5), 5).is_none(), "a repeat");
    assert!(
        t.append(heard("x", 3), 5).is_none(),
        "older than the last ID"
    );
    t.advance("x", MessageId::new(9, 0));
    assert!(t.append(heard("x", 8), 9).is_none(), "read past already");
    assert!(t.append(heard("x", 10), 10).is_some());
    assert_eq!(t.last_id("x"), Some(MessageId::new(10, 0)));
    assert_eq!(t.loaded_topics(), [Arc::from("x")]);
    assert!(!t.forget_unwatched("x"), "a shard subscribes to it");
    t.drop_interest("x", 0);
    assert!(t.forget_unwatched("x"));
    assert_eq!(t.last_id("x"), None);
}

#[test]
fn heard_messages_stay_within_the_byte_budget() {
    let mut t = table(10_000, 64 << 10, true);
    for topic in ["a", "b"] {
        t.load(topic, StoredTopic::default());
        t.subscribe(topic, 0, &Cursor::Live, None, 0, 10);
    }
    for ms in 1..=5_000 {
        let topic = if ms % 2 == 0 { "a" } else { "b" };
        t.append(heard(topic, ms), ms);
        // The shard's tick, as in cluster mode: nothing in a ring waits for Valkey.
        t.confirmed(None);
    }
    assert!(t.bytes() <= 64 << 10, "{} bytes", t.bytes());
    assert_eq!(t.last_id("a"), Some(MessageId::new(5_000, 0)));
}
