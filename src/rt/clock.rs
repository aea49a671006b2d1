//! The wall clock, in the unit everything in the relay counts time in.
//!
//! Deadlines of connections are coarse (see `conns`); timestamps of messages, tokens and
//! records are Unix milliseconds from here. Calendar forms of an instant are `text`'s.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock reads before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
