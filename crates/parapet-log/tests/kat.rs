//! Known-answer tests against public reference vectors (see tests/data/README.md).

use base64::Engine;
use parapet_log::hash::{leaf_hash, Hash};
use parapet_log::note::{NoteSigner, NoteVerifier};
use parapet_log::proof::{
    consistency_proof, inclusion_proof, root_hash, verify_consistency, verify_inclusion, MemoryTree,
};
use serde_json::Value;

fn data(name: &str) -> Value {
    let p = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

fn hash(v: &Value) -> Option<Hash> {
    b64(v).try_into().ok()
}

fn reference_tree() -> (Vec<Vec<u8>>, Vec<Hash>, Vec<Hash>) {
    let d = data("rfc6962_tree.json");
    let leaves: Vec<Vec<u8>> = d["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| hex::decode(v.as_str().unwrap()).unwrap())
        .collect();
    let hx = |k: &str| -> Vec<Hash> {
        d[k].as_array()
            .unwrap()
            .iter()
            .map(|v| {
                hex::decode(v.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect()
    };
    (leaves, hx("leaf_hashes_hex"), hx("roots_hex"))
}

#[test]
fn rfc6962_leaf_hashes_and_roots() {
    let (leaves, leaf_hashes, roots) = reference_tree();
    for (l, h) in leaves.iter().zip(&leaf_hashes) {
        assert_eq!(&leaf_hash(l), h);
    }
    for (size, want) in roots.iter().enumerate() {
        let mut t = MemoryTree {
            leaves: leaf_hashes[..size].to_vec(),
        };
        assert_eq!(
            &root_hash(&mut t, size as u64).unwrap(),
            want,
            "size {size}"
        );
    }
}

#[test]
fn transparency_dev_inclusion_vectors() {
    let (_, leaf_hashes, _) = reference_tree();
    for case in data("merkle_inclusion.json").as_array().unwrap() {
        let idx = case["leafIdx"].as_u64().unwrap();
        let size = case["treeSize"].as_u64().unwrap();
        let proof: Vec<Hash> = case["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| hash(v).unwrap())
            .collect();
        let root = hash(&case["root"]).unwrap();
        let leaf = hash(&case["leafHash"]).unwrap();
        let want_err = case["wantErr"].as_bool().unwrap();
        let r = verify_inclusion(idx, size, &leaf, &proof, &root);
        assert_eq!(r.is_err(), want_err, "{}", case["file"]);
        if !want_err {
            // Our prover produces exactly the reference proof.
            let mut t = MemoryTree {
                leaves: leaf_hashes[..size as usize].to_vec(),
            };
            assert_eq!(inclusion_proof(&mut t, idx, size).unwrap(), proof);
        }
    }
}

#[test]
fn transparency_dev_consistency_vectors() {
    let (_, leaf_hashes, _) = reference_tree();
    for case in data("merkle_consistency.json").as_array().unwrap() {
        let s1 = case["size1"].as_u64().unwrap();
        let s2 = case["size2"].as_u64().unwrap();
        let proof: Vec<Hash> = case["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| hash(v).unwrap())
            .collect();
        let r1 = hash(&case["root1"]);
        let r2 = hash(&case["root2"]);
        let want_err = case["wantErr"].as_bool().unwrap();
        let ok = match (r1, r2) {
            (Some(a), Some(b)) => verify_consistency(s1, s2, &a, &b, &proof).is_ok(),
            _ => false,
        };
        assert_eq!(!ok, want_err, "{}", case["file"]);
        if !want_err {
            let mut t = MemoryTree {
                leaves: leaf_hashes[..s2 as usize].to_vec(),
            };
            assert_eq!(consistency_proof(&mut t, s1, s2).unwrap(), proof);
        }
    }
}

#[test]
fn go_note_vectors() {
    let d = data("note.json");
    let skey = d["signer_key"].as_str().unwrap();
    let vkey = d["verifier_key"].as_str().unwrap();
    let signer = NoteSigner::parse(skey).unwrap();
    assert_eq!(signer.to_key_text(), skey);
    assert_eq!(signer.verifier().to_key_text(), vkey);
    // Ed25519 signatures are deterministic: byte-identical to Go's output.
    let text = d["text"].as_str().unwrap();
    let signed = d["signed"].as_str().unwrap();
    assert_eq!(signer.sign(text), signed);
    let v = NoteVerifier::parse(vkey).unwrap();
    assert_eq!(v.open(signed.as_bytes(), "note").unwrap(), text);
    // A second signature by an unknown key is ignored.
    let two = format!("{signed}{}", d["enoch_signature_line"].as_str().unwrap());
    assert_eq!(v.open(two.as_bytes(), "note").unwrap(), text);
    // Only Enoch's key: no signature by it verifies Peter's note.
    let enoch = NoteVerifier::parse(d["other_verifier_key"].as_str().unwrap()).unwrap();
    assert!(enoch.open(signed.as_bytes(), "note").is_err());
    // Tampered text fails.
    let bad = signed.replacen("cryptography", "cryptographY", 1);
    assert!(v.open(bad.as_bytes(), "note").is_err());
    // Malformed: no signature block, missing final newline.
    assert!(v.open(text.as_bytes(), "note").is_err());
    assert!(v
        .open(&signed.as_bytes()[..signed.len() - 1], "note")
        .is_err());
    // Mangled verifier keys are refused.
    let mut b = vkey.as_bytes().to_vec();
    for i in 0..b.len() {
        b[i] = b[i].wrapping_add(1);
        if let Ok(s) = std::str::from_utf8(&b) {
            assert!(NoteVerifier::parse(s).is_err(), "{s}");
        }
        b[i] = b[i].wrapping_sub(1);
    }
}
