//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, with
//! SCRAM-SHA-256-PLUS channel binding (`tls-server-end-point`, RFC 5929) over TLS, and
//! PostgreSQL's verifier format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
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
    /// What the client-final message's `c=` must carry: the gs2 header, then the channel
    /// binding data when bound.
    cbind_input: Vec<u8>,
}

/// The SASL mechanisms offered: with TLS, the channel-bound one first (as PostgreSQL does).
pub fn mechanisms(tls: bool) -> &'static [u8] {
    if tls {
        b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    } else {
        b"SCRAM-SHA-256\0\0"
    }
}

/// The `tls-server-end-point` channel binding data of a DER certificate (RFC 5929 §4.1): its
/// hash under the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1. `None`
/// when that algorithm names no hash (Ed25519, RSASSA-PSS), as PostgreSQL, which then offers no
/// channel binding either.
///
/// Hand-written: only the signature algorithm's OID is needed, found by walking the certificate's
/// outer DER TLVs, which does not warrant an X.509 parser dependency.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    /// Tag, header length and content length of the DER TLV at the front of `b`.
    fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if first < 0x80 {
            return Some((tag, 2, first as usize));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &d| (l << 8) | d as usize);
        Some((tag, 2 + n, len))
    }
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }
    let (tag, h, _) = tlv(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let body = cert_der.get(h..)?;
    let (_, th, tl) = tlv(body)?;
    let alg = body.get(th + tl..)?;
    let (tag, ah, _) = tlv(alg)?;
    if tag != 0x30 {
        return None;
    }
    let oid_tlv = alg.get(ah..)?;
    let (tag, oh, ol) = tlv(oid_tlv)?;
    if tag != 0x06 {
        return None;
    }
    let oid = oid_tlv.get(oh..oh + ol)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        // md5WithRSA, sha1WithRSA, sha256WithRSA; ecdsa-with-SHA1, -SHA256
        [r @ .., 0x04 | 0x05 | 0x0b] if r == RSA => 256,
        [r @ .., 0x01] if r == ECDSA => 256,
        [r @ .., 0x03, 0x02] if r == ECDSA => 256,
        [r @ .., 0x0c] if r == RSA => 384,
        [r @ .., 0x03, 0x03] if r == ECDSA => 384,
        [r @ .., 0x0d] if r == RSA => 512,
        [r @ .., 0x03, 0x04] if r == ECDSA => 512,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(cert_der).to_vec(),
        384 => sha2::Sha384::digest(cert_der).to_vec(),
        _ => sha2::Sha512::digest(cert_der).to_vec(),
    })
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
    /// Handles the client-first message of `mechanism`; returns the exchange and the
    /// server-first message. `binding` is the connection's `tls-server-end-point` data when the
    /// client came over TLS (and channel binding was offered).
    pub fn start(
        verifier: Verifier,
        mechanism: &str,
        binding: Option<&[u8]>,
        client_first: &[u8],
    ) -> Result<(ServerExchange, String), String> {
        let s =
            std::str::from_utf8(client_first).map_err(|_| "client-first-message is not UTF-8")?;
        // gs2-header: "p=tls-server-end-point,," (SCRAM-SHA-256-PLUS), or "n,," / "y,,", then
        // client-first-bare.
        let (cb, rest) = s.split_once(',').ok_or("malformed client-first-message")?;
        let plus = mechanism == "SCRAM-SHA-256-PLUS";
        let bound = match (plus, cb, binding) {
            (true, "p=tls-server-end-point", Some(data)) => Some(data),
            (true, _, Some(_)) => {
                return Err("SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point".into())
            }
            (true, _, None) => {
                return Err("channel binding is only offered over TLS".into())
            }
            (false, "n", _) => None,
            // "y": the client can bind but thinks the server cannot; it can, so a
            // man in the middle has removed the -PLUS mechanism (RFC 5802 §6).
            (false, "y", Some(_)) => {
                return Err("SCRAM channel binding negotiation error: the client supports channel binding, which the gateway offered".into())
            }
            (false, "y", None) => None,
            (false, _, _) => {
                return Err("channel binding needs the SCRAM-SHA-256-PLUS mechanism".into())
            }
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or("malformed client-first-message")?;
        if !authzid.is_empty() {
            return Err("authorization identities are not supported".into());
        }
        let mut cbind_input = format!("{cb},{authzid},").into_bytes();
        if let Some(data) = bound {
            cbind_input.extend_from_slice(data);
        }
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
                cbind_input,
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
        if cbind != Some(B64.encode(&self.cbind_input).as_str()) {
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
        let (ex, server_first) = ServerExchange::start(v, "SCRAM-SHA-256", None, client.message())?;
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
        let plain = "SCRAM-SHA-256";
        let plus = "SCRAM-SHA-256-PLUS";
        let (_, _) = ServerExchange::start(v.clone(), plain, None, b"n,,n=,r=abc").unwrap();
        let p = b"p=tls-server-end-point,,n=,r=abc";
        assert!(ServerExchange::start(v.clone(), plain, None, p).is_err());
        assert!(ServerExchange::start(v.clone(), plus, None, p).is_err());
        // "y" over TLS is a downgrade: refused.
        assert!(ServerExchange::start(v.clone(), plain, Some(b"h"), b"y,,n=,r=abc").is_err());
        let (ex, _) = ServerExchange::start(v, plain, None, b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(b"c=biws,r=abcWRONG,p=AAAA").is_err());
    }

    /// A real client binding to the certificate's hash authenticates; one bound to another
    /// certificate (a man in the middle's) does not.
    #[test]
    fn channel_bound_exchange_checks_the_binding() {
        let verifier = Verifier::generate("pw");
        let bound = |server: &[u8], client: &[u8]| -> Result<(), String> {
            let v = Verifier::parse(&verifier)?;
            let mut c =
                ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(client.to_vec()));
            let (ex, first) =
                ServerExchange::start(v, "SCRAM-SHA-256-PLUS", Some(server), c.message())?;
            c.update(first.as_bytes()).map_err(|e| e.to_string())?;
            let fin = ex.finish(c.message())?;
            c.finish(fin.as_bytes()).map_err(|e| e.to_string())
        };
        bound(b"cert-hash", b"cert-hash").unwrap();
        assert_eq!(
            bound(b"cert-hash", b"other-hash").unwrap_err(),
            "channel binding data does not match"
        );
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let der = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let p256 = der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256),
            Some(Sha256::digest(&p256).to_vec())
        );
        let p384 = der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384),
            Some(sha2::Sha384::digest(&p384).to_vec())
        );
        assert_eq!(tls_server_end_point(&der(&rcgen::PKCS_ED25519)), None);
        assert_eq!(tls_server_end_point(b"\x30\x03garbage"), None);
    }
}
