//! JWTs: verifying a bearer token into a [`Principal`] with the pinned algorithm and the
//! required claims, and minting HS256 tokens (the `token` command, account logins).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use super::{AuthError, Permission, Permissions, Principal, MAX_EXPIRY};
use crate::config::{ConfigError, JwtConfig};

/// Verifies (and in HS256 mode mints) tokens. Cloning shares the keys, so each shard can
/// hold its own handle.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Keys>,
}

struct Keys {
    decoding: DecodingKey,
    /// `None` in public-key mode: a public key verifies but cannot sign.
    encoding: Option<EncodingKey>,
    validation: Validation,
    leeway_secs: u64,
    issuer: String,
    audience: String,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.inner.validation.algorithms)
            .field("can_mint", &self.inner.encoding.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// HS256 from `secret_key`, or RS256/ES256 verification with the PEM in
    /// `public_key_file`. An empty secret in HS256 mode is an error: the caller decides
    /// whether a generated one is acceptable ([`random_secret`], [`Authenticator::from_secret`]).
    pub fn from_config(cfg: &JwtConfig) -> Result<Authenticator, ConfigError> {
        let (algorithm, decoding, encoding) = match cfg.algorithm.as_str() {
            "HS256" if cfg.secret_key.is_empty() => {
                return Err(config_error(
                    "jwt.secret_key",
                    "no secret configured for HS256".to_owned(),
                ))
            }
            "HS256" => {
                let secret = cfg.secret_key.as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            "RS256" => (
                Algorithm::RS256,
                public_key(cfg, DecodingKey::from_rsa_pem)?,
                None,
            ),
            "ES256" => (
                Algorithm::ES256,
                public_key(cfg, DecodingKey::from_ec_pem)?,
                None,
            ),
            other => {
                return Err(config_error(
                    "jwt.algorithm",
                    format!("unsupported algorithm `{other}`; expected HS256, RS256 or ES256"),
                ))
            }
        };
        Ok(Authenticator::new(algorithm, decoding, encoding, cfg))
    }

    /// HS256 with `secret` and the default leeway, no issuer or audience.
    pub fn from_secret(secret: &[u8]) -> Authenticator {
        Authenticator::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
            &JwtConfig::default(),
        )
    }

    fn new(
        algorithm: Algorithm,
        decoding: DecodingKey,
        encoding: Option<EncodingKey>,
        cfg: &JwtConfig,
    ) -> Authenticator {
        // Pinning the one algorithm refuses a token signed any other way, including the
        // RS256-key-as-HS256-secret confusion.
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked in `verify`: jsonwebtoken panics when the clock reads
        // before 1970 or the leeway exceeds the time since then.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        if !cfg.issuer.is_empty() {
            validation.set_issuer(&[&cfg.issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if !cfg.audience.is_empty() {
            validation.set_audience(&[&cfg.audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Authenticator {
            inner: Arc::new(Keys {
                decoding,
                encoding,
                validation,
                leeway_secs: cfg.leeway.as_secs(),
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
            }),
        }
    }

    /// Verifies the signature with the pinned algorithm and reads the claims: `exp`, `sub`
    /// (non-empty) and `permissions` (strings among read, write, admin) are required,
    /// `topics` optional. An empty `token` is [`AuthError::Missing`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let keys = &*self.inner;
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &keys.decoding, &keys.validation)
                .map_err(from_jwt_error)?
                .claims;

        let now = unix_now();
        let expires_at = match claims.get("exp") {
            None | Some(Value::Null) => return Err(invalid("missing `exp` claim")),
            Some(exp) => seconds(exp)
                .filter(|exp| *exp <= MAX_EXPIRY)
                .ok_or_else(|| invalid("`exp` must be unix seconds before the year 10000"))?,
        };
        if expires_at.saturating_add(keys.leeway_secs) <= now {
            return Err(AuthError::Expired);
        }
        match claims.get("nbf") {
            None | Some(Value::Null) => {}
            Some(nbf) => {
                let not_before =
                    seconds(nbf).ok_or_else(|| invalid("`nbf` must be unix seconds"))?;
                if not_before > now.saturating_add(keys.leeway_secs) {
                    return Err(invalid("token is not valid yet (`nbf`)"));
                }
            }
        }

        let subject = match claims.get("sub") {
            None | Some(Value::Null) => return Err(invalid("missing `sub` claim")),
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            Some(_) => return Err(invalid("`sub` must be a non-empty string")),
        };

        let permissions = match claims.get("permissions") {
            None | Some(Value::Null) => return Err(invalid("missing `permissions` claim")),
            Some(Value::Array(items)) => {
                items
                    .iter()
                    .try_fold(Permissions::default(), |set, item| match item {
                        Value::String(name) => Permission::from_name(name)
                            .map(|permission| set | permission.into())
                            .ok_or_else(|| invalid(&format!("unknown permission `{name}`"))),
                        _ => Err(invalid("`permissions` must be an array of strings")),
                    })?
            }
            Some(_) => return Err(invalid("`permissions` must be an array of strings")),
        };

        let topics = match claims.get("topics") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| invalid("`topics` must be an array of strings"))?,
            ),
            Some(_) => return Err(invalid("`topics` must be an array of strings")),
        };

        Ok(Principal {
            subject,
            permissions,
            expires_at,
            topics,
            username: optional_text(&claims, "username")?,
            jti: optional_text(&claims, "jti")?,
        })
    }

    /// Mints an HS256 token for `subject`, valid for `ttl`, carrying the configured issuer
    /// and audience so that [`Authenticator::verify`] accepts it. Fails in public-key mode.
    pub fn mint(
        &self,
        subject: &str,
        permissions: Permissions,
        ttl: Duration,
    ) -> Result<String, String> {
        self.sign(subject, permissions, ttl, Map::new())
    }

    /// Mints an access token for a user account, with the original relay's claims: `sub`
    /// (the user ID), `username`, `permissions`, `iat`, `exp` and a fresh `jti` (32 hex
    /// digits), which `/auth/logout` can deny.
    pub fn mint_account(
        &self,
        user_id: &str,
        username: &str,
        permissions: Permissions,
        ttl: Duration,
        jti: &str,
    ) -> Result<String, String> {
        let mut extra = Map::new();
        extra.insert("username".to_owned(), Value::from(username));
        extra.insert("jti".to_owned(), Value::from(jti));
        self.sign(user_id, permissions, ttl, extra)
    }

    /// Whether this authenticator holds a signing key (HS256), so accounts can log in.
    pub fn can_mint(&self) -> bool {
        self.inner.encoding.is_some()
    }

    fn sign(
        &self,
        subject: &str,
        permissions: Permissions,
        ttl: Duration,
        extra: Map<String, Value>,
    ) -> Result<String, String> {
        let keys = &*self.inner;
        let Some(encoding) = &keys.encoding else {
            return Err(
                "tokens are verified with a public key here, so they cannot be minted".to_owned(),
            );
        };
        if subject.is_empty() {
            return Err("a token needs a non-empty subject".to_owned());
        }
        let now = unix_now();
        let mut claims = json!({
            "sub": subject,
            "permissions": permissions.names(),
            "iat": now,
            "exp": now.saturating_add(ttl.as_secs()),
        });
        if !keys.issuer.is_empty() {
            claims["iss"] = Value::from(keys.issuer.as_str());
        }
        if !keys.audience.is_empty() {
            claims["aud"] = Value::from(keys.audience.as_str());
        }
        if let Value::Object(map) = &mut claims {
            map.extend(extra);
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|err| format!("cannot sign token: {err}"))
    }
}

/// An optional string claim; present but not a string is an invalid token.
fn optional_text(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(&format!("`{name}` must be a string"))),
    }
}

/// A random secret for a loopback run that configured none: 32 bytes, hex-encoded (64
/// characters).
pub fn random_secret() -> String {
    crate::random::hex_string::<32>()
}

fn public_key(
    cfg: &JwtConfig,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<DecodingKey, ConfigError> {
    let path = &cfg.public_key_file;
    if path.is_empty() {
        return Err(config_error(
            "jwt.public_key_file",
            format!("must name a PEM public key file for {}", cfg.algorithm),
        ));
    }
    let pem = std::fs::read(path)
        .map_err(|err| config_error("jwt.public_key_file", format!("cannot read {path}: {err}")))?;
    parse(&pem).map_err(|err| {
        config_error(
            "jwt.public_key_file",
            format!("{path} is not a PEM {} public key: {err}", cfg.algorithm),
        )
    })
}

fn config_error(key: &str, message: String) -> ConfigError {
    ConfigError {
        key: Some(key.to_owned()),
        message,
    }
}

fn invalid(why: &str) -> AuthError {
    AuthError::InvalidClaims(why.to_owned())
}

fn from_jwt_error(err: JwtError) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => invalid(&format!("missing `{claim}` claim")),
        ErrorKind::InvalidIssuer => invalid("wrong issuer (`iss`)"),
        ErrorKind::InvalidAudience => invalid("wrong or unexpected audience (`aud`)"),
        _ => AuthError::Malformed,
    }
}

/// A NumericDate: whole or fractional seconds (RFC 7519 allows both).
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            // Saturating conversion; fractions are dropped.
            .map(|secs| secs as u64)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"an-hs256-secret-of-at-least-32-bytes!!";

    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC1fCI9WOB/ObAW
EKhSID8JABhN6z3FhMUT1tgx5B+VkDz6cNT9vF76UWRaWoXyoCa/eNBiv2J0Iq2s
D1nWOd74tbCA4g8RLuYnmvB0SKh++j0ADnX9p8erLBr5CclW04Hv08w0pVqfw+w6
QK0JJ6YmWkHlUlojlEF8KWv4kVKm0s21u8GRMKOPuTgNg8q/qGqcZXZVQGE0bgdX
L5g8bENuhKAhBrmxhb4DoBw3uZRMi2lBOfzWcw9jloJZFeHpyJNJgoPlB8kwA6LG
Wj3qfnWqwWDeq7WS8O+k1MPubb/bR9EWi+mNDeBcZe2SwWcWuD4qRMiVEH+OHOZD
UkUGxW3HAgMBAAECggEACT3iWyVk0+sSyyIwsB3xl8+9bRpcRuv/7TFfnmAeNkuQ
ugrM4y7t1z7AfCln8MxfAhkbjivDeQ6FsYwGkyDXTer9Vf2CWZRTJr5+ctglscb5
xur1mePVXc4dLC68u1iB9r3eWZVMtsi6BYK4TQ22fvV8WDqIBI/O1eJ2G8Oquyaj
AMKseEABJAtHjMtKgWM9HNFVVT46jWpwwamFT19tJQT/A499RtxbtpoN4hy5xALe
vIkgXiGQighaOAubiVhYRZOfyQ6MMuTEJqWy9lxzvk50AxCiEJgz9tlffDhmfoSd
VrsJ6BZ5QoIEWrAF15pcTFU9C15KDzIssmic4e9xYQKBgQDiGBCMQhkyk/eHGp+i
NUdad+VTCjkvZ8hZlT3b9uK2ipWK5TbhJuR2UHGcY8OpYMQnOVIk8uk2HZvh8oc+
fdZTSNUBiZkSK508W7a1es+7a0X3EpETYN+gchg/bSQhpXwJ3et2wMD0DOdM/ja1
/XRlwqSgrnmwlhKkY3ZZ70h0kwKBgQDNfYcCj0kKmaP1rGipQWyH56mZiFNoIspv
J/HQdDi2LRo9y4YkWm8r26Zu8IAahpPOZp/5soBwXiZ79Zrxlzf7OipjNm8HF43Z
oDFEny8g7WO2LylGW9PMQPPgBfMwpuF40yOE3aiP+yvetfUfLYAYHxhuOJB1xX9F
TqCMsuy2fQKBgFAZWnN2T1r91OnGYtuiqH7CjzoWGyBSUkZ6ewncs4EcI9KrVf/6
OWI5KabQKVducs+6nQF+FWUYpEsuEv/usOmcmeoLh3FKhlAF5frxYXryjDz2FPOa
lF9RTInb7rsE16bfOjY+H53WnHNIdLWQ75XFmXFbnr0SzdPzcNB312GFAoGBAIwy
bW9wpMvHoRaXR1za1xouEwc9/HHa8rQ903x+HsckJHguqFmbHagVlwqvqSbv1F4I
pHKut3Ryt9zw54KWwkn0GEFSPRPgnRXydkq0NGpJrDL7IDTxp6H+WqToSlBSOxi9
LMmUlVGOcxLin9diqrdKV9ezXdQMJ9X4XA9Cb7/dAoGBANwgfwoVn3A+RVxSYypB
iZmFDfb7gKXgEBAdtEGwyxhfEuIE/4Gr+ILL4gEwXWfURGJADlkfVYOO4YrZjxE/
lNGs3t7Hj9U/tLUNq9ksLCNb5HYpczEkxAYAMVIQVQiJP4bgFe5xOq+eijWQOYHo
7pl1EzT7qfQ6WnNS4a3Qlsaj
-----END PRIVATE KEY-----
";

    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtXwiPVjgfzmwFhCoUiA/
CQAYTes9xYTFE9bYMeQflZA8+nDU/bxe+lFkWlqF8qAmv3jQYr9idCKtrA9Z1jne
+LWwgOIPES7mJ5rwdEiofvo9AA51/afHqywa+QnJVtOB79PMNKVan8PsOkCtCSem
JlpB5VJaI5RBfClr+JFSptLNtbvBkTCjj7k4DYPKv6hqnGV2VUBhNG4HVy+YPGxD
boSgIQa5sYW+A6AcN7mUTItpQTn81nMPY5aCWRXh6ciTSYKD5QfJMAOixlo96n51
qsFg3qu1kvDvpNTD7m2/20fRFovpjQ3gXGXtksFnFrg+KkTIlRB/jhzmQ1JFBsVt
xwIDAQAB
-----END PUBLIC KEY-----
";

    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFwgMFxkP81PnNbZ8
vrc51rh9Bg/wlKLkD7ykmb5CwDihRANCAATSzNeb1XauB8rijCf9wbGZJpv5IuZZ
8Q8cTJ+JsGAeDXVpiokMI8vzRtaybHebz1l94NzCCZ02aOYmcm/MOKQQ
-----END PRIVATE KEY-----
";

    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0szXm9V2rgfK4own/cGxmSab+SLm
WfEPHEyfibBgHg11aYqJDCPL80bWsmx3m89ZfeDcwgmdNmjmJnJvzDikEA==
-----END PUBLIC KEY-----
";

    fn hs256() -> Authenticator {
        Authenticator::from_secret(SECRET)
    }

    fn sign_with(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn valid_claims() -> Value {
        json!({"sub": "user-1", "exp": unix_now() + 600, "permissions": ["read", "write"]})
    }

    /// `valid_claims` with `key` replaced, or removed when `value` is `None`.
    fn claims_with(key: &str, value: Option<Value>) -> Value {
        let mut claims = valid_claims();
        let map = claims.as_object_mut().unwrap();
        match value {
            Some(value) => map.insert(key.to_owned(), value),
            None => map.remove(key),
        };
        claims
    }

    fn claims_error(claims: &Value) -> String {
        match hs256().verify(&sign(claims)) {
            Err(AuthError::InvalidClaims(why)) => why,
            other => panic!("expected InvalidClaims for {claims}, got {other:?}"),
        }
    }

    /// Writes `pem` to a file of its own and returns the config pointing at it.
    fn public_key_config(algorithm: &str, name: &str, pem: &str) -> JwtConfig {
        let path = std::env::temp_dir().join(format!(
            "pulsar-auth-test-{}-{name}.pem",
            std::process::id()
        ));
        std::fs::write(&path, pem).unwrap();
        JwtConfig {
            algorithm: algorithm.to_owned(),
            public_key_file: path.to_string_lossy().into_owned(),
            ..JwtConfig::default()
        }
    }

    #[test]
    fn mint_then_verify() {
        let auth = hs256();
        let before = unix_now();
        let token = auth
            .mint(
                "alice",
                Permissions::READ | Permissions::ADMIN,
                Duration::from_secs(600),
            )
            .unwrap();
        let principal = auth.verify(&token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert_eq!(
            principal.permissions,
            Permissions::READ | Permissions::ADMIN
        );
        assert!(principal.expires_at >= before + 600);
        assert!(principal.expires_at <= unix_now() + 600);
        assert_eq!(principal.topics, None);
        // Clones share the keys.
        assert_eq!(auth.clone().verify(&token), Ok(principal));
    }

    #[test]
    fn mint_refuses_empty_subject() {
        assert!(hs256()
            .mint("", Permissions::READ, Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn other_secret_is_refused() {
        let token = Authenticator::from_secret(b"another-secret-another-secret-xx")
            .mint("alice", Permissions::READ, Duration::from_secs(60))
            .unwrap();
        assert_eq!(hs256().verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = sign(&valid_claims());
        let forged = sign(&claims_with("permissions", Some(json!(["admin"]))));
        let [header, _, signature]: [&str; 3] =
            token.split('.').collect::<Vec<_>>().try_into().unwrap();
        let forged_payload = forged.split('.').nth(1).unwrap();
        let tampered = format!("{header}.{forged_payload}.{signature}");
        assert_eq!(hs256().verify(&tampered), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_algorithm_is_refused() {
        // Same secret, stronger HMAC: still not the pinned algorithm.
        let hs512 = sign_with(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET),
            &valid_claims(),
        );
        assert_eq!(hs256().verify(&hs512), Err(AuthError::BadSignature));
        let rs256 = sign_with(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            &valid_claims(),
        );
        assert_eq!(hs256().verify(&rs256), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let token = sign(&valid_claims());
        let payload = token.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"}
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        for unsigned in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{payload}"),
        ] {
            assert_eq!(
                hs256().verify(&unsigned),
                Err(AuthError::Malformed),
                "{unsigned}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let auth = hs256();
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        for garbage in [
            "abc",
            "a.b",
            "a.b.c",
            "...",
            "a.b.c.d",
            "Bearer x.y.z",
            "eyJ.eyJ.",
            "\u{1F600}.\u{1F600}.\u{1F600}",
        ] {
            let err = auth.verify(garbage).unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed | AuthError::BadSignature),
                "{garbage}: {err:?}"
            );
            assert_eq!(err.status(), 401);
        }
        // A signed payload that is not a JSON object.
        let array = sign(&json!([1, 2, 3]));
        assert_eq!(auth.verify(&array), Err(AuthError::Malformed));
    }

    #[test]
    fn expired_token_is_refused_after_the_leeway() {
        let now = unix_now();
        let stale = sign(&claims_with("exp", Some(json!(now - 100))));
        let err = hs256().verify(&stale).unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.code(), "TOKEN_EXPIRED");
        // The default leeway is 30 s.
        let just_expired = sign(&claims_with("exp", Some(json!(now - 10))));
        assert!(hs256().verify(&just_expired).is_ok());
        let strict = Authenticator::from_config(&JwtConfig {
            secret_key: String::from_utf8(SECRET.to_vec()).unwrap(),
            leeway: Duration::ZERO,
            ..JwtConfig::default()
        })
        .unwrap();
        assert_eq!(strict.verify(&just_expired), Err(AuthError::Expired));
    }

    #[test]
    fn fractional_exp_is_accepted() {
        let exp = (unix_now() + 600) as f64 + 0.5;
        let principal = hs256()
            .verify(&sign(&claims_with("exp", Some(json!(exp)))))
            .unwrap();
        assert_eq!(principal.expires_at, unix_now() + 600);
    }

    #[test]
    fn latest_exp_is_accepted() {
        let far = claims_with("exp", Some(json!(MAX_EXPIRY)));
        assert_eq!(hs256().verify(&sign(&far)).unwrap().expires_at, MAX_EXPIRY);
    }

    #[test]
    fn future_nbf_is_refused() {
        let why = claims_error(&claims_with("nbf", Some(json!(unix_now() + 3600))));
        assert!(why.contains("nbf"), "{why}");
        let current = claims_with("nbf", Some(json!(unix_now())));
        assert!(hs256().verify(&sign(&current)).is_ok());
    }

    #[test]
    fn required_claims() {
        let cases = [
            (claims_with("sub", None), "missing `sub`"),
            (claims_with("sub", Some(json!(""))), "`sub` must be"),
            (claims_with("sub", Some(json!(42))), "`sub` must be"),
            (claims_with("exp", None), "missing `exp`"),
            (claims_with("exp", Some(json!("tomorrow"))), "`exp` must be"),
            (claims_with("exp", Some(json!(-5))), "`exp` must be"),
            (
                claims_with("exp", Some(json!(MAX_EXPIRY + 1))),
                "`exp` must be",
            ),
            (claims_with("exp", Some(json!(1e300))), "`exp` must be"),
            (claims_with("permissions", None), "missing `permissions`"),
            (
                claims_with("permissions", Some(json!("read"))),
                "`permissions` must be",
            ),
            (
                claims_with("permissions", Some(json!(["read", 1]))),
                "`permissions` must be",
            ),
            (
                claims_with("permissions", Some(json!(["read", "root"]))),
                "unknown permission `root`",
            ),
            (
                claims_with("topics", Some(json!("a.*"))),
                "`topics` must be",
            ),
            (
                claims_with("topics", Some(json!(["a", 2]))),
                "`topics` must be",
            ),
        ];
        for (claims, expected) in cases {
            let why = claims_error(&claims);
            assert!(why.contains(expected), "{claims}: {why}");
        }
    }

    #[test]
    fn optional_claims_are_read() {
        let claims = claims_with("topics", Some(json!(["jobs.*", "alerts"])));
        let principal = hs256().verify(&sign(&claims)).unwrap();
        assert_eq!(
            principal.topics,
            Some(vec!["jobs.*".to_owned(), "alerts".to_owned()])
        );
        let empty = claims_with("permissions", Some(json!([])));
        let principal = hs256().verify(&sign(&empty)).unwrap();
        assert_eq!(principal.permissions, Permissions::default());
        assert_eq!(
            principal.require(Permission::Read),
            Err(AuthError::Forbidden(Permission::Read))
        );
    }

    #[test]
    fn issuer_and_audience() {
        let auth = Authenticator::from_config(&JwtConfig {
            secret_key: String::from_utf8(SECRET.to_vec()).unwrap(),
            issuer: "https://id.example".to_owned(),
            audience: "pulsar".to_owned(),
            ..JwtConfig::default()
        })
        .unwrap();
        let minted = auth
            .mint("alice", Permissions::READ, Duration::from_secs(60))
            .unwrap();
        assert!(auth.verify(&minted).is_ok());

        let right = json!({"iss": "https://id.example", "aud": "pulsar"});
        let with = |changes: &[(&str, Option<Value>)]| {
            let mut claims = valid_claims();
            for (key, value) in right.as_object().unwrap() {
                claims[key] = value.clone();
            }
            for (key, value) in changes {
                match value {
                    Some(value) => claims[*key] = value.clone(),
                    None => {
                        claims.as_object_mut().unwrap().remove(*key);
                    }
                }
            }
            auth.verify(&sign(&claims))
        };
        assert!(with(&[]).is_ok());
        for changes in [
            vec![("iss", None)],
            vec![("iss", Some(json!("https://evil.example")))],
            vec![("aud", None)],
            vec![("aud", Some(json!("someone-else")))],
        ] {
            assert!(
                matches!(with(&changes), Err(AuthError::InvalidClaims(_))),
                "{changes:?}"
            );
        }
        // With no audience configured, a token meant for someone else is refused.
        let foreign = claims_with("aud", Some(json!("someone-else")));
        assert!(matches!(
            hs256().verify(&sign(&foreign)),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn from_config_errors_name_the_key() {
        let key_of = |cfg: &JwtConfig| Authenticator::from_config(cfg).unwrap_err().key;
        assert_eq!(
            key_of(&JwtConfig::default()).as_deref(),
            Some("jwt.secret_key")
        );
        let bad_alg = JwtConfig {
            algorithm: "none".to_owned(),
            secret_key: "x".to_owned(),
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&bad_alg).as_deref(), Some("jwt.algorithm"));
        let no_file = JwtConfig {
            algorithm: "RS256".to_owned(),
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&no_file).as_deref(), Some("jwt.public_key_file"));
        let missing_file = JwtConfig {
            algorithm: "ES256".to_owned(),
            public_key_file: "/nonexistent/jwt.pub".to_owned(),
            ..JwtConfig::default()
        };
        assert_eq!(
            key_of(&missing_file).as_deref(),
            Some("jwt.public_key_file")
        );
        let garbage = public_key_config("RS256", "garbage", "not a key");
        assert_eq!(key_of(&garbage).as_deref(), Some("jwt.public_key_file"));
        let ec_as_rsa = public_key_config("RS256", "ec-as-rsa", EC_PUBLIC);
        assert_eq!(key_of(&ec_as_rsa).as_deref(), Some("jwt.public_key_file"));
    }

    #[test]
    fn rs256_public_key_verifies() {
        let auth =
            Authenticator::from_config(&public_key_config("RS256", "rs", RSA_PUBLIC)).unwrap();
        let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = sign_with(Algorithm::RS256, &private, &valid_claims());
        let principal = auth.verify(&token).unwrap();
        assert_eq!(principal.subject, "user-1");
        assert_eq!(
            principal.permissions,
            Permissions::READ | Permissions::WRITE
        );
        // The public key used as an HMAC secret must not pass (algorithm confusion).
        let confused = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &valid_claims(),
        );
        assert_eq!(auth.verify(&confused), Err(AuthError::BadSignature));
        assert_eq!(
            auth.verify(&sign(&valid_claims())),
            Err(AuthError::BadSignature)
        );
        assert!(auth
            .mint("alice", Permissions::READ, Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn es256_public_key_verifies() {
        let auth =
            Authenticator::from_config(&public_key_config("ES256", "es", EC_PUBLIC)).unwrap();
        let private = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let token = sign_with(Algorithm::ES256, &private, &valid_claims());
        assert_eq!(auth.verify(&token).unwrap().subject, "user-1");
        let rs256 = sign_with(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            &valid_claims(),
        );
        assert_eq!(auth.verify(&rs256), Err(AuthError::BadSignature));
        let expired = sign_with(
            Algorithm::ES256,
            &private,
            &claims_with("exp", Some(json!(unix_now() - 100))),
        );
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn authenticator_can_go_to_every_shard() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Authenticator>();
    }

    #[test]
    fn random_secrets_are_hex_and_differ() {
        let a = random_secret();
        let b = random_secret();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        // Usable as an HS256 secret straight away.
        let auth = Authenticator::from_secret(a.as_bytes());
        let token = auth
            .mint("dev", Permissions::WRITE, Duration::from_secs(60))
            .unwrap();
        assert!(auth.verify(&token).is_ok());
    }
}
