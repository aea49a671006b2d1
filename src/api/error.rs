//! The API's one error type, and the one place it becomes an HTTP response or a WebSocket
//! `error` frame.
//!
//! Every rejection carries a stable machine-readable `code` (clients switch on it) and a
//! human `detail`. Codecs and auth report their own error types; they are converted here.

use crate::auth::AuthError;
use crate::http::{HttpError, Response};
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// 422: the request is well-formed HTTP but its content is not acceptable.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(422, code, detail)
    }

    /// The token's `topics` claim does not cover `topic`.
    pub fn topic_forbidden(topic: &str) -> Self {
        Self::new(
            403,
            "TOPIC_FORBIDDEN",
            format!("this token may not use topic {topic:?}"),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(404, "NOT_FOUND", format!("no route for {path}"))
    }

    pub fn method_not_allowed(allow: impl Into<String>) -> Self {
        let allow = allow.into();
        let mut e = Self::new(
            405,
            "METHOD_NOT_ALLOWED",
            format!("method not allowed; this path accepts {allow}"),
        );
        e.headers.push(("Allow", allow));
        e
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn into_response(self) -> Response {
        let mut resp = Response::json(
            self.status,
            crate::http::response::error_body(self.code, &self.detail),
        );
        for (name, value) in self.headers {
            resp = resp.with_header(name, value);
        }
        resp
    }

    /// The WebSocket form: `{"type":"error","code":…,"message":…}`.
    pub fn to_ws_json(&self) -> Vec<u8> {
        ws_error_json(self.code, &self.detail)
    }
}

pub fn ws_error_json(code: &str, message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
    }
    serde_json::to_vec(&ErrorFrame {
        kind: "error",
        code,
        message,
    })
    .unwrap_or_default()
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        ApiError::new(e.status(), e.code(), e.detail())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = e.status();
        let err = ApiError::new(status, e.code(), e.detail());
        if status == 401 {
            err.with_header("WWW-Authenticate", "Bearer")
        } else {
            err
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::BacklogFull => "BACKLOG_FULL",
            StoreError::Recovering => "STORE_RECOVERING",
            StoreError::Unavailable(_) => "STORE_UNAVAILABLE",
            StoreError::Rejected(_) => "STORE_REJECTED",
        };
        ApiError::new(503, code, e.to_string()).with_header("Retry-After", "1")
    }
}
