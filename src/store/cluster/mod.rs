//! Valkey Cluster: hash slots and the slot map ([`slots`]), one primary's queue and
//! pipelined connection ([`node`]), and the router that sends each command to the primary
//! of its key's slot and follows redirections and failovers ([`router`]), and the
//! per-primary data-loss sentinels ([`sentinel`]).
//!
//! Used by the store when `valkey.mode` is `cluster`; it must not know what the commands
//! mean (the store's) and it reuses the standalone link's handshake rather than its own.
//! The sharded pub/sub listener (`store::listener`) asks the router which primary serves
//! a channel's slot, waits for the map to change, and dials primaries with its settings;
//! it never sees the map itself.

mod node;
mod router;
mod sentinel;
pub mod slots;

pub use router::Cluster;
