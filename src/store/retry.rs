//! What becomes of a command whose connection to Valkey failed before its reply came: the
//! one rule the standalone [`super::link::Link`] and each Valkey Cluster primary's
//! connection (`cluster::router`) follow, so that reconnects look the same in both modes.
//!
//! - A write is kept and sent again, in order, until Valkey answers it. The relay's writes
//!   are idempotent when re-sent (explicit stream IDs, `SET`s of whole values), and a
//!   re-sent `XADD` refused as "equal or smaller" than the stream's top was applied the
//!   first time (its reply was lost with the connection): that counts as done.
//! - A read is sent once more, on a fresh connection, when its connection turned out to be
//!   closed (an I/O error: Valkey restarted, or dropped an idle connection); after a
//!   timeout (Valkey slow or stalled) it fails, since waiting again would double the
//!   client's wait. A read waiting for a connection fails when the attempt to open it fails.
//!
//! - A write sent at most once ([`Kind::Once`]) fails instead: Valkey may or may not have
//!   applied it, and applying it twice would be worse than an error the caller can retry.
//!
//! This module decides; it does not touch queues or sockets (the callers' own).

use redis::Value;

use super::link::LinkError;
use super::resp;

/// A queued command as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Retried until Valkey answers; `resent` once it went out on a connection that failed.
    Write { resent: bool },
    /// Sent once more on a fresh connection (`retried`) when its own turned out closed.
    Read { retried: bool },
    /// A write that must not be applied twice and cannot tell it was (cluster mode's
    /// publish, whose ID Valkey assigns): it fails when its connection is lost after it
    /// was sent, instead of being sent again.
    Once,
}

impl Kind {
    pub const WRITE: Kind = Kind::Write { resent: false };
    pub const READ: Kind = Kind::Read { retried: false };

    pub fn is_write(self) -> bool {
        matches!(self, Kind::Write { .. } | Kind::Once)
    }

    /// The command's connection failed with `err` before its reply came: the kind to send
    /// it again as, or `None` when it fails with `err`.
    pub fn after_failure(self, err: &LinkError) -> Option<Kind> {
        match self {
            Kind::Write { .. } => Some(Kind::Write { resent: true }),
            Kind::Read { retried: false } if matches!(err, LinkError::Io(_)) => {
                Some(Kind::Read { retried: true })
            }
            Kind::Read { .. } | Kind::Once => None,
        }
    }

    /// The reply as the caller should see it: a re-sent write that Valkey had already
    /// applied is done, not an error.
    pub fn answer(self, value: Value) -> Value {
        match self {
            Kind::Write { resent: true } if already_applied(&value) => Value::Okay,
            _ => value,
        }
    }
}

/// What reads waiting for a connection fail with when the attempt to open it failed.
pub(super) fn connect_failure(err: &LinkError) -> LinkError {
    match err {
        LinkError::Timeout => LinkError::Timeout,
        _ => LinkError::Down,
    }
}

/// Valkey refusing a re-sent XADD because its explicit ID is not above the stream's top:
/// the first sending was applied (its reply was lost with the connection).
fn already_applied(value: &Value) -> bool {
    resp::server_error(value).is_some_and(|e| e.contains("equal or smaller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> Value {
        redis::Parser::new()
            .parse_value(format!("-{text}\r\n").as_bytes())
            .expect("an error reply")
    }

    #[test]
    fn writes_are_always_resent_and_reads_once_after_a_closed_connection() {
        let closed = LinkError::Io("connection closed by Valkey".into());
        let resent = Kind::Write { resent: true };
        assert_eq!(Kind::WRITE.after_failure(&closed), Some(resent));
        assert_eq!(Kind::WRITE.after_failure(&LinkError::Timeout), Some(resent));
        assert_eq!(resent.after_failure(&closed), Some(resent));
        let retried = Kind::READ.after_failure(&closed);
        assert_eq!(retried, Some(Kind::Read { retried: true }));
        assert_eq!(retried.unwrap().after_failure(&closed), None, "once only");
        assert_eq!(Kind::READ.after_failure(&LinkError::Timeout), None);
        assert_eq!(Kind::Once.after_failure(&closed), None, "never sent twice");
        assert_eq!(Kind::Once.after_failure(&LinkError::Timeout), None);
        assert_eq!(connect_failure(&closed), LinkError::Down);
        assert_eq!(connect_failure(&LinkError::Timeout), LinkError::Timeout);
    }

    #[test]
    fn a_resent_xadd_refused_as_not_above_the_top_is_done() {
        let refused = error(
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        );
        assert_eq!(
            Kind::Write { resent: true }.answer(refused.clone()),
            Value::Okay
        );
        assert_eq!(
            Kind::WRITE.answer(refused.clone()),
            refused,
            "sent once: an error"
        );
        let other = error("ERR wrong number of arguments");
        assert_eq!(Kind::Write { resent: true }.answer(other.clone()), other);
        assert_eq!(Kind::READ.answer(refused.clone()), refused);
    }
}
