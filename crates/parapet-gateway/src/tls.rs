//! TLS for client connections (rustls with the aws-lc-rs provider), from PEM files.

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
