//! The logout deny-list: access tokens refused until they expire, each named by its
//! subject and its `jti`.
//!
//! A `jti` only identifies a token together with its subject: another subject's token
//! (minted by another issuer, or carelessly) may carry the same one, and logging out one
//! must not refuse the other. Entries read back from before the list kept subjects name a
//! `jti` alone and deny it for every subject until they expire, as they did.
//!
//! Owns the entries and their matching; who may add them is the directory's business,
//! where they are persisted `store`'s.

use std::collections::HashMap;

/// One denied token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeniedToken {
    /// `None` only for entries persisted before subjects were kept: every subject.
    pub subject: Option<String>,
    pub jti: String,
    /// Unix milliseconds at which the token expires anyway.
    pub until_ms: u64,
}

/// Denied tokens by `jti` (what a request's token is looked up by, with no allocation),
/// then by subject.
#[derive(Default)]
pub struct DenyList {
    by_jti: HashMap<String, Vec<(Option<String>, u64)>>,
    len: usize,
}

impl DenyList {
    pub fn from_entries(entries: impl IntoIterator<Item = DeniedToken>) -> DenyList {
        let mut list = DenyList::default();
        for entry in entries {
            list.insert(entry);
        }
        list
    }

    /// Adds `entry`; false if the same subject's `jti` is already there (its expiry stays).
    pub fn insert(&mut self, entry: DeniedToken) -> bool {
        let subjects = self.by_jti.entry(entry.jti).or_default();
        if subjects.iter().any(|(s, _)| *s == entry.subject) {
            return false;
        }
        subjects.push((entry.subject, entry.until_ms));
        self.len += 1;
        true
    }

    /// Whether `subject`'s token `jti` is refused at `now_ms`.
    pub fn denies(&self, subject: &str, jti: &str, now_ms: u64) -> bool {
        self.by_jti.get(jti).is_some_and(|subjects| {
            subjects.iter().any(|(s, until)| {
                *until > now_ms && s.as_deref().is_none_or(|denied| denied == subject)
            })
        })
    }

    /// Whether this exact entry (same subject, or both legacy) is present, expired or not.
    pub fn contains(&self, subject: Option<&str>, jti: &str) -> bool {
        self.by_jti
            .get(jti)
            .is_some_and(|subjects| subjects.iter().any(|(s, _)| s.as_deref() == subject))
    }

    /// Drops the entries whose tokens have expired anyway.
    pub fn sweep(&mut self, now_ms: u64) {
        let mut removed = 0;
        self.by_jti.retain(|_, subjects| {
            let before = subjects.len();
            subjects.retain(|(_, until)| *until > now_ms);
            removed += before - subjects.len();
            !subjects.is_empty()
        });
        self.len -= removed;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> Vec<DeniedToken> {
        self.by_jti
            .iter()
            .flat_map(|(jti, subjects)| {
                subjects.iter().map(|(subject, until_ms)| DeniedToken {
                    subject: subject.clone(),
                    jti: jti.clone(),
                    until_ms: *until_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(subject: Option<&str>, jti: &str, until_ms: u64) -> DeniedToken {
        DeniedToken {
            subject: subject.map(Into::into),
            jti: jti.into(),
            until_ms,
        }
    }

    #[test]
    fn a_jti_is_denied_for_its_subject_only() {
        let mut list = DenyList::default();
        assert!(list.insert(entry(Some("alice"), "j", 100)));
        assert!(
            !list.insert(entry(Some("alice"), "j", 200)),
            "already there"
        );
        assert!(list.denies("alice", "j", 99));
        assert!(!list.denies("bob", "j", 99), "another subject's token");
        assert!(!list.denies("alice", "k", 99));
        assert!(!list.denies("alice", "j", 100), "expired");
        assert!(list.insert(entry(Some("bob"), "j", 50)));
        assert!(list.denies("bob", "j", 49));
        assert_eq!(list.len(), 2);
        list.sweep(50);
        assert_eq!(list.entries(), [entry(Some("alice"), "j", 100)]);
        list.sweep(100);
        assert!(list.is_empty());
    }

    #[test]
    fn legacy_entries_deny_every_subject() {
        let list = DenyList::from_entries([entry(None, "j", 100)]);
        assert!(list.denies("alice", "j", 0));
        assert!(list.denies("bob", "j", 0));
        assert!(list.contains(None, "j"));
        assert!(!list.contains(Some("alice"), "j"));
    }
}
