//! Password hashes: Argon2id in PHC string form.
//!
//! Verification accepts any Argon2 PHC string, whatever its parameters, so hashes written by
//! the original Python relay (`$argon2id$v=19$m=65536,t=3,p=4$…`) keep working. New hashes
//! use the argon2 crate's defaults (Argon2id, OWASP parameters). Both functions cost tens
//! of milliseconds of CPU by design: callers run them off the shard executors
//! (`rt::blocking`), never on a request path's executor thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&crate::random::bytes::<16>())
        .map_err(|e| format!("cannot encode a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|phc| phc.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `phc`; a malformed or empty stored hash
/// (an account without a password) matches nothing.
pub fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a password nobody knows: login runs it for unknown usernames, so the
/// answer takes as long as for a wrong password and does not reveal which names exist.
pub fn decoy() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$B6hm/pP6yQF6GCk8Xd7yPvxsVvu0wlhQQ8sT8hJM3+U"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_salts_differ() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify(&a, "correct horse"));
        assert!(!verify(&a, "correct horsE"));
        assert!(!verify("", "anything"));
        assert!(!verify("not a phc string", "anything"));
    }

    /// Made by argon2-cffi 25.1 with its defaults, which the original relay uses (pwdlib's
    /// recommended hasher): `argon2.PasswordHasher().hash("12345678")`.
    #[test]
    fn original_relay_hashes_verify() {
        let phc = "$argon2id$v=19$m=65536,t=3,p=4$qY0tUjdAM4NUViPTttHLIQ$PZAXEDvHE0Ik3miWxyqw6y9a67a0Xt+0UZ0KsxJi94k";
        assert!(verify(phc, "12345678"));
        assert!(!verify(phc, "12345679"));
    }

    #[test]
    fn the_decoy_is_a_real_hash() {
        assert!(PasswordHash::new(decoy()).is_ok());
        assert!(!verify(decoy(), ""));
    }
}
