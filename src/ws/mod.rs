//! WebSocket (RFC 6455) server-side codec: the opening handshake ([`handshake`]) and frames
//! ([`frame`]), plus the close codes the relay sends.
//!
//! Owns only the wire format. It does no I/O: the session loop in `api` owns sockets,
//! buffers and timers, and `api` decides what the messages mean. It must not touch either.

pub mod frame;
pub mod handshake;

/// Normal closure: the client asked to close, or the session ended cleanly.
pub const NORMAL: u16 = 1000;
/// The server is shutting down; clients should reconnect elsewhere or later.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the framing rules of RFC 6455.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message (or close reason) that is not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The client did something the relay does not allow (e.g. an unauthorised subscribe).
pub const POLICY_VIOLATION: u16 = 1008;
/// A frame or reassembled message larger than the configured maximum.
pub const TOO_BIG: u16 = 1009;
/// The server hit an unexpected condition.
pub const INTERNAL: u16 = 1011;
/// Application code: the connection's outbound queue was full, so a slow consumer is cut
/// off instead of being allowed to grow the server's memory.
pub const SLOW_CONSUMER: u16 = 4000;
/// Application code: the token the connection was authorised with has expired.
pub const TOKEN_EXPIRED: u16 = 4001;
/// Application code: the session's access was withdrawn (its token logged out, its account
/// deactivated or deleted, or its `read` permission taken away); a new token is needed.
pub const ACCESS_REVOKED: u16 = 4003;
/// Application code: the client exceeded its message-rate limit.
pub const RATE_LIMITED: u16 = 4008;
