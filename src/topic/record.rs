//! The rules of topic records: the metadata the Topics API shows for a topic (its ID,
//! owner, creation time and description).
//!
//! A record lives in its topic's entry of the owner shard's [`super::TopicTable`] and is
//! changed only there. Its fields are what the persistent tier keeps
//! ([`crate::store::TopicRecord`]); this module says how one is made and who may change
//! it. How it looks on the wire is the API's.

pub use crate::store::TopicRecord;

/// Longest description a record may carry, in characters (as the original relay counts).
pub const MAX_DESCRIPTION_CHARS: usize = 500;

impl TopicRecord {
    /// A new record with a fresh ID.
    pub fn new(owner_id: &str, created_at_ms: u64, description: Option<String>) -> Self {
        TopicRecord {
            topic_id: crate::random::uuid4(),
            owner_id: owner_id.to_owned(),
            created_at_ms,
            description,
        }
    }

    /// The record a publish creates for a topic that had none: owned by the publisher and
    /// described by its display name, as the original relay does.
    pub fn auto_created(owner_id: &str, publisher_name: &str, created_at_ms: u64) -> Self {
        Self::new(
            owner_id,
            created_at_ms,
            Some(format!("Auto-created topic by {publisher_name}")),
        )
    }

    /// Whether `subject` may change or delete the record: its owner, or an admin.
    pub fn may_be_changed_by(&self, subject: &str, admin: bool) -> bool {
        admin || self.owner_id == subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_or_an_admin_may_change_a_record() {
        let record = TopicRecord::auto_created("alice", "Alice", 5);
        assert_eq!(
            record.description.as_deref(),
            Some("Auto-created topic by Alice")
        );
        assert!(record.may_be_changed_by("alice", false));
        assert!(!record.may_be_changed_by("bob", false));
        assert!(record.may_be_changed_by("bob", true));
    }
}
