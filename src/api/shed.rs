//! Load shedding: what a shard too late to take on more work refuses, and how.
//!
//! Under CPU saturation the relay refuses new publishes (503 `OVERLOADED`, `Retry-After:
//! 1`) rather than queue them: queued, every accepted message would be answered later and
//! later, and the excess would wait in sockets and run queues without bound. Lateness is
//! measured per shard (`rt::lateness`); each shard decides from its own measure alone.
//!
//! Only publishes are shed, and before their expensive part (body parse, token check,
//! cross-shard hop): they are what brings new work in, and a producer can retry them.
//! Health checks, readiness and metrics stay answered (they are cheap, and what operators
//! watch an overloaded relay with); reads, acks and frames of open WebSocket sessions stay
//! served, since consumers draining is what relieves the relay, and refusing them would
//! lose deliveries already promised. A publish that crossed to its topic's owner is
//! checked again there, against the same limit and the owner's own lateness, before it
//! is published.
//!
//! Owns the decision and the refusal; the measure is `rt::lateness`'s.

use std::time::Instant;

use super::error::ApiError;
use super::shard::Shard;
use crate::metrics;

/// The refusal of a shard that is too late.
pub fn overloaded() -> ApiError {
    ApiError::new(
        503,
        "OVERLOADED",
        "the relay is overloaded and refuses new publishes until it catches up; retry later",
    )
    .with_header("Retry-After", "1")
}

/// Whether a publish read at `read_at` may start here now: refused when it has waited too
/// long since it was read (behind its connection's earlier requests and other work), or
/// the shard is late.
pub fn admit_request(shard: &Shard, read_at: Instant) -> Result<(), ApiError> {
    admit(shard, read_at, &shard.metrics.shed_requests)
}

/// Whether a publish read at `read_at` (on this shard or another) may run here, on its
/// topics' owner, now: refused when it has waited too long all told (the crossing
/// included), or the owner is late.
pub fn admit_at_owner(owner: &Shard, read_at: Instant) -> Result<(), ApiError> {
    admit(owner, read_at, &owner.metrics.shed_at_owner)
}

fn admit(shard: &Shard, since: Instant, refused: &std::cell::Cell<u64>) -> Result<(), ApiError> {
    if shard.lateness.admits(since, Instant::now()) {
        return Ok(());
    }
    metrics::add(refused, 1);
    Err(overloaded())
}
