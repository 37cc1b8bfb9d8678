//! C2SP signed-note with Ed25519: signer keys (Go `note` format), verifier keys, signing and
//! verifying notes; and C2SP tlog-cosignature `cosignature/v1` (Ed25519, key type 0x04): the
//! witness's keys, cosigning a checkpoint and checking a cosignature line.

use crate::error::LogError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature algorithm byte for Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 0x01;

/// Signature type byte of Ed25519 `cosignature/v1` keys (C2SP tlog-cosignature).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Key ID of an Ed25519 note key: first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id_of(name, ALG_ED25519, public_key)
}

/// Key ID of an Ed25519 `cosignature/v1` key: first 4 bytes of
/// SHA-256(name || 0x0A || 0x04 || pubkey).
pub fn cosignature_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id_of(name, ALG_COSIGNATURE_V1, public_key)
}

fn key_id_of(name: &str, alg: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg]);
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
    /// Every signature line, whatever its size (cosignatures are 4 + 8 + 64 bytes).
    pub lines: Vec<RawNoteSignature>,
}

/// One signature line of a note, not interpreted: key name and the decoded bytes
/// (key ID first).
#[derive(Debug, Clone)]
pub struct RawNoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (the first 4 bytes).
    pub id: [u8; 4],
    /// The bytes after the key ID.
    pub rest: Vec<u8>,
    /// The line as it appears in the note, with its final newline.
    pub line: String,
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
    let mut lines = Vec::new();
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
        lines.push(RawNoteSignature {
            name: name.to_string(),
            id: [raw[0], raw[1], raw[2], raw[3]],
            rest: raw[4..].to_vec(),
            line: format!("{line}\n"),
        });
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
    Ok(ParsedNote {
        text,
        signatures,
        lines,
    })
}

/// The message an Ed25519 `cosignature/v1` signs: `cosignature/v1\ntime <timestamp>\n` followed
/// by the checkpoint's note text (ending in its newline, without signature lines).
pub fn cosignature_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// Largest timestamp a cosignature may carry (2^63 - 1).
pub const MAX_COSIGNATURE_TIME: u64 = (1 << 63) - 1;

/// A witness's Ed25519 `cosignature/v1` signing key.
#[derive(Clone)]
pub struct CosignatureSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for CosignatureSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CosignatureSigner({}+{})", self.name, hex8(&self.id))
    }
}

impl CosignatureSigner {
    /// Generates a new random key named `name` (the caller checks [`valid_key_name`]).
    pub fn generate(name: &str) -> CosignatureSigner {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(name, seed)
    }

    /// The signer of Ed25519 seed `seed` named `name` (known-answer tests).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> CosignatureSigner {
        let key = SigningKey::from_bytes(&seed);
        let id = cosignature_key_id(name, key.verifying_key().as_bytes());
        CosignatureSigner {
            name: name.to_string(),
            id,
            key,
        }
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<hex keyID>+<base64(type||seed)>` of type 0x04
    /// (as written by [`CosignatureSigner::to_key_text`]) or 0x01 (a Go `note` Ed25519 signer
    /// key, used for cosigning as transparency-dev's `NewSignerForCosignatureV1` does). The key ID
    /// must be the one of the key's own type.
    pub fn parse(text: &str) -> Result<CosignatureSigner, String> {
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
        if raw.len() != 33 || (raw[0] != ALG_COSIGNATURE_V1 && raw[0] != ALG_ED25519) {
            return Err("key is not an Ed25519 signer key (type 0x04 or 0x01)".into());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[1..]);
        let signer = Self::from_seed(name, seed);
        let want = key_id_of(name, raw[0], signer.key.verifying_key().as_bytes());
        if want != id {
            return Err("key ID does not match the key".into());
        }
        Ok(signer)
    }

    /// The key in signer-key text form, type 0x04 (secret!).
    pub fn to_key_text(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex8(&self.id),
            B64.encode(raw)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Key name (the witness's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cosigns checkpoint note text `text` (ending in a newline, without signature lines) as
    /// of `timestamp` (POSIX seconds, at most [`MAX_COSIGNATURE_TIME`]); returns the signature
    /// line `— <name> base64(keyID || timestamp (8 bytes, big-endian) || signature)\n`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> String {
        let timestamp = timestamp.min(MAX_COSIGNATURE_TIME);
        let sig = self.key.sign(&cosignature_message(timestamp, text));
        let mut raw = Vec::with_capacity(76);
        raw.extend_from_slice(&self.id);
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

/// A witness's Ed25519 `cosignature/v1` verifier key: `<name>+<hex keyID>+<base64(0x04||pubkey)>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a `cosignature/v1` verifier key (type 0x04).
    pub fn parse(text: &str) -> Result<CosignatureVerifier, LogError> {
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
        if raw.len() == 33 && raw[0] == ALG_ED25519 {
            return Err(bad(
                "this is a log's note key (type 0x01), not a witness's cosignature/v1 key \
                 (type 0x04, as printed by `parapet witness init`)",
            ));
        }
        if raw.len() != 33 || raw[0] != ALG_COSIGNATURE_V1 {
            return Err(bad("not an Ed25519 cosignature/v1 key (0x04 || 32 bytes)"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        if cosignature_key_id(name, &pk) != id {
            return Err(bad("key ID does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("invalid Ed25519 public key"))?;
        Ok(CosignatureVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// The verifier key text.
    pub fn to_key_text(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex8(&self.id), B64.encode(raw))
    }

    /// Key name (the witness's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key ID.
    pub fn key_id(&self) -> [u8; 4] {
        self.id
    }

    /// Whether signature line `sig` names this key (name and key ID), i.e. is meant to be
    /// checked with it; lines of other keys are ignored.
    pub fn matches(&self, sig: &RawNoteSignature) -> bool {
        sig.name == self.name && sig.id == self.id
    }

    /// Checks signature line `sig` (which [`CosignatureVerifier::matches`]) as a cosignature
    /// of note text `text`; returns its timestamp.
    pub fn check(&self, text: &str, sig: &RawNoteSignature) -> Result<u64, String> {
        if sig.rest.len() != 8 + 64 {
            return Err(format!(
                "cosignature by {} is {} bytes, expected 76 (key ID, timestamp, Ed25519 signature)",
                self.name,
                sig.rest.len() + 4
            ));
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&sig.rest[..8]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > MAX_COSIGNATURE_TIME {
            return Err(format!(
                "cosignature by {} has a timestamp over 2^63-1",
                self.name
            ));
        }
        let mut s = [0u8; 64];
        s.copy_from_slice(&sig.rest[8..]);
        let s = ed25519_dalek::Signature::from_bytes(&s);
        self.key
            .verify_strict(&cosignature_message(timestamp, text), &s)
            .map_err(|_| {
                format!(
                    "cosignature by {}+{} does not verify: the checkpoint or the cosignature was modified",
                    self.name,
                    hex8(&self.id)
                )
            })?;
        Ok(timestamp)
    }

    /// The first valid cosignature by this key on signed note `note` (parsed): its timestamp
    /// and line. `Ok(None)` if the note carries no line of this key; `Err` if it carries only
    /// lines that do not verify.
    pub fn find(&self, note: &ParsedNote<'_>) -> Result<Option<(u64, String)>, String> {
        let mut err = None;
        for sig in note.lines.iter().filter(|s| self.matches(s)) {
            match self.check(note.text, sig) {
                Ok(ts) => return Ok(Some((ts, sig.line.clone()))),
                Err(e) => err = Some(e),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}
