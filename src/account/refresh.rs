//! Refresh tokens: rotating chains, replay detection, sessions.
//!
//! A refresh token on the wire is `<jti>.<secret>`; only the SHA-256 of the secret is kept.
//! Every successful refresh rotates: the presented token is marked `rotated` and a child is
//! issued. Presenting a rotated token again is a replay (someone else holds a copy), and
//! revokes the whole chain — every token connected to it through parent links.
//!
//! This table belongs to the directory shard alone (see `account::directory`); it never does
//! I/O and never sees the clock except through the `now_ms` arguments. Bound: at most
//! [`MAX_TOKENS_PER_USER`] tokens per user (issuing beyond evicts that user's oldest, revoked
//! ones first), and expired tokens are dropped by [`RefreshTokens::sweep`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Tokens (live and revoked) remembered per user.
pub const MAX_TOKENS_PER_USER: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    Rotated,
    Replay,
    Logout,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub jti: String,
    pub user_id: String,
    /// Hex SHA-256 of the secret half.
    pub digest: String,
    pub parent: Option<String>,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    pub last_used_ms: Option<u64>,
    pub revoked: Option<Revocation>,
    pub client_hint: Option<String>,
}

/// Why a refresh was refused. The wire answer is the same for all but `UserGone`: telling
/// a caller which part of a stolen token was wrong helps only the thief.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    Malformed,
    Invalid,
}

/// What a call changed, for the persistent tier.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub saved: Vec<RefreshToken>,
    pub removed: Vec<String>,
    /// Each existing token the call rewrote, with the revocation it had when the call
    /// decided: in cluster mode the write happens only if Valkey still has that (see
    /// `account::directory::Expectation`), so one rotation wins across nodes.
    pub expected: Vec<(String, Option<Revocation>)>,
}

#[derive(Default)]
pub struct RefreshTokens {
    by_jti: HashMap<String, RefreshToken>,
    by_user: HashMap<String, Vec<String>>,
}

/// Splits `<jti>.<secret>`; both halves must be non-empty.
pub fn split(wire: &str) -> Result<(&str, &str), RefreshError> {
    match wire.split_once('.') {
        Some((jti, secret)) if !jti.is_empty() && !secret.is_empty() && jti.len() <= 64 => {
            Ok((jti, secret))
        }
        _ => Err(RefreshError::Malformed),
    }
}

impl RefreshTokens {
    /// Puts back a token read from the persistent tier.
    pub fn restore(&mut self, token: RefreshToken) {
        self.by_user
            .entry(token.user_id.clone())
            .or_default()
            .push(token.jti.clone());
        self.by_jti.insert(token.jti.clone(), token);
    }

    /// Takes a token as another node wrote it (cluster mode), replacing this one's copy.
    pub fn put(&mut self, token: RefreshToken) {
        if let Some(old) = self.by_jti.get_mut(&token.jti) {
            if old.user_id == token.user_id {
                *old = token;
                return;
            }
            let jti = token.jti.clone();
            self.forget(&jti);
        }
        self.restore(token);
    }

    /// Forgets a token another node removed (cluster mode).
    pub fn drop_token(&mut self, jti: &str) {
        self.forget(jti);
    }

    /// Issues a token for `user_id`; returns the wire form and what changed.
    pub fn issue(
        &mut self,
        user_id: &str,
        client_hint: Option<String>,
        parent: Option<String>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> (String, Changes) {
        let mut changes = Changes::default();
        self.make_room(user_id, &mut changes);
        let jti = crate::random::uuid4();
        let secret = crate::random::hex_string::<32>();
        let token = RefreshToken {
            jti: jti.clone(),
            user_id: user_id.to_owned(),
            digest: super::sha256_hex(secret.as_bytes()),
            parent,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            last_used_ms: None,
            revoked: None,
            client_hint,
        };
        changes.saved.push(token.clone());
        self.restore(token);
        (format!("{jti}.{secret}"), changes)
    }

    /// Marks the presented token rotated and returns it (the caller issues the child).
    /// A replayed rotated token revokes its chain; an expired one is marked so.
    pub fn rotate(
        &mut self,
        wire: &str,
        now_ms: u64,
    ) -> (Result<RefreshToken, RefreshError>, Changes) {
        let mut changes = Changes::default();
        let (jti, secret) = match split(wire) {
            Ok(parts) => parts,
            Err(e) => return (Err(e), changes),
        };
        let Some(token) = self.by_jti.get_mut(jti) else {
            return (Err(RefreshError::Invalid), changes);
        };
        if !super::digest_matches(&token.digest, secret) {
            return (Err(RefreshError::Invalid), changes);
        }
        match token.revoked {
            Some(Revocation::Rotated) => {
                let jti = jti.to_owned();
                self.revoke_chain(&jti, Revocation::Replay, &mut changes);
                return (Err(RefreshError::Invalid), changes);
            }
            Some(_) => return (Err(RefreshError::Invalid), changes),
            None => {}
        }
        changes.expected.push((token.jti.clone(), None));
        if token.expires_at_ms <= now_ms {
            token.revoked = Some(Revocation::Expired);
            changes.saved.push(token.clone());
            return (Err(RefreshError::Invalid), changes);
        }
        token.revoked = Some(Revocation::Rotated);
        token.last_used_ms = Some(now_ms);
        changes.saved.push(token.clone());
        (Ok(token.clone()), changes)
    }

    /// Revokes the token (or its whole chain) if `wire` names one and its secret matches;
    /// anything else is silently ignored, so the endpoint cannot be used to probe tokens.
    pub fn revoke(&mut self, wire: &str, chain: bool) -> Result<Changes, RefreshError> {
        let (jti, secret) = split(wire)?;
        let mut changes = Changes::default();
        let matches = self
            .by_jti
            .get(jti)
            .is_some_and(|t| super::digest_matches(&t.digest, secret));
        if matches {
            let jti = jti.to_owned();
            if chain {
                self.revoke_chain(&jti, Revocation::Logout, &mut changes);
            } else {
                self.mark(&jti, Revocation::Logout, &mut changes);
            }
        }
        Ok(changes)
    }

    /// Revokes one of `user_id`'s own live tokens by jti; false if there is none.
    pub fn end_session(&mut self, user_id: &str, jti: &str) -> Option<Changes> {
        let live = self
            .by_jti
            .get(jti)
            .is_some_and(|t| t.user_id == user_id && t.revoked.is_none());
        live.then(|| {
            let mut changes = Changes::default();
            self.mark(jti, Revocation::Logout, &mut changes);
            changes
        })
    }

    /// The user's live tokens, oldest first.
    pub fn sessions(&self, user_id: &str, now_ms: u64) -> Vec<RefreshToken> {
        let mut live: Vec<RefreshToken> = self
            .by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|jti| self.by_jti.get(jti))
            .filter(|t| t.revoked.is_none() && t.expires_at_ms > now_ms)
            .cloned()
            .collect();
        live.sort_by_key(|t| t.issued_at_ms);
        live
    }

    /// Forgets every token of a deleted user.
    pub fn remove_user(&mut self, user_id: &str) -> Changes {
        let mut changes = Changes::default();
        for jti in self.by_user.remove(user_id).unwrap_or_default() {
            self.by_jti.remove(&jti);
            changes.removed.push(jti);
        }
        changes
    }

    /// Drops tokens past their expiry: they can no longer be used, nor replayed usefully.
    pub fn sweep(&mut self, now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        let expired: Vec<String> = self
            .by_jti
            .values()
            .filter(|t| t.expires_at_ms <= now_ms)
            .map(|t| t.jti.clone())
            .collect();
        for jti in expired {
            self.forget(&jti);
            changes.removed.push(jti);
        }
        changes
    }

    pub fn len(&self) -> usize {
        self.by_jti.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_jti.is_empty()
    }

    fn mark(&mut self, jti: &str, why: Revocation, changes: &mut Changes) {
        if let Some(token) = self.by_jti.get_mut(jti) {
            if token.revoked.is_none() || why == Revocation::Replay {
                changes.expected.push((jti.to_owned(), token.revoked));
                token.revoked = Some(why);
                changes.saved.push(token.clone());
            }
        }
    }

    /// Revokes every token connected to `jti`: up the parent links to the root, then every
    /// descendant of the root. Other chains of the same user are left alone.
    fn revoke_chain(&mut self, jti: &str, why: Revocation, changes: &mut Changes) {
        let Some(user_id) = self.by_jti.get(jti).map(|t| t.user_id.clone()) else {
            return;
        };
        let mut root = jti.to_owned();
        // Parent links only point to older tokens, so the walk ends; the bound is a guard
        // against a corrupted store.
        for _ in 0..MAX_TOKENS_PER_USER {
            match self.by_jti.get(&root).and_then(|t| t.parent.clone()) {
                Some(parent) if self.by_jti.contains_key(&parent) => root = parent,
                _ => break,
            }
        }
        let family: Vec<String> = self.by_user.get(&user_id).cloned().unwrap_or_default();
        let mut chain = vec![root];
        let mut i = 0;
        while i < chain.len() {
            let current = chain[i].clone();
            for jti in &family {
                let child = self
                    .by_jti
                    .get(jti)
                    .is_some_and(|t| t.parent.as_deref() == Some(current.as_str()));
                if child && !chain.contains(jti) {
                    chain.push(jti.clone());
                }
            }
            i += 1;
        }
        for jti in chain {
            if let Some(token) = self.by_jti.get_mut(&jti) {
                if token.revoked != Some(why) {
                    changes.expected.push((jti.clone(), token.revoked));
                    token.revoked = Some(why);
                    changes.saved.push(token.clone());
                }
            }
        }
    }

    /// Keeps the user under [`MAX_TOKENS_PER_USER`]: revoked tokens go first, then the
    /// oldest live ones.
    fn make_room(&mut self, user_id: &str, changes: &mut Changes) {
        let Some(jtis) = self.by_user.get(user_id) else {
            return;
        };
        if jtis.len() < MAX_TOKENS_PER_USER {
            return;
        }
        let victim = jtis
            .iter()
            .filter_map(|jti| self.by_jti.get(jti))
            .min_by_key(|t| (t.revoked.is_none(), t.issued_at_ms))
            .map(|t| t.jti.clone());
        if let Some(jti) = victim {
            self.forget(&jti);
            changes.removed.push(jti);
        }
    }

    fn forget(&mut self, jti: &str) {
        if let Some(token) = self.by_jti.remove(jti) {
            if let Some(list) = self.by_user.get_mut(&token.user_id) {
                list.retain(|j| j != jti);
                if list.is_empty() {
                    self.by_user.remove(&token.user_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn issue(t: &mut RefreshTokens, user: &str, parent: Option<String>, now: u64) -> String {
        t.issue(user, Some("test".into()), parent, now, DAY).0
    }

    fn jti(wire: &str) -> String {
        split(wire).unwrap().0.to_owned()
    }

    #[test]
    fn rotation_then_replay_revokes_the_chain_only() {
        let mut t = RefreshTokens::default();
        let first = issue(&mut t, "u", None, 0);
        let other_chain = issue(&mut t, "u", None, 0);
        let rotated = t.rotate(&first, 1).0.unwrap();
        assert_eq!(rotated.revoked, Some(Revocation::Rotated));
        let second = issue(&mut t, "u", Some(rotated.jti), 1);
        // The thief replays the first token: refused, and the legitimate child dies too.
        let (replay, changes) = t.rotate(&first, 2);
        assert_eq!(replay, Err(RefreshError::Invalid));
        assert!(changes.saved.iter().any(|s| s.jti == jti(&second)));
        assert_eq!(t.rotate(&second, 3).0, Err(RefreshError::Invalid));
        // A separate login of the same user is unaffected.
        assert!(t.rotate(&other_chain, 3).0.is_ok());
    }

    #[test]
    fn wrong_secret_expiry_and_malformed_tokens_are_refused() {
        let mut t = RefreshTokens::default();
        let wire = issue(&mut t, "u", None, 0);
        let forged = format!("{}.{}", jti(&wire), "0".repeat(64));
        assert_eq!(t.rotate(&forged, 1).0, Err(RefreshError::Invalid));
        assert_eq!(t.rotate("nodot", 1).0, Err(RefreshError::Malformed));
        assert_eq!(t.rotate(".x", 1).0, Err(RefreshError::Malformed));
        assert_eq!(t.rotate("x.", 1).0, Err(RefreshError::Malformed));
        let (expired, changes) = t.rotate(&wire, DAY);
        assert_eq!(expired, Err(RefreshError::Invalid));
        assert_eq!(changes.saved[0].revoked, Some(Revocation::Expired));
        assert_eq!(t.sweep(DAY).removed, vec![jti(&wire)]);
        assert!(t.is_empty());
    }

    #[test]
    fn revoke_needs_the_secret_and_can_take_the_chain() {
        let mut t = RefreshTokens::default();
        let first = issue(&mut t, "u", None, 0);
        let parent = t.rotate(&first, 1).0.unwrap().jti;
        let second = issue(&mut t, "u", Some(parent), 1);
        let forged = format!("{}.{}", jti(&second), "0".repeat(64));
        assert!(t.revoke(&forged, true).unwrap().saved.is_empty());
        assert_eq!(t.revoke("garbage", false), Err(RefreshError::Malformed));
        // The spent parent alone: its live child still rotates.
        assert!(t.revoke(&first, false).unwrap().saved.is_empty());
        let spent = t.rotate(&second, 2).0.unwrap().jti;
        let third = issue(&mut t, "u", Some(spent), 2);
        // The spent root with its chain: the live grandchild is revoked with it.
        assert!(t.revoke(&first, true).is_ok());
        assert_eq!(t.rotate(&third, 3).0, Err(RefreshError::Invalid));
        assert!(t.sessions("u", 3).is_empty());
    }

    #[test]
    fn sessions_and_the_per_user_bound() {
        let mut t = RefreshTokens::default();
        let first = issue(&mut t, "u", None, 0);
        for now in 1..MAX_TOKENS_PER_USER as u64 + 10 {
            issue(&mut t, "u", None, now);
        }
        assert_eq!(t.len(), MAX_TOKENS_PER_USER);
        assert_eq!(
            t.rotate(&first, 1000).0,
            Err(RefreshError::Invalid),
            "oldest evicted"
        );
        let live = t.sessions("u", 1000);
        assert_eq!(live.len(), MAX_TOKENS_PER_USER);
        assert!(t.end_session("someone-else", &live[0].jti).is_none());
        assert!(t.end_session("u", &live[0].jti).is_some());
        assert_eq!(t.sessions("u", 1000).len(), MAX_TOKENS_PER_USER - 1);
        assert_eq!(t.remove_user("u").removed.len(), MAX_TOKENS_PER_USER);
        assert!(t.is_empty());
    }
}
