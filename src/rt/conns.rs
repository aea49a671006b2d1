//! The shard's connection table and its coarse timer.
//!
//! Every connection a shard accepted registers a [`ConnCtl`] here. One housekeeping tick
//! per shard (every [`TICK`]) walks the table and wakes connections whose deadline passed
//! or that must close for shutdown. That replaces one timer per connection (glommio timers
//! are heap entries and have been seen to overshoot, glommio #652) with a scan that costs
//! a few microseconds per thousand connections; deadlines are therefore accurate to a tick.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::rt::signal::Signal;

pub const TICK: Duration = Duration::from_millis(250);

/// What a connection task shares with the shard: its wake-up signal and its deadline.
#[derive(Default)]
pub struct ConnCtl {
    pub signal: Signal,
    deadline_ms: Cell<u64>,
    timed_out: Cell<bool>,
    closing: Cell<bool>,
}

impl ConnCtl {
    /// Wake the connection (with [`ConnCtl::take_timeout`] true) once `at_ms` has passed.
    pub fn set_deadline(&self, at_ms: u64) {
        self.deadline_ms.set(at_ms);
        self.timed_out.set(false);
    }

    pub fn clear_deadline(&self) {
        self.deadline_ms.set(0);
        self.timed_out.set(false);
    }

    /// True once if the deadline passed since it was set.
    pub fn take_timeout(&self) -> bool {
        self.timed_out.replace(false)
    }

    /// The shard is shutting down: finish what is in flight, then close.
    pub fn closing(&self) -> bool {
        self.closing.get()
    }
}

#[derive(Default)]
pub struct ConnTable {
    slots: RefCell<Vec<Option<Rc<ConnCtl>>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    shutting_down: Cell<bool>,
}

impl ConnTable {
    pub fn register(&self) -> (usize, Rc<ConnCtl>) {
        let ctl = Rc::new(ConnCtl::default());
        ctl.closing.set(self.shutting_down.get());
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = Some(Rc::clone(&ctl));
                i
            }
            None => {
                slots.push(Some(Rc::clone(&ctl)));
                slots.len() - 1
            }
        };
        self.live.set(self.live.get() + 1);
        (index, ctl)
    }

    pub fn unregister(&self, index: usize) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(index) {
            if slot.take().is_some() {
                self.free.borrow_mut().push(index);
                self.live.set(self.live.get() - 1);
            }
        }
    }

    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// One housekeeping pass: wake expired connections.
    pub fn tick(&self, now_ms: u64) {
        for ctl in self.slots.borrow().iter().flatten() {
            let deadline = ctl.deadline_ms.get();
            if deadline != 0 && now_ms >= deadline {
                ctl.deadline_ms.set(0);
                ctl.timed_out.set(true);
                ctl.signal.raise();
            }
        }
    }

    /// Marks every connection (and every later one) as closing and wakes them.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        for ctl in self.slots.borrow().iter().flatten() {
            ctl.closing.set(true);
            ctl.signal.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_fires_a_deadline_once() {
        let table = ConnTable::default();
        let (_, ctl) = table.register();
        ctl.set_deadline(100);
        table.tick(99);
        assert!(!ctl.take_timeout());
        table.tick(100);
        assert!(ctl.take_timeout());
        table.tick(200);
        assert!(!ctl.take_timeout(), "fires once");
    }

    #[test]
    fn slots_are_reused_and_counted() {
        let table = ConnTable::default();
        let (a, _) = table.register();
        let (b, _) = table.register();
        assert_eq!(table.live(), 2);
        table.unregister(a);
        table.unregister(a);
        assert_eq!(table.live(), 1);
        let (c, _) = table.register();
        assert_eq!(c, a);
        assert_ne!(b, c);
    }

    #[test]
    fn shutdown_marks_present_and_future_connections() {
        let table = ConnTable::default();
        let (_, before) = table.register();
        table.begin_shutdown();
        let (_, after) = table.register();
        assert!(before.closing());
        assert!(after.closing());
    }
}
