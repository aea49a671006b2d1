//! Each rule of the checker, fed the facts of a small run: the violations it must report,
//! and the at-least-once redeliveries it must let through.

use super::*;

const S: u64 = 1_000_000_000;

fn id(ms: u64, seq: u64) -> Id {
    parse_id(&format!("{ms}-{seq}")).unwrap()
}

fn tag(seq: u64) -> Tag {
    Tag { publisher: 0, seq }
}

fn checker(resume: Resume) -> Checker {
    let spec = ConsumerSpec {
        name: "c0".into(),
        resume,
        topics: vec![0],
    };
    Checker::new(1, vec![spec], 0, 10 * S, false)
}

/// Publish `seq` accepted as `id`, sent at `at` on a connection opened at 0.
fn accept(c: &mut Checker, seq: u64, id: Id, at: u64) {
    c.published(Published::Accepted {
        topic: 0,
        id,
        tag: tag(seq),
        first_sent: at,
        attempt_sent: at,
        conn_opened: 0,
        answered: at + 1,
        retries: 0,
        lost_attempts: 0,
    });
}

fn deliver(c: &mut Checker, seq: u64, id: Id, at: u64) {
    c.seen(Seen::Delivery {
        consumer: 0,
        topic: 0,
        id,
        tag: tag(seq),
        sent_ns: 0,
        at,
    });
}

fn session(c: &mut Checker, at: u64) {
    c.seen(Seen::Session { consumer: 0, at });
}

fn ack(c: &mut Checker, id: Id, sent_at: u64, confirmed_at: u64) {
    c.seen(Seen::Ack {
        consumer: 0,
        topic: 0,
        id,
        sent_at,
        confirmed_at,
    });
}

fn judged(mut c: Checker) -> Vec<String> {
    c.finish(100 * S);
    c.violations().to_vec()
}

fn one_violation_containing(c: Checker, words: &str) {
    let v = judged(c);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(v[0].contains(words), "{v:#?}");
}

#[test]
fn ids_parse_and_order_like_the_relays() {
    assert!(id(5, 10) > id(5, 9));
    assert!(id(6, 0) > id(5, u64::MAX));
    assert_eq!(show_id(id(1795775969418, 3)), "1795775969418-3");
    assert_eq!(parse_id("12"), None);
    assert_eq!(parse_id("a-1"), None);
}

#[test]
fn a_clean_run_passes_and_is_caught_up() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    for seq in 1..=5 {
        accept(&mut c, seq, id(100, seq), seq * 10);
        deliver(&mut c, seq, id(100, seq), seq * 10 + 5);
    }
    c.advance(u64::MAX);
    assert!(c.caught_up());
    assert_eq!(c.intervals[0].delivered, 5);
    assert!(judged(c).is_empty());
}

#[test]
fn a_missing_accepted_message_between_two_deliveries_is_a_gap() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    for seq in 1..=3 {
        accept(&mut c, seq, id(100, seq), 10);
    }
    deliver(&mut c, 1, id(100, 1), 20);
    deliver(&mut c, 3, id(100, 3), 21);
    one_violation_containing(c, "gap: accepted 100-2");
}

#[test]
fn a_gap_is_found_even_when_the_answer_comes_after_the_delivery() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    deliver(&mut c, 1, id(100, 1), 20);
    deliver(&mut c, 3, id(100, 3), 21);
    // The horizon stays before the deliveries while their publishes are unanswered.
    c.advance(15);
    for seq in 1..=3 {
        accept(&mut c, seq, id(100, seq), 10);
    }
    one_violation_containing(c, "gap: accepted 100-2");
}

#[test]
fn unanswered_publishes_may_be_missing_or_delivered() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    c.published(Published::Unresolved {
        tag: tag(2),
        at: 30,
    });
    accept(&mut c, 3, id(100, 3), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    deliver(&mut c, 3, id(100, 3), 21);
    assert!(judged(c).is_empty());
}

#[test]
fn order_within_a_session_is_checked() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    accept(&mut c, 2, id(100, 2), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    deliver(&mut c, 2, id(100, 2), 21);
    deliver(&mut c, 1, id(100, 1), 22);
    one_violation_containing(c, "in one session");
}

#[test]
fn redelivery_after_a_reconnect_above_the_persisted_ack_is_allowed() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    for seq in 1..=4 {
        accept(&mut c, seq, id(100, seq), seq * 10);
    }
    for seq in 1..=4 {
        deliver(&mut c, seq, id(100, seq), 50 + seq);
    }
    // Ack of 2 sent at 60, confirmed at 61; a publish sent at 70 on a connection opened at
    // 0 was answered: the ack is known persisted.
    ack(&mut c, id(100, 2), 60, 61);
    accept(&mut c, 5, id(100, 5), 70);
    deliver(&mut c, 5, id(100, 5), 75);
    session(&mut c, 80);
    for seq in 3..=5 {
        deliver(&mut c, seq, id(100, seq), 81);
    }
    c.advance(u64::MAX);
    assert_eq!(c.intervals[0].redelivered, 3);
    assert!(judged(c).is_empty());
}

#[test]
fn redelivery_at_or_below_the_persisted_ack_is_a_violation() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    for seq in 1..=4 {
        accept(&mut c, seq, id(100, seq), seq * 10);
        deliver(&mut c, seq, id(100, seq), 50 + seq);
    }
    ack(&mut c, id(100, 3), 60, 61);
    accept(&mut c, 5, id(100, 5), 70);
    deliver(&mut c, 5, id(100, 5), 75);
    session(&mut c, 80);
    deliver(&mut c, 3, id(100, 3), 81);
    one_violation_containing(c, "100-3 again, at or below its persisted ack 100-3");
}

#[test]
fn an_ack_not_proven_persisted_does_not_raise_the_floor() {
    // The only later publish went over a connection opened after the ack was sent: another
    // relay process may have answered it, so the ack may be lost and redelivery is fine.
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    for seq in 1..=4 {
        accept(&mut c, seq, id(100, seq), seq * 10);
        deliver(&mut c, seq, id(100, seq), 50 + seq);
    }
    ack(&mut c, id(100, 3), 60, 61);
    c.published(Published::Accepted {
        topic: 0,
        id: id(200, 1),
        tag: tag(5),
        first_sent: 70,
        attempt_sent: 70,
        conn_opened: 65,
        answered: 71,
        retries: 1,
        lost_attempts: 1,
    });
    deliver(&mut c, 5, id(200, 1), 75);
    session(&mut c, 80);
    deliver(&mut c, 2, id(100, 2), 81);
    assert!(judged(c).is_empty());
}

#[test]
fn a_redelivery_must_come_at_a_session_start() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    deliver(&mut c, 1, id(100, 1), 21);
    one_violation_containing(c, "in one session");
}

#[test]
fn a_cursor_consumer_may_never_see_a_message_twice() {
    let mut c = checker(Resume::Cursor);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    session(&mut c, 30);
    deliver(&mut c, 1, id(100, 1), 31);
    one_violation_containing(c, "again, at or below its last message");
}

#[test]
fn one_publish_under_two_ids_is_a_violation() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    // The same tag (one Idempotency-Key) shows up again under a new ID.
    deliver(&mut c, 1, id(100, 2), 21);
    one_violation_containing(c, "exists twice");
}

#[test]
fn what_never_arrives_is_lost() {
    let mut c = checker(Resume::Durable);
    session(&mut c, 1);
    accept(&mut c, 1, id(100, 1), 10);
    accept(&mut c, 2, id(100, 2), 10);
    deliver(&mut c, 1, id(100, 1), 20);
    c.advance(u64::MAX);
    assert!(!c.caught_up());
    one_violation_containing(c, "lost: accepted 100-2 and 0 more");
}

#[test]
fn a_publishers_ids_must_grow_in_a_topic() {
    let mut c = checker(Resume::Durable);
    accept(&mut c, 1, id(100, 5), 10);
    accept(&mut c, 2, id(100, 4), 20);
    let v = judged(c);
    assert!(
        v.iter().any(|v| v.contains("after its earlier 100-5")),
        "{v:#?}"
    );
}

/// The publish of tag 1 had an attempt lost with the relay; its first ID was delivered
/// live, and the retry was answered with another.
fn retried_across_a_crash(strict: bool) -> Checker {
    let mut c = checker(Resume::Durable);
    c.strict = strict;
    session(&mut c, 1);
    deliver(&mut c, 1, id(100, 1), 20);
    c.published(Published::Accepted {
        topic: 0,
        id: id(300, 1),
        tag: tag(1),
        first_sent: 10,
        attempt_sent: 40,
        conn_opened: 35,
        answered: 41,
        retries: 3,
        lost_attempts: 1,
    });
    deliver(&mut c, 1, id(300, 1), 45);
    c
}

#[test]
fn a_publish_under_two_ids_after_a_lost_attempt_is_counted_apart() {
    let mut c = retried_across_a_crash(false);
    c.finish(100 * S);
    assert!(c.violations().is_empty(), "{:#?}", c.violations());
    assert_eq!(c.retry_duplicates().0, 1);
    assert_eq!(c.intervals[0].retry_duplicates, 1);
    one_violation_containing(retried_across_a_crash(true), "exists twice");
}
