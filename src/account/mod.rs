//! User accounts: the original relay's users, password logins, refresh tokens and the
//! logout deny-list.
//!
//! Ownership: shard 0 holds the [`Directory`], the only writer of account state (users,
//! refresh-token chains, denied token IDs) and the only shard that persists it. Every shard,
//! shard 0 included, holds a [`Replica`] of the users and the deny-list, kept current by
//! [`AccountSync`] broadcasts, so that checking a request's token needs no cross-shard hop.
//! A directory change is broadcast before the reply to the shard that asked for it (the
//! mesh is FIFO per pair), so that shard already sees its own change when it answers.
//!
//! This module does no I/O and no password hashing on its own: persistence is `store`'s,
//! and the Argon2 work (`password`) is run off the executors by the API layer.

pub mod credentials;
pub mod denylist;
pub mod directory;
mod local;
pub mod password;
pub mod refresh;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Permission, Permissions, Principal};
use crate::text::hex;
pub use denylist::{DeniedToken, DenyList};
pub use directory::{AccountError, Directory, DirectoryOp, DirectoryReply, Expectation, UserPatch};
pub use local::{AccountWatch, Accounts};

/// A user account. Stored as JSON (`store::accounts`); `password_hash` is a PHC string,
/// empty for an account without a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub is_active: bool,
    pub created_at_ms: u64,
    #[serde(with = "permission_names")]
    pub permissions: Permissions,
    /// Counts the account's updates, so that in cluster mode a change decided on a stale
    /// copy is refused by Valkey (see `directory::Expectation`). Absent (0) in records
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Without the password hash: users end up in logs through error paths.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("is_active", &self.is_active)
            .field("permissions", &self.permissions)
            .field("rev", &self.rev)
            .finish_non_exhaustive()
    }
}

mod permission_names {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::auth::{Permission, Permissions};

    pub fn serialize<S: Serializer>(p: &Permissions, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.names())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Permissions, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .try_fold(Permissions::default(), |set, name| {
                Permission::from_name(name)
                    .map(|p| set | p.into())
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown permission {name}")))
            })
    }
}

/// A change of account state, sent by the directory to every shard's replica.
#[derive(Debug)]
pub enum AccountSync {
    /// Everything, once at start-up (after loading from the persistent tier).
    Snapshot {
        users: Vec<Arc<User>>,
        denied: Vec<DeniedToken>,
    },
    User(Arc<User>),
    UserRemoved(String),
    /// The token `jti` of `subject`, refused until `until_ms` (its expiry).
    Denied {
        jti: String,
        subject: String,
        until_ms: u64,
    },
    /// Start-up is complete (bootstrap administrator included): logins may be answered.
    Ready,
}

impl AccountSync {
    /// The token subject (user ID) whose sessions the change may end.
    pub fn subject(&self) -> Option<&str> {
        match self {
            AccountSync::User(user) => Some(&user.user_id),
            AccountSync::UserRemoved(id) => Some(id),
            AccountSync::Denied { subject, .. } => Some(subject),
            AccountSync::Snapshot { .. } | AccountSync::Ready => None,
        }
    }
}

/// Most deny-list entries; `/auth/logout` answers 503 beyond (entries leave at their
/// token's expiry).
pub const MAX_DENIED: usize = 1_000_000;
/// Most user accounts.
pub const MAX_USERS: usize = 100_000;

/// One shard's read copy of the users and the deny-list.
#[derive(Default)]
pub struct Replica {
    loaded: bool,
    users: HashMap<String, Arc<User>>,
    by_name: HashMap<String, String>,
    denied: DenyList,
}

impl Replica {
    pub fn apply(&mut self, sync: &AccountSync) {
        match sync {
            AccountSync::Snapshot { users, denied } => {
                self.users.clear();
                self.by_name.clear();
                for user in users {
                    self.put(Arc::clone(user));
                }
                self.denied = DenyList::from_entries(denied.iter().cloned());
            }
            AccountSync::Ready => self.loaded = true,
            AccountSync::User(user) => self.put(Arc::clone(user)),
            AccountSync::UserRemoved(id) => {
                if let Some(user) = self.users.remove(id) {
                    self.by_name.remove(&user.username);
                }
            }
            AccountSync::Denied {
                jti,
                subject,
                until_ms,
            } => {
                self.denied.insert(DeniedToken {
                    subject: Some(subject.clone()),
                    jti: jti.clone(),
                    until_ms: *until_ms,
                });
            }
        }
    }

    fn put(&mut self, user: Arc<User>) {
        if let Some(old) = self.users.get(&user.user_id) {
            if old.username != user.username {
                self.by_name.remove(&old.username);
            }
        }
        self.by_name
            .insert(user.username.clone(), user.user_id.clone());
        self.users.insert(user.user_id.clone(), user);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn user(&self, user_id: &str) -> Option<&Arc<User>> {
        self.users.get(user_id)
    }

    pub fn by_username(&self, username: &str) -> Option<&Arc<User>> {
        self.users.get(self.by_name.get(username)?)
    }

    /// Every user, in username order.
    pub fn users(&self) -> Vec<Arc<User>> {
        let mut all: Vec<Arc<User>> = self.users.values().cloned().collect();
        all.sort_by(|a, b| a.username.cmp(&b.username));
        all
    }

    /// Drops deny-list entries whose tokens have expired anyway.
    pub fn sweep(&mut self, now_ms: u64) {
        self.denied.sweep(now_ms);
    }

    /// Checks a verified token against account state: a logged-out token (its subject's
    /// `jti`) is refused; a
    /// token issued to an account (it has a `username` claim) needs that account to exist
    /// and be active, and carries the account's current permissions rather than the ones
    /// frozen into the token (returned when they differ).
    pub fn admit(
        &self,
        principal: &Principal,
        now_ms: u64,
    ) -> Result<Option<Permissions>, AuthError> {
        if let Some(jti) = &principal.jti {
            if self.denied.denies(&principal.subject, jti, now_ms) {
                return Err(AuthError::Revoked);
            }
        }
        if principal.username.is_none() {
            return Ok(None);
        }
        if !self.loaded {
            return Err(AuthError::AccountsLoading);
        }
        let user = self
            .users
            .get(&principal.subject)
            .ok_or(AuthError::UnknownUser)?;
        if !user.is_active {
            return Err(AuthError::Inactive);
        }
        Ok((user.permissions != principal.permissions).then_some(user.permissions))
    }
}

/// The permissions of the bootstrap administrator (flags are independent: admin alone
/// would not let it read or write).
pub fn admin_permissions() -> Permissions {
    Permissions::from(Permission::Admin) | Permission::Read.into() | Permission::Write.into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Whether `secret` hashes to the stored hex digest, compared in constant time.
pub fn digest_matches(stored_hex: &str, secret: &str) -> bool {
    let computed = sha256_hex(secret.as_bytes());
    // Both are 64 hex digits; every byte is compared, whatever differs first.
    stored_hex.len() == computed.len()
        && stored_hex
            .bytes()
            .zip(computed.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, username: Option<&str>, jti: Option<&str>) -> Principal {
        Principal {
            subject: subject.into(),
            permissions: Permissions::READ,
            expires_at: u64::MAX / 2000,
            topics: None,
            username: username.map(Into::into),
            jti: jti.map(Into::into),
        }
    }

    fn user(id: &str, active: bool, permissions: Permissions) -> Arc<User> {
        Arc::new(User {
            user_id: id.into(),
            username: format!("name-{id}"),
            email: None,
            password_hash: String::new(),
            is_active: active,
            created_at_ms: 0,
            permissions,
            rev: 0,
        })
    }

    #[test]
    fn account_tokens_follow_the_stored_account() {
        let mut r = Replica::default();
        let alice = principal("a", Some("alice"), Some("j1"));
        assert_eq!(r.admit(&alice, 0), Err(AuthError::AccountsLoading));
        r.apply(&AccountSync::Snapshot {
            users: vec![user("a", true, Permissions::READ)],
            denied: Vec::new(),
        });
        assert_eq!(r.admit(&alice, 0), Err(AuthError::AccountsLoading));
        r.apply(&AccountSync::Ready);
        assert_eq!(r.admit(&alice, 0), Ok(None));
        r.apply(&AccountSync::User(user("a", true, Permissions::WRITE)));
        assert_eq!(r.admit(&alice, 0), Ok(Some(Permissions::WRITE)));
        r.apply(&AccountSync::User(user("a", false, Permissions::WRITE)));
        assert_eq!(r.admit(&alice, 0), Err(AuthError::Inactive));
        r.apply(&AccountSync::UserRemoved("a".into()));
        assert_eq!(r.admit(&alice, 0), Err(AuthError::UnknownUser));
        assert!(r.by_username("name-a").is_none());
        // Service tokens (no username claim) are not accounts.
        assert_eq!(r.admit(&principal("svc", None, None), 0), Ok(None));
    }

    #[test]
    fn denied_token_ids_are_refused_until_they_expire() {
        let mut r = Replica::default();
        r.apply(&AccountSync::Denied {
            jti: "j1".into(),
            subject: "svc".into(),
            until_ms: 1000,
        });
        let svc = principal("svc", None, Some("j1"));
        assert_eq!(r.admit(&svc, 999), Err(AuthError::Revoked));
        assert_eq!(r.admit(&svc, 1000), Ok(None));
        let other = principal("other", None, Some("j1"));
        assert_eq!(r.admit(&other, 999), Ok(None), "another subject's j1");
        r.sweep(1000);
        assert!(r.denied.is_empty());
    }

    #[test]
    fn digests_are_hex_and_compared_whole() {
        let digest = sha256_hex(b"abc");
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digest_matches(&digest, "abc"));
        assert!(!digest_matches(&digest, "abd"));
    }

    #[test]
    fn users_round_trip_through_json() {
        let u = user("a", true, Permissions::READ | Permissions::ADMIN);
        let text = serde_json::to_string(&*u).unwrap();
        assert!(text.contains(r#""permissions":["read","admin"]"#), "{text}");
        let back: User = serde_json::from_str(&text).unwrap();
        assert_eq!(back, *u);
    }
}
