//! Topic records: the metadata the Topics API shows for a topic (its ID, owner, creation
//! time and description), and the random UUIDs that identify them.
//!
//! A record lives in its topic's entry of the owner shard's [`super::TopicTable`] and is
//! changed only there; this module just defines it. Where it is persisted is `store`'s
//! business, how it looks on the wire the API's.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest description a record may carry, in characters (as the original relay counts).
pub const MAX_DESCRIPTION_CHARS: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// A UUID4, fixed when the record is created.
    pub topic_id: String,
    /// The token subject that created the topic (explicitly or by publishing first).
    pub owner_id: String,
    pub created_at_ms: u64,
    pub description: Option<String>,
}

impl TopicRecord {
    /// A new record with a fresh ID.
    pub fn new(owner_id: &str, created_at_ms: u64, description: Option<String>) -> Self {
        TopicRecord {
            topic_id: uuid4(),
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

/// A random (version 4) UUID in its hyphenated lower-case text form.
pub fn uuid4() -> String {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Fills `out` from the kernel's CSPRNG (getrandom(2): no file descriptor, does not block
/// once the kernel's pool is initialised, which it is long before a relay runs).
fn random_bytes(out: &mut [u8]) {
    let mut filled = 0;
    while filled < out.len() {
        let rest = &mut out[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return fallback_bytes(rest);
        }
    }
}

/// Unpredictable enough to keep IDs unique should getrandom(2) ever fail: std's
/// randomly keyed hasher over a process-wide counter.
fn fallback_bytes(out: &mut [u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for chunk in out.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let word = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_uuid4(text: &str) -> bool {
        let groups: Vec<&str> = text.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && text
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && groups[2].starts_with('4')
            && matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = uuid4();
        let b = uuid4();
        assert!(is_uuid4(&a), "{a}");
        assert!(is_uuid4(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn fallback_bytes_differ_between_calls() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fallback_bytes(&mut a);
        fallback_bytes(&mut b);
        assert_ne!(a, b);
    }

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
