//! The `Idempotency-Key` header of `POST /api/v1/messages` and `/api/v1/messages/bulk`: a
//! retried publish gets the first publish's answer instead of publishing again.
//!
//! After the request is fully validated, the key is claimed at its owner shard (state and
//! bounds: [`table`]). Claimed: this request publishes, then keeps its answer before
//! answering the producer, or on any error gives the key up so that a retry can publish
//! (dropping the [`Held`] claim does that). Published already: the recorded status
//! and body are answered verbatim, with `Idempotent-Replayed: true`. Being published by
//! another request: this one waits, holding no lock, until that request kept its answer
//! (same answer) or gave up (claim again); at most `limits.idempotency_wait` and not past
//! shutdown, after which it gets 503 with `Retry-After` (the Python client retries 5xx). A key reused with a
//! different body (compared by a 64-bit hash) is 422 `IDEMPOTENCY_KEY_REUSED`.
//!
//! With Valkey, a claimed key is first looked up there, so that a retry after a relay
//! restart (or after the key's memory entry was evicted) gets the first answer; answers
//! are written there by the key's owner with the window as TTL. What remains: if the relay
//! dies after publishing and before the answer is kept, or Valkey cannot be read, a retry
//! publishes again (at-least-once). Keeping the answer before answering the producer (with
//! persisted acks: until Valkey confirmed) keeps that window small.
//!
//! A publish answered 503 `PERSIST_TIMEOUT` (its writes not confirmed within
//! `storage.ack_timeout`; they stay queued) keeps its key claimed until they are, and its
//! 201/207 then becomes the key's answer ([`Held::keep_later`]): a retry gets that answer
//! instead of publishing the message a second time.
//!
//! A single publish whose message Valkey wrote but too few replicas confirmed (503
//! `REPLICATION_TIMEOUT`, `storage.ack: replicated`, at once or after `PERSIST_TIMEOUT`)
//! keeps its key bound to that message ([`Held::keep_unconfirmed`]). A retry checks the
//! replication again ([`crate::store::Store::replicated`]): confirmed, it gets the 201 with
//! the same `message_id` (and that becomes the key's answer); still short, 503 again; the
//! message gone from the stream (a failover lost it), the retry publishes it; in cluster
//! mode too, on any node. A bulk publish keeps its 207 as answered once any item was
//! published, whatever it says about the items' replication or the writes Valkey refused
//! for others: a retry gets it again and publishes nothing twice.
//!
//! In cluster mode the key is also claimed in Valkey before publishing (a marker with a
//! bounded lifetime, replaced by the answer), so that the same key sent to two relay nodes
//! at once publishes once: the later request waits for the answer as a local duplicate does.
//!
//! A request without the header takes none of these steps. This module does not parse or
//! publish messages (`publish` does).

mod table;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures_lite::future;

use super::error::ApiError;
use super::shard::Shard;
use crate::auth::Principal;
use crate::http::{Request, Response};
use crate::rt::conns::ConnCtl;
use crate::rt::mesh::Answer;
use crate::rt::{now_ms, spawn_local};
use crate::store::ClaimedAnswer;
pub use table::{body_hash, Claim, Endpoint, Keys, Replay, Scope, Unconfirmed};

/// The longest key accepted (the Python client sends 32 hex digits).
const MAX_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, if it has one: 1 to [`MAX_KEY_LEN`] visible ASCII
/// characters, at most one header.
pub fn key_of(req: &Request) -> Result<Option<Box<str>>, ApiError> {
    let mut keys = req
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"));
    let Some((_, key)) = keys.next() else {
        return Ok(None);
    };
    let valid = (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if valid && keys.next().is_none() {
        Ok(Some(key.into()))
    } else {
        Err(ApiError::invalid(
            "INVALID_IDEMPOTENCY_KEY",
            format!(
                "`Idempotency-Key` must be one header of 1 to {MAX_KEY_LEN} visible ASCII characters"
            ),
        ))
    }
}

/// What a validated publish does next.
pub enum Begin {
    /// Publish, then hand the answer to the claim (none without a key).
    Publish(Option<Held>),
    /// The key was published already: its answer.
    Replay(Response),
}

/// Resolves the key of a validated publish whose request body is `body`.
pub async fn begin(
    shard: &Rc<Shard>,
    ctl: &ConnCtl,
    principal: &Principal,
    endpoint: Endpoint,
    key: Option<Box<str>>,
    body: &[u8],
) -> Result<Begin, ApiError> {
    let Some(key) = key else {
        return Ok(Begin::Publish(None));
    };
    let scope = Arc::new(Scope {
        subject: principal.subject.as_str().into(),
        endpoint,
        key,
    });
    let body_hash = body_hash(body);
    let claim = loop {
        match claim_waiting(shard, ctl, &scope, body_hash).await? {
            Claim::Claimed(claim) => break claim,
            Claim::Recheck(claim, replay) => {
                let held = Held::new(shard, scope, claim, body_hash);
                return held.recheck(replay).await;
            }
            Claim::Done(replay) => return Ok(Begin::Replay(answer_again(&replay))),
            Claim::Released => continue,
            Claim::Reused => return Err(reused()),
            Claim::Busy => {
                return Err(ApiError::new(
                    503,
                    "IDEMPOTENCY_BUSY",
                    "too many publishes with an Idempotency-Key are in flight; retry later",
                )
                .with_header("Retry-After", "1"))
            }
        }
    };
    let mut held = Held::new(shard, scope, claim, body_hash);
    let found = if shard.store.is_announced() {
        claim_across_nodes(shard, ctl, &mut held).await?
    } else {
        shard.store.answer(held.scope.parts()).await
    };
    // Not found, or Valkey unreadable: publish (at-least-once across a restart).
    match found {
        Ok(Some(value)) => match Replay::decode(&value) {
            Some(replay) if replay.unconfirmed.is_some() && replay.body_hash == body_hash => {
                held.recheck(Arc::new(replay)).await
            }
            Some(replay) => held.adopt(replay).await,
            None => Ok(Begin::Publish(Some(held))),
        },
        _ => Ok(Begin::Publish(Some(held))),
    }
}

/// How often a request whose key another node is publishing with looks again.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Cluster mode: the key is claimed in Valkey too (see [`Store::claim_answer`]), waiting
/// while another node publishes with it, at most `limits.idempotency_wait`. The claim lasts
/// as long as that node may take to answer.
///
/// [`Store::claim_answer`]: crate::store::Store::claim_answer
async fn claim_across_nodes(
    shard: &Rc<Shard>,
    ctl: &ConnCtl,
    held: &mut Held,
) -> Result<Result<Option<Vec<u8>>, crate::store::StoreError>, ApiError> {
    let marker = format!(
        "{}{}",
        crate::store::CLAIM_MARKER,
        crate::random::hex_string::<8>()
    );
    let limits = &shard.config.limits;
    let ttl = shard.config.storage.ack_timeout + limits.idempotency_wait;
    let give_up = now_ms() + limits.idempotency_wait.as_millis() as u64;
    loop {
        match shard
            .store
            .claim_answer(held.scope.parts(), &marker, ttl)
            .await
        {
            Ok(ClaimedAnswer::Mine) => {
                held.marker = Some(marker);
                return Ok(Ok(None));
            }
            Ok(ClaimedAnswer::Answer(value)) => return Ok(Ok(Some(value))),
            Ok(ClaimedAnswer::Pending) if ctl.closing() => {
                return Err(in_flight("the relay is shutting down"))
            }
            Ok(ClaimedAnswer::Pending) if now_ms() >= give_up => {
                return Err(in_flight(
                    "another request with this Idempotency-Key is still being published",
                ))
            }
            Ok(ClaimedAnswer::Pending) => crate::rt::sleep(CLAIM_POLL).await,
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// Claims the key, waiting while another request publishes with it (bounded by
/// `limits.idempotency_wait`).
async fn claim_waiting(
    shard: &Rc<Shard>,
    ctl: &ConnCtl,
    scope: &Arc<Scope>,
    body_hash: u64,
) -> Result<Claim, ApiError> {
    let claimed = Arc::clone(scope);
    let claim = shard.on_key(scope, move |owner| {
        owner.keys.claim(claimed, body_hash, now_ms())
    });
    futures_lite::pin!(claim);
    ctl.set_deadline(now_ms() + shard.config.limits.idempotency_wait.as_millis() as u64);
    let outcome = loop {
        let answered = future::or(async { Some(claim.as_mut().await) }, async {
            ctl.signal.wait().await;
            None
        })
        .await;
        match answered {
            Some(claim) => break Ok(claim),
            None if ctl.closing() => break Err(in_flight("the relay is shutting down")),
            None if ctl.take_timeout() => {
                break Err(in_flight(
                    "another request with this Idempotency-Key is still being published",
                ))
            }
            None => {}
        }
    };
    ctl.clear_deadline();
    outcome
}

/// A claimed key. Dropping it before its answer is kept gives the key up, so that every
/// error path (and a
/// cancelled request) lets a retry publish.
pub struct Held {
    shard: Rc<Shard>,
    scope: Arc<Scope>,
    claim: u64,
    body_hash: u64,
    armed: bool,
    /// Cluster mode: the claim this request holds in Valkey.
    marker: Option<String>,
}

impl Held {
    fn new(shard: &Rc<Shard>, scope: Arc<Scope>, claim: u64, body_hash: u64) -> Held {
        Held {
            shard: Rc::clone(shard),
            scope,
            claim,
            body_hash,
            armed: true,
            marker: None,
        }
    }

    /// Keeps `response` as the key's answer, before it goes to the producer.
    pub async fn keep(self, response: &Response) {
        self.keep_as(response, None).await;
    }

    /// Binds the key to a published message whose replication was not confirmed: a retry
    /// checks it again and gets `response` once it is (see the module header).
    pub async fn keep_unconfirmed(self, response: &Response, unconfirmed: Unconfirmed) {
        self.keep_as(response, Some(unconfirmed)).await;
    }

    async fn keep_as(mut self, response: &Response, unconfirmed: Option<Unconfirmed>) {
        let replay = Replay {
            status: response.status,
            body_hash: self.body_hash,
            body: response.body.clone(),
            unconfirmed,
        };
        let persist = self.shard.store.is_persistent();
        self.keep_replay(Arc::new(replay), persist).await;
    }

    /// Keeps the answer `later` resolves to (with its message unconfirmed, see
    /// [`Held::keep_unconfirmed`]), holding the key claimed until then: for a publish
    /// whose confirmation outlived its request's wait (`storage.ack_timeout`), so that a
    /// retry with the key waits for that answer (or gets `IDEMPOTENCY_KEY_IN_FLIGHT`)
    /// instead of publishing the message again. `None` gives the key up.
    pub fn keep_later(
        self,
        later: impl Future<Output = Option<(Response, Option<Unconfirmed>)>> + 'static,
    ) {
        spawn_local(async move {
            if let Some((response, unconfirmed)) = later.await {
                self.keep_as(&response, unconfirmed).await;
            }
        })
        .detach();
    }

    /// The key is bound to a message whose replication was not confirmed: checks it again.
    /// Confirmed: its answer, kept as confirmed. Gone from the stream: this request
    /// publishes. Otherwise the error, and the unconfirmed answer stands (dropping the
    /// claim puts it back).
    async fn recheck(mut self, replay: Arc<Replay>) -> Result<Begin, ApiError> {
        let Some(unconfirmed) = &replay.unconfirmed else {
            return self.adopt(replay.confirmed()).await;
        };
        let window = self.shard.config.limits.idempotency_window;
        let store = &self.shard.store;
        match store
            .replicated(&unconfirmed.topic, unconfirmed.id, window)
            .await
        {
            Ok(true) => {
                let confirmed = Arc::new(replay.confirmed());
                let persist = store.is_persistent();
                self.keep_replay(Arc::clone(&confirmed), persist).await;
                Ok(Begin::Replay(answer_again(&confirmed)))
            }
            Ok(false) => Ok(Begin::Publish(Some(self))),
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// An answer found in Valkey becomes the key's answer in memory too.
    async fn adopt(mut self, replay: Replay) -> Result<Begin, ApiError> {
        let replay = Arc::new(replay);
        self.keep_replay(Arc::clone(&replay), false).await;
        if replay.body_hash == self.body_hash {
            Ok(Begin::Replay(answer_again(&replay)))
        } else {
            Err(reused())
        }
    }

    /// Keeps the answer at the key's owner (and with `persist` in Valkey, through the
    /// owner's link); returns once it is kept, with persisted acks once Valkey confirmed.
    async fn keep_replay(&mut self, replay: Arc<Replay>, persist: bool) {
        let (scope, claim) = (Arc::clone(&self.scope), self.claim);
        self.shard
            .on_key(&self.scope, move |owner| {
                keep_here(owner, &scope, claim, replay, persist)
            })
            .await;
        // Disarmed only now: a release sent after the answer is ignored by the owner.
        self.armed = false;
    }
}

/// The owner-side handler of keeping an answer: the owner's keys take it (and hand it to
/// the duplicates waiting), and it is written to Valkey with the window as TTL. A refused
/// write leaves the answer in memory only; the publish stands.
fn keep_here(
    owner: &Shard,
    scope: &Scope,
    claim: u64,
    replay: Arc<Replay>,
    persist: bool,
) -> Answer<(), impl Future<Output = ()>> {
    let kept = owner.keys.keep(scope, claim, Arc::clone(&replay), now_ms());
    let window = owner.config.limits.idempotency_window;
    let ticket = (kept && persist)
        .then(|| {
            owner
                .store
                .keep_answer(scope.parts(), &replay.encode(), window)
        })
        .flatten();
    // Bounded: the publish it answers is confirmed already, and the answer is kept in
    // memory whatever Valkey does with it.
    // Tickets come only with a limit (persisted or replicated acks).
    let limit = owner.store.ack_timeout().unwrap_or_default();
    match ticket {
        // An unconfirmed answer is written while replication lags: waiting for its own
        // confirmation would only delay the 503 it goes with.
        Some(ticket) if replay.unconfirmed.is_none() => Answer::Later(async move {
            let _ = crate::store::confirmed_within(vec![ticket], limit).await;
        }),
        _ => Answer::Now(()),
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (true, Some(marker)) = (self.armed, &self.marker) {
            self.shard.store.release_answer(self.scope.parts(), marker);
        }
        if self.armed {
            let (scope, claim) = (Arc::clone(&self.scope), self.claim);
            let owner = scope.owner(self.shard.count());
            self.shard
                .post(owner, move |owner| owner.keys.release(&scope, claim));
        }
    }
}

/// The kept answer, given again.
fn answer_again(replay: &Replay) -> Response {
    Response::json(replay.status, replay.body.clone()).with_header("Idempotent-Replayed", "true")
}

fn reused() -> ApiError {
    ApiError::invalid(
        "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was used for a request with another body; \
         a new request needs a new key",
    )
}

fn in_flight(why: &str) -> ApiError {
    ApiError::new(
        503,
        "IDEMPOTENCY_KEY_IN_FLIGHT",
        format!("{why}; retry later"),
    )
    .with_header("Retry-After", "1")
}
