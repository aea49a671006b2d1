//! Authentication and authorization: who a verified token speaks for ([`Principal`]), why
//! one is refused ([`AuthError`]), the permission set routes check ([`permission`]), and
//! verifying and minting JWTs ([`jwt`]).
//!
//! This module owns the token policy: the pinned algorithm, the required claims, the
//! permission names. Where a token comes from (header, query, subprotocol) and how an
//! [`AuthError`] is written on the wire belong to `http`, `ws` and `api`; this module must not
//! reach into them, nor keep state between requests.

pub mod jwt;
pub mod permission;

use std::fmt;

pub use jwt::{random_secret, Authenticator};
pub use permission::{Permission, Permissions};

/// `*`-only glob matching (no other metacharacters), iterative with one backtrack point,
/// so a hostile pattern cannot make it exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The last second of the year 9999: a later `exp` is refused as nonsense.
pub const MAX_EXPIRY: u64 = 253_402_300_799;

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub permissions: Permissions,
    /// Unix seconds (`exp`), at most [`MAX_EXPIRY`], so that millisecond arithmetic on it
    /// cannot overflow.
    pub expires_at: u64,
    /// The optional `topics` claim: topic patterns the token is limited to (`*` matches
    /// any run of characters: `jobs.*`, `alerts`). `None` = every topic.
    pub topics: Option<Vec<String>>,
    /// The `username` claim of tokens issued to user accounts by `/auth/login`: such a
    /// token speaks for the account `subject`, whose stored state (active, permissions)
    /// overrides the claims. Tokens without it are service tokens, trusted as signed.
    pub username: Option<String>,
    /// The `jti` claim: what `/auth/logout` puts on the deny-list.
    pub jti: Option<String>,
}

impl Principal {
    /// Whether the token's `topics` claim (if any) lets it use `topic`.
    pub fn may_use(&self, topic: &str) -> bool {
        self.topics.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| glob_match(p.as_bytes(), topic.as_bytes()))
        })
    }

    /// Whether the token carries a `topics` claim and it covers `topic`: an explicit grant
    /// of that name, which a token without the claim (allowed every topic) does not hold.
    pub fn scoped_to(&self, topic: &str) -> bool {
        self.topics.is_some() && self.may_use(topic)
    }

    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        if self.permissions.contains(permission.into()) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented.
    Missing,
    /// Not a JWT, or one whose header or payload cannot be read (an `alg` of `none`
    /// included).
    Malformed,
    /// Signed with another key, or with an algorithm other than the configured one.
    BadSignature,
    Expired,
    /// Signature fine, claims not: missing, of the wrong type, or naming an unknown permission.
    InvalidClaims(String),
    Forbidden(Permission),
    /// The token's `jti` was logged out.
    Revoked,
    /// An account token whose account no longer exists.
    UnknownUser,
    /// An account token whose account is deactivated.
    Inactive,
    /// Account state is still being loaded at start-up.
    AccountsLoading,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) | AuthError::Inactive => 403,
            AuthError::AccountsLoading => 503,
            _ => 401,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "AUTH_REQUIRED",
            AuthError::Malformed | AuthError::BadSignature | AuthError::InvalidClaims(_) => {
                "INVALID_TOKEN"
            }
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::Forbidden(_) => "PERMISSION_DENIED",
            AuthError::Revoked => "TOKEN_REVOKED",
            AuthError::UnknownUser => "USER_NOT_FOUND",
            AuthError::Inactive => "USER_INACTIVE",
            AuthError::AccountsLoading => "ACCOUNTS_LOADING",
        }
    }

    /// Human-readable; `Missing` and `Forbidden` use the original relay's wording.
    pub fn detail(&self) -> String {
        match self {
            AuthError::Missing => "Not authenticated".to_owned(),
            AuthError::Malformed => "Malformed token".to_owned(),
            AuthError::BadSignature => "Invalid token signature".to_owned(),
            AuthError::Expired => "Token has expired".to_owned(),
            AuthError::InvalidClaims(why) => format!("Invalid token claims: {why}"),
            AuthError::Forbidden(permission) => {
                format!("Permission '{}' required", permission.as_str())
            }
            AuthError::Revoked => "Token has been revoked".to_owned(),
            AuthError::UnknownUser => "User not found".to_owned(),
            AuthError::Inactive => "User is inactive".to_owned(),
            AuthError::AccountsLoading => {
                "user accounts are still loading; retry shortly".to_owned()
            }
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let mut p = Principal {
            subject: "s".into(),
            permissions: Permissions::READ,
            expires_at: 0,
            topics: None,
            username: None,
            jti: None,
        };
        assert!(p.may_use("anything"));
        assert!(!p.scoped_to("anything"), "no claim grants no name");
        p.topics = Some(vec!["jobs.*".into(), "alerts".into(), "a*b*c".into()]);
        for ok in ["jobs.1", "jobs.a.b", "alerts", "abc", "a-b-c", "aXbYc"] {
            assert!(p.may_use(ok), "{ok}");
            assert!(p.scoped_to(ok), "{ok}");
        }
        for denied in ["jobs", "job.1", "alerts2", "xalerts", "ab", "acb"] {
            assert!(!p.may_use(denied), "{denied}");
            assert!(!p.scoped_to(denied), "{denied}");
        }
        p.topics = Some(Vec::new());
        assert!(!p.may_use("jobs.1"), "an empty list allows nothing");
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(
            &[b'*'; 40].iter().chain(b"x").copied().collect::<Vec<_>>(),
            &[b'a'; 40]
        ));
    }

    #[test]
    fn require_checks_the_set() {
        let principal = Principal {
            subject: "u".to_owned(),
            permissions: Permissions::READ | Permissions::ADMIN,
            expires_at: 0,
            topics: None,
            username: None,
            jti: None,
        };
        assert_eq!(principal.require(Permission::Read), Ok(()));
        assert_eq!(principal.require(Permission::Admin), Ok(()));
        let err = principal.require(Permission::Write).unwrap_err();
        assert_eq!(err, AuthError::Forbidden(Permission::Write));
        assert_eq!(err.status(), 403);
        assert_eq!(err.code(), "PERMISSION_DENIED");
        assert_eq!(err.detail(), "Permission 'write' required");
    }

    #[test]
    fn error_statuses_and_codes() {
        let cases = [
            (AuthError::Missing, 401, "AUTH_REQUIRED"),
            (AuthError::Malformed, 401, "INVALID_TOKEN"),
            (AuthError::BadSignature, 401, "INVALID_TOKEN"),
            (AuthError::Expired, 401, "TOKEN_EXPIRED"),
            (AuthError::InvalidClaims("x".into()), 401, "INVALID_TOKEN"),
            (
                AuthError::Forbidden(Permission::Admin),
                403,
                "PERMISSION_DENIED",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.to_string(), err.detail());
        }
        assert_eq!(AuthError::Missing.detail(), "Not authenticated");
        assert_eq!(
            AuthError::InvalidClaims("missing `sub` claim".into()).detail(),
            "Invalid token claims: missing `sub` claim"
        );
        assert_eq!(
            AuthError::Forbidden(Permission::Admin).detail(),
            "Permission 'admin' required"
        );
    }
}
