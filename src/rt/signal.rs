//! A single-waiter, shard-local wake-up flag.
//!
//! The one primitive the shard uses to say "look again": a connection's outbound queue
//! got data, a deadline passed, shutdown began. It is `!Send` on purpose; crossing shards
//! goes through the mesh, never through this.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Ready (and lowered) if raised since the last time; otherwise remembers the waker.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.replace(false) {
            return Poll::Ready(());
        }
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }

    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await
    }
}

/// A one-shot reply slot for a cross-shard call, completed by the mesh receive loop.
pub struct Slot<T> {
    value: Cell<Option<T>>,
    /// Filled at some point (stays true after the value was taken).
    done: Cell<bool>,
    signal: Signal,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            value: Cell::new(None),
            done: Cell::new(false),
            signal: Signal::default(),
        }
    }
}

impl<T> Slot<T> {
    pub fn fill(&self, value: T) {
        self.value.set(Some(value));
        self.done.set(true);
        self.signal.raise();
    }

    pub fn is_done(&self) -> bool {
        self.done.get()
    }

    pub async fn take(&self) -> T {
        loop {
            if let Some(value) = self.value.take() {
                return value;
            }
            self.signal.wait().await;
        }
    }
}
