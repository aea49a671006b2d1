//! Listening sockets: one per shard on the same address, with `SO_REUSEPORT`, so the
//! kernel spreads incoming connections over the shards and no shard ever hands a
//! connection to another.
//!
//! All sockets are bound by the main thread before any executor starts: binding port 0
//! yields the real port once, and a bind error (address in use, permission) is reported
//! before anything else runs.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};

use socket2::{Domain, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr` (port 0 picks one port for all of them).
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<(Vec<StdListener>, SocketAddr)> {
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&bound.into())?;
        socket.listen(BACKLOG)?;
        let listener: StdListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok((listeners, bound))
}

/// Whether an accept error means the process (or system) ran out of file descriptors,
/// in which case the accept loop backs off instead of spinning.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_every_listener_to_one_port() {
        let (listeners, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }
}
