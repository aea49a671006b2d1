//! A fault-injecting TCP proxy for tests, in the spirit of toxiproxy. It forwards every
//! connection made to its listening address to one upstream address and, on the way, does
//! to the link what real networks do: added latency and jitter, a bandwidth limit, a stall
//! that keeps the connection open, one direction closed (half-open), a reset in the middle
//! of a stream, and delivery in tiny segments.
//!
//! Owns: its listener, the connections it forwards, and the faults in force. Faults are
//! set per direction ([`Direction::Up`] is client → upstream, [`Direction::Down`] upstream
//! → client), change at run time, and apply at once to the connections already open as
//! well as to later ones. Actions ([`FaultProxy::reset`], [`FaultProxy::half_close`])
//! apply to the connections open when they are called; [`FaultProxy::reset_after`] arms a
//! one-shot reset of whichever connection carries the byte that crosses the count.
//!
//! Must not: be anything but a test tool. Plain threads and blocking sockets (four threads
//! per connection), no async runtime: it is never on a hot path, and a reader can follow
//! every step. The binary (`pulsar-faultproxy`) drives one proxy from the line protocol in
//! [`control`].
//!
//! ```no_run
//! use std::time::Duration;
//! use pulsar_faultproxy::{Direction, FaultProxy};
//!
//! let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).unwrap();
//! // Point the client at proxy.addr() instead of the server, then:
//! proxy.latency(Direction::Down, Duration::from_millis(50), Duration::ZERO);
//! proxy.stall(Direction::Both); // bytes stop, connections stay open
//! proxy.flow(Direction::Both); // what was held back is delivered, in order
//! proxy.reset(); // RST to both ends of every open connection
//! ```

pub mod control;
mod pump;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use pump::Conn;

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
    Both,
}

impl Direction {
    /// The indices of the directions meant: 0 is up, 1 is down.
    fn sides(self) -> &'static [usize] {
        match self {
            Direction::Up => &[0],
            Direction::Down => &[1],
            Direction::Both => &[0, 1],
        }
    }
}

/// Delivery in segments of at most `size` bytes, each written separately (`TCP_NODELAY`)
/// and at least `gap` after the one before, so the receiver reads them one by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    pub size: usize,
    pub gap: Duration,
}

/// The faults in force in one direction. The default is a clean link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every byte's trip. Bytes keep their order, so the link's throughput is not
    /// cut by it (a pipeline still fills the pipe), as on a long-distance link.
    pub latency: Duration,
    /// Each chunk read gets `latency` plus or minus up to this much (never reordered).
    pub jitter: Duration,
    /// Bytes per second, paced in steps of 20 ms; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// Nothing is read from the source or written to the destination; connections stay
    /// open, and the source's writes block once the kernel buffers are full.
    pub stalled: bool,
    pub segments: Option<Segments>,
}

/// A running proxy. Dropping it stops accepting and resets every connection.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

/// What the acceptor, the pumps and the controlling caller share.
pub(crate) struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled whenever faults change or a connection is killed or half-closed: pumps
    /// waiting for their turn look again.
    changed: Condvar,
    closing: AtomicBool,
    open: AtomicUsize,
    accepted: AtomicU64,
    forwarded: [AtomicU64; 2],
}

pub(crate) struct State {
    faults: [Faults; 2],
    /// Bytes still to forward in each direction before the connection carrying the last
    /// of them is reset.
    reset_after: [Option<u64>; 2],
    conns: Vec<Weak<Conn>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every waiting pump. Taking the lock first means a pump that checked its
    /// condition just before cannot miss the signal.
    fn wake(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }

    fn open_connections(&self) -> Vec<Arc<Conn>> {
        let mut state = self.lock();
        state.conns.retain(|c| c.strong_count() > 0);
        state.conns.iter().filter_map(Weak::upgrade).collect()
    }
}

impl FaultProxy {
    /// A proxy on an ephemeral port of 127.0.0.1 in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        FaultProxy::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream)
    }

    /// A proxy listening on `listen` in front of `upstream`.
    pub fn bind(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                faults: [Faults::default(); 2],
                reset_after: [None; 2],
                conns: Vec::new(),
            }),
            changed: Condvar::new(),
            closing: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("faultproxy-accept".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(FaultProxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The faults in force, `[up, down]`.
    pub fn faults(&self) -> [Faults; 2] {
        self.shared.lock().faults
    }

    /// Changes the faults of `dir` with `change`, at once for open connections too.
    pub fn update(&self, dir: Direction, change: impl Fn(&mut Faults)) {
        let mut state = self.shared.lock();
        for &side in dir.sides() {
            change(&mut state.faults[side]);
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    pub fn latency(&self, dir: Direction, latency: Duration, jitter: Duration) {
        self.update(dir, |f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// Limits `dir` to `bytes_per_second` (`None`: unlimited).
    pub fn bandwidth(&self, dir: Direction, bytes_per_second: Option<u64>) {
        self.update(dir, |f| f.bandwidth = bytes_per_second.filter(|&b| b > 0));
    }

    /// Stops every byte in `dir` without closing anything.
    pub fn stall(&self, dir: Direction) {
        self.update(dir, |f| f.stalled = true);
    }

    /// Ends a stall: what was held back is delivered, in order.
    pub fn flow(&self, dir: Direction) {
        self.update(dir, |f| f.stalled = false);
    }

    pub fn segments(&self, dir: Direction, segments: Option<Segments>) {
        self.update(dir, |f| f.segments = segments);
    }

    /// A clean link again: every fault off and any armed reset disarmed. Half-closed
    /// directions stay closed (a FIN cannot be taken back).
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.faults = [Faults::default(); 2];
        state.reset_after = [None; 2];
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Resets every open connection: both ends get an RST, and bytes not yet delivered
    /// are lost.
    pub fn reset(&self) {
        for conn in self.shared.open_connections() {
            conn.kill();
        }
    }

    /// Arms a one-shot reset: once `bytes` more bytes have been forwarded in `dir`
    /// (counted over all connections), the connection that carried the last of them is
    /// reset, right after that byte, even in the middle of a write. `Both` arms each
    /// direction with its own count.
    pub fn reset_after(&self, dir: Direction, bytes: u64) {
        let mut state = self.shared.lock();
        for &side in dir.sides() {
            state.reset_after[side] = Some(bytes);
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Whether a reset armed with [`FaultProxy::reset_after`] is still waiting in `dir`
    /// (`Both`: in either).
    pub fn reset_pending(&self, dir: Direction) -> bool {
        let state = self.shared.lock();
        dir.sides().iter().any(|&s| state.reset_after[s].is_some())
    }

    /// Closes `dir` of every open connection: the destination gets a FIN after what was
    /// already delivered, and whatever the source sends that way from now on is dropped.
    /// The other direction keeps flowing (a half-open connection).
    pub fn half_close(&self, dir: Direction) {
        for conn in self.shared.open_connections() {
            for &side in dir.sides() {
                conn.half_close(side);
            }
        }
    }

    /// Connections open now (both ends connected and not yet closed).
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections forwarded since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes delivered in `dir` since the start (`Both`: in both).
    pub fn forwarded(&self, dir: Direction) -> u64 {
        dir.sides()
            .iter()
            .map(|&s| self.shared.forwarded[s].load(Ordering::SeqCst))
            .sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // The acceptor is blocked in accept(): a connection of our own wakes it.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.reset();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        match client {
            Ok(client) => {
                let shared = Arc::clone(shared);
                // The upstream connect happens on the connection's own thread, so a slow
                // upstream does not hold up the next client.
                let spawned = thread::Builder::new()
                    .name("faultproxy-conn".into())
                    .stack_size(pump::STACK)
                    .spawn(move || pump::serve(shared, client));
                if spawned.is_err() {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            // Out of descriptors or the like: do not spin.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}
