//! A WebSocket client (tungstenite over a blocking `TcpStream`): the upgrade with a token,
//! the relay's JSON frames, and masked frames built by hand.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::*;

pub type WsSocket = tungstenite::WebSocket<TcpStream>;

pub struct Ws {
    pub sock: WsSocket,
    /// The handshake response (for the negotiated subprotocol).
    pub handshake: tungstenite::handshake::client::Response,
}

/// What a WebSocket upgrade produced: a session, or the HTTP status of a refusal.
pub enum WsConnect {
    Open(Box<Ws>),
    Refused(u16),
}

impl Ws {
    /// Connects to `/ws?token=…`.
    pub fn connect(addr: SocketAddr, token: &str) -> Ws {
        let req = format!("ws://{addr}/ws?token={token}")
            .into_client_request()
            .unwrap();
        match Ws::connect_request(addr, req) {
            WsConnect::Open(ws) => *ws,
            WsConnect::Refused(status) => panic!("WebSocket upgrade refused with {status}"),
        }
    }

    pub fn connect_request(
        addr: SocketAddr,
        req: tungstenite::handshake::client::Request,
    ) -> WsConnect {
        let stream = TcpStream::connect(addr).expect("connect to relay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        match tungstenite::client::client(req, stream) {
            Ok((sock, handshake)) => WsConnect::Open(Box::new(Ws { sock, handshake })),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                WsConnect::Refused(resp.status().as_u16())
            }
            Err(e) => panic!("WebSocket handshake failed: {e}"),
        }
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.sock.get_mut().set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.sock
            .send(Message::text(text))
            .expect("send WebSocket text frame");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Writes raw bytes to the socket, bypassing the WebSocket codec.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.get_mut().write_all(bytes).expect("raw write");
    }

    /// The next frame that is not a ping or pong (control frames answered by tungstenite).
    pub fn next_message(&mut self) -> Message {
        loop {
            match self.sock.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(msg) => return msg,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("timed out waiting for a WebSocket frame")
                }
                Err(e) => panic!("WebSocket read failed: {e}"),
            }
        }
    }

    /// The next text frame's raw text.
    pub fn recv_text(&mut self) -> String {
        match self.next_message() {
            Message::Text(text) => text.as_str().to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub fn recv_json(&mut self) -> Value {
        let text = self.recv_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
    }

    /// The next frame, which must have `"type": kind`.
    #[track_caller]
    pub fn expect_type(&mut self, kind: &str) -> Value {
        let v = self.recv_json();
        assert_eq!(v["type"], kind, "expected a {kind} frame, got {v}");
        v
    }

    /// The next frame must be a `message` delivery.
    #[track_caller]
    pub fn recv_delivery(&mut self) -> Value {
        self.expect_type("message")
    }

    /// The next frame must be an `error` frame with `code`.
    #[track_caller]
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect_type("error");
        assert_eq!(v["code"], code, "error frame: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error frame without message: {v}"
        );
        v
    }

    /// Sends a subscribe command and returns the `subscribed` reply.
    #[track_caller]
    pub fn subscribe(&mut self, topics: &[&str], extra: Value) -> Value {
        let mut cmd = serde_json::json!({"type": "subscribe", "topics": topics});
        if let Value::Object(map) = extra {
            for (k, v) in map {
                cmd[k] = v;
            }
        }
        self.send_json(&cmd);
        let reply = self.expect_type("subscribed");
        assert_eq!(reply["topics"], serde_json::json!(topics), "{reply}");
        reply
    }

    /// Sends a `ping` command and collects every frame before the `pong`. Frames the
    /// session queued while handling earlier commands (replays, errors) come first.
    pub fn collect_until_pong(&mut self) -> Vec<Value> {
        self.send_json(&serde_json::json!({"type": "ping"}));
        let mut frames = Vec::new();
        loop {
            let v = self.recv_json();
            if v["type"] == "pong" {
                return frames;
            }
            frames.push(v);
        }
    }

    /// The next frame must be a close frame with `code`; returns its reason.
    #[track_caller]
    pub fn expect_close(&mut self, code: u16) -> String {
        match self.next_message() {
            Message::Close(Some(frame)) => {
                assert_eq!(
                    u16::from(frame.code),
                    code,
                    "close frame with reason {:?}",
                    frame.reason
                );
                frame.reason.as_str().to_string()
            }
            other => panic!("expected a close frame with code {code}, got {other:?}"),
        }
    }

    pub fn close(mut self) {
        let _ = self.sock.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.sock.flush();
    }
}

/// A masked client frame with FIN set (`opcode` 0x1 text, 0x2 binary, ...).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
