//! This shard's account state: the [`Replica`] every shard holds, the [`Directory`] the
//! directory shard holds once it is loaded, and the long-lived sessions to wake when
//! account state changes.
//!
//! Owns the state only. Who asks the directory (and how the answer crosses shards), where
//! changes are persisted and how they reach the other replicas is the API's plumbing
//! (`api::Shard::directory`); this module never sends or writes anything itself.

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use super::directory::{AccountWrite, Applied};
use super::{AccountSync, Directory, DirectoryOp, Replica};
use crate::rt::conns::ConnCtl;

#[derive(Default)]
pub struct Accounts {
    replica: RefCell<Replica>,
    /// The authoritative state: on the directory shard only, once loaded.
    directory: RefCell<Option<Directory>>,
    /// Counts account changes applied to the replica.
    generation: Cell<u64>,
    /// Open sessions per token subject that account changes must reach (see
    /// [`Accounts::watch`]); as many entries as such sessions.
    watchers: RefCell<HashMap<String, Vec<Weak<ConnCtl>>>>,
}

/// A session's registration for account changes (see [`Accounts::watch`]).
pub struct AccountWatch {
    accounts: Rc<Accounts>,
    subject: String,
    ctl: Weak<ConnCtl>,
}

impl Drop for AccountWatch {
    fn drop(&mut self) {
        let mut watchers = self.accounts.watchers.borrow_mut();
        if let Some(list) = watchers.get_mut(&self.subject) {
            list.retain(|w| !w.ptr_eq(&self.ctl));
            if list.is_empty() {
                watchers.remove(&self.subject);
            }
        }
    }
}

impl Accounts {
    /// This shard's read copy of the users and the logout deny-list.
    pub fn replica(&self) -> Ref<'_, Replica> {
        self.replica.borrow()
    }

    /// Updates the replica and wakes the sessions of the subject the change concerns, so
    /// that a logout or a deactivation ends them now rather than at their token's expiry.
    /// A snapshot (cluster mode reloads one while sessions are open) wakes every session.
    pub fn apply_sync(&self, sync: &AccountSync) {
        self.replica.borrow_mut().apply(sync);
        self.generation.set(self.generation.get().wrapping_add(1));
        let watchers = self.watchers.borrow();
        let wake = |list: &Vec<Weak<ConnCtl>>| {
            for ctl in list.iter().filter_map(Weak::upgrade) {
                ctl.signal.raise();
            }
        };
        match sync {
            AccountSync::Snapshot { .. } => watchers.values().for_each(wake),
            _ => sync
                .subject()
                .and_then(|s| watchers.get(s))
                .map_or((), wake),
        }
    }

    /// Registers a long-lived session (WebSocket) whose access depends on account state;
    /// it is woken by every change for `subject` until the guard is dropped. Sessions
    /// compare [`Accounts::generation`] to know when to check their token again.
    pub fn watch(self: &Rc<Self>, subject: &str, ctl: &Rc<ConnCtl>) -> AccountWatch {
        let ctl = Rc::downgrade(ctl);
        self.watchers
            .borrow_mut()
            .entry(subject.to_owned())
            .or_default()
            .push(Weak::clone(&ctl));
        AccountWatch {
            accounts: Rc::clone(self),
            subject: subject.to_owned(),
            ctl,
        }
    }

    /// Changes as account state changes (any subject): a cheap "anything new?" check.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Makes this shard the holder of the loaded directory; returns its whole state, for
    /// the replicas.
    pub fn open(&self, directory: Directory) -> AccountSync {
        let snapshot = directory.snapshot();
        *self.directory.borrow_mut() = Some(directory);
        snapshot
    }

    /// Applies an account operation to the directory; `None` when this shard holds no
    /// loaded directory.
    pub fn apply(&self, op: DirectoryOp, now_ms: u64) -> Option<Applied> {
        Some(self.directory.borrow_mut().as_mut()?.apply(op, now_ms))
    }

    /// Takes a change made elsewhere into the directory (cluster mode); `None` when it
    /// changes nothing the replicas hold, or no directory is held here.
    pub fn absorb(&self, write: AccountWrite) -> Option<AccountSync> {
        self.directory.borrow_mut().as_mut()?.absorb(write)
    }

    /// Drops expired deny-list entries from the replica and expired refresh tokens and
    /// entries from the directory (if held here); returns the directory's writes.
    pub fn sweep(&self, now_ms: u64) -> Option<Vec<AccountWrite>> {
        self.replica.borrow_mut().sweep(now_ms);
        Some(self.directory.borrow_mut().as_mut()?.sweep(now_ms))
    }
}
