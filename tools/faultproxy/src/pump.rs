//! One forwarded connection: its two sockets and the four threads that move its bytes.
//!
//! Each direction has a reader (source socket → a bounded queue of chunks stamped with
//! when they are due) and a writer (queue → destination socket, applying the stall, the
//! latency, the bandwidth pacing, the segmenting and an armed reset). Splitting the two
//! keeps latency from cutting throughput: the reader goes on reading while earlier chunks
//! wait out their delay. The bounded queue passes back-pressure on to the source.
//!
//! Owns: the sockets of one connection and when they are closed, and how (FIN or RST).
//! Must not: change the faults (the controlling side does; this only reads them).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;

use crate::Shared;

/// Stack of each connection thread: their buffers are on the heap.
pub(crate) const STACK: usize = 256 * 1024;
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction before the reader stops reading (1 MiB at most).
const QUEUED_CHUNKS: usize = 64;
/// How often a writer blocked on a full destination looks whether it was killed.
const WRITE_POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Between the last byte before an armed reset and the RST, so that byte has left.
const CUT_GRACE: Duration = Duration::from_millis(20);

enum Chunk {
    Data(Vec<u8>, Instant),
    /// The source closed its side: pass the FIN on after what came before.
    Eof,
}

pub(crate) struct Conn {
    /// `[client, upstream]`: direction `d` reads `sockets[d]` and writes `sockets[1 - d]`.
    sockets: [TcpStream; 2],
    killed: AtomicBool,
    half_closed: [AtomicBool; 2],
    shared: Arc<Shared>,
}

impl Conn {
    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn is_half_closed(&self, side: usize) -> bool {
        self.half_closed[side].load(Ordering::SeqCst)
    }

    /// Resets the connection: with `SO_LINGER` 0 the last close sends an RST instead of a
    /// FIN and drops unsent bytes. Shutting the read sides wakes the blocked readers, so
    /// every thread lets go of its sockets promptly.
    pub(crate) fn kill(&self) {
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        for socket in &self.sockets {
            let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
            let _ = socket.shutdown(Shutdown::Read);
        }
        self.shared.wake();
    }

    /// Closes direction `side`: FIN to its destination; its writer stops and its reader
    /// drops what still comes.
    pub(crate) fn half_close(&self, side: usize) {
        if self.half_closed[side].swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.sockets[1 - side].shutdown(Shutdown::Write);
        self.shared.wake();
    }

    /// Blocks while `side` is stalled; false once the connection is killed.
    fn wait_flowing(&self, side: usize) -> bool {
        let mut state = self.shared.lock();
        while state.faults[side].stalled && !self.is_killed() {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        !self.is_killed()
    }

    /// When a chunk read now is due at the destination.
    fn due(&self, side: usize, rng: &mut u64) -> Instant {
        let faults = self.shared.lock().faults[side];
        let mut delay = faults.latency;
        let jitter = faults.jitter.as_micros() as u64;
        if jitter > 0 {
            // xorshift64: no dependency for a test tool's randomness.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let offset = *rng % (2 * jitter + 1);
            delay = (delay + Duration::from_micros(offset))
                .saturating_sub(Duration::from_micros(jitter));
        }
        Instant::now() + delay
    }

    /// Waits until the next piece of `side` may be written: not stalled, `due` reached
    /// and, with a bandwidth limit or segments, `paced` too. Returns the piece's length
    /// (at most `len`) and whether an armed reset fires right after it; `None` once the
    /// direction is killed or closed.
    fn turn(&self, side: usize, due: Instant, paced: Instant, len: usize) -> Option<Turn> {
        let mut state = self.shared.lock();
        loop {
            if self.is_killed() || self.is_half_closed(side) {
                return None;
            }
            let faults = state.faults[side];
            let wait = if faults.stalled {
                None
            } else {
                let at = if faults.bandwidth.is_some() || faults.segments.is_some() {
                    due.max(paced)
                } else {
                    due
                };
                let now = Instant::now();
                if now >= at {
                    let mut piece = len;
                    if let Some(segments) = faults.segments {
                        piece = piece.min(segments.size.max(1));
                    }
                    if let Some(rate) = faults.bandwidth {
                        // 20 ms worth at a time: smooth, without a syscall per byte.
                        piece = piece.min((rate / 50).max(1) as usize);
                    }
                    let mut cut = false;
                    if let Some(left) = &mut state.reset_after[side] {
                        piece = piece.min(*left as usize);
                        *left -= piece as u64;
                        cut = *left == 0;
                        if cut {
                            state.reset_after[side] = None;
                        }
                    }
                    return Some(Turn { piece, cut, faults });
                }
                Some(at - now)
            };
            state = match wait {
                None => self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(wait) => {
                    self.shared
                        .changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

struct Turn {
    piece: usize,
    cut: bool,
    faults: crate::Faults,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connects to the upstream for `client` and runs the connection to its end.
pub(crate) fn serve(shared: Arc<Shared>, client: TcpStream) {
    let upstream = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(_) => {
            // No upstream: the client gets a reset, as from a refused connection.
            let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            return;
        }
    };
    for socket in [&client, &upstream] {
        // Small writes (segments) must leave as they are, not wait for Nagle.
        let _ = socket.set_nodelay(true);
        let _ = socket.set_write_timeout(Some(WRITE_POLL));
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    let conn = Arc::new(Conn {
        sockets: [client, upstream],
        killed: AtomicBool::new(false),
        half_closed: [AtomicBool::new(false), AtomicBool::new(false)],
        shared: Arc::clone(&shared),
    });
    {
        let mut state = shared.lock();
        state.conns.retain(|c| c.strong_count() > 0);
        state.conns.push(Arc::downgrade(&conn));
    }
    if shared.closing.load(Ordering::SeqCst) {
        conn.kill();
    }
    for side in 0..2 {
        let (tx, rx) = mpsc::sync_channel(QUEUED_CHUNKS);
        let reader = Arc::clone(&conn);
        let writer = Arc::clone(&conn);
        let spawned = [
            spawn(move || read_side(&reader, side, &tx)),
            spawn(move || write_side(&writer, side, &rx)),
        ];
        if spawned.iter().any(Result::is_err) {
            conn.kill();
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("faultproxy-pump".into())
        .stack_size(STACK)
        .spawn(f)
}

fn read_side(conn: &Conn, side: usize, queue: &SyncSender<Chunk>) {
    let source = &conn.sockets[side];
    let mut buf = vec![0u8; CHUNK];
    let mut rng = seed(side);
    loop {
        if !conn.wait_flowing(side) {
            return;
        }
        match (&*source).read(&mut buf) {
            Ok(0) => {
                if !conn.is_killed() {
                    let _ = queue.send(Chunk::Eof);
                }
                return;
            }
            Ok(n) => {
                if conn.is_half_closed(side) {
                    continue;
                }
                let due = conn.due(side, &mut rng);
                if queue.send(Chunk::Data(buf[..n].to_vec(), due)).is_err()
                    && !conn.is_half_closed(side)
                {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset (or any error) from one end is passed on to the other as a reset.
            Err(_) => {
                conn.kill();
                return;
            }
        }
    }
}

fn write_side(conn: &Conn, side: usize, queue: &Receiver<Chunk>) {
    let destination = &conn.sockets[1 - side];
    // The earliest the next piece may go under a bandwidth limit or segment gap.
    let mut paced = Instant::now();
    while let Ok(chunk) = queue.recv() {
        let (bytes, due) = match chunk {
            Chunk::Data(bytes, due) => (bytes, due),
            Chunk::Eof => {
                if !conn.is_killed() && !conn.is_half_closed(side) {
                    let _ = destination.shutdown(Shutdown::Write);
                }
                return;
            }
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Some(turn) = conn.turn(side, due, paced, rest.len()) else {
                return;
            };
            let started = Instant::now();
            if turn.piece > 0 {
                if write_piece(conn, side, destination, &rest[..turn.piece]).is_err() {
                    if !conn.is_half_closed(side) {
                        conn.kill();
                    }
                    return;
                }
                conn.shared.forwarded[side].fetch_add(turn.piece as u64, Ordering::SeqCst);
                rest = &rest[turn.piece..];
            }
            if turn.cut {
                thread::sleep(CUT_GRACE);
                conn.kill();
                return;
            }
            let mut next = started;
            if let Some(rate) = turn.faults.bandwidth {
                next =
                    paced.max(started) + Duration::from_secs_f64(turn.piece as f64 / rate as f64);
            }
            if let Some(segments) = turn.faults.segments {
                next = next.max(Instant::now() + segments.gap);
            }
            paced = next;
        }
    }
}

/// Writes all of `piece`, looking every [`WRITE_POLL`] whether the connection was killed
/// or the direction closed meanwhile (a destination that does not read blocks us).
fn write_piece(
    conn: &Conn,
    side: usize,
    destination: &TcpStream,
    mut piece: &[u8],
) -> io::Result<()> {
    while !piece.is_empty() {
        if conn.is_killed() || conn.is_half_closed(side) {
            return Err(ErrorKind::BrokenPipe.into());
        }
        match (&*destination).write(piece) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => piece = &piece[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn seed(side: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ ((side as u64 + 1) << 40)) | 1
}
