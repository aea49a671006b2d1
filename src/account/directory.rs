//! The directory: the authoritative account state, on shard 0 only.
//!
//! Operations arrive from any shard (`Shard::directory`) and run to completion without
//! awaiting, so concurrent requests are applied one at a time: two rotations of the same
//! refresh token cannot both win, two registrations cannot take the same username. Each
//! operation returns its reply, the [`AccountSync`]s for the replicas, and the
//! [`AccountWrite`]s for the persistent tier. Passwords arrive already hashed.
//!
//! In cluster mode several nodes each hold a directory over one Valkey. Each operation
//! then also names what it decided on ([`Expectation`]s): its writes are made only if
//! Valkey still holds that, so two nodes cannot both win a rotation or a username. Changes
//! made by other nodes arrive as their writes and are taken in with [`Directory::absorb`].

use std::collections::HashMap;
use std::sync::Arc;

use super::refresh::{Changes, RefreshError, RefreshToken, RefreshTokens, Revocation};
use super::{AccountSync, DeniedToken, DenyList, User, MAX_DENIED, MAX_USERS};
use crate::auth::Permissions;

#[derive(Clone)]
pub enum DirectoryOp {
    CreateUser {
        username: String,
        email: Option<String>,
        password_hash: String,
        permissions: Permissions,
    },
    UpdateUser {
        user_id: String,
        patch: UserPatch,
    },
    DeleteUser {
        user_id: String,
    },
    /// Starts a refresh-token chain (a login).
    IssueRefresh {
        user_id: String,
        client_hint: Option<String>,
    },
    /// Rotates a refresh token: the old one is spent, a child is issued.
    Rotate {
        wire: String,
    },
    Revoke {
        wire: String,
        chain: bool,
    },
    Sessions {
        user_id: String,
    },
    EndSession {
        user_id: String,
        jti: String,
    },
    /// Puts an access token (its subject's `jti`) on the deny-list until `until_ms`.
    Deny {
        jti: String,
        subject: String,
        until_ms: u64,
    },
}

/// Fields of a user to change; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub email: Option<Option<String>>,
    pub password_hash: Option<String>,
    pub permissions: Option<Permissions>,
    pub is_active: Option<bool>,
}

#[derive(Debug)]
pub enum DirectoryReply {
    User(Arc<User>),
    Done,
    /// A new refresh token (wire form).
    Refresh(String),
    /// A successful rotation: the account and the child token.
    Rotated {
        user: Arc<User>,
        refresh: String,
    },
    Sessions(Vec<RefreshToken>),
    Failed(AccountError),
}

#[derive(Debug, PartialEq, Eq)]
pub enum AccountError {
    UsernameTaken(String),
    UserNotFound(String),
    MalformedRefresh,
    InvalidRefresh,
    /// The refresh token was fine but its account is gone or inactive.
    RefreshUserGone,
    SessionNotFound,
    Full(&'static str),
    /// The directory shard could not be reached or answered something else.
    Unavailable,
}

/// What the persistent tier must record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountWrite {
    SaveUser(Arc<User>),
    RemoveUser(String),
    SaveToken(RefreshToken),
    RemoveToken(String),
    Deny(DeniedToken),
}

/// What an operation decided on, for cluster mode: Valkey must still hold it when the
/// operation's writes are made (the same check and write, in one script), or the
/// operation is refused there and run again on fresher state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// No account has this username.
    NameFree(String),
    /// The account is at this revision ([`User::rev`]).
    User { user_id: String, rev: u64 },
    /// The refresh token exists and has this revocation (`None`: live).
    Token {
        jti: String,
        revoked: Option<Revocation>,
    },
}

pub struct Directory {
    users: HashMap<String, Arc<User>>,
    by_name: HashMap<String, String>,
    refresh: RefreshTokens,
    denied: DenyList,
    refresh_ttl_ms: u64,
}

/// The outcome of one operation.
pub struct Applied {
    pub reply: DirectoryReply,
    pub syncs: Vec<AccountSync>,
    pub writes: Vec<AccountWrite>,
    pub expected: Vec<Expectation>,
}

impl Applied {
    fn reply(reply: DirectoryReply) -> Applied {
        Applied {
            reply,
            syncs: Vec::new(),
            writes: Vec::new(),
            expected: Vec::new(),
        }
    }

    /// The user IDs and refresh-token IDs this operation wrote or decided on: the records
    /// to read back from Valkey when it was refused there.
    pub fn touched(&self) -> (Vec<String>, Vec<String>) {
        let (mut users, mut tokens) = (Vec::new(), Vec::new());
        for write in &self.writes {
            match write {
                AccountWrite::SaveUser(user) => users.push(user.user_id.clone()),
                AccountWrite::RemoveUser(id) => users.push(id.clone()),
                AccountWrite::SaveToken(token) => tokens.push(token.jti.clone()),
                AccountWrite::RemoveToken(jti) => tokens.push(jti.clone()),
                AccountWrite::Deny(_) => {}
            }
        }
        for expected in &self.expected {
            match expected {
                Expectation::User { user_id, .. } => users.push(user_id.clone()),
                Expectation::Token { jti, .. } => tokens.push(jti.clone()),
                Expectation::NameFree(_) => {}
            }
        }
        users.sort();
        users.dedup();
        tokens.sort();
        tokens.dedup();
        (users, tokens)
    }

    fn failed(e: AccountError) -> Applied {
        Applied::reply(DirectoryReply::Failed(e))
    }

    fn tokens(mut self, changes: Changes) -> Applied {
        self.expected.extend(
            changes
                .expected
                .into_iter()
                .map(|(jti, revoked)| Expectation::Token { jti, revoked }),
        );
        self.writes
            .extend(changes.saved.into_iter().map(AccountWrite::SaveToken));
        self.writes
            .extend(changes.removed.into_iter().map(AccountWrite::RemoveToken));
        self
    }
}

impl Directory {
    /// The directory as read back from the persistent tier (empty for the memory backend).
    pub fn restore(
        users: Vec<User>,
        tokens: Vec<RefreshToken>,
        denied: Vec<DeniedToken>,
        refresh_ttl_ms: u64,
    ) -> Directory {
        let mut dir = Directory {
            users: HashMap::new(),
            by_name: HashMap::new(),
            refresh: RefreshTokens::default(),
            denied: DenyList::from_entries(denied),
            refresh_ttl_ms,
        };
        for user in users {
            dir.by_name
                .insert(user.username.clone(), user.user_id.clone());
            dir.users.insert(user.user_id.clone(), Arc::new(user));
        }
        for token in tokens {
            dir.refresh.restore(token);
        }
        dir
    }

    /// The whole state for the replicas.
    pub fn snapshot(&self) -> AccountSync {
        AccountSync::Snapshot {
            users: self.users.values().cloned().collect(),
            denied: self.denied.entries(),
        }
    }

    pub fn by_username(&self, username: &str) -> Option<&Arc<User>> {
        self.users.get(self.by_name.get(username)?)
    }

    pub fn apply(&mut self, op: DirectoryOp, now_ms: u64) -> Applied {
        match op {
            DirectoryOp::CreateUser {
                username,
                email,
                password_hash,
                permissions,
            } => self.create_user(username, email, password_hash, permissions, now_ms),
            DirectoryOp::UpdateUser { user_id, patch } => self.update_user(&user_id, patch),
            DirectoryOp::DeleteUser { user_id } => self.delete_user(&user_id),
            DirectoryOp::IssueRefresh {
                user_id,
                client_hint,
            } => {
                let (wire, changes) =
                    self.refresh
                        .issue(&user_id, client_hint, None, now_ms, self.refresh_ttl_ms);
                Applied::reply(DirectoryReply::Refresh(wire)).tokens(changes)
            }
            DirectoryOp::Rotate { wire } => self.rotate(&wire, now_ms),
            DirectoryOp::Revoke { wire, chain } => match self.refresh.revoke(&wire, chain) {
                Ok(changes) => Applied::reply(DirectoryReply::Done).tokens(changes),
                Err(_) => Applied::failed(AccountError::MalformedRefresh),
            },
            DirectoryOp::Sessions { user_id } => Applied::reply(DirectoryReply::Sessions(
                self.refresh.sessions(&user_id, now_ms),
            )),
            DirectoryOp::EndSession { user_id, jti } => {
                match self.refresh.end_session(&user_id, &jti) {
                    Some(changes) => Applied::reply(DirectoryReply::Done).tokens(changes),
                    None => Applied::failed(AccountError::SessionNotFound),
                }
            }
            DirectoryOp::Deny {
                jti,
                subject,
                until_ms,
            } => self.deny(jti, subject, until_ms, now_ms),
        }
    }

    /// Forgets expired refresh tokens and deny-list entries.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<AccountWrite> {
        self.denied.sweep(now_ms);
        let changes = self.refresh.sweep(now_ms);
        Applied::reply(DirectoryReply::Done).tokens(changes).writes
    }

    fn create_user(
        &mut self,
        username: String,
        email: Option<String>,
        password_hash: String,
        permissions: Permissions,
        now_ms: u64,
    ) -> Applied {
        if self.by_name.contains_key(&username) {
            return Applied::failed(AccountError::UsernameTaken(username));
        }
        if self.users.len() >= MAX_USERS {
            return Applied::failed(AccountError::Full("user accounts"));
        }
        let user = Arc::new(User {
            user_id: crate::random::uuid4(),
            username,
            email,
            password_hash,
            is_active: true,
            created_at_ms: now_ms,
            permissions,
            rev: 0,
        });
        self.by_name
            .insert(user.username.clone(), user.user_id.clone());
        self.users.insert(user.user_id.clone(), Arc::clone(&user));
        let mut applied = self.changed_user(Arc::clone(&user));
        applied
            .expected
            .push(Expectation::NameFree(user.username.clone()));
        applied
    }

    fn update_user(&mut self, user_id: &str, patch: UserPatch) -> Applied {
        let Some(current) = self.users.get(user_id) else {
            return Applied::failed(AccountError::UserNotFound(user_id.to_owned()));
        };
        let mut user = User::clone(current);
        let expected = Expectation::User {
            user_id: user.user_id.clone(),
            rev: user.rev,
        };
        user.rev += 1;
        if let Some(email) = patch.email {
            user.email = email;
        }
        if let Some(hash) = patch.password_hash {
            user.password_hash = hash;
        }
        if let Some(permissions) = patch.permissions {
            user.permissions = permissions;
        }
        if let Some(active) = patch.is_active {
            user.is_active = active;
        }
        let user = Arc::new(user);
        self.users.insert(user.user_id.clone(), Arc::clone(&user));
        let mut applied = self.changed_user(user);
        applied.expected.push(expected);
        applied
    }

    fn changed_user(&self, user: Arc<User>) -> Applied {
        Applied {
            reply: DirectoryReply::User(Arc::clone(&user)),
            syncs: vec![AccountSync::User(Arc::clone(&user))],
            writes: vec![AccountWrite::SaveUser(user)],
            expected: Vec::new(),
        }
    }

    /// Deleting an account also ends its refresh-token chains (the original leaves them,
    /// to fail later at refresh time).
    fn delete_user(&mut self, user_id: &str) -> Applied {
        let Some(user) = self.users.remove(user_id) else {
            return Applied::failed(AccountError::UserNotFound(user_id.to_owned()));
        };
        self.by_name.remove(&user.username);
        let changes = self.refresh.remove_user(user_id);
        Applied {
            reply: DirectoryReply::Done,
            syncs: vec![AccountSync::UserRemoved(user_id.to_owned())],
            writes: vec![AccountWrite::RemoveUser(user_id.to_owned())],
            expected: vec![Expectation::User {
                user_id: user_id.to_owned(),
                rev: user.rev,
            }],
        }
        .tokens(changes)
    }

    fn rotate(&mut self, wire: &str, now_ms: u64) -> Applied {
        let (result, changes) = self.refresh.rotate(wire, now_ms);
        let spent = match result {
            Ok(token) => token,
            Err(RefreshError::Malformed) | Err(RefreshError::Invalid) => {
                return Applied::failed(AccountError::InvalidRefresh).tokens(changes)
            }
        };
        let user = match self.users.get(&spent.user_id) {
            Some(user) if user.is_active => Arc::clone(user),
            _ => {
                // The account went away: its chain is over.
                let mut changes = changes;
                if let Ok(more) = self.refresh.revoke(wire, true) {
                    changes.saved.extend(more.saved);
                    changes.expected.extend(more.expected);
                }
                return Applied::failed(AccountError::RefreshUserGone).tokens(changes);
            }
        };
        let (refresh, issued) = self.refresh.issue(
            &user.user_id,
            spent.client_hint.clone(),
            Some(spent.jti),
            now_ms,
            self.refresh_ttl_ms,
        );
        Applied::reply(DirectoryReply::Rotated { user, refresh })
            .tokens(changes)
            .tokens(issued)
    }

    fn deny(&mut self, jti: String, subject: String, until_ms: u64, now_ms: u64) -> Applied {
        if until_ms <= now_ms || self.denied.contains(Some(&subject), &jti) {
            return Applied::reply(DirectoryReply::Done);
        }
        if self.denied.len() >= MAX_DENIED {
            return Applied::failed(AccountError::Full("the logout deny-list"));
        }
        let entry = DeniedToken {
            subject: Some(subject.clone()),
            jti: jti.clone(),
            until_ms,
        };
        self.denied.insert(entry.clone());
        Applied {
            reply: DirectoryReply::Done,
            syncs: vec![AccountSync::Denied {
                jti,
                subject,
                until_ms,
            }],
            writes: vec![AccountWrite::Deny(entry)],
            expected: Vec::new(),
        }
    }

    /// Takes in a change another node made (or Valkey's current copy of a record, read
    /// back after a refused operation); returns what the replicas must learn of it.
    pub fn absorb(&mut self, write: AccountWrite) -> Option<AccountSync> {
        match write {
            AccountWrite::SaveUser(user) => {
                if let Some(old) = self.users.get(&user.user_id) {
                    if old.username != user.username
                        && self.by_name.get(&old.username) == Some(&old.user_id)
                    {
                        self.by_name.remove(&old.username);
                    }
                }
                self.by_name
                    .insert(user.username.clone(), user.user_id.clone());
                self.users.insert(user.user_id.clone(), Arc::clone(&user));
                Some(AccountSync::User(user))
            }
            AccountWrite::RemoveUser(id) => {
                // Its tokens go too (as when deleted here), including any the deleting
                // node had not heard of.
                self.refresh.remove_user(&id);
                let user = self.users.remove(&id)?;
                // A name is only this account's while it points here: the same name may
                // already belong to the account that took it on another node.
                if self.by_name.get(&user.username) == Some(&id) {
                    self.by_name.remove(&user.username);
                }
                Some(AccountSync::UserRemoved(id))
            }
            AccountWrite::SaveToken(token) => {
                self.refresh.put(token);
                None
            }
            AccountWrite::RemoveToken(jti) => {
                self.refresh.drop_token(&jti);
                None
            }
            AccountWrite::Deny(entry) => {
                let subject = entry.subject.clone()?;
                self.denied
                    .insert(entry.clone())
                    .then_some(AccountSync::Denied {
                        jti: entry.jti,
                        subject,
                        until_ms: entry.until_ms,
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        Directory::restore(Vec::new(), Vec::new(), Vec::new(), 86_400_000)
    }

    fn create(d: &mut Directory, name: &str) -> Arc<User> {
        match d
            .apply(
                DirectoryOp::CreateUser {
                    username: name.into(),
                    email: None,
                    password_hash: "h".into(),
                    permissions: Permissions::READ,
                },
                1,
            )
            .reply
        {
            DirectoryReply::User(u) => u,
            other => panic!("{other:?}"),
        }
    }

    /// A refresh token for `user`, issued at `now`, as the client gets it.
    fn issue_refresh(d: &mut Directory, user: &User, now: u64) -> String {
        let op = DirectoryOp::IssueRefresh {
            user_id: user.user_id.clone(),
            client_hint: None,
        };
        match d.apply(op, now).reply {
            DirectoryReply::Refresh(wire) => wire,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usernames_are_unique_and_changes_are_broadcast_and_persisted() {
        let mut d = dir();
        let alice = create(&mut d, "alice");
        let again = d.apply(
            DirectoryOp::CreateUser {
                username: "alice".into(),
                email: None,
                password_hash: "h".into(),
                permissions: Permissions::READ,
            },
            2,
        );
        assert!(matches!(
            again.reply,
            DirectoryReply::Failed(AccountError::UsernameTaken(_))
        ));
        assert!(again.syncs.is_empty() && again.writes.is_empty());
        let patched = d.apply(
            DirectoryOp::UpdateUser {
                user_id: alice.user_id.clone(),
                patch: UserPatch {
                    is_active: Some(false),
                    ..UserPatch::default()
                },
            },
            3,
        );
        assert!(matches!(&patched.syncs[..], [AccountSync::User(u)] if !u.is_active));
        assert!(matches!(&patched.writes[..], [AccountWrite::SaveUser(_)]));
    }

    #[test]
    fn rotation_needs_an_active_account() {
        let mut d = dir();
        let alice = create(&mut d, "alice");
        let first = issue_refresh(&mut d, &alice, 1);
        let DirectoryReply::Rotated {
            refresh: second, ..
        } = d
            .apply(
                DirectoryOp::Rotate {
                    wire: first.clone(),
                },
                2,
            )
            .reply
        else {
            panic!()
        };
        assert_ne!(first, second);
        let replay = d.apply(DirectoryOp::Rotate { wire: first }, 3);
        assert!(matches!(
            replay.reply,
            DirectoryReply::Failed(AccountError::InvalidRefresh)
        ));
        assert!(!replay.writes.is_empty(), "the revoked chain is persisted");

        let other = issue_refresh(&mut d, &alice, 4);
        d.apply(
            DirectoryOp::DeleteUser {
                user_id: alice.user_id.clone(),
            },
            5,
        );
        assert!(matches!(
            d.apply(DirectoryOp::Rotate { wire: other }, 6).reply,
            DirectoryReply::Failed(AccountError::InvalidRefresh)
        ));
    }

    #[test]
    fn deny_entries_are_kept_until_expiry() {
        let mut d = dir();
        let applied = d.apply(
            DirectoryOp::Deny {
                jti: "j".into(),
                subject: "u".into(),
                until_ms: 100,
            },
            1,
        );
        assert_eq!(applied.syncs.len(), 1);
        assert!(d
            .apply(
                DirectoryOp::Deny {
                    jti: "old".into(),
                    subject: "u".into(),
                    until_ms: 1,
                },
                1,
            )
            .syncs
            .is_empty());
        d.sweep(100);
        assert!(d.denied.is_empty());
    }

    #[test]
    fn operations_name_what_they_decided_on() {
        let mut d = dir();
        let created = d.apply(
            DirectoryOp::CreateUser {
                username: "alice".into(),
                email: None,
                password_hash: "h".into(),
                permissions: Permissions::READ,
            },
            1,
        );
        assert_eq!(created.expected, [Expectation::NameFree("alice".into())]);
        let DirectoryReply::User(alice) = created.reply else {
            panic!()
        };
        let patch = |d: &mut Directory| {
            d.apply(
                DirectoryOp::UpdateUser {
                    user_id: alice.user_id.clone(),
                    patch: UserPatch::default(),
                },
                2,
            )
        };
        let first = patch(&mut d);
        let second = patch(&mut d);
        let rev = |a: &Applied| match &a.writes[..] {
            [AccountWrite::SaveUser(u)] => u.rev,
            other => panic!("{other:?}"),
        };
        assert_eq!((rev(&first), rev(&second)), (1, 2));
        assert_eq!(
            second.expected,
            [Expectation::User {
                user_id: alice.user_id.clone(),
                rev: 1
            }]
        );
        let wire = issue_refresh(&mut d, &alice, 3);
        let jti = wire.split('.').next().unwrap().to_owned();
        let rotated = d.apply(DirectoryOp::Rotate { wire: wire.clone() }, 4);
        assert_eq!(
            rotated.expected,
            [Expectation::Token {
                jti: jti.clone(),
                revoked: None
            }]
        );
        let (users, tokens) = rotated.touched();
        assert!(users.is_empty());
        assert_eq!(tokens.len(), 2, "the spent token and its child");
        let replay = d.apply(DirectoryOp::Rotate { wire }, 5);
        assert!(replay.expected.contains(&Expectation::Token {
            jti,
            revoked: Some(Revocation::Rotated)
        }));
    }

    #[test]
    fn absorbed_changes_reach_the_replicas_and_keep_names_straight() {
        let mut d = dir();
        let alice = create(&mut d, "alice");
        // Another node gave the name to another account; this node's alice was never
        // committed and is then read back as absent.
        let other = Arc::new(User {
            user_id: "other".into(),
            ..User::clone(&alice)
        });
        assert!(matches!(
            d.absorb(AccountWrite::SaveUser(Arc::clone(&other))),
            Some(AccountSync::User(_))
        ));
        assert!(matches!(
            d.absorb(AccountWrite::RemoveUser(alice.user_id.clone())),
            Some(AccountSync::UserRemoved(_))
        ));
        assert_eq!(
            d.by_username("alice").map(|u| &u.user_id),
            Some(&other.user_id)
        );
        assert!(d
            .absorb(AccountWrite::RemoveUser("nobody".into()))
            .is_none());
        let entry = DeniedToken {
            subject: Some("other".into()),
            jti: "j".into(),
            until_ms: 10,
        };
        assert!(d.absorb(AccountWrite::Deny(entry.clone())).is_some());
        assert!(
            d.absorb(AccountWrite::Deny(entry)).is_none(),
            "known already"
        );
    }
}
