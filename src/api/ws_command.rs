//! The client frames of the WebSocket protocol, parsed: what a session is asked to do.
//!
//! Kept apart from the session (`ws_session`), which owns the connection's state and acts
//! on a [`Command`]; this module only reads JSON text and says what it means or why it is
//! refused. Every refusal is an `error` frame's code: `INVALID_JSON`, `JSON_TOO_DEEP`,
//! `MISSING_TYPE`, `UNKNOWN_MESSAGE_TYPE` (the original relay's code) or `INVALID_FRAME`.

use serde::Deserialize;

use super::error::ApiError;
use super::limits::too_deep;

#[derive(Debug)]
pub enum Command {
    Subscribe(SubscribeCmd),
    Unsubscribe(UnsubscribeCmd),
    Ack(AckCmd),
    Auth(AuthCmd),
    Ping,
}

#[derive(Debug, Deserialize)]
pub struct SubscribeCmd {
    pub topics: Vec<String>,
    pub client_id: Option<String>,
    pub since: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UnsubscribeCmd {
    pub topics: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct AuthCmd {
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct AckCmd {
    pub message_id: String,
    pub topic: Option<String>,
}

#[derive(Deserialize)]
struct Tagged {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Reads one text frame's payload, which the frame decoder has checked to be UTF-8 (the
/// JSON parser does not check what it skips); unknown fields are ignored, as the original
/// relay does, but not when they nest deeper than `max_depth` (`limits.max_json_depth`).
pub fn parse(text: &[u8], max_depth: usize) -> Result<Command, ApiError> {
    let kind = match serde_json::from_slice::<Tagged>(text) {
        Err(_) => {
            return Err(ApiError::invalid(
                "INVALID_JSON",
                "frames must be JSON objects with a `type`",
            ))
        }
        Ok(Tagged { kind: None }) => {
            return Err(ApiError::invalid("MISSING_TYPE", "the frame has no `type`"))
        }
        Ok(_) if too_deep(text, max_depth) => {
            return Err(ApiError::invalid(
                "JSON_TOO_DEEP",
                format!("the frame nests arrays or objects deeper than {max_depth}"),
            ))
        }
        Ok(Tagged { kind: Some(kind) }) => kind,
    };
    match kind.as_str() {
        "subscribe" => fields(text).map(Command::Subscribe),
        "unsubscribe" => fields(text).map(Command::Unsubscribe),
        "ack" => fields(text).map(Command::Ack),
        "auth" => fields(text).map(Command::Auth),
        "ping" => Ok(Command::Ping),
        other => Err(ApiError::invalid(
            "UNKNOWN_MESSAGE_TYPE",
            format!(
                "unknown frame type {other:?}; expected subscribe, unsubscribe, ack, auth or ping"
            ),
        )),
    }
}

fn fields<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(text).map_err(|e| ApiError::invalid("INVALID_FRAME", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse(text.as_bytes(), 3).unwrap_err().code
    }

    #[test]
    fn frames_become_commands_or_coded_refusals() {
        let cmd = parse(
            br#"{"type":"subscribe","topics":["a"],"client_id":"c","x":1}"#,
            3,
        );
        assert!(
            matches!(cmd, Ok(Command::Subscribe(SubscribeCmd { ref topics, .. })) if topics == &["a"])
        );
        assert!(matches!(parse(br#"{"type":"ping"}"#, 3), Ok(Command::Ping)));
        assert!(matches!(
            parse(br#"{"type":"ping","x":[[1]]}"#, 3),
            Ok(Command::Ping)
        ));
        assert_eq!(code(r#"{"type":"ping","x":[[[1]]]}"#), "JSON_TOO_DEEP");
        assert_eq!(code("[]"), "INVALID_JSON");
        assert_eq!(code("{"), "INVALID_JSON");
        assert_eq!(code(r#"{"topics":["a"]}"#), "MISSING_TYPE");
        assert_eq!(code(r#"{"type":"dance"}"#), "UNKNOWN_MESSAGE_TYPE");
        assert_eq!(
            code(r#"{"type":"subscribe","topics":"a"}"#),
            "INVALID_FRAME"
        );
        assert_eq!(code(r#"{"type":"ack"}"#), "INVALID_FRAME");
    }
}
