//! One accepted TCP connection: its socket, its read buffer and its place in the shard's
//! connection table.
//!
//! Reads race the connection's wake-up signal (deadline, new outbound data, shutdown), so
//! one task per connection can serve both directions without timers of its own. glommio
//! reads are readiness-based, so abandoning a pending read loses no bytes.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWriteExt};

use super::shard::Shard;
use crate::metrics::{self, ShardMetrics};
use crate::rt::conns::ConnCtl;
use crate::rt::TcpStream;

/// Bytes read from the peer and not yet decoded. Starts small so idle connections stay
/// cheap; grows for large requests and shrinks back once drained.
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

const INITIAL_READ: usize = 2048;
const MAX_IDLE_CAPACITY: usize = 16 * 1024;

impl ReadBuf {
    pub fn new() -> Self {
        ReadBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
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

    /// Free space to read into: compacts, then doubles when full.
    fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = vec![0; INITIAL_READ];
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
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
    pub stream: TcpStream,
    pub ctl: Rc<ConnCtl>,
    pub rbuf: ReadBuf,
    slot: usize,
}

impl Conn {
    pub fn new(shard: Rc<Shard>, stream: TcpStream) -> Conn {
        let (slot, ctl) = shard.conns().register();
        shard.process().connections.fetch_add(1, Ordering::Relaxed);
        Conn {
            shard,
            stream,
            ctl,
            rbuf: ReadBuf::new(),
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
        poll_fn(|cx| {
            if ctl.signal.poll_wait(cx).is_ready() {
                return Poll::Ready(Ok(Event::Woken));
            }
            poll_read_into(stream, rbuf, &shard.metrics, cx)
        })
        .await
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        metrics::add(&self.shard.metrics.bytes_out, bytes.len() as u64);
        self.stream.write_all(bytes).await
    }

    /// Closes after an error response without losing it: a peer still sending (say, the
    /// body of a request refused with 413) would otherwise get a reset that can discard
    /// the response before it reads it. Half-closes, then drains briefly.
    pub async fn linger(&mut self) {
        const MAX_DRAIN: usize = 1 << 20;
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
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

/// Polls one read into `rbuf`.
pub fn poll_read_into(
    stream: &mut TcpStream,
    rbuf: &mut ReadBuf,
    metrics: &ShardMetrics,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<Event>> {
    match Pin::new(stream).poll_read(cx, rbuf.spare()) {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(Event::Eof)),
        Poll::Ready(Ok(n)) => {
            rbuf.end += n;
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
