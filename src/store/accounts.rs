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
//!
//! In cluster mode (`cluster.enabled`) every node's directory shares these keys, plus:
//! - `<prefix>:{accounts}:names` — hash: username → user ID, the index that keeps
//!   usernames unique across nodes (an entry whose account is gone or renamed is free).
//! - `<prefix>:{accounts}:log` — stream of account changes, trimmed to about
//!   [`LOG_MAX_LEN`] entries: field `n` (the node that made them), field `c` (the changes:
//!   JSON, each the full new record or its removal), field `o` (the operation's ID), so a
//!   node follows the others by reading the log alone.
//! - `<prefix>:{accounts}:op:<id>` — kept a minute after an operation committed, so that
//!   the same commit re-sent after a lost connection is not made twice.
//!
//! There a change is made by one script ([`COMMIT`]) that checks what the operation decided
//! on, writes the records and appends to the log, or does nothing at all.
//!
//! The layout is ours, not the original relay's (its keys are `user:<id>` hashes of
//! strings): accounts are not shared with a running original server.

use std::sync::Arc;

use redis::Value;
use serde_json::{json, Value as Json};

use super::stream::entry_id;
use super::{resp, MessageId, Store, StoreError, Ticket};
use crate::account::directory::AccountWrite;
use crate::account::refresh::{RefreshToken, Revocation};
use crate::account::{DeniedToken, Expectation, User};
use crate::rt::sleep;

/// About how many changes the log keeps; a node that falls further behind reloads
/// everything.
pub const LOG_MAX_LEN: u64 = 10_000;

/// How a cluster-mode account change ended in Valkey.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// Written and logged (or found already written, when it was re-sent).
    Done,
    /// Valkey no longer holds what the operation decided on: nothing was written.
    Refused,
}

/// One entry of the account log.
#[derive(Debug)]
pub struct LogEntry {
    pub id: MessageId,
    /// The node that made the change, and the ID it gave the operation.
    pub node: String,
    pub op: String,
    pub changes: Vec<AccountWrite>,
}

/// Accounts indexed by one [`INDEX_NAMES`] script.
const INDEX_BATCH: usize = 1000;

/// `HSETNX names <username> <id>` for each pair of ARGV.
const INDEX_NAMES: &str = r#"
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
"#;

/// Checks every expectation, then writes, marks the operation done and appends the
/// changes to the log, all or nothing. KEYS: users, refresh, denied, names, log, op.
/// ARGV: node, log length, operation ID, expectation count, expectations (kind, name,
/// field, wanted), write count, writes (kind, a, b, c), the changes' JSON.
const COMMIT: &str = r#"
local users, refresh, denied, names, log, op = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('EXISTS', op) == 1 then return {'done'} end
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local kind, name, field, want = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if kind == 'name' then
    local id = redis.call('HGET', names, name)
    if id then
      local raw = redis.call('HGET', users, id)
      if raw and cjson.decode(raw).username == name then return {'refused'} end
    end
  else
    local raw = redis.call('HGET', kind == 'user' and users or refresh, name)
    if not raw then return {'refused'} end
    local got = cjson.decode(raw)[field]
    if got == nil or got == cjson.null then got = '' end
    if tostring(got) ~= want then return {'refused'} end
  end
end
local writes = tonumber(ARGV[i])
i = i + 1
for _ = 1, writes do
  local kind, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if kind == 'user' then
    redis.call('HSET', users, a, b)
    redis.call('HSET', names, c, a)
  elseif kind == 'unuser' then
    local raw = redis.call('HGET', users, a)
    if raw then
      local name = cjson.decode(raw).username
      if redis.call('HGET', names, name) == a then redis.call('HDEL', names, name) end
    end
    redis.call('HDEL', users, a)
  elseif kind == 'token' then
    redis.call('HSET', refresh, a, b)
  elseif kind == 'untoken' then
    redis.call('HDEL', refresh, a)
  elseif kind == 'deny' then
    redis.call('ZADD', denied, b, a)
  end
end
redis.call('SET', op, '1', 'PX', 60000)
return {'done', redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[1], 'o', ARGV[3], 'c', ARGV[i])}
"#;

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

    /// Cluster mode: makes `writes` if Valkey still holds what `expected` says, and logs
    /// them as `node`'s, in one script; `op_id` names the attempt, so a re-sent commit is
    /// not made twice. Waits at most `storage.ack_timeout`; an error leaves it unknown
    /// whether the change was made.
    pub async fn commit_accounts(
        &self,
        node: &str,
        op_id: &str,
        writes: &[AccountWrite],
        expected: &[Expectation],
    ) -> Result<Commit, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(Commit::Done);
        };
        let key = |name: &str| format!("{}:{{accounts}}:{name}", v.prefix);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(COMMIT).arg(6);
        for name in ["users", "refresh", "denied", "names", "log"] {
            cmd.arg(key(name));
        }
        cmd.arg(key(&format!("op:{op_id}")))
            .arg(node)
            .arg(LOG_MAX_LEN)
            .arg(op_id)
            .arg(expected.len());
        for expectation in expected {
            let (kind, name, field, wanted) = match expectation {
                Expectation::NameFree(name) => ("name", name.as_str(), "", String::new()),
                Expectation::User { user_id, rev } => (
                    "user",
                    user_id.as_str(),
                    "rev",
                    // Records written before revisions were kept have none: 0.
                    if *rev == 0 {
                        String::new()
                    } else {
                        rev.to_string()
                    },
                ),
                Expectation::Token { jti, revoked } => (
                    "token",
                    jti.as_str(),
                    "revoked",
                    revoked.map(revocation_name).unwrap_or_default().to_owned(),
                ),
            };
            cmd.arg(kind).arg(name).arg(field).arg(wanted);
        }
        cmd.arg(writes.len());
        for write in writes {
            match write {
                AccountWrite::SaveUser(user) => cmd
                    .arg("user")
                    .arg(&user.user_id)
                    .arg(json_of(&**user)?)
                    .arg(&user.username),
                AccountWrite::RemoveUser(id) => cmd.arg("unuser").arg(id).arg("").arg(""),
                AccountWrite::SaveToken(token) => cmd
                    .arg("token")
                    .arg(&token.jti)
                    .arg(json_of(token)?)
                    .arg(""),
                AccountWrite::RemoveToken(jti) => cmd.arg("untoken").arg(jti).arg("").arg(""),
                AccountWrite::Deny(entry) => cmd
                    .arg("deny")
                    .arg(json_of(&(&entry.subject, &entry.jti))?)
                    .arg(entry.until_ms)
                    .arg(""),
            };
        }
        cmd.arg(encode_changes(writes)?);
        let Some(reply) = v.link.write(&cmd, true) else {
            return Err(StoreError::Unavailable("no reply to wait for".into()));
        };
        let limit = self
            .ack_timeout()
            .unwrap_or(std::time::Duration::from_secs(5));
        let value = futures_lite::future::or(
            async { reply.take().await.map_err(StoreError::from) },
            async {
                sleep(limit).await;
                Err(StoreError::PersistTimeout)
            },
        )
        .await?;
        match &value {
            Value::Array(parts) => match parts.first().and_then(resp::bytes) {
                Some(b"done") => Ok(Commit::Done),
                Some(b"refused") => Ok(Commit::Refused),
                _ => Err(StoreError::Rejected(
                    "unexpected account commit reply".into(),
                )),
            },
            other => Err(StoreError::Rejected(
                resp::server_error(other).unwrap_or_else(|| "unexpected commit reply".into()),
            )),
        }
    }

    /// Cluster mode: appends an entry without changes to the account log and returns its
    /// ID, from which a node that is about to load everything follows the log: whatever is
    /// logged after it is applied again, which is harmless (each change is a whole record).
    pub async fn mark_account_log(&self, node: &str) -> Result<MessageId, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(MessageId::ZERO);
        };
        let cmd = redis::cmd("XADD")
            .arg(format!("{}:{{accounts}}:log", v.prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_MAX_LEN)
            .arg("*")
            .arg("n")
            .arg(node)
            .arg("c")
            .arg("[]")
            .clone();
        let value = v.link.read(&cmd).await?;
        resp::bytes(&value)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(MessageId::parse)
            .ok_or_else(|| {
                StoreError::Unavailable(
                    resp::server_error(&value).unwrap_or_else(|| "unexpected XADD reply".into()),
                )
            })
    }

    /// Cluster mode: up to `count` log entries from `from` on, `from` included (so that the
    /// caller sees whether it is still there: `None` when the log was trimmed past it).
    pub async fn read_account_log(
        &self,
        from: MessageId,
        count: usize,
    ) -> Result<Option<Vec<LogEntry>>, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(Some(Vec::new()));
        };
        let cmd = redis::cmd("XRANGE")
            .arg(format!("{}:{{accounts}}:log", v.prefix))
            .arg(from.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .clone();
        let entries = match v.link.read(&cmd).await? {
            Value::Array(entries) => entries,
            other => {
                return Err(StoreError::Unavailable(
                    resp::server_error(&other).unwrap_or_else(|| "unexpected XRANGE reply".into()),
                ))
            }
        };
        if entries.first().and_then(entry_id) != Some(from) {
            return Ok(None);
        }
        Ok(Some(entries.iter().skip(1).filter_map(log_entry).collect()))
    }

    /// Cluster mode: Valkey's current copy of these users and refresh tokens, each as a
    /// save or (when Valkey has none) a removal.
    pub async fn read_account_records(
        &self,
        users: &[String],
        tokens: &[String],
    ) -> Result<Vec<AccountWrite>, StoreError> {
        let Some(v) = &self.valkey else {
            return Ok(Vec::new());
        };
        let key = |name: &str| format!("{}:{{accounts}}:{name}", v.prefix);
        let mut reads = Vec::new();
        for (name, ids) in [("users", users), ("refresh", tokens)] {
            if !ids.is_empty() {
                reads.push(redis::cmd("HMGET").arg(key(name)).arg(ids).clone());
            }
        }
        let mut replies = v.link.read_all(&reads).await?.into_iter();
        let mut records = Vec::new();
        if !users.is_empty() {
            for (id, raw) in users.iter().zip(values(replies.next())?) {
                records.push(
                    match raw.and_then(|r| serde_json::from_slice::<User>(&r).ok()) {
                        Some(user) => AccountWrite::SaveUser(Arc::new(user)),
                        None => AccountWrite::RemoveUser(id.clone()),
                    },
                );
            }
        }
        if !tokens.is_empty() {
            for (jti, raw) in tokens.iter().zip(values(replies.next())?) {
                records.push(
                    match raw.and_then(|r| serde_json::from_slice::<RefreshToken>(&r).ok()) {
                        Some(token) => AccountWrite::SaveToken(token),
                        None => AccountWrite::RemoveToken(jti.clone()),
                    },
                );
            }
        }
        Ok(records)
    }

    /// Cluster mode: enters the usernames of accounts written before (single-node, which
    /// keeps no index) into the index, without touching names already there; a script per
    /// [`INDEX_BATCH`] accounts rather than a command each.
    pub fn index_usernames(&self, users: &[User]) {
        let Some(v) = &self.valkey else {
            return;
        };
        for batch in users.chunks(INDEX_BATCH) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(INDEX_NAMES)
                .arg(1)
                .arg(format!("{}:{{accounts}}:names", v.prefix));
            for user in batch {
                cmd.arg(&user.username).arg(&user.user_id);
            }
            v.link.write(&cmd, false);
        }
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

fn json_of<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Rejected(e.to_string()))
}

/// As `serde` spells it in a stored token.
fn revocation_name(revoked: Revocation) -> &'static str {
    match revoked {
        Revocation::Rotated => "rotated",
        Revocation::Replay => "replay",
        Revocation::Logout => "logout",
        Revocation::Expired => "expired",
    }
}

/// The log's form of changes: `[{"u": user} | {"-u": id} | {"t": token} | {"-t": jti} |
/// {"d": [subject, jti, until_ms]}, …]`.
fn encode_changes(writes: &[AccountWrite]) -> Result<String, StoreError> {
    let items: Vec<Json> = writes
        .iter()
        .map(|write| match write {
            AccountWrite::SaveUser(user) => json!({ "u": &**user }),
            AccountWrite::RemoveUser(id) => json!({ "-u": id }),
            AccountWrite::SaveToken(token) => json!({ "t": token }),
            AccountWrite::RemoveToken(jti) => json!({ "-t": jti }),
            AccountWrite::Deny(entry) => {
                json!({ "d": (&entry.subject, &entry.jti, entry.until_ms) })
            }
        })
        .collect();
    json_of(&items)
}

/// Reads changes back; a change that does not parse (a newer node's) is skipped.
fn decode_changes(raw: &[u8]) -> Vec<AccountWrite> {
    let Ok(items) = serde_json::from_slice::<Vec<Json>>(raw) else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Json::Object(mut map) = item else {
                return None;
            };
            let (kind, value) = map.iter_mut().next()?;
            let value = value.take();
            Some(match kind.as_str() {
                "u" => AccountWrite::SaveUser(Arc::new(serde_json::from_value(value).ok()?)),
                "-u" => AccountWrite::RemoveUser(serde_json::from_value(value).ok()?),
                "t" => AccountWrite::SaveToken(serde_json::from_value(value).ok()?),
                "-t" => AccountWrite::RemoveToken(serde_json::from_value(value).ok()?),
                "d" => {
                    let (subject, jti, until_ms) = serde_json::from_value(value).ok()?;
                    AccountWrite::Deny(DeniedToken {
                        subject,
                        jti,
                        until_ms,
                    })
                }
                _ => return None,
            })
        })
        .collect()
}

/// One entry of the account log: `[id, ["n", node, "o", op, "c", changes]]`.
fn log_entry(entry: &Value) -> Option<LogEntry> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let field = |name: &[u8]| {
        fields
            .chunks(2)
            .find(|kv| resp::bytes(&kv[0]) == Some(name))
            .and_then(|kv| kv.get(1).and_then(resp::bytes))
    };
    Some(LogEntry {
        id: entry_id(entry)?,
        node: String::from_utf8_lossy(field(b"n")?).into_owned(),
        op: String::from_utf8_lossy(field(b"o").unwrap_or_default()).into_owned(),
        changes: decode_changes(field(b"c")?),
    })
}

/// The values of an `HMGET` reply, `None` for a missing field.
fn values(reply: Option<Value>) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    match reply {
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|item| resp::bytes(item).map(<[u8]>::to_vec))
            .collect()),
        other => Err(StoreError::Unavailable(
            other
                .as_ref()
                .and_then(resp::server_error)
                .unwrap_or_else(|| "unexpected HMGET reply".into()),
        )),
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

    #[test]
    fn logged_changes_read_back_as_written() {
        let user = Arc::new(User {
            user_id: "u1".into(),
            username: "alice".into(),
            email: None,
            password_hash: "h".into(),
            is_active: false,
            created_at_ms: 1_733_000_000_000,
            permissions: crate::auth::Permissions::READ,
            rev: 3,
        });
        let token = RefreshToken {
            jti: "t1".into(),
            user_id: "u1".into(),
            digest: "d".into(),
            parent: Some("t0".into()),
            issued_at_ms: 1,
            expires_at_ms: 2,
            last_used_ms: None,
            revoked: Some(Revocation::Rotated),
            client_hint: None,
        };
        let writes = vec![
            AccountWrite::SaveUser(user),
            AccountWrite::RemoveUser("u2".into()),
            AccountWrite::SaveToken(token),
            AccountWrite::RemoveToken("t9".into()),
            AccountWrite::Deny(DeniedToken {
                subject: Some("u1".into()),
                jti: "j".into(),
                until_ms: 5,
            }),
        ];
        let text = encode_changes(&writes).unwrap();
        assert_eq!(decode_changes(text.as_bytes()), writes);
        // What a newer node may add is skipped, not fatal.
        let mixed = format!("[{{\"x\": 1}}, {}]", &text[1..text.len() - 1]);
        assert_eq!(decode_changes(mixed.as_bytes()), writes);
        assert!(decode_changes(b"not json").is_empty());
    }

    #[test]
    fn revocations_are_named_as_stored() {
        for r in [
            Revocation::Rotated,
            Revocation::Replay,
            Revocation::Logout,
            Revocation::Expired,
        ] {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", revocation_name(r))
            );
        }
    }
}
