//! Adversarial integration tests (issue #5): a real relay process attacked over real
//! loopback sockets with garbage bytes, truncated and smuggled requests, oversized heads,
//! connection storms, forged tokens, cross-topic access, never-reading subscribers,
//! floods and abrupt disconnects; one module per attack family. After each attack the
//! relay must still serve correct traffic, its connection gauge must come back to the
//! baseline and its resident memory must stay near where it started.
//!
//! Every loop is bounded and every read has a deadline, so a relay that hangs fails a test
//! instead of stalling the suite.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod floods;
mod garbage;
mod oversized;
mod slow_readers;
mod smuggling;
mod storms;
mod tokens;
mod topics_claim;
mod truncated;
