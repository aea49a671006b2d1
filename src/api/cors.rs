//! CORS for browser producers and consumers: preflight answers and the
//! `Access-Control-Allow-Origin` header, driven by `server.allowed_origins`.
//!
//! Tokens travel in the `Authorization` header, not in cookies, so allowing an origin
//! grants it nothing a token does not: an empty list therefore allows every origin (`*`).
//! WebSocket upgrades are checked against the same list ([`check_origin`]).

use crate::http::{Method, Request, Response};

use super::error::ApiError;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
const MAX_AGE_SECS: &str = "600";
/// Response headers browser code may read besides the CORS-safelisted ones.
pub const EXPOSE_HEADERS: &str = "Idempotent-Replayed, Retry-After";

/// The methods a path accepts, preflights included, for `Allow` and
/// `Access-Control-Allow-Methods`: from the route table.
fn methods_of(path: &str) -> Option<String> {
    super::routes::allow(path).map(|methods| format!("{methods}, OPTIONS"))
}

/// `Err` (403 `ORIGIN_NOT_ALLOWED`) for a request from an origin not in `allowed`; one
/// without `Origin` (not from a browser) passes. Preflights and WebSocket upgrades both
/// check here.
pub fn check_origin(allowed: &[String], req: &Request) -> Result<(), ApiError> {
    match req.header("origin") {
        Some(origin) if allow_origin(allowed, req).is_none() => Err(ApiError::new(
            403,
            "ORIGIN_NOT_ALLOWED",
            format!("origin {origin:?} is not in server.allowed_origins"),
        )),
        _ => Ok(()),
    }
}

/// The `Access-Control-Allow-Origin` value for a request from an allowed origin.
pub fn allow_origin(allowed: &[String], req: &Request) -> Option<String> {
    let origin = req.header("origin")?;
    if allowed.is_empty() {
        Some("*".to_string())
    } else {
        allowed
            .iter()
            .any(|a| a == origin)
            .then(|| origin.to_string())
    }
}

/// The answer to an `OPTIONS` request, or `None` for any other method.
pub fn preflight(allowed: &[String], req: &Request) -> Option<Response> {
    if req.method != Method::Options {
        return None;
    }
    let Some(methods) = methods_of(req.path()) else {
        return Some(ApiError::not_found(req.path()).into_response());
    };
    if req.header("origin").is_none() {
        // A plain OPTIONS: say what the path accepts.
        return Some(Response::empty(204).with_header("Allow", methods));
    }
    if let Err(refused) = check_origin(allowed, req) {
        return Some(refused.into_response());
    }
    // The Access-Control-Allow-Origin header is added by the caller, as on every response.
    Some(
        Response::empty(204)
            .with_header("Access-Control-Allow-Methods", methods)
            .with_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
            .with_header("Access-Control-Max-Age", MAX_AGE_SECS),
    )
}
