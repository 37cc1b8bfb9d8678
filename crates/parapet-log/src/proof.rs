//! RFC 9162 (RFC 6962) Merkle proofs: building inclusion and consistency proofs from any source
//! of complete-subtree hashes, and verifying them with the RFC's algorithms (§2.1.3.2, §2.1.4.2).

use crate::error::LogError;
use crate::hash::{empty_root, node_hash, Hash};

/// A source of complete-subtree hashes: `node(level, index)` is the root of the perfect subtree
/// covering leaves `index << level .. (index + 1) << level`.
pub trait NodeSource {
    /// Hash of the complete subtree at `level`, `index`.
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, LogError>;
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for `end > start`, built from complete subtrees.
pub fn subtree_hash(src: &mut dyn NodeSource, start: u64, end: u64) -> Result<Hash, LogError> {
    let n = end - start;
    if n.is_power_of_two() && start % n == 0 {
        return src.node(n.trailing_zeros(), start / n);
    }
    let k = split_point(n);
    let l = subtree_hash(src, start, start + k)?;
    let r = subtree_hash(src, start + k, end)?;
    Ok(node_hash(&l, &r))
}

/// Root hash of the tree of `size` leaves.
pub fn root_hash(src: &mut dyn NodeSource, size: u64) -> Result<Hash, LogError> {
    if size == 0 {
        Ok(empty_root())
    } else {
        subtree_hash(src, 0, size)
    }
}

/// Inclusion proof (audit path) for leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(
    src: &mut dyn NodeSource,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, LogError> {
    if index >= size {
        return Err(LogError::OutOfRange(format!(
            "index {index} is not in the log (tree size {size})"
        )));
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path(
    src: &mut dyn NodeSource,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), LogError> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < start + k {
        path(src, m, start, start + k, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        path(src, m, start + k, end, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Consistency proof between the trees of `old` and `new` leaves (`old <= new`).
pub fn consistency_proof(
    src: &mut dyn NodeSource,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, LogError> {
    if old > new {
        return Err(LogError::OutOfRange(format!(
            "old size {old} is larger than the current tree size {new}"
        )));
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(src, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

fn subproof(
    src: &mut dyn NodeSource,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    out: &mut Vec<Hash>,
) -> Result<(), LogError> {
    let n = end - start;
    if m == n {
        if !b {
            out.push(subtree_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, b, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LogError> {
    if index >= size {
        return Err(LogError::BadProof(format!(
            "index {index} is beyond tree size {size}"
        )));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(LogError::BadProof("proof is too long".into()));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(LogError::BadProof("proof is too short".into()));
    }
    if &r != root {
        return Err(LogError::BadProof(
            "computed root differs from the checkpoint's root".into(),
        ));
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2) between `old_root` (size `old`) and
/// `new_root` (size `new`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), LogError> {
    if old > new {
        return Err(LogError::BadProof(format!(
            "old size {old} is larger than new size {new}"
        )));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(LogError::BadProof(
                "proof between equal sizes must be empty".into(),
            ));
        }
        if old_root != new_root {
            return Err(LogError::BadProof("roots of equal sizes differ".into()));
        }
        return Ok(());
    }
    if old == 0 {
        if !proof.is_empty() {
            return Err(LogError::BadProof(
                "proof from the empty tree must be empty".into(),
            ));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(LogError::BadProof("proof is empty".into()));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if s == 0 {
            return Err(LogError::BadProof("proof is too long".into()));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(LogError::BadProof("proof is too short".into()));
    }
    if &fr != old_root {
        return Err(LogError::BadProof(
            "computed old root differs from the old checkpoint".into(),
        ));
    }
    if &sr != new_root {
        return Err(LogError::BadProof(
            "computed new root differs from the new checkpoint".into(),
        ));
    }
    Ok(())
}

/// In-memory [`NodeSource`] over a list of leaf hashes (tests and small trees).
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// Leaf hashes.
    pub leaves: Vec<Hash>,
}

impl NodeSource for MemoryTree {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, LogError> {
        let start = (index << level) as usize;
        let end = ((index + 1) << level) as usize;
        if end > self.leaves.len() {
            return Err(LogError::OutOfRange(format!(
                "node {level}/{index} is beyond {} leaves",
                self.leaves.len()
            )));
        }
        let mut v = self.leaves[start..end].to_vec();
        Ok(crate::hash::fold_perfect(&mut v))
    }
}
