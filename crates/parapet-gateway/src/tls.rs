//! TLS (rustls with the aws-lc-rs provider): for client connections, from PEM files, and to
//! upstream servers, with libpq's `sslmode` semantics.

use crate::config::TlsSettings;
use crate::error::GatewayError;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds a TLS acceptor from the configured certificate chain and private key.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, GatewayError> {
    Ok(server(settings)?.0)
}

/// [`acceptor`], with the `tls-server-end-point` channel binding data of the certificate
/// (SCRAM-SHA-256-PLUS; `None` when its signature algorithm names no hash).
pub fn server(settings: &TlsSettings) -> Result<(TlsAcceptor, Option<Vec<u8>>), GatewayError> {
    let err = |what: &'static str, path: &std::path::Path, reason: String| GatewayError::Tls {
        what,
        path: path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(&settings.cert)
        .map_err(|e| err("certificate", &settings.cert, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", &settings.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(
            "certificate",
            &settings.cert,
            "no PEM certificate found".into(),
        ));
    }
    let binding = certs
        .first()
        .and_then(|c| crate::scram::tls_server_end_point(c));
    let key_pem =
        std::fs::read(&settings.key).map_err(|e| err("key", &settings.key, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err("key", &settings.key, e.to_string()))?
        .ok_or_else(|| err("key", &settings.key, "no PEM private key found".into()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("certificate", &settings.cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| err("key", &settings.key, e.to_string()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), binding))
}

/// The system's trusted CAs (Debian's bundle), for `sslrootcert=system` and the default.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the TLS connector for an upstream server, as libpq's `sslmode`: `require` and `prefer`
/// encrypt without checking the certificate; `verify-ca` checks that a trusted CA signed it;
/// `verify-full` also that it is valid for the host name. `None` for `disable`.
pub fn upstream_connector(
    tls: &crate::config::UpstreamTls,
) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    use crate::config::SslMode;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match tls.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Upstream {
                provider,
                chain: None,
            }))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = tls
                .root_cert
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(SYSTEM_ROOTS));
            let pem = std::fs::read(&path)
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no PEM certificate found",
                    path.display()
                ));
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
                if tls.mode == SslMode::VerifyCa {
                    Arc::new(Upstream {
                        provider,
                        chain: Some(webpki),
                    })
                } else {
                    webpki
                };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// The server-certificate check of `sslmode` `require`/`prefer` (`chain: None`: any certificate,
/// encryption without authentication, as in libpq) and `verify-ca` (`chain`: it must lead to a
/// trusted CA; the name in it is not checked). The handshake's signatures are checked either way,
/// so the session is bound to the key presented.
#[derive(Debug)]
struct Upstream {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl rustls::client::danger::ServerCertVerifier for Upstream {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
