//! Listening sockets: one per shard on the same address, with `SO_REUSEPORT`, so the
//! kernel spreads incoming connections over the shards and no shard ever hands a
//! connection to another.
//!
//! All sockets are bound by the main thread before any executor starts: binding port 0
//! yields the real port once, and a bind error (address in use, permission) is reported
//! before anything else runs.
//!
//! `SO_REUSEPORT` would also let a second relay (any process of the same user that sets
//! it) bind the same address and silently take half of the connections, so the address is
//! first claimed without it: see [`ensure_free`].

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};

use socket2::{Domain, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr` (port 0 picks one port for all of them). Fails with
/// `AddrInUse` when another socket already listens there, whoever owns it.
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<(Vec<StdListener>, SocketAddr)> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
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

/// Fails with `AddrInUse` when a socket listens on `addr` (or on a wildcard address with its
/// port). The kernel lets a socket share a port only if every socket on it set
/// `SO_REUSEPORT` (and belongs to the same user), so a bind *without* the flag fails when
/// anyone listens there, including another relay whose own listeners would have let ours
/// join. `SO_REUSEADDR` is kept so that the previous run's connections in `TIME_WAIT` do not
/// block a restart: it never allows binding next to a listening socket.
///
/// The probe is closed before the shard listeners bind, since it would block them too; a
/// second relay starting in that window of microseconds could still join. Closing it would
/// take holding the port with a socket that every shard shares instead of one listener per
/// shard, which gives up the kernel's spreading of connections; the window is accepted.
/// Port 0 needs no probe: the kernel picks a port nobody is bound to.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "address already in use: another process listens there (another relay?); \
                 stop it or choose another server.http_port",
            )
        } else {
            e
        }
    })
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
    fn a_port_someone_listens_on_is_refused_even_to_another_reuseport_relay() {
        let (_first, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let err = bind_all(addr, 2).expect_err("a second relay joined the first one's port");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("already in use"), "{err}");
        // A plain listener (another program) is refused the same way.
        let other = StdListener::bind("127.0.0.1:0").unwrap();
        let err = bind_all(other.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn a_port_freed_by_the_previous_run_binds_again() {
        let (first, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        // A connection closed by the server side leaves it in TIME_WAIT.
        let client = std::net::TcpStream::connect(addr).unwrap();
        for l in &first {
            l.set_nonblocking(true).unwrap();
        }
        // The kernel picked one of the two listeners for it.
        let served = loop {
            if let Some(Ok((s, _))) = first.iter().map(|l| l.accept()).find(|r| r.is_ok()) {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        drop(served);
        drop(client);
        drop(first);
        let (again, bound) = bind_all(addr, 2).expect("restart on the same port");
        assert_eq!(bound, addr);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn port_zero_binds_every_listener_to_one_port() {
        let (listeners, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }
}
