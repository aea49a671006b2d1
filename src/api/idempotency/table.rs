//! Idempotency keys of publish requests, on the shard that owns each key: which keys are
//! being published right now, and which were published within the window and with what
//! answer (the [`Replay`] a retry gets).
//!
//! A key's scope is (token subject, endpoint, key): subjects never share keys, and a key
//! used for a single publish means nothing to a bulk publish. Each scope has one owner
//! shard (FNV-1a of the scope, like topics), and only the owner's [`Table`] holds its state,
//! so deciding "first or duplicate" needs no lock: the owner answers claims in arrival
//! order. A claim of a key whose first request is still publishing is parked in the entry
//! and answered when that request keeps its answer (the waiter gets the same answer) or
//! gives the key up (the waiter claims again). Nothing in [`Table`] awaits; [`Keys`] lets
//! a parked claim's caller wait on the owner. This module does not publish, and does not
//! know HTTP beyond a status code and body bytes.
//!
//! Bounds, per shard: at most [`Bounds::entries`] keys and [`Bounds::bytes`] of keys and
//! kept answers (plus the one answer being kept), and at most [`Bounds::waiters`] parked
//! duplicates per key. Kept answers expire after the window (swept on the housekeeping
//! tick, oldest first, through an expiry-ordered index). When the table is full, the
//! oldest kept answers are evicted early: in memory that shortens their window (a retry of
//! an evicted key publishes again), while with Valkey the key's stored answer still answers
//! the retry. Keys being published are never evicted; if every entry is one, a new key is
//! refused (`Claim::Busy`) rather than risk a double publish.
//!
//! An answer may be [`Unconfirmed`]: the publish's message is written, but too few replicas
//! confirmed it (`storage.ack: replicated`). The key stays bound to that message: a claim
//! of it reopens the key for the claimant ([`Claim::Recheck`]), who checks the replication
//! again and keeps the confirmed answer, or publishes if the message is gone, or gives the
//! claim up, which puts the unconfirmed answer back.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use crate::rt::mesh::Answer;
use crate::rt::owner::{fnv1a, shard_of, FNV_OFFSET};
use crate::rt::signal::Slot;
use crate::store::MessageId;

/// The endpoint a key was used on; part of its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Single,
    Bulk,
}

impl Endpoint {
    /// The name in Valkey keys.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Single => "single",
            Endpoint::Bulk => "bulk",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub subject: Box<str>,
    pub endpoint: Endpoint,
    pub key: Box<str>,
}

impl Scope {
    /// The shard holding this scope's state.
    pub fn owner(&self, shards: usize) -> usize {
        let hash = [self.subject.as_bytes(), self.endpoint.name().as_bytes()]
            .iter()
            .fold(FNV_OFFSET, |h, part| fnv1a(fnv1a(h, part), &[0]));
        shard_of(fnv1a(hash, self.key.as_bytes()), shards)
    }

    /// Subject, endpoint name and key: how the persistent tier names the scope's answer.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.subject, self.endpoint.name(), &self.key)
    }

    fn bytes(&self) -> usize {
        self.subject.len() + self.key.len()
    }
}

/// The fingerprint of a request body that tells a retry (same bytes) from a reuse of the
/// key for something else. FNV-1a, because it is stable across builds and releases: it is
/// stored in Valkey and compared after the relay restarts, possibly upgraded.
pub fn body_hash(body: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, body)
}

/// The first answer given for a key: what every retry of it is answered with.
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    pub status: u16,
    pub body_hash: u64,
    pub body: Vec<u8>,
    /// The answer's message is written, but its replication is not confirmed yet: a retry
    /// checks it again before giving this answer.
    pub unconfirmed: Option<Unconfirmed>,
}

/// A published message whose replicas did not confirm it in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The topic as stored (its stream's name).
    pub topic: Box<str>,
    pub id: MessageId,
}

impl Replay {
    /// The Valkey value: `<status> <body hash, 16 hex digits> <body>`; unconfirmed:
    /// `<status>+ <body hash> <message ID> <topic length> <topic><body>`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = match &self.unconfirmed {
            None => format!("{} {:016x} ", self.status, self.body_hash),
            Some(u) => format!(
                "{}+ {:016x} {} {} {}",
                self.status,
                self.body_hash,
                u.id,
                u.topic.len(),
                u.topic
            ),
        }
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(value: &[u8]) -> Option<Replay> {
        let mut parts = value.splitn(3, |b| *b == b' ');
        let status = std::str::from_utf8(parts.next()?).ok()?;
        let hash = std::str::from_utf8(parts.next()?).ok()?;
        let body_hash = u64::from_str_radix(hash, 16).ok()?;
        let rest = parts.next()?;
        let (status, unconfirmed, body) = match status.strip_suffix('+') {
            None => (status, None, rest),
            Some(status) => {
                let mut parts = rest.splitn(3, |b| *b == b' ');
                let id = MessageId::parse(std::str::from_utf8(parts.next()?).ok()?)?;
                let len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let rest = parts.next()?;
                let topic = std::str::from_utf8(rest.get(..len)?).ok()?;
                let unconfirmed = Unconfirmed {
                    topic: topic.into(),
                    id,
                };
                (status, Some(unconfirmed), &rest[len..])
            }
        };
        Some(Replay {
            status: status.parse().ok()?,
            body_hash,
            body: body.to_vec(),
            unconfirmed,
        })
    }

    /// This answer with its message's replication confirmed.
    pub fn confirmed(&self) -> Replay {
        Replay {
            status: self.status,
            body_hash: self.body_hash,
            body: self.body.clone(),
            unconfirmed: None,
        }
    }
}

/// The owner's answer to a claim.
#[derive(Clone, Debug)]
pub enum Claim {
    /// The caller publishes, then keeps its answer or releases claim `id`.
    Claimed(u64),
    /// Published already: this is the answer to give again.
    Done(Arc<Replay>),
    /// Published, but its replication was not confirmed: the caller holds claim `id` while
    /// it checks again (see the module header).
    Recheck(u64, Arc<Replay>),
    /// The request that held the key gave it up; claim again.
    Released,
    /// The key was used with a different body.
    Reused,
    /// A bound is reached (every entry is being published, or too many duplicates wait).
    Busy,
}

#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub entries: usize,
    pub bytes: usize,
    pub waiters: usize,
}

impl Bounds {
    pub const DEFAULT: Bounds = Bounds {
        entries: 100_000,
        bytes: 64 << 20,
        waiters: 256,
    };
}

/// Bytes an entry costs beyond its scope and answer (map and index slots, `Arc`s).
const ENTRY_OVERHEAD: usize = 160;

enum State<W> {
    /// Being published (or rechecked) by the claim holder; duplicates wait. `prior`: the
    /// unconfirmed answer (and its expiry) that a recheck's release puts back.
    InFlight {
        waiters: Vec<W>,
        prior: Option<(Arc<Replay>, u64)>,
    },
    Done {
        replay: Arc<Replay>,
        expires_at: u64,
    },
}

struct Entry<W> {
    claim: u64,
    body_hash: u64,
    size: usize,
    state: State<W>,
}

impl<W> Entry<W> {
    fn expired(&self, now: u64) -> bool {
        matches!(self.state, State::Done { expires_at, .. } if expires_at <= now)
    }
}

/// One shard's keys. `W` is how a parked duplicate is answered (a [`Slot`] in [`Keys`]).
pub struct Table<W> {
    window_ms: u64,
    bounds: Bounds,
    entries: HashMap<Arc<Scope>, Entry<W>>,
    /// Entries with a kept answer by (expiry, claim ID): the oldest first.
    expiry: BTreeMap<(u64, u64), Arc<Scope>>,
    bytes: usize,
    next_claim: u64,
}

impl<W> Table<W> {
    pub fn new(window_ms: u64, bounds: Bounds) -> Self {
        Table {
            window_ms,
            bounds,
            entries: HashMap::new(),
            expiry: BTreeMap::new(),
            bytes: 0,
            next_claim: 0,
        }
    }

    /// Claims `scope` for a request whose body hashes to `body_hash`. `None`: the key is
    /// being published and `waiter` is parked until that resolves.
    pub fn claim(
        &mut self,
        scope: Arc<Scope>,
        body_hash: u64,
        now: u64,
        waiter: W,
    ) -> Option<Claim> {
        if self.entries.get(&*scope).is_some_and(|e| e.expired(now)) {
            self.remove(&scope);
        }
        if let Some(entry) = self.entries.get_mut(&*scope) {
            if entry.body_hash != body_hash {
                return Some(Claim::Reused);
            }
            return match &mut entry.state {
                State::Done { replay, expires_at } if replay.unconfirmed.is_some() => {
                    // Reopened for a recheck: out of the expiry index while in flight
                    // (never evicted), back in it when kept or put back.
                    let (replay, expires_at) = (Arc::clone(replay), *expires_at);
                    self.expiry.remove(&(expires_at, entry.claim));
                    self.next_claim += 1;
                    entry.claim = self.next_claim;
                    entry.state = State::InFlight {
                        waiters: Vec::new(),
                        prior: Some((Arc::clone(&replay), expires_at)),
                    };
                    Some(Claim::Recheck(entry.claim, replay))
                }
                State::Done { replay, .. } => Some(Claim::Done(Arc::clone(replay))),
                State::InFlight { waiters, .. } if waiters.len() >= self.bounds.waiters => {
                    Some(Claim::Busy)
                }
                State::InFlight { waiters, .. } => {
                    waiters.push(waiter);
                    None
                }
            };
        }
        let size = scope.bytes() + ENTRY_OVERHEAD;
        while self.entries.len() >= self.bounds.entries || self.bytes + size > self.bounds.bytes {
            if !self.evict_oldest() {
                return Some(Claim::Busy);
            }
        }
        self.next_claim += 1;
        let claim = self.next_claim;
        self.bytes += size;
        self.entries.insert(
            scope,
            Entry {
                claim,
                body_hash,
                size,
                state: State::InFlight {
                    waiters: Vec::new(),
                    prior: None,
                },
            },
        );
        Some(Claim::Claimed(claim))
    }

    /// Keeps the answer of claim `claim`. Returns the parked duplicates and what to tell
    /// them (the answer, or `Reused` when the answer, read back from Valkey, is of another
    /// body than theirs); `None` if the claim is not held (nothing changes).
    pub fn keep(
        &mut self,
        scope: &Scope,
        claim: u64,
        replay: Arc<Replay>,
        now: u64,
    ) -> Option<(Vec<W>, Claim)> {
        let key = Arc::clone(self.entries.get_key_value(scope)?.0);
        let entry = self.entries.get_mut(scope)?;
        let State::InFlight { waiters, prior } = &mut entry.state else {
            return None;
        };
        if entry.claim != claim {
            return None;
        }
        let waiters = std::mem::take(waiters);
        if let Some((prior, _)) = prior.take() {
            entry.size -= prior.body.len();
            self.bytes -= prior.body.len();
        }
        // Duplicates do not take an unconfirmed answer as it is: they claim again, and
        // one of them rechecks it.
        let answer = if replay.body_hash != entry.body_hash {
            Claim::Reused
        } else if replay.unconfirmed.is_some() {
            Claim::Released
        } else {
            Claim::Done(Arc::clone(&replay))
        };
        let expires_at = now.saturating_add(self.window_ms);
        entry.body_hash = replay.body_hash;
        entry.size += replay.body.len();
        self.bytes += replay.body.len();
        entry.state = State::Done { replay, expires_at };
        let slot = (expires_at, claim);
        self.expiry.insert(slot, key);
        // Older answers make room for this one; it is kept even if it alone is over.
        while self.bytes > self.bounds.bytes
            && self
                .expiry
                .first_key_value()
                .is_some_and(|(k, _)| *k != slot)
        {
            self.evict_oldest();
        }
        Some((waiters, answer))
    }

    /// Gives up claim `claim` (its request failed) and returns the parked duplicates, to
    /// be told `Released`: the key is free again, or for a recheck holds its unconfirmed
    /// answer again. Nothing happens if the claim is not held.
    pub fn release(&mut self, scope: &Scope, claim: u64) -> Vec<W> {
        let Some((key, entry)) = self.entries.get_key_value(scope) else {
            return Vec::new();
        };
        if entry.claim != claim || !matches!(entry.state, State::InFlight { .. }) {
            return Vec::new();
        }
        let key = Arc::clone(key);
        let Some(Entry {
            body_hash,
            size,
            state: State::InFlight { waiters, prior },
            ..
        }) = self.entries.remove(scope)
        else {
            return Vec::new();
        };
        match prior {
            Some((replay, expires_at)) => {
                self.expiry.insert((expires_at, claim), Arc::clone(&key));
                let state = State::Done { replay, expires_at };
                let entry = Entry {
                    claim,
                    body_hash,
                    size,
                    state,
                };
                self.entries.insert(key, entry);
            }
            None => self.bytes -= size,
        }
        waiters
    }

    /// Drops the answers whose window ended by `now`.
    pub fn sweep(&mut self, now: u64) {
        while self
            .expiry
            .first_key_value()
            .is_some_and(|((expires_at, _), _)| *expires_at <= now)
        {
            self.evict_oldest();
        }
    }

    /// Removes the oldest entry with a kept answer; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.expiry.pop_first() {
            Some((_, scope)) => {
                if let Some(entry) = self.entries.remove(&*scope) {
                    self.bytes -= entry.size;
                }
                true
            }
            None => false,
        }
    }

    /// Removes an entry whose window ended.
    fn remove(&mut self, scope: &Scope) {
        if let Some(entry) = self.entries.remove(scope) {
            self.bytes -= entry.size;
            if let State::Done { expires_at, .. } = entry.state {
                self.expiry.remove(&(expires_at, entry.claim));
            }
        }
    }
}

/// This shard's keys as their owner serves them: a duplicate of a key being published
/// waits here (on this shard) until that publish resolves.
pub struct Keys {
    table: RefCell<Table<Rc<Slot<Claim>>>>,
}

impl Keys {
    pub fn new(window_ms: u64) -> Keys {
        Keys {
            table: RefCell::new(Table::new(window_ms, Bounds::DEFAULT)),
        }
    }

    /// Claims `scope` for a request whose body hashes to `body_hash`: answered at once, or
    /// for a key being published once that publish kept its answer or gave the key up.
    pub fn claim(
        &self,
        scope: Arc<Scope>,
        body_hash: u64,
        now: u64,
    ) -> Answer<Claim, impl Future<Output = Claim>> {
        let slot = Rc::new(Slot::default());
        let answer = self
            .table
            .borrow_mut()
            .claim(scope, body_hash, now, Rc::clone(&slot));
        match answer {
            Some(claim) => Answer::Now(claim),
            None => Answer::Later(async move { slot.take().await }),
        }
    }

    /// Keeps the answer of claim `claim` and hands it to the duplicates waiting for it;
    /// false when the claim is not held (nothing changes).
    pub fn keep(&self, scope: &Scope, claim: u64, replay: Arc<Replay>, now: u64) -> bool {
        let kept = self.table.borrow_mut().keep(scope, claim, replay, now);
        match kept {
            Some((waiters, answer)) => {
                answer_waiters(waiters, &answer);
                true
            }
            None => false,
        }
    }

    /// Gives claim `claim` up (its publish failed): the waiting duplicates claim again.
    pub fn release(&self, scope: &Scope, claim: u64) {
        let waiters = self.table.borrow_mut().release(scope, claim);
        answer_waiters(waiters, &Claim::Released);
    }

    /// Drops the answers whose window ended by `now`.
    pub fn sweep(&self, now: u64) {
        self.table.borrow_mut().sweep(now);
    }
}

fn answer_waiters(waiters: Vec<Rc<Slot<Claim>>>, answer: &Claim) {
    for waiter in waiters {
        waiter.fill(answer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 1000;

    fn scope(subject: &str, endpoint: Endpoint, key: &str) -> Arc<Scope> {
        Arc::new(Scope {
            subject: subject.into(),
            endpoint,
            key: key.into(),
        })
    }

    fn replay(hash: u64, body: &str) -> Arc<Replay> {
        Arc::new(Replay {
            status: 201,
            body_hash: hash,
            body: body.as_bytes().to_vec(),
            unconfirmed: None,
        })
    }

    fn unconfirmed(hash: u64, body: &str) -> Arc<Replay> {
        Arc::new(Replay {
            unconfirmed: Some(Unconfirmed {
                topic: "t".into(),
                id: MessageId::parse("5-1").unwrap(),
            }),
            ..replay(hash, body).confirmed()
        })
    }

    fn rechecked(answer: Option<Claim>) -> u64 {
        match answer {
            Some(Claim::Recheck(id, r)) => {
                assert!(r.unconfirmed.is_some());
                id
            }
            other => panic!("expected a recheck, got {other:?}"),
        }
    }

    #[test]
    fn an_unconfirmed_answer_is_rechecked_by_one_claimant_and_never_frees_the_key() {
        let mut t = table();
        let s = scope("alice", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 7, 0, 1));
        assert!(t.claim(Arc::clone(&s), 7, 0, 9).is_none(), "parked");
        let (waiters, answer) = t.keep(&s, id, unconfirmed(7, "r"), 10).unwrap();
        assert_eq!(waiters, vec![9]);
        assert!(
            matches!(answer, Claim::Released),
            "they claim again: {answer:?}"
        );
        let bytes = t.bytes;
        let recheck = rechecked(t.claim(Arc::clone(&s), 7, 20, 2));
        assert!(
            t.claim(Arc::clone(&s), 7, 21, 3).is_none(),
            "parked meanwhile"
        );
        assert!(t.expiry.is_empty(), "not evictable while rechecked");
        // Given up (Valkey unreachable, say): the unconfirmed answer stands again.
        assert_eq!(t.release(&s, recheck), vec![3]);
        assert_eq!((t.entries.len(), t.bytes, t.expiry.len()), (1, bytes, 1));
        let again = rechecked(t.claim(Arc::clone(&s), 7, 22, 4));
        assert_ne!(again, recheck);
        // Confirmed: the plain answer from now on.
        t.keep(&s, again, replay(7, "r"), 30).unwrap();
        assert_eq!(t.bytes, bytes);
        assert!(matches!(
            t.claim(Arc::clone(&s), 7, 31, 5),
            Some(Claim::Done(r)) if r.unconfirmed.is_none()
        ));
        // Both expire with the window.
        let other = scope("alice", Endpoint::Single, "o");
        let id = claimed(t.claim(Arc::clone(&other), 7, 0, 6));
        t.keep(&other, id, unconfirmed(7, "r"), 0).unwrap();
        t.sweep(WINDOW);
        assert!(!t.entries.contains_key(&*other));
    }

    fn claimed(answer: Option<Claim>) -> u64 {
        match answer {
            Some(Claim::Claimed(id)) => id,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    fn table() -> Table<u32> {
        Table::new(WINDOW, Bounds::DEFAULT)
    }

    #[test]
    fn first_claims_duplicates_wait_then_get_the_answer() {
        let mut t = table();
        let s = scope("alice", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 7, 0, 1));
        assert!(t.claim(Arc::clone(&s), 7, 1, 2).is_none(), "parked");
        assert!(t.claim(Arc::clone(&s), 7, 2, 3).is_none(), "parked");
        let (waiters, answer) = t.keep(&s, id, replay(7, "r"), 10).unwrap();
        assert_eq!(waiters, vec![2, 3]);
        assert!(matches!(answer, Claim::Done(r) if r.body == b"r"));
        assert!(matches!(
            t.claim(Arc::clone(&s), 7, 20, 4),
            Some(Claim::Done(_))
        ));
    }

    #[test]
    fn scopes_differ_by_subject_and_endpoint() {
        let mut t = table();
        claimed(t.claim(scope("alice", Endpoint::Single, "k"), 7, 0, 1));
        claimed(t.claim(scope("bob", Endpoint::Single, "k"), 7, 0, 2));
        claimed(t.claim(scope("alice", Endpoint::Bulk, "k"), 7, 0, 3));
        assert_eq!(t.entries.len(), 3);
    }

    #[test]
    fn another_body_is_a_reuse_in_flight_and_after() {
        let mut t = table();
        let s = scope("alice", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 7, 0, 1));
        assert!(matches!(
            t.claim(Arc::clone(&s), 8, 0, 2),
            Some(Claim::Reused)
        ));
        t.keep(&s, id, replay(7, "r"), 0).unwrap();
        assert!(matches!(
            t.claim(Arc::clone(&s), 8, 0, 3),
            Some(Claim::Reused)
        ));
    }

    #[test]
    fn release_wakes_waiters_and_frees_the_key() {
        let mut t = table();
        let s = scope("alice", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 7, 0, 1));
        assert!(t.claim(Arc::clone(&s), 7, 0, 2).is_none());
        assert!(t.release(&s, id + 1).is_empty(), "not the holder");
        assert_eq!(t.release(&s, id), vec![2]);
        assert!(t.entries.is_empty());
        assert_eq!(t.bytes, 0);
        let again = claimed(t.claim(Arc::clone(&s), 7, 0, 3));
        assert_ne!(again, id);
        assert!(t.keep(&s, id, replay(7, "r"), 0).is_none(), "stale claim");
    }

    #[test]
    fn answers_expire_after_the_window() {
        let mut t = table();
        let s = scope("alice", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 7, 0, 1));
        t.keep(&s, id, replay(7, "r"), 100).unwrap();
        assert!(matches!(
            t.claim(Arc::clone(&s), 7, 1099, 2),
            Some(Claim::Done(_))
        ));
        // Expired but not swept yet: claimable.
        claimed(t.claim(Arc::clone(&s), 7, 1100, 3));
        assert_eq!(t.expiry.len(), 0);
        let other = scope("alice", Endpoint::Single, "other");
        let id = claimed(t.claim(Arc::clone(&other), 7, 0, 4));
        t.keep(&other, id, replay(7, "r"), 0).unwrap();
        t.sweep(999);
        assert_eq!(t.entries.len(), 2);
        t.sweep(1000);
        assert_eq!(t.entries.len(), 1, "only the key in flight is left");
    }

    #[test]
    fn a_full_table_evicts_the_oldest_answers_but_never_a_key_in_flight() {
        let mut t = Table::new(
            WINDOW,
            Bounds {
                entries: 2,
                ..Bounds::DEFAULT
            },
        );
        let a = scope("s", Endpoint::Single, "a");
        let b = scope("s", Endpoint::Single, "b");
        let id = claimed(t.claim(Arc::clone(&a), 1, 0, 0));
        t.keep(&a, id, replay(1, "r"), 0).unwrap();
        claimed(t.claim(Arc::clone(&b), 1, 1, 0));
        claimed(t.claim(scope("s", Endpoint::Single, "c"), 1, 2, 0));
        assert!(!t.entries.contains_key(&*a), "oldest answer evicted");
        assert!(
            matches!(
                t.claim(scope("s", Endpoint::Single, "d"), 1, 3, 0),
                Some(Claim::Busy)
            ),
            "both entries in flight"
        );
    }

    #[test]
    fn answers_are_bounded_in_bytes() {
        let mut t = Table::new(
            WINDOW,
            Bounds {
                bytes: 3 * ENTRY_OVERHEAD,
                ..Bounds::DEFAULT
            },
        );
        let big = "x".repeat(ENTRY_OVERHEAD);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let s = scope("s", Endpoint::Bulk, key);
            let id = claimed(t.claim(Arc::clone(&s), 1, i as u64, 0));
            t.keep(&s, id, replay(1, &big), i as u64).unwrap();
            assert!(t.bytes <= 3 * ENTRY_OVERHEAD + big.len() + 2);
        }
        assert_eq!(t.entries.len(), 1, "older answers made room");
    }

    #[test]
    fn duplicates_per_key_are_bounded() {
        let mut t = Table::new(
            WINDOW,
            Bounds {
                waiters: 1,
                ..Bounds::DEFAULT
            },
        );
        let s = scope("s", Endpoint::Single, "k");
        claimed(t.claim(Arc::clone(&s), 1, 0, 0));
        assert!(t.claim(Arc::clone(&s), 1, 0, 1).is_none());
        assert!(matches!(
            t.claim(Arc::clone(&s), 1, 0, 2),
            Some(Claim::Busy)
        ));
    }

    #[test]
    fn an_answer_read_back_with_another_body_answers_waiters_reused() {
        let mut t = table();
        let s = scope("s", Endpoint::Single, "k");
        let id = claimed(t.claim(Arc::clone(&s), 1, 0, 0));
        assert!(t.claim(Arc::clone(&s), 1, 0, 1).is_none());
        let (waiters, answer) = t.keep(&s, id, replay(2, "r"), 0).unwrap();
        assert_eq!(waiters, vec![1]);
        assert!(matches!(answer, Claim::Reused));
        assert!(matches!(
            t.claim(Arc::clone(&s), 2, 0, 2),
            Some(Claim::Done(_))
        ));
    }

    #[test]
    fn answers_round_trip_through_their_valkey_form() {
        let r = Replay {
            status: 207,
            body_hash: 0xdead_beef,
            body: br#"{"a": "b c"}"#.to_vec(),
            unconfirmed: None,
        };
        assert_eq!(Replay::decode(&r.encode()), Some(r));
        let u = Replay {
            status: 201,
            body_hash: 7,
            body: br#"{"message_id": "5-1"}"#.to_vec(),
            unconfirmed: Some(Unconfirmed {
                topic: "ns/a b".into(),
                id: MessageId::parse("5-1").unwrap(),
            }),
        };
        assert_eq!(
            u.encode(),
            br#"201+ 0000000000000007 5-1 6 ns/a b{"message_id": "5-1"}"#
        );
        assert_eq!(Replay::decode(&u.encode()), Some(u));
        assert_eq!(Replay::decode(b"201+ 00 5-1 9 ab"), None, "topic cut short");
        assert_eq!(Replay::decode(b"201"), None);
        assert_eq!(Replay::decode(b"x 00 {}"), None);
    }

    #[test]
    fn owners_spread_and_depend_on_every_part() {
        let owners: std::collections::HashSet<usize> = (0..64)
            .map(|i| scope("s", Endpoint::Single, &format!("k{i}")).owner(4))
            .collect();
        assert_eq!(owners.len(), 4);
        let a = scope("ab", Endpoint::Single, "c");
        let b = scope("a", Endpoint::Single, "bc");
        assert_ne!(a.owner(1 << 30), b.owner(1 << 30));
    }
}
