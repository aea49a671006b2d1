//! The operating system's randomness, and the identifiers made from it: secrets, token
//! IDs, and the version 4 UUIDs of users, topics and refresh tokens.
//!
//! Owns only where random bytes come from (getrandom(2) through `ring`) and the UUID
//! layout. What a secret or an ID is used for belongs to its caller.

use std::io::Read;

use crate::text::hex;

/// `N` bytes from the operating system's CSPRNG.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Not reached on Linux >= 3.17; /dev/urandom is the same pool.
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    }
    bytes
}

/// `N` random bytes as lower-case hex (`2 * N` characters).
pub fn hex_string<const N: usize>() -> String {
    hex(&bytes::<N>())
}

/// A random (version 4) UUID in its hyphenated lower-case text form, as the original relay
/// makes user, topic and refresh-token IDs.
pub fn uuid4() -> String {
    let mut b = bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_4_shape() {
        let id = uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(uuid4(), id);
    }

    #[test]
    fn hex_strings_are_random_and_sized() {
        let a = hex_string::<32>();
        assert_eq!(a.len(), 64);
        assert_ne!(a, hex_string::<32>());
    }
}
