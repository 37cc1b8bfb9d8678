//! Property tests: every inclusion and consistency proof for random trees verifies; a changed
//! hash, index or size fails.

use parapet_log::hash::{leaf_hash, Hash};
use parapet_log::proof::{
    consistency_proof, inclusion_proof, root_hash, verify_consistency, verify_inclusion, MemoryTree,
};
use proptest::prelude::*;

fn tree(n: u64) -> MemoryTree {
    MemoryTree {
        leaves: (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect(),
    }
}

fn flip(h: &mut Hash, bit: usize) {
    h[(bit / 8) % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn inclusion_proofs_verify_and_detect_changes(n in 1u64..700, i in any::<u64>(), bit in 0usize..256, which in any::<usize>()) {
        let i = i % n;
        let mut t = tree(n);
        let root = root_hash(&mut t, n).unwrap();
        let leaf = t.leaves[i as usize];
        let proof = inclusion_proof(&mut t, i, n).unwrap();
        prop_assert!(verify_inclusion(i, n, &leaf, &proof, &root).is_ok());
        // Changed leaf.
        let mut bad_leaf = leaf;
        flip(&mut bad_leaf, bit);
        prop_assert!(verify_inclusion(i, n, &bad_leaf, &proof, &root).is_err());
        // Changed proof hash.
        if !proof.is_empty() {
            let mut p = proof.clone();
            let k = which % p.len();
            flip(&mut p[k], bit);
            prop_assert!(verify_inclusion(i, n, &leaf, &p, &root).is_err());
            // Dropped hash.
            let mut p = proof.clone();
            p.pop();
            prop_assert!(verify_inclusion(i, n, &leaf, &p, &root).is_err());
        }
        // Changed root.
        let mut r = root;
        flip(&mut r, bit);
        prop_assert!(verify_inclusion(i, n, &leaf, &proof, &r).is_err());
        // Wrong index (another leaf position).
        if n > 1 {
            let j = (i + 1) % n;
            prop_assert!(verify_inclusion(j, n, &leaf, &proof, &root).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_detect_changes(n in 2u64..700, m in any::<u64>(), bit in 0usize..256, which in any::<usize>()) {
        let m = 1 + m % (n - 1);
        let mut t = tree(n);
        let new_root = root_hash(&mut t, n).unwrap();
        let old_root = root_hash(&mut t, m).unwrap();
        let proof = consistency_proof(&mut t, m, n).unwrap();
        prop_assert!(verify_consistency(m, n, &old_root, &new_root, &proof).is_ok());
        let mut p = proof.clone();
        let k = which % p.len();
        flip(&mut p[k], bit);
        prop_assert!(verify_consistency(m, n, &old_root, &new_root, &p).is_err());
        let mut o = old_root;
        flip(&mut o, bit);
        prop_assert!(verify_consistency(m, n, &o, &new_root, &proof).is_err());
        let mut r = new_root;
        flip(&mut r, bit);
        prop_assert!(verify_consistency(m, n, &old_root, &r, &proof).is_err());
        // A fork: same size, different last leaf at the old size.
        let mut forked = tree(n);
        forked.leaves[(m - 1) as usize] = leaf_hash(b"forged");
        let forked_old = root_hash(&mut forked, m).unwrap();
        prop_assert!(verify_consistency(m, n, &forked_old, &new_root, &proof).is_err());
    }
}
