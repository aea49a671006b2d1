//! Account state in the persistent tier, written only by the directory shard.
//!
//! Keys (one hash tag, so they share a Valkey Cluster slot with each other):
//! - `<prefix>:{accounts}:users` — hash: user ID → user JSON (`account::User`).
//! - `<prefix>:{accounts}:refresh` — hash: refresh-token ID → token JSON (digest only,
//!   never the secret).
//! - `<prefix>:{accounts}:denied` — sorted set: logged-out access tokens, each the JSON
//!   array `["<subject>", "<jti>"]`, scored by the Unix milliseconds at which the token
//!   expires (pruned past that). A member that is a bare `jti` was written before subjects
//!   were kept and denies that `jti` for every subject.
//!
//! The layout is ours, not the original relay's (its keys are `user:<id>` hashes of
//! strings): accounts are not shared with a running original server.

use redis::Value;

use super::{resp, Store, StoreError, Ticket};
use crate::account::directory::AccountWrite;
use crate::account::refresh::RefreshToken;
use crate::account::{DeniedToken, User};

/// Account state as read back at start-up.
#[derive(Default)]
pub struct LoadedAccounts {
    pub users: Vec<User>,
    pub tokens: Vec<RefreshToken>,
    pub denied: Vec<DeniedToken>,
}

impl Store {
    /// Queues the writes; with a persistent tier, the tickets to await before answering.
    pub fn write_accounts(&self, writes: Vec<AccountWrite>) -> Vec<Ticket> {
        let Some(v) = &self.valkey else {
            return Vec::new();
        };
        let key = |name: &str| format!("{}:{{accounts}}:{name}", v.prefix);
        writes
            .into_iter()
            .filter_map(|write| {
                let cmd = match write {
                    AccountWrite::SaveUser(user) => redis::cmd("HSET")
                        .arg(key("users"))
                        .arg(&user.user_id)
                        .arg(serde_json::to_string(&*user).ok()?)
                        .clone(),
                    AccountWrite::RemoveUser(id) => {
                        redis::cmd("HDEL").arg(key("users")).arg(id).clone()
                    }
                    AccountWrite::SaveToken(token) => redis::cmd("HSET")
                        .arg(key("refresh"))
                        .arg(&token.jti)
                        .arg(serde_json::to_string(&token).ok()?)
                        .clone(),
                    AccountWrite::RemoveToken(jti) => {
                        redis::cmd("HDEL").arg(key("refresh")).arg(jti).clone()
                    }
                    AccountWrite::Deny(entry) => redis::cmd("ZADD")
                        .arg(key("denied"))
                        .arg(entry.until_ms)
                        .arg(serde_json::to_string(&(&entry.subject, &entry.jti)).ok()?)
                        .clone(),
                };
                v.link.write(&cmd, true).map(Ticket)
            })
            .collect()
    }

    /// Drops deny-list entries whose tokens expired.
    pub fn prune_denied(&self, now_ms: u64) {
        if let Some(v) = &self.valkey {
            let cmd = redis::cmd("ZREMRANGEBYSCORE")
                .arg(format!("{}:{{accounts}}:denied", v.prefix))
                .arg("-inf")
                .arg(now_ms)
                .clone();
            v.link.write(&cmd, false);
        }
    }

    /// Reads every account record; records that do not parse are skipped with a warning
    /// rather than keeping the relay from starting.
    pub async fn load_accounts(&self) -> Result<LoadedAccounts, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(LoadedAccounts::default());
        };
        let key = |name: &str| format!("{}:{{accounts}}:{name}", v.prefix);
        let users = hash_values(v.link.read(redis::cmd("HGETALL").arg(key("users"))).await?)?;
        let tokens = hash_values(
            v.link
                .read(redis::cmd("HGETALL").arg(key("refresh")))
                .await?,
        )?;
        let denied = v
            .link
            .read(
                redis::cmd("ZRANGE")
                    .arg(key("denied"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(LoadedAccounts {
            users: parse_all(&users, "user"),
            tokens: parse_all(&tokens, "refresh token"),
            denied: scored(&denied)
                .into_iter()
                .map(|(member, until_ms)| denied_token(member, until_ms))
                .collect(),
        })
    }
}

/// A deny-list member: `["<subject>", "<jti>"]`, or a bare `jti` (every subject).
fn denied_token(member: String, until_ms: u64) -> DeniedToken {
    match serde_json::from_str::<(String, String)>(&member) {
        Ok((subject, jti)) => DeniedToken {
            subject: Some(subject),
            jti,
            until_ms,
        },
        Err(_) => DeniedToken {
            subject: None,
            jti: member,
            until_ms,
        },
    }
}

fn hash_values(reply: Value) -> Result<Vec<Vec<u8>>, StoreError> {
    match reply {
        Value::Array(items) => Ok(items
            .chunks(2)
            .filter_map(|kv| kv.get(1).and_then(resp::bytes).map(<[u8]>::to_vec))
            .collect()),
        Value::Map(pairs) => Ok(pairs
            .iter()
            .filter_map(|(_, v)| resp::bytes(v).map(<[u8]>::to_vec))
            .collect()),
        other => Err(StoreError::Unavailable(
            resp::server_error(&other).unwrap_or_else(|| "unexpected HGETALL reply".into()),
        )),
    }
}

fn parse_all<T: serde::de::DeserializeOwned>(values: &[Vec<u8>], what: &str) -> Vec<T> {
    values
        .iter()
        .filter_map(|raw| match serde_json::from_slice(raw) {
            Ok(record) => Some(record),
            Err(e) => {
                crate::log_line!("accounts: skipping a stored {what} that does not parse: {e}");
                None
            }
        })
        .collect()
}

/// `ZRANGE … WITHSCORES` as (member, score) pairs, in RESP2 (flat) or RESP3 (pairs) form.
fn scored(reply: &Value) -> Vec<(String, u64)> {
    let text = |v: &Value| resp::bytes(v).map(|b| String::from_utf8_lossy(b).into_owned());
    let score = |v: &Value| match v {
        Value::Double(d) => Some(*d as u64),
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)
            .and_then(|t| t.parse::<f64>().ok())
            .map(|d| d as u64),
    };
    match reply {
        Value::Array(items) if items.iter().all(|i| !matches!(i, Value::Array(_))) => items
            .chunks(2)
            .filter_map(|kv| Some((text(&kv[0])?, score(kv.get(1)?)?)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|pair| match pair {
                Value::Array(kv) => Some((text(kv.first()?)?, score(kv.get(1)?)?)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_members_name_a_subject_or_are_legacy() {
        let token = denied_token(r#"["alice","j1"]"#.into(), 5);
        assert_eq!(token.subject.as_deref(), Some("alice"));
        assert_eq!((token.jti.as_str(), token.until_ms), ("j1", 5));
        let member = serde_json::to_string(&(&token.subject, &token.jti)).unwrap();
        assert_eq!(denied_token(member, 5), token, "written as read");
        let legacy = denied_token("0123abcd".into(), 7);
        assert_eq!(legacy.subject, None);
        assert_eq!(legacy.jti, "0123abcd");
    }
}
