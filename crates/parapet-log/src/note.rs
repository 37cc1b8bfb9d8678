//! C2SP signed-note with Ed25519: signer keys (Go `note` format), verifier keys, signing and
//! verifying notes.

use crate::error::LogError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature algorithm byte for Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 0x01;

/// Key ID of an Ed25519 note key: first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Whether `name` is a valid key name: non-empty, no '+', no whitespace.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c.is_control())
}

/// An Ed25519 note signer.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}+{})", self.name, hex8(&self.id))
    }
}

fn hex8(id: &[u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(*id))
}

impl NoteSigner {
    /// Generates a new random key named `name`.
    pub fn generate(name: &str) -> NoteSigner {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> NoteSigner {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        NoteSigner {
            name: name.to_string(),
            id,
            key,
        }
    }

    /// Parses a Go-format signer key: `PRIVATE+KEY+<name>+<hex keyID>+<base64(0x01||seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, String> {
        let text = text.trim_end_matches(['\n', '\r']);
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or("does not start with PRIVATE+KEY+")?;
        let mut parts = rest.splitn(3, '+');
        let (name, id_hex, key_b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err("expected PRIVATE+KEY+name+keyid+key".into()),
        };
        if !valid_key_name(name) {
            return Err(format!("invalid key name {name:?}"));
        }
        let id = parse_hex8(id_hex).ok_or("key ID is not 8 hex digits")?;
        let raw = B64.decode(key_b64).map_err(|_| "key is not valid base64")?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err("key is not an Ed25519 signer key".into());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[1..]);
        let signer = Self::from_seed(name, seed);
        if signer.id != id {
            return Err("key ID does not match the key".into());
        }
        Ok(signer)
    }

    /// The key in Go signer-key text form (secret!).
    pub fn to_key_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex8(&self.id),
            B64.encode(raw)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs note `text` (which must end in a newline) and returns the signed note.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.id);
        raw.extend_from_slice(&sig.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

fn parse_hex8(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().map(|v| v.to_be_bytes())
}

/// An Ed25519 note verifier (`name+hex8+base64(0x01||pubkey)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses verifier key text.
    pub fn parse(text: &str) -> Result<NoteVerifier, LogError> {
        let bad = |reason: &str| LogError::BadVerifierKey {
            key: text.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = text.trim().splitn(3, '+');
        let (name, id_hex, key_b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(bad("not of the form name+keyid+key")),
        };
        if !valid_key_name(name) {
            return Err(bad("invalid key name"));
        }
        let id = parse_hex8(id_hex).ok_or_else(|| bad("key ID is not 8 hex digits"))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| bad("key is not valid base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key (0x01 || 32 bytes)"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        if key_id(name, &pk) != id {
            return Err(bad("key ID does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("invalid Ed25519 public key"))?;
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// The verifier key text.
    pub fn to_key_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex8(&self.id), B64.encode(raw))
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a signed note: checks its syntax and that it carries a valid signature by this key.
    /// Returns the note text (ending in a newline). `what` names the note in errors.
    pub fn open<'a>(&self, note: &'a [u8], what: &str) -> Result<&'a str, LogError> {
        let parsed = parse_note(note).map_err(|r| LogError::malformed(what, r))?;
        let mut found = false;
        for sig in &parsed.signatures {
            if sig.name == self.name && sig.id == self.id {
                found = true;
                let s = ed25519_dalek::Signature::from_bytes(&sig.signature);
                if self.key.verify_strict(parsed.text.as_bytes(), &s).is_ok() {
                    return Ok(parsed.text);
                }
            }
        }
        Err(LogError::Tampered(if found {
            format!(
                "{what}: the signature by {}+{} does not verify: the note was modified",
                self.name,
                hex8(&self.id)
            )
        } else {
            format!(
                "{what}: no signature by key {}+{} (signed by another key, or the signature line was modified)",
                self.name,
                hex8(&self.id)
            )
        }))
    }
}

/// One signature line of a note.
#[derive(Debug, Clone)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID.
    pub id: [u8; 4],
    /// Raw Ed25519 signature.
    pub signature: [u8; 64],
}

/// A parsed (not yet verified) signed note.
#[derive(Debug)]
pub struct ParsedNote<'a> {
    /// The text, ending in a newline.
    pub text: &'a str,
    /// The Ed25519-sized signatures (others are skipped).
    pub signatures: Vec<NoteSignature>,
}

/// Splits a signed note into text and signature lines, checking the C2SP signed-note syntax.
pub fn parse_note(note: &[u8]) -> Result<ParsedNote<'_>, String> {
    let s = std::str::from_utf8(note).map_err(|_| "not valid UTF-8".to_string())?;
    if s.chars().any(|c| c != '\n' && c.is_control()) {
        return Err("contains control characters".into());
    }
    let split = s
        .rfind("\n\n")
        .ok_or("no blank line separating text and signatures")?;
    let text = &s[..split + 1];
    let sigs = &s[split + 2..];
    if !sigs.ends_with('\n') || sigs.len() < 2 {
        return Err("signature block must be non-empty and end in a newline".into());
    }
    let mut signatures = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or("signature line does not start with an em dash and a space")?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or("signature line has no key name")?;
        if !valid_key_name(name) {
            return Err(format!("invalid key name {name:?} in signature line"));
        }
        let raw = B64
            .decode(b64)
            .map_err(|_| "signature is not valid base64".to_string())?;
        if raw.len() < 5 {
            return Err("signature is too short".into());
        }
        if raw.len() == 68 {
            let mut id = [0u8; 4];
            id.copy_from_slice(&raw[..4]);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&raw[4..]);
            signatures.push(NoteSignature {
                name: name.to_string(),
                id,
                signature,
            });
        }
    }
    Ok(ParsedNote { text, signatures })
}
