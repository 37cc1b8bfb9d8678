//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, and PostgreSQL's
//! verifier format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! Hand-written on `hmac`/`sha2`: no maintained crate implements the *server* side of SCRAM
//! (`postgres-protocol` only has the client side, which the gateway uses upstream and tests use
//! to check this code). Verifier generation reuses `postgres_protocol::password::scram_sha_256`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// StoredKey = H(ClientKey).
    pub stored_key: [u8; 32],
    /// ServerKey.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses PostgreSQL's verifier format.
    pub fn parse(s: &str) -> Result<Verifier, String> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("must start with SCRAM-SHA-256$")?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or("expected <iterations>:<salt>$<StoredKey>:<ServerKey>")?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or("expected <iterations>:<salt>")?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or("expected <StoredKey>:<ServerKey>")?;
        let iterations: u32 = iter.parse().map_err(|_| "iterations is not a number")?;
        if iterations == 0 {
            return Err("iterations must be positive".into());
        }
        let salt = B64.decode(salt).map_err(|_| "salt is not base64")?;
        let key = |k: &str, what: &str| -> Result<[u8; 32], String> {
            let v = B64.decode(k).map_err(|_| format!("{what} is not base64"))?;
            v.try_into().map_err(|_| format!("{what} must be 32 bytes"))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }

    /// Makes a verifier for `password` (SASLprep, random salt, 4096 iterations), in PostgreSQL's format.
    pub fn generate(password: &str) -> String {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    }

    /// A random verifier no password matches, used for unknown users so that they go through the
    /// same exchange as known ones.
    pub fn impossible() -> Verifier {
        let mut v = Verifier {
            iterations: 4096,
            salt: vec![0; 16],
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        let mut rng = rand::thread_rng();
        rng.fill_bytes(&mut v.salt);
        rng.fill_bytes(&mut v.stored_key);
        rng.fill_bytes(&mut v.server_key);
        v
    }
}

/// State of one server-side exchange.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any size"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

impl ServerExchange {
    /// Handles the client-first message; returns the exchange and the server-first message.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
    ) -> Result<(ServerExchange, String), String> {
        let s =
            std::str::from_utf8(client_first).map_err(|_| "client-first-message is not UTF-8")?;
        // gs2-header: "n,," or "y,," (we never advertise channel binding) then client-first-bare.
        let (cb, rest) = s.split_once(',').ok_or("malformed client-first-message")?;
        if cb != "n" && cb != "y" {
            return Err("channel binding is not supported by this gateway".into());
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or("malformed client-first-message")?;
        if !authzid.is_empty() {
            return Err("authorization identities are not supported".into());
        }
        let gs2_header = format!("{cb},{authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or("client-first-message has no nonce")?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|c| (0x21..=0x7e).contains(&c) && c != b',')
        {
            return Err("invalid client nonce".into());
        }
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ServerExchange {
                verifier,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                gs2_header,
            },
            server_first,
        ))
    }

    /// Handles the client-final message; on success returns the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, String> {
        let s =
            std::str::from_utf8(client_final).map_err(|_| "client-final-message is not UTF-8")?;
        let (without_proof, proof) = s
            .rsplit_once(",p=")
            .ok_or("client-final-message has no proof")?;
        let mut cbind = None;
        let mut nonce = None;
        for a in without_proof.split(',') {
            if let Some(v) = a.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = a.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if cbind != Some(B64.encode(self.gs2_header.as_bytes()).as_str()) {
            return Err("channel binding data does not match".into());
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err("nonce does not match".into());
        }
        let proof = B64.decode(proof).map_err(|_| "proof is not base64")?;
        if proof.len() != 32 {
            return Err("proof has the wrong length".into());
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for ((k, p), s) in client_key.iter_mut().zip(&proof).zip(&client_signature) {
            *k = p ^ s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison.
        let diff = computed
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err("password authentication failed".into());
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(password_verifier: &str, password: &str) -> Result<(), String> {
        let v = Verifier::parse(password_verifier)?;
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = ServerExchange::start(v, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|e| e.to_string())?;
        let server_final = ex.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn real_client_authenticates_with_right_password_only() {
        let v = Verifier::generate("s3cret pässword");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        run(&v, "s3cret pässword").unwrap();
        assert_eq!(
            run(&v, "wrong").unwrap_err(),
            "password authentication failed"
        );
    }

    #[test]
    fn parses_postgres_verifier_and_rejects_garbage() {
        // A verifier in PostgreSQL's format (the integration tests also use one read from pg_authid).
        let v = Verifier::parse("SCRAM-SHA-256$4096:eVXmAiR/fc2zHj8m9tSAMg==$LZW/jyS9eyFadhNUFeHL/cgs+0LVnijF6BXlG6OXyI4=:vHqOrcRvUvV0LlXUMgE2hGxE5hTSiNaDrufEsl9U2Ss=").unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        for bad in [
            "md5abc",
            "SCRAM-SHA-256$x:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_binding_and_nonce_tampering_fail() {
        let v = Verifier::parse(&Verifier::generate("pw")).unwrap();
        let (_, _) = ServerExchange::start(v.clone(), b"n,,n=,r=abc").unwrap();
        assert!(ServerExchange::start(v.clone(), b"p=tls-server-end-point,,n=,r=abc").is_err());
        let (ex, _) = ServerExchange::start(v, b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(b"c=biws,r=abcWRONG,p=AAAA").is_err());
    }
}
