//! RFC 6962 / RFC 9162 hashing: leaf and interior node hashes over SHA-256.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: leaf, interior node or tree root.
pub type Hash = [u8; 32];

/// Size of a [`Hash`](type@Hash) in bytes.
pub const HASH_SIZE: usize = 32;

/// Leaf hash of `entry`: SHA-256(0x00 || entry).
#[inline]
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// Interior node hash: SHA-256(0x01 || left || right).
#[inline]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_SIZE];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    Sha256::digest(buf).into()
}

/// Root hash of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Hashes a run of `2^k` sibling hashes up to their common ancestor, in place; returns it.
/// `hashes.len()` must be a power of two (1 returns the single hash).
pub(crate) fn fold_perfect(hashes: &mut [Hash]) -> Hash {
    let mut n = hashes.len();
    debug_assert!(n.is_power_of_two());
    while n > 1 {
        for i in 0..n / 2 {
            hashes[i] = node_hash(&hashes[2 * i], &hashes[2 * i + 1]);
        }
        n /= 2;
    }
    hashes[0]
}
