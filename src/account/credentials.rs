//! What a username and a password must be: one rule for accounts made through the API
//! and for the bootstrap administrator of the configuration.
//!
//! Owns the rules only; the API turns a refusal into its error, start-up into a
//! configuration error naming the key.

use std::ops::RangeInclusive;

use crate::config::{BootstrapConfig, ConfigError};

/// A username's length, in characters (as the original relay counts them).
pub const USERNAME_CHARS: RangeInclusive<usize> = 3..=50;

/// The shortest password an account may have (as in the original relay).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Argon2 refuses to hash more than this; longer passwords are refused before hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// 3 to 50 characters, none of them a control character.
pub fn valid_username(name: &str) -> bool {
    USERNAME_CHARS.contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

/// At least [`MIN_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn valid_password(pass: &str) -> bool {
    pass.chars().count() >= MIN_PASSWORD_CHARS && pass.len() <= MAX_PASSWORD_BYTES
}

/// The bootstrap administrator's name and password, when set, follow the same rules as
/// every account's (checked at start-up).
pub fn check_bootstrap(bootstrap: &BootstrapConfig) -> Result<(), ConfigError> {
    if bootstrap.admin_username.is_empty() {
        return Ok(());
    }
    if !valid_username(&bootstrap.admin_username) {
        return Err(ConfigError::at(
            "bootstrap.admin_username",
            "must be 3 to 50 characters, without control characters",
        ));
    }
    if !valid_password(&bootstrap.admin_password) {
        return Err(ConfigError::at(
            "bootstrap.admin_password",
            format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords() {
        assert!(valid_username("abc") && valid_username(&"é".repeat(50)));
        assert!(!valid_username("ab") && !valid_username(&"x".repeat(51)));
        assert!(!valid_username("ab\u{7}c"), "no control characters");
        assert!(valid_password("12345678") && valid_password(&"x".repeat(1024)));
        assert!(!valid_password("1234567") && !valid_password(&"x".repeat(1025)));
    }

    #[test]
    fn the_bootstrap_administrator_follows_the_same_rules() {
        let bootstrap = |name: &str, pass: &str| BootstrapConfig {
            admin_username: name.into(),
            admin_password: pass.into(),
            ..BootstrapConfig::default()
        };
        assert_eq!(check_bootstrap(&bootstrap("", "")), Ok(()));
        assert_eq!(check_bootstrap(&bootstrap("admin", "s3cret-pass")), Ok(()));
        let key = |b| check_bootstrap(&b).unwrap_err().key.unwrap();
        assert_eq!(
            key(bootstrap("ad\nmin", "s3cret-pass")),
            "bootstrap.admin_username"
        );
        assert_eq!(key(bootstrap("admin", "short")), "bootstrap.admin_password");
    }
}
