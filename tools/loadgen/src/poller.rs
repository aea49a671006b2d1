//! A small level-triggered epoll wrapper: one per worker thread, many sockets each.
//!
//! The wait takes a nanosecond timeout (`epoll_pwait2`), so an open-loop schedule sleeps
//! exactly until its next send instead of spinning or rounding to milliseconds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
}

#[derive(Clone, Copy)]
pub struct Event {
    pub token: usize,
    /// Data, end of stream or an error: in every case the next read says which.
    pub readable: bool,
    pub writable: bool,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no memory arguments; a valid fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` was just returned by epoll_create1 and nothing else owns it.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            ready: 0,
        })
    }

    pub fn add(&self, fd: RawFd, token: usize, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, writable)
    }

    /// Turns write interest on or off; read interest is always on.
    pub fn modify(&self, fd: RawFd, token: usize, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    pub fn delete(&self, fd: RawFd) {
        // An error means the fd is already gone from the set, which is what we want.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false);
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: usize, writable: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
        if writable {
            flags |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token as u64,
        };
        // SAFETY: `event` outlives the call; the kernel copies it.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events or until `timeout` (None: indefinitely); returns how many are ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let spec = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let spec_ptr = spec
            .as_ref()
            .map_or(std::ptr::null(), |s| s as *const libc::timespec);
        // SAFETY: the events buffer holds `len` entries and lives across the call; the
        // timeout pointer is null or points to `spec`, alive until the call returns.
        let n = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                spec_ptr,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.ready = 0;
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        self.ready = n as usize;
        Ok(self.ready)
    }

    pub fn event(&self, i: usize) -> Event {
        let e = self.events[..self.ready][i];
        let flags = e.events as libc::c_int;
        Event {
            token: e.u64 as usize,
            readable: flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                != 0,
            writable: flags & (libc::EPOLLOUT | libc::EPOLLERR) != 0,
        }
    }
}
