//! One accepted TCP connection: its stream (plain, or TLS after [`handshake`]), its read
//! buffer and its place in the shard's connection table.
//!
//! Reads race the connection's wake-up signal (deadline, new outbound data, shutdown), so
//! one task per connection can serve both directions without timers of its own. glommio
//! reads are readiness-based and rustls keeps what it decrypted, so abandoning a pending
//! read loses no bytes.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use futures_lite::{future, AsyncRead};

use super::shard::Shard;
use crate::metrics::{self, ShardMetrics};
use crate::rt::conns::ConnCtl;
use crate::rt::{sleep, TcpStream};
use crate::tls::server::Acceptor;
use crate::tls::Stream;

/// Bytes read from the peer and not yet decoded. Starts small so idle connections stay
/// cheap; grows for large requests and shrinks back once drained.
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the space it was given.
    behind: bool,
}

const INITIAL_READ: usize = 2048;
const MAX_IDLE_CAPACITY: usize = 16 * 1024;
/// A read that fills the buffer leaves more in the kernel, where nobody can tell how long
/// it has waited; the buffer then doubles, up to this, so the next read takes it in. Read,
/// a pipelined request's wait is measured (`rt::lateness`) and it is refused once too late,
/// rather than growing later unseen behind its connection's earlier requests.
const READ_AHEAD: usize = 64 * 1024;

impl ReadBuf {
    pub fn new() -> Self {
        ReadBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
            behind: false,
        }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > MAX_IDLE_CAPACITY {
                self.data = Vec::new();
            }
        }
    }

    /// Free space to read into: compacts, then doubles when full, or when the last read
    /// was left behind (up to [`READ_AHEAD`]).
    fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = vec![0; INITIAL_READ];
        }
        let behind = std::mem::take(&mut self.behind) && self.data.len() < READ_AHEAD;
        if self.end == self.data.len() || behind {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.data.len() || behind {
                self.data.resize(self.data.len() * 2, 0);
            }
        }
        &mut self.data[self.end..]
    }
}

impl Default for ReadBuf {
    fn default() -> Self {
        Self::new()
    }
}

pub enum Event {
    /// New bytes are in the read buffer.
    Data,
    /// The peer closed its side.
    Eof,
    /// The connection's signal was raised (deadline, outbound data, shutdown).
    Woken,
}

pub struct Conn {
    pub shard: Rc<Shard>,
    pub stream: Stream,
    pub ctl: Rc<ConnCtl>,
    pub rbuf: ReadBuf,
    /// When the last bytes were read: what a request decoded from them has waited since.
    pub read_at: Instant,
    slot: usize,
}

impl Conn {
    pub fn new(shard: Rc<Shard>, stream: Stream) -> Conn {
        let (slot, ctl) = shard.conns().register();
        shard.process().connections.fetch_add(1, Ordering::Relaxed);
        Conn {
            shard,
            stream,
            ctl,
            rbuf: ReadBuf::new(),
            read_at: Instant::now(),
            slot,
        }
    }

    /// Waits for bytes from the peer or for the connection's signal, whichever is first.
    pub async fn read_or_wake(&mut self) -> io::Result<Event> {
        let Conn {
            stream,
            ctl,
            rbuf,
            shard,
            ..
        } = self;
        let event = poll_fn(|cx| {
            if ctl.signal.poll_wait(cx).is_ready() {
                return Poll::Ready(Ok(Event::Woken));
            }
            poll_read_into(stream, rbuf, &shard.metrics, cx)
        })
        .await;
        if let Ok(Event::Data) = event {
            self.read_at = Instant::now();
        }
        event
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        metrics::add(&self.shard.metrics.bytes_out, bytes.len() as u64);
        self.stream.send(bytes).await
    }

    /// Closes after an error response without losing it: a peer still sending (say, the
    /// body of a request refused with 413) would otherwise get a reset that can discard
    /// the response before it reads it. Half-closes, then drains briefly.
    pub async fn linger(&mut self) {
        const MAX_DRAIN: usize = 1 << 20;
        let _ = self.stream.shutdown_write().await;
        self.ctl.set_deadline(crate::rt::now_ms() + 1000);
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match self.read_or_wake().await {
                Ok(Event::Data) => {
                    let n = self.rbuf.filled().len();
                    drained += n;
                    self.rbuf.consume(n);
                }
                Ok(Event::Woken) if !self.ctl.take_timeout() => {}
                _ => return,
            }
        }
    }
}

/// Runs the TLS handshake of a new connection within `limit`; `None` when it failed or
/// took too long (there is nobody to tell: the peer gets the TLS alert, if any). The
/// connection counts as open meanwhile, so slow handshakes cannot outgrow the connection
/// budget.
pub async fn handshake(
    shard: &Shard,
    acceptor: &Acceptor,
    tcp: TcpStream,
    limit: std::time::Duration,
) -> Option<Stream> {
    let open = &shard.process().connections;
    open.fetch_add(1, Ordering::Relaxed);
    let stream = future::or(async { acceptor.accept(tcp).await.ok() }, async {
        sleep(limit).await;
        None
    })
    .await;
    open.fetch_sub(1, Ordering::Relaxed);
    if stream.is_none() {
        metrics::add(&shard.metrics.tls_handshake_failures, 1);
    }
    stream
}

/// Polls one read into `rbuf`.
pub fn poll_read_into(
    stream: &mut Stream,
    rbuf: &mut ReadBuf,
    metrics: &ShardMetrics,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<Event>> {
    let spare = rbuf.spare();
    let room = spare.len();
    match Pin::new(stream).poll_read(cx, spare) {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(Event::Eof)),
        Poll::Ready(Ok(n)) => {
            rbuf.end += n;
            rbuf.behind = n == room;
            metrics::add(&metrics.bytes_in, n as u64);
            Poll::Ready(Ok(Event::Data))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shard.conns().unregister(self.slot);
        self.shard
            .process()
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_compacts_grows_and_releases() {
        let mut buf = ReadBuf::new();
        let n = buf.spare().len();
        assert_eq!(n, INITIAL_READ);
        buf.end = n;
        buf.consume(10);
        assert_eq!(buf.filled().len(), n - 10);
        // Full with a consumed prefix: compaction makes room without growing.
        assert_eq!(buf.spare().len(), 10);
        assert_eq!(buf.data.len(), INITIAL_READ);
        buf.end = buf.data.len();
        assert_eq!(buf.spare().len(), INITIAL_READ, "doubles when full");
        let len = buf.filled().len();
        buf.consume(len);
        assert!(buf.is_empty());
    }

    #[test]
    fn reads_left_behind_grow_the_buffer_up_to_the_read_ahead() {
        let mut buf = ReadBuf::new();
        let mut sizes = Vec::new();
        for _ in 0..8 {
            // Each read fills all its room; all but a partial request is decoded.
            let room = buf.spare().len();
            buf.end += room;
            buf.behind = true;
            let len = buf.filled().len();
            buf.consume(len - 10);
            sizes.push(buf.data.len());
        }
        assert_eq!(
            sizes,
            [2048, 4096, 8192, 16384, 32768, 65536, 65536, 65536],
            "doubles while left behind, never beyond READ_AHEAD"
        );
        let room = buf.spare().len();
        buf.end += room / 2;
        assert_eq!(buf.spare().len(), room / 2, "no growth when not behind");
    }

    #[test]
    fn large_buffers_are_released_when_drained() {
        let mut buf = ReadBuf::new();
        while buf.data.len() <= MAX_IDLE_CAPACITY {
            let n = buf.spare().len();
            buf.end += n;
        }
        let len = buf.filled().len();
        buf.consume(len);
        assert_eq!(buf.data.len(), 0);
    }
}
