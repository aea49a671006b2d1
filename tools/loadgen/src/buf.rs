//! The input buffer of a socket: bytes read but not yet parsed, compacted in place and
//! grown only when one message does not fit.

use std::io::{self, Read};

pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

pub enum Fill {
    /// Read what there was (possibly nothing); the connection is open.
    Open,
    /// The peer closed the connection.
    Closed,
}

impl ReadBuf {
    pub fn new(capacity: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// The bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Consumes the next `n` bytes (no more than [`ReadBuf::data`] holds) and returns them.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        self.start += n;
        debug_assert!(self.start <= self.end);
        &self.buf[at..self.start]
    }

    /// Reads what the socket has. A short read ends it: it took everything there was, and
    /// with level-triggered epoll asking again would only cost a syscall that says
    /// WouldBlock.
    pub fn fill(&mut self, stream: &mut impl Read) -> io::Result<Fill> {
        loop {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
            }
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(Fill::Closed),
                Ok(n) => {
                    self.end += n;
                    if self.end < self.buf.len() {
                        return Ok(Fill::Open);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
