//! The original relay's account API: password login, refresh-token rotation and
//! revocation, logout, `/auth/me`, sessions, and user management for administrators.
//!
//! Handlers validate the request, do the Argon2 work off the executor (`rt::blocking`),
//! and change account state only through `Shard::directory`. Bodies and `detail` texts
//! follow the original relay's, since its Python client reads them; errors still
//! carry our stable `code` beside the `detail`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::shard::Shard;
use crate::account::credentials::{self, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use crate::account::password;
use crate::account::refresh::RefreshToken;
use crate::account::{
    admin_permissions, AccountError, DirectoryOp, DirectoryReply, User, UserPatch,
};
use crate::auth::{Permission, Permissions, Principal};
use crate::http::request::form_pairs;
use crate::http::Response;
use crate::rt::{blocking, now_ms};
use crate::text::rfc3339;
use crate::topic::display_name;

/// `POST /auth/login`: an OAuth2 password form (`username`, `password`, optional
/// `grant_type=password`).
pub async fn login(
    shard: &Rc<Shard>,
    peer: Option<IpAddr>,
    body: &[u8],
) -> Result<Response, ApiError> {
    charge_attempt(shard, peer)?;
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("INVALID_FORM", "the form is not valid UTF-8"))?;
    let (mut username, mut pass, mut grant) = (None, None, None);
    for (key, value) in form_pairs(text) {
        match &*key {
            "username" => username = Some(value.into_owned()),
            "password" => pass = Some(value.into_owned()),
            "grant_type" => grant = Some(value.into_owned()),
            _ => {}
        }
    }
    let (Some(username), Some(pass)) = (username, pass) else {
        return Err(ApiError::invalid(
            "MISSING_FIELD",
            "the form needs `username` and `password` (application/x-www-form-urlencoded)",
        ));
    };
    if grant.as_deref().is_some_and(|g| g != "password") {
        return Err(ApiError::invalid(
            "UNSUPPORTED_GRANT_TYPE",
            "`grant_type` must be `password`",
        ));
    }
    ensure_loaded(shard)?;
    let user = shard.accounts.replica().by_username(&username).cloned();
    // Unknown names cost the same Argon2 work as wrong passwords: timing reveals nothing.
    let stored = user
        .as_ref()
        .map_or_else(|| password::decoy().to_owned(), |u| u.password_hash.clone());
    let matches = pass.len() <= MAX_PASSWORD_BYTES
        && blocking(move || password::verify(&stored, &pass)).await;
    let user = match user {
        Some(user) if matches => user,
        _ => {
            return Err(
                ApiError::new(401, "INVALID_CREDENTIALS", "Incorrect username or password")
                    .with_header("WWW-Authenticate", "Bearer"),
            )
        }
    };
    if !user.is_active {
        return Err(ApiError::new(
            403,
            "USER_INACTIVE",
            "User account is inactive",
        ));
    }
    let refresh = match shard
        .directory(DirectoryOp::IssueRefresh {
            user_id: user.user_id.clone(),
            client_hint: Some("password-login".to_owned()),
        })
        .await
    {
        DirectoryReply::Refresh(wire) => wire,
        other => return Err(unexpected(other)),
    };
    token_response(shard, &user, refresh)
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
    #[serde(default)]
    revoke_chain: bool,
}

fn refresh_body(body: &[u8]) -> Result<RefreshBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "INVALID_BODY",
            format!("expected a JSON object with a `refresh_token` string: {e}"),
        )
    })
}

/// `POST /auth/token/refresh`: rotates the refresh token; the answer has a new access token
/// and the next refresh token of the chain.
pub async fn refresh(
    shard: &Rc<Shard>,
    peer: Option<IpAddr>,
    body: &[u8],
) -> Result<Response, ApiError> {
    charge_attempt(shard, peer)?;
    let request = refresh_body(body)?;
    ensure_loaded(shard)?;
    match shard
        .directory(DirectoryOp::Rotate {
            wire: request.refresh_token,
        })
        .await
    {
        DirectoryReply::Rotated { user, refresh } => token_response(shard, &user, refresh),
        DirectoryReply::Failed(AccountError::InvalidRefresh | AccountError::MalformedRefresh) => {
            Err(
                ApiError::new(401, "INVALID_REFRESH_TOKEN", "invalid refresh token")
                    .with_header("WWW-Authenticate", "Bearer"),
            )
        }
        DirectoryReply::Failed(AccountError::RefreshUserGone) => {
            Err(ApiError::new(401, "USER_NOT_FOUND", "user not found"))
        }
        other => Err(unexpected(other)),
    }
}

/// `POST /auth/token/revoke`: 204 whether or not the token existed, so it cannot be used
/// to probe tokens; only a malformed one is refused.
pub async fn revoke(shard: &Rc<Shard>, body: &[u8]) -> Result<Response, ApiError> {
    let request = refresh_body(body)?;
    ensure_loaded(shard)?;
    match shard
        .directory(DirectoryOp::Revoke {
            wire: request.refresh_token,
            chain: request.revoke_chain,
        })
        .await
    {
        DirectoryReply::Done => Ok(Response::empty(204)),
        DirectoryReply::Failed(AccountError::MalformedRefresh) => Err(ApiError::new(
            400,
            "MALFORMED_REFRESH_TOKEN",
            "malformed refresh token",
        )),
        other => Err(unexpected(other)),
    }
}

/// `POST /auth/logout`: the access token (its subject's `jti`) is refused from now until
/// it expires, on HTTP and WebSocket alike. A token without `jti` cannot be told apart from
/// the subject's other tokens, so it cannot be logged out: 400 says so (the original relay
/// answered 204 and left it valid).
pub async fn logout(shard: &Rc<Shard>, principal: &Principal) -> Result<Response, ApiError> {
    let Some(jti) = principal.jti.clone() else {
        return Err(ApiError::new(
            400,
            "TOKEN_NOT_REVOCABLE",
            "this token has no `jti` claim, so it cannot be logged out; it stays valid until \
             it expires (issue tokens with a `jti`, or rotate the signing key)",
        ));
    };
    let until_ms =
        principal.expires_at.saturating_mul(1000) + shard.config.jwt.leeway.as_millis() as u64;
    let deny = DirectoryOp::Deny {
        jti,
        subject: principal.subject.clone(),
        until_ms,
    };
    match shard.directory(deny).await {
        DirectoryReply::Done => Ok(Response::empty(204)),
        other => Err(unexpected(other)),
    }
}

/// `GET /auth/me`. A service token (not issued to an account) is described from its claims.
pub async fn me(shard: &Rc<Shard>, principal: &Principal) -> Result<Response, ApiError> {
    let owned_topics = owned_topics(shard, &principal.subject).await?;
    let user = principal
        .username
        .as_ref()
        .and_then(|_| shard.accounts.replica().user(&principal.subject).cloned());
    let body = match user {
        Some(user) => user_json(&user, owned_topics),
        None => json!({
            "user_id": principal.subject,
            "username": principal.subject,
            "email": null,
            "is_active": true,
            "created_at": null,
            "permissions": principal.permissions.names(),
            "owned_topics": owned_topics,
        }),
    };
    Ok(Response::json(200, body.to_string().into_bytes()))
}

/// The names of the topics `user_id` created (`owned_topics` of the original's users).
async fn owned_topics(shard: &Rc<Shard>, user_id: &str) -> Result<Vec<String>, ApiError> {
    let records = super::topics::gather(shard, Some(user_id), |_| true).await?;
    Ok(records
        .iter()
        .map(|(key, _)| display_name(key).to_owned())
        .collect())
}

/// `POST /auth/register` (admin).
pub async fn register(shard: &Rc<Shard>, body: &[u8]) -> Result<Response, ApiError> {
    let fields = super::fields::json_object(body)?;
    let username = match fields.get("username") {
        Some(Value::String(name)) => valid_username(name)?,
        _ => {
            return Err(ApiError::invalid(
                "MISSING_FIELD",
                "`username` (a string) is required",
            ))
        }
    };
    let email = optional_email(fields.get("email"))?.flatten();
    let pass = match fields.get("password") {
        Some(Value::String(p)) => valid_password(p)?,
        _ => {
            return Err(ApiError::invalid(
                "MISSING_FIELD",
                "`password` (a string) is required",
            ))
        }
    };
    let permissions = match fields.get("permissions") {
        None | Some(Value::Null) => Permissions::default(),
        Some(v) => permission_list(v)?,
    };
    ensure_loaded(shard)?;
    if shard.accounts.replica().by_username(&username).is_some() {
        return Err(username_taken(&username));
    }
    let password_hash = hash_password(pass).await?;
    match shard
        .directory(DirectoryOp::CreateUser {
            username,
            email,
            password_hash,
            permissions,
        })
        .await
    {
        DirectoryReply::User(user) => Ok(Response::json(
            201,
            user_json(&user, Vec::new()).to_string().into_bytes(),
        )),
        DirectoryReply::Failed(AccountError::UsernameTaken(name)) => Err(username_taken(&name)),
        other => Err(unexpected(other)),
    }
}

/// `GET /auth/users` (admin).
pub async fn list_users(shard: &Rc<Shard>) -> Result<Response, ApiError> {
    ensure_loaded(shard)?;
    let mut owned: HashMap<String, Vec<String>> = HashMap::new();
    for (key, record) in super::topics::gather(shard, None, |_| true).await? {
        owned
            .entry(record.owner_id.to_string())
            .or_default()
            .push(display_name(&key).to_owned());
    }
    let users: Vec<Value> = shard
        .accounts
        .replica()
        .users()
        .iter()
        .map(|u| user_json(u, owned.remove(&u.user_id).unwrap_or_default()))
        .collect();
    Ok(Response::json(
        200,
        Value::Array(users).to_string().into_bytes(),
    ))
}

/// `GET /auth/users/stats` (admin).
pub fn user_stats(shard: &Shard) -> Result<Response, ApiError> {
    ensure_loaded(shard)?;
    let users = shard.accounts.replica().users();
    let active = users.iter().filter(|u| u.is_active).count();
    let body = json!({"total_users": users.len(), "active_users": active});
    Ok(Response::json(200, body.to_string().into_bytes()))
}

/// `PATCH /auth/users/{id}` (admin): only the fields present change; `{}` changes nothing.
pub async fn patch_user(
    shard: &Rc<Shard>,
    user_id: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let fields = super::fields::json_object(body)?;
    let mut patch = UserPatch {
        email: optional_email(fields.get("email"))?,
        ..UserPatch::default()
    };
    let new_password = match fields.get("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(valid_password(p)?),
        Some(_) => {
            return Err(ApiError::invalid(
                "INVALID_PASSWORD",
                "`password` must be a string",
            ))
        }
    };
    patch.permissions = match fields.get("permissions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(permission_list(v)?),
    };
    patch.is_active = match fields.get("is_active") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(active)) => Some(*active),
        Some(_) => {
            return Err(ApiError::invalid(
                "INVALID_FIELD",
                "`is_active` must be true or false",
            ))
        }
    };
    ensure_loaded(shard)?;
    if shard.accounts.replica().user(user_id).is_none() {
        return Err(user_not_found(user_id));
    }
    if let Some(pass) = new_password {
        patch.password_hash = Some(hash_password(pass).await?);
    }
    match shard
        .directory(DirectoryOp::UpdateUser {
            user_id: user_id.to_owned(),
            patch,
        })
        .await
    {
        DirectoryReply::User(user) => Ok(Response::json(
            200,
            user_json(&user, owned_topics(shard, &user.user_id).await?)
                .to_string()
                .into_bytes(),
        )),
        DirectoryReply::Failed(AccountError::UserNotFound(id)) => Err(user_not_found(&id)),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /auth/users/{id}` (admin). An administrator cannot delete their own account.
pub async fn delete_user(
    shard: &Rc<Shard>,
    principal: &Principal,
    user_id: &str,
) -> Result<Response, ApiError> {
    if principal.username.is_some() && principal.subject == user_id {
        return Err(ApiError::new(
            400,
            "CANNOT_DELETE_SELF",
            "Cannot delete your own user account",
        ));
    }
    ensure_loaded(shard)?;
    match shard
        .directory(DirectoryOp::DeleteUser {
            user_id: user_id.to_owned(),
        })
        .await
    {
        DirectoryReply::Done => Ok(Response::empty(204)),
        DirectoryReply::Failed(AccountError::UserNotFound(id)) => Err(user_not_found(&id)),
        other => Err(unexpected(other)),
    }
}

/// `GET /auth/sessions`: the caller's live refresh tokens.
pub async fn sessions(shard: &Rc<Shard>, principal: &Principal) -> Result<Response, ApiError> {
    ensure_loaded(shard)?;
    match shard
        .directory(DirectoryOp::Sessions {
            user_id: principal.subject.clone(),
        })
        .await
    {
        DirectoryReply::Sessions(tokens) => {
            let list: Vec<Value> = tokens.iter().map(session_json).collect();
            Ok(Response::json(
                200,
                Value::Array(list).to_string().into_bytes(),
            ))
        }
        other => Err(unexpected(other)),
    }
}

/// `DELETE /auth/sessions/{jti}`: ends one of the caller's own refresh-token sessions.
pub async fn end_session(
    shard: &Rc<Shard>,
    principal: &Principal,
    jti: &str,
) -> Result<Response, ApiError> {
    ensure_loaded(shard)?;
    match shard
        .directory(DirectoryOp::EndSession {
            user_id: principal.subject.clone(),
            jti: jti.to_owned(),
        })
        .await
    {
        DirectoryReply::Done => Ok(Response::empty(204)),
        DirectoryReply::Failed(AccountError::SessionNotFound) => {
            Err(ApiError::new(404, "SESSION_NOT_FOUND", "session not found"))
        }
        other => Err(unexpected(other)),
    }
}

/// Creates the configured administrator, or re-sets its password when the configured one
/// no longer matches (its permissions are left as an administrator may have changed them).
/// Runs once on the directory shard at start-up; the config check already validated
/// the name and password.
pub async fn ensure_bootstrap_admin(shard: &Rc<Shard>) -> Result<(), String> {
    let cfg = shard.config.bootstrap.clone();
    if cfg.admin_username.is_empty() {
        return Ok(());
    }
    let existing = shard
        .accounts
        .replica()
        .by_username(&cfg.admin_username)
        .cloned();
    let op = match existing {
        None => DirectoryOp::CreateUser {
            email: Some(if cfg.admin_email.is_empty() {
                format!("{}@example.com", cfg.admin_username)
            } else {
                cfg.admin_email.clone()
            }),
            username: cfg.admin_username.clone(),
            password_hash: hash_password(cfg.admin_password)
                .await
                .map_err(|e| e.detail)?,
            permissions: admin_permissions(),
        },
        Some(user) => {
            let (stored, pass) = (user.password_hash.clone(), cfg.admin_password.clone());
            if blocking(move || password::verify(&stored, &pass)).await {
                return Ok(());
            }
            DirectoryOp::UpdateUser {
                user_id: user.user_id.clone(),
                patch: UserPatch {
                    password_hash: Some(
                        hash_password(cfg.admin_password)
                            .await
                            .map_err(|e| e.detail)?,
                    ),
                    ..UserPatch::default()
                },
            }
        }
    };
    match shard.directory(op).await {
        DirectoryReply::User(user) => {
            crate::out_line!(
                "accounts: bootstrap administrator {:?} is ready (user_id {})",
                user.username,
                user.user_id
            );
            Ok(())
        }
        // Cluster mode: another node starting at the same time created it first.
        DirectoryReply::Failed(AccountError::UsernameTaken(_)) => Ok(()),
        other => Err(unexpected(other).detail),
    }
}

/// The login answer: a fresh access token for `user` and the given refresh token.
fn token_response(shard: &Shard, user: &User, refresh: String) -> Result<Response, ApiError> {
    let ttl = shard.config.accounts.access_token_ttl;
    let jti = crate::random::hex_string::<16>();
    let access = shard
        .auth
        .mint_account(&user.user_id, &user.username, user.permissions, ttl, &jti)
        .map_err(|e| ApiError::new(503, "ACCOUNTS_UNAVAILABLE", e))?;
    let body = json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
        "refresh_token": refresh,
        "refresh_token_secondary": null,
    });
    Ok(Response::json(200, body.to_string().into_bytes()).with_header("Cache-Control", "no-store"))
}

/// `UserPublic` of the original relay.
pub fn user_json(user: &User, owned_topics: Vec<String>) -> Value {
    json!({
        "user_id": user.user_id,
        "username": user.username,
        "email": user.email,
        "is_active": user.is_active,
        "created_at": rfc3339(user.created_at_ms),
        "permissions": user.permissions.names(),
        "owned_topics": owned_topics,
    })
}

fn session_json(token: &RefreshToken) -> Value {
    json!({
        "jti": token.jti,
        "issued_at": rfc3339(token.issued_at_ms),
        "expires_at": rfc3339(token.expires_at_ms),
        "last_used_at": token.last_used_ms.map(rfc3339),
        "client_hint": token.client_hint,
    })
}

fn charge_attempt(shard: &Shard, peer: Option<IpAddr>) -> Result<(), ApiError> {
    match peer {
        Some(addr) => shard.login_rates.charge(addr, now_ms()),
        None => Ok(()),
    }
}

/// Logins need a signing key, and the directory loaded.
fn ensure_loaded(shard: &Shard) -> Result<(), ApiError> {
    if !shard.auth.can_mint() {
        return Err(ApiError::new(
            503,
            "ACCOUNTS_UNAVAILABLE",
            "user accounts need jwt.algorithm HS256: tokens verified with a public key cannot be issued here",
        ));
    }
    if !shard.accounts.replica().is_loaded() {
        return Err(ApiError::new(
            503,
            "ACCOUNTS_LOADING",
            "user accounts are still loading; retry shortly",
        )
        .with_header("Retry-After", "1"));
    }
    Ok(())
}

async fn hash_password(pass: String) -> Result<String, ApiError> {
    blocking(move || password::hash(&pass))
        .await
        .map_err(|e| ApiError::new(500, "INTERNAL", e))
}

fn valid_username(name: &str) -> Result<String, ApiError> {
    if credentials::valid_username(name) {
        Ok(name.to_owned())
    } else {
        Err(ApiError::invalid(
            "INVALID_USERNAME",
            "`username` must be 3 to 50 characters, without control characters",
        ))
    }
}

fn valid_password(pass: &str) -> Result<String, ApiError> {
    if credentials::valid_password(pass) {
        Ok(pass.to_owned())
    } else {
        Err(ApiError::invalid(
            "INVALID_PASSWORD",
            format!("`password` must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters"),
        ))
    }
}

/// `None`: absent; `Some(None)`: explicitly null.
fn optional_email(value: Option<&Value>) -> Result<Option<Option<String>>, ApiError> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(email)) if email.len() <= 320 => Ok(Some(Some(email.clone()))),
        Some(_) => Err(ApiError::invalid(
            "INVALID_EMAIL",
            "`email` must be a string of at most 320 characters, or null",
        )),
    }
}

fn permission_list(value: &Value) -> Result<Permissions, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "INVALID_PERMISSIONS",
            "`permissions` must be a list of \"read\", \"write\" and \"admin\"",
        )
    };
    let Value::Array(items) = value else {
        return Err(invalid());
    };
    items.iter().try_fold(Permissions::default(), |set, item| {
        item.as_str()
            .and_then(Permission::from_name)
            .map(|p| set | p.into())
            .ok_or_else(invalid)
    })
}

fn username_taken(name: &str) -> ApiError {
    ApiError::new(
        400,
        "USERNAME_TAKEN",
        format!("Username '{name}' already exists"),
    )
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "USER_NOT_FOUND",
        format!("User with ID '{id}' not found"),
    )
}

fn unexpected(reply: DirectoryReply) -> ApiError {
    match reply {
        DirectoryReply::Failed(AccountError::Full(what)) => ApiError::new(
            503,
            "ACCOUNTS_FULL",
            format!("{what} reached its limit"),
        ),
        DirectoryReply::Failed(AccountError::Unavailable) => ApiError::new(
            503,
            "ACCOUNTS_UNAVAILABLE",
            "the account directory could not complete the change (loading, or Valkey unavailable); retry",
        )
        .with_header("Retry-After", "1"),
        // Only the failure is described: other answers may carry a refresh token.
        DirectoryReply::Failed(e) => ApiError::new(
            500,
            "INTERNAL",
            format!("unexpected failure in the account directory: {e:?}"),
        ),
        _ => ApiError::new(
            500,
            "INTERNAL",
            "unexpected answer from the account directory",
        ),
    }
}
