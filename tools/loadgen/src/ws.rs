//! WebSocket clients: TCP connect (from a chosen loopback source address when asked), the
//! upgrade with tungstenite, subscribing, and reading deliveries from non-blocking sockets
//! so one thread can serve thousands of them.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::http::{Target, CONNECT_TIMEOUT};

pub type Ws = WebSocket<TcpStream>;

/// How long the handshake and the subscribe confirmation may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking TCP connection to `addr`, from `source` when given. The source port is left
/// to connect() (IP_BIND_ADDRESS_NO_PORT), so each source address has its own full range
/// of ephemeral ports toward the relay.
pub fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
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

/// Connects and upgrades `GET /ws?token=…`; the socket stays blocking (with a timeout)
/// until [`into_nonblocking`].
pub fn open(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    read_buffer: usize,
) -> Result<Ws, String> {
    let stream = tcp_connect(target.addr, source).map_err(|e| match source {
        Some(ip) => format!("cannot connect to {} from {ip}: {e}", target.addr),
        None => format!("cannot connect to {}: {e}", target.addr),
    })?;
    stream
        .set_read_timeout(Some(SETUP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SETUP_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let url = format!("ws://{}/ws?token={token}", target.host);
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (ws, _) = tungstenite::client::client_with_config(url, stream, Some(config))
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}

/// Subscribes to `topic` and waits for the relay's `subscribed` confirmation, so the run's
/// publishing starts only once every subscriber is in place.
pub fn subscribe(ws: &mut Ws, topic: &str) -> Result<(), String> {
    let command = format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#);
    ws.send(Message::text(command))
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) if text.starts_with(r#"{"type":"subscribed""#) => return Ok(()),
            Ok(Message::Text(text)) if text.starts_with(r#"{"type":"error""#) => {
                return Err(format!("subscribe refused: {}", text.as_str()))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for the subscribe confirmation: {e}")),
        }
    }
}

pub fn into_nonblocking(ws: &Ws) -> Result<(), String> {
    let stream = ws.get_ref();
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_nonblocking(true))
        .map_err(|e| format!("socket options: {e}"))
}

pub enum Drained {
    /// Everything available was read; the connection is open.
    Open,
    /// The connection ended; the reason.
    Closed(String),
}

/// Reads every frame available on a non-blocking socket, passing text frames to
/// `on_text`. Pings are answered by tungstenite as part of reading.
pub fn drain(ws: &mut Ws, mut on_text: impl FnMut(&[u8])) -> Drained {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => on_text(text.as_bytes()),
            Ok(Message::Close(frame)) => {
                return Drained::Closed(match frame {
                    Some(f) => format!("closed by the relay: {} {}", f.code, f.reason.as_str()),
                    None => "closed by the relay".into(),
                })
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Drained::Open
            }
            Err(e) => return Drained::Closed(e.to_string()),
        }
    }
}
