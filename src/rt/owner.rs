//! Which shard owns a key: `fnv1a64(key) % shards`.
//!
//! Every piece of shared state (a topic, an idempotency key, a connection quota) has one
//! owner shard, found by hashing its key. FNV-1a is fixed, so every shard, every restart and
//! every build agrees without coordination (the std hasher is randomly seeded), and it is
//! cheap for short keys. The same function fingerprints request bodies that are stored in
//! Valkey and compared after an upgrade, for the same reason.

/// The FNV-1a 64-bit offset basis: the hash of nothing.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash over `bytes`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard of `shards` that owns a key hashing to `hash`.
pub fn shard_of(hash: u64, shards: usize) -> usize {
    (hash % shards.max(1) as u64) as usize
}

/// The shard of `shards` that owns `key`.
pub fn owner_of(key: &[u8], shards: usize) -> usize {
    shard_of(fnv1a(FNV_OFFSET, key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Changing it would move state between shards on upgrade, and make stored
        // fingerprints mismatch.
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"ab"), b"c"),
            fnv1a(FNV_OFFSET, b"abc")
        );
        assert_eq!(owner_of(b"", 7), FNV_OFFSET as usize % 7);
    }
}
