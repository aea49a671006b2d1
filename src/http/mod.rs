//! HTTP/1.1 server codec: request decoding ([`request`], with the target and `Host` rules in
//! [`target`]), response encoding ([`response`]) and Server-Sent Events ([`event_stream`]).
//!
//! Owns only the wire format. It does no I/O and keeps no sockets: the connection loop in
//! `api::conn` owns the socket and its buffers, feeds bytes in and writes the encoded bytes out.
//! It must not touch routing, authentication or topic state (those live in `api`).

pub mod event_stream;
pub mod fields;
pub mod request;
pub mod response;
pub mod target;

pub use fields::Fields;
pub use request::{HttpError, Limits, Method, Request, RequestDecoder};
pub use response::{encode, error_body, http_date, reason_phrase, Response};
