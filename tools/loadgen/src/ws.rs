//! WebSocket clients cheap enough to run thousands per thread: TCP connect (from a chosen
//! loopback source address when asked), the upgrade, subscribing, and reading deliveries
//! from non-blocking sockets.
//!
//! tungstenite supplies the handshake key and the frame format (header parsing and
//! encoding), like it does in the relay. The connection keeps its own input buffer and
//! hands each text payload to the caller in place: a delivery costs no allocation, no copy
//! and no UTF-8 check, which tungstenite's `WebSocket::read` would each add (with it, the
//! receiving side's user-space CPU was 3.5 times higher).

use std::io::{self, Cursor, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::buf::{Fill, ReadBuf};
use crate::clock::now_ns;
use crate::http::{Target, CONNECT_TIMEOUT};
use crate::tls::Stream;

/// How long the handshake and the subscribe confirmation may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking TCP connection to `addr`, from `source` when given. The source port is left
/// to connect() (IP_BIND_ADDRESS_NO_PORT), so each source address has its own full range
/// of ephemeral ports toward the relay.
fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a pointer to a live c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
    socket.set_nodelay(true)?;
    Ok(socket.into())
}

pub struct WsConn {
    stream: Stream,
    input: ReadBuf,
    /// Client frames not yet written (a subscribe, pongs).
    out: Vec<u8>,
}

enum Frame<'a> {
    Data(&'a [u8]),
    Ping(&'a [u8]),
    Close(String),
    Other,
}

pub enum Drained {
    /// Everything available was read; the connection is open.
    Open,
    /// The connection ended; the reason.
    Closed(String),
}

/// Connects and upgrades `GET /ws?token=…`. The socket stays blocking (with a timeout)
/// until [`WsConn::set_nonblocking`].
pub fn open(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    read_buffer: usize,
) -> Result<WsConn, String> {
    let tcp = tcp_connect(target.addr, source).map_err(|e| match source {
        Some(ip) => format!("cannot connect to {} from {ip}: {e}", target.addr),
        None => format!("cannot connect to {}: {e}", target.addr),
    })?;
    tcp.set_read_timeout(Some(SETUP_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(SETUP_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut stream = target
        .secure(tcp)
        .map_err(|e| format!("TLS handshake with {}: {e}", target.addr))?;
    let key = generate_key();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host
    );
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let mut conn = WsConn {
        stream,
        input: ReadBuf::new(read_buffer),
        out: Vec::new(),
    };
    let deadline = now_ns() + SETUP_TIMEOUT.as_nanos() as u64;
    loop {
        let closed = matches!(
            conn.input
                .fill(&mut conn.stream)
                .map_err(|e| format!("WebSocket handshake: {e}"))?,
            Fill::Closed
        );
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(conn.input.data()) {
            Ok(httparse::Status::Complete(head)) => {
                if response.code != Some(101) {
                    let rest = String::from_utf8_lossy(&conn.input.data()[head..]);
                    return Err(format!(
                        "WebSocket handshake refused: HTTP {}: {rest}",
                        response.code.unwrap_or(0)
                    ));
                }
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value);
                if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
                    return Err("WebSocket handshake: wrong Sec-WebSocket-Accept".into());
                }
                conn.input.take(head);
                return Ok(conn);
            }
            Ok(httparse::Status::Partial) if closed => {
                return Err("WebSocket handshake: the relay closed the connection".into())
            }
            Ok(httparse::Status::Partial) if now_ns() > deadline => {
                return Err("WebSocket handshake: no answer in time".into())
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("WebSocket handshake: malformed response: {e}")),
        }
    }
}

impl WsConn {
    pub fn fd(&self) -> RawFd {
        self.stream.fd()
    }

    /// Subscribes to `topic` and waits for the relay's `subscribed` confirmation, so the
    /// run's publishing starts only once every subscriber is in place.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let command = format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#);
        self.queue(OpCode::Data(Data::Text), command.as_bytes());
        self.flush().map_err(|e| format!("subscribe: {e}"))?;
        let deadline = now_ns() + SETUP_TIMEOUT.as_nanos() as u64;
        loop {
            let mut outcome = None;
            let drained = self.drain(|text| {
                if outcome.is_none() {
                    if text.starts_with(br#"{"type":"subscribed""#) {
                        outcome = Some(Ok(()));
                    } else if text.starts_with(br#"{"type":"error""#) {
                        outcome = Some(Err(format!(
                            "subscribe refused: {}",
                            String::from_utf8_lossy(text)
                        )));
                    }
                }
            });
            if let Some(result) = outcome {
                return result;
            }
            if let Drained::Closed(why) = drained {
                return Err(format!("waiting for the subscribe confirmation: {why}"));
            }
            if now_ns() > deadline {
                return Err("no subscribe confirmation in time".into());
            }
        }
    }

    /// Sends one text frame (a command), blocking until it is written.
    pub fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.queue(OpCode::Data(Data::Text), text);
        self.flush()?;
        if self.out.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// How long a blocking [`WsConn::drain`] waits for data.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(Some(timeout))
    }

    pub fn set_nonblocking(&self) -> Result<(), String> {
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(None)
            .and_then(|()| tcp.set_nonblocking(true))
            .map_err(|e| format!("socket options: {e}"))
    }

    /// Reads what the socket has and passes each data frame's payload to `on_data`;
    /// answers pings.
    pub fn drain(&mut self, mut on_data: impl FnMut(&[u8])) -> Drained {
        let fill = self.input.fill(&mut self.stream);
        loop {
            match self.next_frame() {
                Ok(Some(Frame::Data(payload))) => on_data(payload),
                Ok(Some(Frame::Ping(payload))) => {
                    let payload = payload.to_vec();
                    self.queue(OpCode::Control(Control::Pong), &payload);
                }
                Ok(Some(Frame::Close(why))) => return Drained::Closed(why),
                Ok(Some(Frame::Other)) => {}
                Ok(None) => break,
                Err(e) => return Drained::Closed(e),
            }
        }
        if let Err(e) = self.flush() {
            return Drained::Closed(format!("write: {e}"));
        }
        match fill {
            Ok(Fill::Open) => Drained::Open,
            Ok(Fill::Closed) => Drained::Closed("the relay closed the connection".into()),
            Err(e) => Drained::Closed(format!("read: {e}")),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        let data = self.input.data();
        let mut cursor = Cursor::new(data);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("bad WebSocket frame: {e}")),
        };
        let head = cursor.position() as usize;
        let len = usize::try_from(len).map_err(|_| "oversized WebSocket frame")?;
        if data.len() - head < len {
            return Ok(None);
        }
        if header.mask.is_some() {
            return Err("the relay sent a masked frame".into());
        }
        // The relay sends every message as one frame; reassembly is not needed.
        if !header.is_final || header.opcode == OpCode::Data(Data::Continue) {
            return Err("the relay sent a fragmented message".into());
        }
        let payload = &self.input.take(head + len)[head..];
        Ok(Some(match header.opcode {
            OpCode::Data(_) => Frame::Data(payload),
            OpCode::Control(Control::Ping) => Frame::Ping(payload),
            OpCode::Control(Control::Close) => Frame::Close(match payload {
                [hi, lo, reason @ ..] => format!(
                    "closed by the relay: {} {}",
                    u16::from_be_bytes([*hi, *lo]),
                    String::from_utf8_lossy(reason)
                ),
                _ => "closed by the relay".into(),
            }),
            OpCode::Control(_) => Frame::Other,
        }))
    }

    /// Appends a masked client frame to the output.
    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = mask_key();
        let header = FrameHeader {
            is_final: true,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        header
            .format(payload.len() as u64, &mut self.out)
            .expect("writing to a Vec cannot fail");
        self.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..written);
        self.stream.push()
    }
}

/// A masking key for a client frame. The protocol requires masking; unpredictable keys
/// only matter against intermediaries, and there are none between us and the relay.
fn mask_key() -> [u8; 4] {
    let t = now_ns();
    ((t ^ (t >> 32)) as u32).to_ne_bytes()
}
