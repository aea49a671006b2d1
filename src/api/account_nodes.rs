//! Account state shared by the nodes of a cluster (`cluster.enabled`): how the directory
//! shard of each node commits its changes through Valkey and follows the other nodes'.
//!
//! Every node's directory shard keeps its own [`Directory`](crate::account::Directory) and
//! decides operations on it as a single node does. The decision is then committed by one
//! Valkey script (`store::accounts`) that checks what it was decided on (a live refresh
//! token, a free username, an account's revision), writes the records and appends them to
//! the account log, or writes nothing. A refused commit means another node changed those
//! records first: this node reads the log and Valkey's copies of the records, and decides
//! again, so a refresh token presented on two nodes at once has one winner and the other
//! sees a replay. Each node polls the log every [`FOLLOW_INTERVAL`] (a non-blocking range
//! read in its shard's pipeline) and applies the other nodes' changes to its directory and
//! replicas as its own, which ends the affected sessions there; a node that fell behind the
//! log's trimmed start, or that does not know whether a commit was made, reloads all
//! account state as at start-up.
//!
//! Owns the node's place in the log and the commit-and-retry rule. Account rules are
//! `account`'s, keys and scripts `store`'s; this module never runs without cluster mode.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use super::shard::Shard;
use crate::account::{AccountError, Directory, DirectoryOp, DirectoryReply};
use crate::metrics;
use crate::rt::{now_ms, sleep};
use crate::store::accounts::{Commit, LOG_MAX_LEN};
use crate::store::{MessageId, StoreError};

/// How often the directory shard reads the other nodes' changes.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// How often an operation is decided again after Valkey refused it, before giving up
/// with 503: each retry follows the log first, so only a storm of changes to the same
/// records reaches it.
const MAX_ATTEMPTS: usize = 5;

/// Log entries read at once.
const LOG_BATCH: usize = 512;

/// This node's place among the others, on its directory shard.
pub struct NodeAccounts {
    /// Names this node's log entries.
    node: String,
    /// This node's operations committed and already applied here, whose log entries are
    /// therefore skipped. Any other entry of this node's (a commit answered too late, or
    /// after a reload) is applied like another node's. Emptied by each reload.
    applied_here: RefCell<HashSet<String>>,
    /// The last log entry applied here.
    cursor: Cell<MessageId>,
    /// A commit ended without an answer (it may or may not have been made): everything
    /// is reloaded before the next one.
    stale: Cell<bool>,
    /// Counts reloads: a commit answered after one is taken in again.
    epoch: Cell<u64>,
    /// Counts the log entries applied here (and reloads), whoever read them.
    heard: Cell<u64>,
    reloading: Cell<bool>,
}

impl NodeAccounts {
    pub fn new() -> NodeAccounts {
        NodeAccounts {
            node: crate::random::uuid4(),
            applied_here: RefCell::new(HashSet::new()),
            cursor: Cell::new(MessageId::ZERO),
            stale: Cell::new(false),
            epoch: Cell::new(0),
            heard: Cell::new(0),
            reloading: Cell::new(false),
        }
    }
}

/// Loads the account state from Valkey and makes it this shard's directory, its replicas'
/// snapshot, and the log's starting point. Used at start-up and to catch up after
/// falling behind.
pub async fn load(shard: &Rc<Shard>, node: &NodeAccounts) -> Result<(), StoreError> {
    // Marked before loading: what is logged in between is applied again (harmlessly:
    // every change is a whole record).
    let mark = shard.store.mark_account_log(&node.node).await?;
    let loaded = shard.store.load_accounts().await?;
    shard.store.index_usernames(&loaded.users);
    let refresh_ttl = shard.config.accounts.refresh_token_ttl.as_millis() as u64;
    let dir = Directory::restore(loaded.users, loaded.tokens, loaded.denied, refresh_ttl);
    let snapshot = shard.accounts.open(dir);
    node.applied_here.borrow_mut().clear();
    node.cursor.set(mark);
    node.epoch.set(node.epoch.get() + 1);
    node.heard.set(node.heard.get() + 1);
    node.stale.set(false);
    metrics::add(&shard.metrics.cluster_account_reloads, 1);
    shard.broadcast_accounts(snapshot);
    Ok(())
}

/// Follows the other nodes' changes for as long as the shard runs.
pub async fn follow(shard: Rc<Shard>, node: Rc<NodeAccounts>) {
    let mut logged = false;
    loop {
        sleep(FOLLOW_INTERVAL).await;
        if shard.is_shutting_down() {
            return;
        }
        let result = if node.stale.get() {
            reload(&shard, &node).await
        } else {
            catch_up(&shard, &node).await
        };
        match result {
            Ok(()) => logged = false,
            Err(e) if !logged => {
                crate::log_line!("accounts: cannot follow the other nodes' changes: {e}");
                logged = true;
            }
            Err(_) => {}
        }
    }
}

async fn reload(shard: &Rc<Shard>, node: &NodeAccounts) -> Result<(), StoreError> {
    if node.reloading.replace(true) {
        return Ok(());
    }
    let result = load(shard, node).await;
    node.reloading.set(false);
    result
}

/// Applies the log entries after the cursor that other nodes wrote. Entries are applied
/// in log order only: one already passed (by a concurrent read) is skipped.
async fn catch_up(shard: &Rc<Shard>, node: &NodeAccounts) -> Result<(), StoreError> {
    loop {
        let from = node.cursor.get();
        let Some(entries) = shard.store.read_account_log(from, LOG_BATCH).await? else {
            crate::log_line!(
                "accounts: more than about {LOG_MAX_LEN} account changes were made since this \
                 node last read them; reloading all account state"
            );
            return reload(shard, node).await;
        };
        let full = entries.len() + 1 >= LOG_BATCH;
        for entry in entries {
            if entry.id <= node.cursor.get() {
                continue;
            }
            node.cursor.set(entry.id);
            if entry.node == node.node && node.applied_here.borrow_mut().remove(&entry.op) {
                continue;
            }
            node.heard.set(node.heard.get() + 1);
            metrics::add(&shard.metrics.cluster_account_entries, 1);
            for change in entry.changes {
                if let Some(sync) = shard.accounts.absorb(change) {
                    shard.broadcast_accounts(sync);
                }
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// Runs an account operation in cluster mode: decided here, committed through Valkey,
/// decided again on fresher state while Valkey refuses it (see the module header).
pub async fn apply(shard: Rc<Shard>, node: Rc<NodeAccounts>, op: DirectoryOp) -> DirectoryReply {
    let unavailable = DirectoryReply::Failed(AccountError::Unavailable);
    if node.stale.get() && reload(&shard, &node).await.is_err() {
        return unavailable;
    }
    // Revoking a token this node has not heard of yet would be silently ignored.
    if matches!(op, DirectoryOp::Revoke { .. }) && catch_up(&shard, &node).await.is_err() {
        return unavailable;
    }
    for attempt in 0..MAX_ATTEMPTS {
        let (epoch, heard) = (node.epoch.get(), node.heard.get());
        let Some(applied) = shard.accounts.apply(op.clone(), now_ms()) else {
            return unavailable;
        };
        if applied.writes.is_empty() {
            // Not found here may mean made on another node a moment ago.
            if attempt == 0
                && is_miss(&applied.reply)
                && catch_up(&shard, &node).await.is_ok()
                && node.heard.get() != heard
            {
                continue;
            }
            return applied.reply;
        }
        let op_id = crate::random::uuid4();
        let commit = shard
            .store
            .commit_accounts(&node.node, &op_id, &applied.writes, &applied.expected)
            .await;
        match commit {
            Ok(Commit::Done) if node.epoch.get() == epoch => {
                let mut applied_here = node.applied_here.borrow_mut();
                // An entry read before its commit's answer was handled stays here; applying
                // a few of this node's own entries again is harmless, an unbounded set not.
                if applied_here.len() >= LOG_MAX_LEN as usize {
                    applied_here.clear();
                }
                applied_here.insert(op_id);
                drop(applied_here);
                for sync in applied.syncs {
                    shard.broadcast_accounts(sync);
                }
                return applied.reply;
            }
            Ok(Commit::Done) => {
                // Reloaded in the meantime, perhaps from before this commit.
                for write in applied.writes {
                    if let Some(sync) = shard.accounts.absorb(write) {
                        shard.broadcast_accounts(sync);
                    }
                }
                return applied.reply;
            }
            Ok(Commit::Refused) => {
                metrics::add(&shard.metrics.cluster_account_refusals, 1);
                // Undo this node's decision on the records involved: Valkey's copies
                // replace them, after what the log says other nodes did.
                let (users, tokens) = applied.touched();
                let fresh = match catch_up(&shard, &node).await {
                    Ok(_) => shard.store.read_account_records(&users, &tokens).await,
                    Err(e) => Err(e),
                };
                let Ok(records) = fresh else {
                    node.stale.set(true);
                    return unavailable;
                };
                for record in records {
                    if let Some(sync) = shard.accounts.absorb(record) {
                        shard.broadcast_accounts(sync);
                    }
                }
            }
            Err(e) => {
                crate::log_line!("accounts: a change may not have been saved ({e}); reloading");
                node.stale.set(true);
                return unavailable;
            }
        }
    }
    unavailable
}

/// Answers that may only mean the record was made on another node a moment ago.
fn is_miss(reply: &DirectoryReply) -> bool {
    matches!(
        reply,
        DirectoryReply::Failed(
            AccountError::InvalidRefresh
                | AccountError::UserNotFound(_)
                | AccountError::SessionNotFound
        )
    )
}
