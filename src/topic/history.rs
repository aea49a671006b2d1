//! Reading a topic's stream older than its ring, as messages: on the shard that asks (a
//! subscriber's, or a history page's), over that shard's own link, never on the owner.
//!
//! The owner says which span the ring no longer covers (`Snapshot::history`,
//! `HistoryPage::stream`); this module reads it and rebuilds each entry into the same
//! delivery the owner built when it was published.

use std::sync::Arc;

use super::Message;
use crate::store::{Store, StoreError, StreamRange};

/// The live messages of `topic` in `range`, oldest first, at most `limit`; the flag says
/// whether the range held more.
pub async fn read(
    store: &Store,
    topic: &Arc<str>,
    range: &StreamRange,
    limit: usize,
) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
    store
        .history(topic, range, limit, |entry| {
            Arc::new(Message::from_entry(topic, entry))
        })
        .await
}

/// Like [`read`], newest first (a descending history page).
pub async fn read_newest_first(
    store: &Store,
    topic: &Arc<str>,
    range: &StreamRange,
    limit: usize,
) -> Result<Vec<Arc<Message>>, StoreError> {
    store
        .history_newest_first(topic, range, limit, |entry| {
            Arc::new(Message::from_entry(topic, entry))
        })
        .await
}
