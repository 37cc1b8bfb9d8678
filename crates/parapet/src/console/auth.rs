//! Console tokens: bearer secrets whose SHA-256 alone is configured (`[[console.tokens]]`), each
//! with a role. Auditors read; operators also act.

use crate::config::{ConsoleRole, ConsoleToken};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

/// A new token: `pt_` and 40 random letters and digits (about 238 bits).
pub fn generate() -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("pt_{body}")
}

/// SHA-256 (hex) of a token, as configured.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<(ConsoleToken, [u8; 32])>,
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: ConsoleRole,
    /// Its user, if it names one.
    pub user: Option<String>,
}

impl Tokens {
    /// Tokens from the config; a `sha256` that is not 64 hex digits is an error.
    pub fn new(tokens: &[ConsoleToken]) -> anyhow::Result<Tokens> {
        let mut out = Vec::new();
        for t in tokens {
            let mut d = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut d).map_err(|_| {
                anyhow::anyhow!(
                    "[[console.tokens]] {:?}: sha256 must be 64 hex digits (use `parapet console token`)",
                    t.name
                )
            })?;
            out.push((t.clone(), d));
        }
        Ok(Tokens { tokens: out })
    }

    /// The caller of an `Authorization` header value, if it carries a configured token. Every
    /// configured digest is compared, in constant time, whatever matches.
    pub fn check(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (t, want) in &self.tokens {
            let diff = want
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                    user: t.user.clone(),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_pass() {
        let token = generate();
        let tokens = Tokens::new(&[ConsoleToken {
            name: "ann".into(),
            role: ConsoleRole::Auditor,
            sha256: digest(&token),
            user: None,
        }])
        .expect("valid");
        let caller = tokens
            .check(Some(&format!("Bearer {token}")))
            .expect("accepted");
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("ann", ConsoleRole::Auditor)
        );
        assert!(tokens.check(Some("Bearer pt_wrong")).is_none());
        assert!(tokens.check(Some(&token)).is_none(), "no Bearer scheme");
        assert!(tokens.check(None).is_none());
        assert!(Tokens::new(&[ConsoleToken {
            name: "bad".into(),
            role: ConsoleRole::Operator,
            sha256: "xyz".into(),
            user: None,
        }])
        .is_err());
    }
}
