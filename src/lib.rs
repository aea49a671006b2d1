//! Pulsar Relay: a thread-per-core message relay.
//!
//! The modules follow the data path of a message:
//! `shard` (executors, listeners, cross-shard mesh) → `http` / `ws` (wire codecs) →
//! `api` (routes, sessions, errors) → `topic` (ownership, IDs, hot ring) → `store`
//! (the Valkey persistent tier). `auth`, `config` and `metrics` serve all of them, and
//! `log` writes the log lines.

// `println!` and `eprintln!` panic when a write fails; lines go through `log` instead.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod account;
pub mod api;
pub mod auth;
pub mod config;
pub mod http;
pub mod log;
pub mod metrics;
pub mod random;
pub mod rt;
pub mod store;
pub mod text;
pub mod topic;
pub mod ws;
