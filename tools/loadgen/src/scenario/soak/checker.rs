//! The soak's checker: judges what the consumers saw against what the publishers were
//! told, while the run goes on. It owns the rules; the threads that publish and consume
//! only report facts (answers, deliveries, confirmed acks) with the times they happened.
//!
//! Must not: talk to the relay, or judge anything before every publish that could bear on
//! it has been answered (see [`Checker::advance`]).
//!
//! The rules, for every consumer `C` and topic `t` it reads:
//!
//! - **Accepted means delivered.** Every message whose publish was answered 201, or
//!   `accepted` in a 207, reaches `C`: a message missing between two deliveries of one
//!   session (or between `C`'s highest message so far and the first new one of a session),
//!   or never delivered by the end, is a violation (a gap, or a loss).
//! - **Order.** Within a session the IDs `C` gets in `t` strictly increase.
//! - **Duplicates only as redelivery.** A message `C` already had may come again only at
//!   the start of a later session of a durable consumer (a WebSocket reconnect, or a
//!   durable poll, each of which resumes from the stored position), as a contiguous run
//!   of the messages after that position, and only above the consumer's *known-persisted
//!   ack*: the highest ID `a` such that `C`'s ack of `a` was confirmed (HTTP 200, or the
//!   pong to a ping sent after the ack frame) before the session began, and some publish
//!   to `t` was sent after that confirmation and answered 201/207 on a connection opened
//!   before the ack was sent. That connection proves one relay process served both, and
//!   the relay queues a topic's position writes and stream appends to Valkey in one
//!   order, so the 201 (sent only after Valkey confirmed the append) proves the position
//!   was written. Cursor consumers (`since` = the last ID they got) may never see a
//!   message twice.
//! - **One ID per publish.** A publish retried with its Idempotency-Key (after no answer,
//!   a 503 or a 429) must end up under one message ID: the same payload tag under two IDs,
//!   in answers or in deliveries, is a violation. A publish that got no answer may or may
//!   not be delivered. One case is counted apart (`retry_duplicates`), and is a violation
//!   only with `strict`: an attempt got no answer because the relay died, the relay had
//!   already delivered that attempt's message live (live delivery does not wait for
//!   Valkey) but had not yet stored the key's answer, so the retry published again. The
//!   README documents this as at-least-once; it is the only way a tag may have two IDs.
//! - **IDs grow.** One publisher's sequential publishes to a topic get increasing IDs,
//!   across relay restarts too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound::Excluded;

use crate::report::Latency;

/// A message ID `ms-seq`, ordered as the relay orders them.
pub type Id = u128;

pub fn parse_id(text: &str) -> Option<Id> {
    let (ms, seq) = text.split_once('-')?;
    Some((u128::from(ms.parse::<u64>().ok()?) << 64) | u128::from(seq.parse::<u64>().ok()?))
}

pub fn show_id(id: Id) -> String {
    format!("{}-{}", id >> 64, id as u64)
}

/// What a payload carries to name its publish: the publisher and its sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tag {
    pub publisher: u32,
    pub seq: u64,
}

/// How a consumer resumes after a disconnect, which decides what it may see twice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resume {
    /// From the position the relay stores for its `client_id` (at-least-once).
    Durable,
    /// From the last ID it received (`since`): exactly once.
    Cursor,
}

/// What a consumer thread reports.
#[derive(Debug)]
pub enum Seen {
    /// A new session begins: a WebSocket (re)subscribed, a durable poll was sent.
    Session { consumer: usize, at: u64 },
    Delivery {
        consumer: usize,
        topic: usize,
        id: Id,
        tag: Tag,
        /// When the publish was first sent (from the payload).
        sent_ns: u64,
        at: u64,
    },
    /// The relay confirmed `C`'s ack of `id` in `topic`.
    Ack {
        consumer: usize,
        topic: usize,
        id: Id,
        sent_at: u64,
        confirmed_at: u64,
    },
    /// An answer the relay must never give (a 500, a refused valid request): a violation.
    Unexpected { at: u64, what: String },
}

/// What a publisher thread reports once a publish is settled.
#[derive(Debug)]
pub enum Published {
    Accepted {
        topic: usize,
        id: Id,
        tag: Tag,
        first_sent: u64,
        /// When the attempt that got the answer was sent, and when its connection opened.
        attempt_sent: u64,
        conn_opened: u64,
        answered: u64,
        retries: u32,
        /// Attempts sent that got no answer at all (the connection broke, or timed out).
        lost_attempts: u32,
    },
    /// Refused (a 207 item rejected, say with STORE_RECOVERING): it may still show up.
    Rejected { tag: Tag, at: u64 },
    /// No answer before the publisher gave up: it may or may not exist.
    Unresolved { tag: Tag, at: u64 },
}

/// One interval's counts, by the time things happened.
pub struct Tally {
    pub published: u64,
    pub retries: u64,
    pub unresolved: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub sessions: u64,
    pub violations: u64,
    /// Publishes first seen under a second ID here (see `retry_duplicates`).
    pub retry_duplicates: u64,
    /// Publish (first send) to the consumer's first receipt.
    pub latency: Latency,
    /// Publish (first send) to the accepting answer, retries included.
    pub publish: Latency,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            published: 0,
            retries: 0,
            unresolved: 0,
            delivered: 0,
            redelivered: 0,
            sessions: 0,
            violations: 0,
            retry_duplicates: 0,
            latency: Latency::new(),
            publish: Latency::new(),
        }
    }
}

/// A publish answered on a connection opened at `conn_opened`, sent at `sent`.
struct Confirmation {
    conn_opened: u64,
    sent: u64,
    answered: u64,
}

/// A confirmed ack of `id`, sent at `sent`, confirmed at `confirmed`.
#[derive(Clone, Copy)]
struct AckFact {
    id: Id,
    sent: u64,
    confirmed: u64,
}

impl AckFact {
    /// Whether `c` proves this ack persisted (see the module's rules).
    fn persisted_by(&self, c: &Confirmation) -> bool {
        c.conn_opened < self.sent && c.sent > self.confirmed
    }
}

/// A consumer's standing in one topic.
#[derive(Default)]
struct Track {
    /// The highest ID it has received (0: none yet; it existed before the first publish).
    last: Id,
    /// The previous delivery of the current session.
    prev: Option<Id>,
    /// Redeliveries in the current session must be above this.
    floor: Id,
    pending: Vec<AckFact>,
    persisted: Vec<AckFact>,
}

impl Track {
    /// The known-persisted ack confirmed before `at`.
    fn floor_at(&self, at: u64) -> Id {
        self.persisted
            .iter()
            .filter(|a| a.confirmed < at)
            .map(|a| a.id)
            .max()
            .unwrap_or(0)
    }
}

pub struct ConsumerSpec {
    pub name: String,
    pub resume: Resume,
    pub topics: Vec<usize>,
}

struct Consumer {
    spec: ConsumerSpec,
    tracks: HashMap<usize, Track>,
}

/// How long publish confirmations are kept to settle acks reported after them.
const KEEP_CONFIRMATIONS_NS: u64 = 60_000_000_000;
/// Violations kept in words (all are counted).
const KEEP_VIOLATIONS: usize = 40;

pub struct Checker {
    start: u64,
    interval: u64,
    /// Per topic, the accepted IDs and their tags.
    accepted: Vec<BTreeMap<Id, Tag>>,
    ids_of: HashMap<Tag, Id>,
    /// Publishes with an attempt that got no answer (their first ID may be unknown).
    crash_retried: HashSet<Tag>,
    /// Those seen under a second ID, and a few of them in words.
    retry_duplicates: HashSet<Tag>,
    retry_notes: Vec<String>,
    /// Whether a publish under two IDs after a lost attempt is a violation.
    strict: bool,
    publisher_last: HashMap<(u32, usize), Id>,
    recent: Vec<VecDeque<Confirmation>>,
    consumers: Vec<Consumer>,
    waiting: VecDeque<Seen>,
    pub intervals: Vec<Tally>,
    violations: Vec<String>,
    violation_count: u64,
    pub rejected: u64,
    pub unresolved: u64,
}

impl Checker {
    pub fn new(
        topics: usize,
        consumers: Vec<ConsumerSpec>,
        start: u64,
        interval: u64,
        strict: bool,
    ) -> Checker {
        Checker {
            crash_retried: HashSet::new(),
            retry_duplicates: HashSet::new(),
            retry_notes: Vec::new(),
            strict,
            start,
            interval: interval.max(1),
            accepted: (0..topics).map(|_| BTreeMap::new()).collect(),
            ids_of: HashMap::new(),
            publisher_last: HashMap::new(),
            recent: (0..topics).map(|_| VecDeque::new()).collect(),
            consumers: consumers
                .into_iter()
                .map(|spec| Consumer {
                    tracks: spec.topics.iter().map(|&t| (t, Track::default())).collect(),
                    spec,
                })
                .collect(),
            waiting: VecDeque::new(),
            intervals: Vec::new(),
            violations: Vec::new(),
            violation_count: 0,
            rejected: 0,
            unresolved: 0,
        }
    }

    fn tally(&mut self, at: u64) -> &mut Tally {
        let k = (at.saturating_sub(self.start) / self.interval) as usize;
        while self.intervals.len() <= k {
            self.intervals.push(Tally::new());
        }
        &mut self.intervals[k]
    }

    fn violation(&mut self, at: u64, what: String) {
        self.violation_count += 1;
        self.tally(at).violations += 1;
        if self.violations.len() < KEEP_VIOLATIONS {
            let secs = at.saturating_sub(self.start) as f64 / 1e9;
            self.violations.push(format!("[{secs:7.1}s] {what}"));
        }
    }

    pub fn violation_count(&self) -> u64 {
        self.violation_count
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Publishes under two IDs after a lost attempt (see the module's rules), in words.
    pub fn retry_duplicates(&self) -> (usize, &[String]) {
        (self.retry_duplicates.len(), &self.retry_notes)
    }

    pub fn accepted_total(&self) -> usize {
        self.accepted.iter().map(BTreeMap::len).sum()
    }

    /// Takes a settled publish. Publishers report their own publishes in order.
    pub fn published(&mut self, p: Published) {
        match p {
            Published::Accepted {
                topic,
                id,
                tag,
                first_sent,
                attempt_sent,
                conn_opened,
                answered,
                retries,
                lost_attempts,
            } => {
                if lost_attempts > 0 {
                    self.crash_retried.insert(tag);
                }
                self.bind(tag, id, answered, "answered");
                if let Some(other) = self.accepted[topic].insert(id, tag) {
                    if other != tag {
                        self.violation(
                            answered,
                            format!(
                                "ID {} answered to two publishes, {other:?} and {tag:?}",
                                show_id(id)
                            ),
                        );
                    }
                }
                let last = self
                    .publisher_last
                    .entry((tag.publisher, topic))
                    .or_insert(0);
                if id <= *last {
                    let before = *last;
                    self.violation(
                        answered,
                        format!(
                            "publisher {}: ID {} in topic {topic} after its earlier {}",
                            tag.publisher,
                            show_id(id),
                            show_id(before)
                        ),
                    );
                } else {
                    *last = id;
                }
                let tally = self.tally(answered);
                tally.published += 1;
                tally.retries += u64::from(retries);
                tally.publish.record_ns(answered.saturating_sub(first_sent));
                let c = Confirmation {
                    conn_opened,
                    sent: attempt_sent,
                    answered,
                };
                for consumer in &mut self.consumers {
                    if let Some(track) = consumer.tracks.get_mut(&topic) {
                        let (proven, still): (Vec<AckFact>, Vec<AckFact>) =
                            track.pending.drain(..).partition(|a| a.persisted_by(&c));
                        track.pending = still;
                        track.persisted.extend(proven);
                    }
                }
                let recent = &mut self.recent[topic];
                recent.push_back(c);
                while recent
                    .front()
                    .is_some_and(|f| f.answered + KEEP_CONFIRMATIONS_NS < answered)
                {
                    recent.pop_front();
                }
            }
            Published::Rejected { tag, at } => {
                self.rejected += 1;
                let _ = (tag, at);
            }
            Published::Unresolved { tag, at } => {
                self.unresolved += 1;
                self.tally(at).unresolved += 1;
                self.crash_retried.insert(tag);
            }
        }
    }

    /// Binds a tag to the ID it was answered or delivered under; a second ID is a violation.
    fn bind(&mut self, tag: Tag, id: Id, at: u64, how: &str) {
        match self.ids_of.get(&tag) {
            Some(&known) if known != id && !self.strict && self.crash_retried.contains(&tag) => {
                if self.retry_duplicates.insert(tag) {
                    self.tally(at).retry_duplicates += 1;
                    if self.retry_notes.len() < KEEP_VIOLATIONS {
                        let secs = at.saturating_sub(self.start) as f64 / 1e9;
                        self.retry_notes.push(format!(
                            "[{secs:7.1}s] publish {tag:?} under {} and {} after an attempt lost with the relay",
                            show_id(known),
                            show_id(id)
                        ));
                    }
                }
            }
            Some(&known) if known != id => self.violation(
                at,
                format!(
                    "publish {tag:?} exists twice: {} {how}, {} before (one Idempotency-Key)",
                    show_id(id),
                    show_id(known)
                ),
            ),
            Some(_) => {}
            None => {
                self.ids_of.insert(tag, id);
            }
        }
    }

    /// Takes what a consumer reported. Acks and unexpected answers count at once; sessions
    /// and deliveries wait for [`Checker::advance`].
    pub fn seen(&mut self, s: Seen) {
        match s {
            Seen::Ack {
                consumer,
                topic,
                id,
                sent_at,
                confirmed_at,
            } => {
                let fact = AckFact {
                    id,
                    sent: sent_at,
                    confirmed: confirmed_at,
                };
                let proven = self.recent[topic].iter().any(|c| fact.persisted_by(c));
                if let Some(track) = self.consumers[consumer].tracks.get_mut(&topic) {
                    if proven {
                        track.persisted.push(fact);
                    } else {
                        track.pending.push(fact);
                    }
                }
            }
            Seen::Unexpected { at, what } => {
                self.violation(at, format!("unexpected answer: {what}"))
            }
            other => self.waiting.push_back(other),
        }
    }

    /// Judges the sessions and deliveries that happened before `horizon`: the time before
    /// which every publish has been settled and reported (a message delivered before it
    /// can only have neighbours whose publishes were sent before it, too).
    pub fn advance(&mut self, horizon: u64) {
        while let Some(front) = self.waiting.front() {
            let at = match front {
                Seen::Session { at, .. } | Seen::Delivery { at, .. } => *at,
                _ => 0,
            };
            if at >= horizon {
                break;
            }
            match self.waiting.pop_front() {
                Some(Seen::Session { consumer, at }) => self.session(consumer, at),
                Some(Seen::Delivery {
                    consumer,
                    topic,
                    id,
                    tag,
                    sent_ns,
                    at,
                }) => self.delivery(consumer, topic, id, tag, sent_ns, at),
                _ => {}
            }
        }
    }

    fn session(&mut self, consumer: usize, at: u64) {
        self.tally(at).sessions += 1;
        let c = &mut self.consumers[consumer];
        for track in c.tracks.values_mut() {
            track.prev = None;
            track.floor = match c.spec.resume {
                Resume::Durable => track.floor_at(at),
                Resume::Cursor => track.last,
            };
        }
    }

    fn delivery(&mut self, consumer: usize, topic: usize, id: Id, tag: Tag, sent_ns: u64, at: u64) {
        self.bind(tag, id, at, "delivered");
        if let Some(&other) = self.accepted[topic].get(&id) {
            if other != tag {
                self.violation(
                    at,
                    format!(
                        "ID {} delivered as {tag:?}, accepted as {other:?}",
                        show_id(id)
                    ),
                );
            }
        }
        let name = &self.consumers[consumer].spec.name;
        let Some(track) = self.consumers[consumer].tracks.get(&topic) else {
            let what = format!(
                "{name} got {} from topic {topic}, which it never subscribed to",
                show_id(id)
            );
            return self.violation(at, what);
        };
        let (last, prev, floor) = (track.last, track.prev, track.floor);
        let name = name.clone();
        let mut problem = None;
        let gap_from = match prev {
            Some(p) if id <= p => {
                problem = Some(format!(
                    "{name}, topic {topic}: {} after {} in one session (order or duplicate)",
                    show_id(id),
                    show_id(p)
                ));
                None
            }
            Some(p) => Some(p),
            None if id > last => Some(last),
            None if id > floor => None,
            None => {
                problem = Some(format!(
                    "{name}, topic {topic}: {} again, at or below its {} {}",
                    show_id(id),
                    if last == floor {
                        "last message"
                    } else {
                        "persisted ack"
                    },
                    show_id(floor)
                ));
                None
            }
        };
        if let Some(from) = gap_from {
            let mut missing = self.accepted[topic]
                .range((Excluded(from), Excluded(id)))
                .map(|(m, _)| *m);
            if let Some(first) = missing.next() {
                let more = missing.count();
                problem = Some(format!(
                    "{name}, topic {topic}: gap: accepted {} ({more} more) missing between {} and {}",
                    show_id(first),
                    show_id(from),
                    show_id(id)
                ));
            }
        }
        if let Some(what) = problem {
            self.violation(at, what);
        }
        let fresh = id > last;
        let track = self.consumers[consumer]
            .tracks
            .get_mut(&topic)
            .expect("looked up above");
        track.prev = Some(id);
        track.last = track.last.max(id);
        let tally = self.tally(at);
        if fresh {
            tally.delivered += 1;
            tally.latency.record_ns(at.saturating_sub(sent_ns));
        } else {
            tally.redelivered += 1;
        }
    }

    /// Whether every consumer has everything accepted in its topics (judged so far).
    pub fn caught_up(&self) -> bool {
        self.waiting.is_empty()
            && self.consumers.iter().all(|c| {
                c.tracks.iter().all(|(&t, track)| {
                    self.accepted[t]
                        .keys()
                        .next_back()
                        .is_none_or(|&m| track.last >= m)
                })
            })
    }

    /// After the run: everything left is judged, and what a consumer never got is lost.
    pub fn finish(&mut self, at: u64) {
        self.advance(u64::MAX);
        let mut lost = Vec::new();
        for c in &self.consumers {
            for (&t, track) in &c.tracks {
                let mut missing = self.accepted[t]
                    .range((Excluded(track.last), Excluded(Id::MAX)))
                    .map(|(m, _)| *m);
                if let Some(first) = missing.next() {
                    lost.push(format!(
                        "{}, topic {t}: lost: accepted {} and {} more never arrived (last received {})",
                        c.spec.name,
                        show_id(first),
                        missing.count(),
                        show_id(track.last)
                    ));
                }
            }
        }
        for what in lost {
            self.violation(at, what);
        }
    }
}

#[cfg(test)]
mod tests;
