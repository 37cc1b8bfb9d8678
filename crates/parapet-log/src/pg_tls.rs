//! Connecting to the PostgreSQL of a fleet's log (the sequencer, the fleet state) with TLS,
//! as libpq reads a URL: `sslmode=disable|prefer|require|verify-ca|verify-full` (default
//! `prefer`: TLS when the server offers it) and `sslrootcert=FILE` (PEM CAs; default the
//! system's). Audit entries cross this connection before they are hashed into the tree, so
//! whenever TLS is used the server's certificate is always checked (chain and host name, as
//! libpq's `verify-full`): an unchecked TLS session would let a machine in the middle rewrite
//! entries. A server whose certificate cannot be checked is refused (give `sslrootcert`, or
//! `sslmode=disable` on a trusted network). tokio-postgres has no rustls connector of its own; this is the small
//! adapter (`MakeTlsConnect` over tokio-rustls) instead of another crate.

use crate::witness_client::tls_connector;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// A libpq URL split into what tokio-postgres reads and the CA file it does not know.
fn split_url(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    if !url.contains("://") {
        return (url.to_string(), None);
    }
    let mut kept = Vec::new();
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslrootcert" => {
                let v = percent_decode(v);
                if v != "system" {
                    root = Some(PathBuf::from(v));
                }
            }
            // Checked whenever TLS is used: both mean "TLS required" to tokio-postgres.
            "sslmode" if v == "verify-ca" || v == "verify-full" => {
                kept.push("sslmode=require".to_string())
            }
            _ => kept.push(pair.to_string()),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root)
}

/// `%XX` escapes decoded (a path in a URL's query).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL to give `tokio_postgres::connect` and the TLS connector to give it with, for the
/// PostgreSQL of `url` (see the module documentation). Fails when the CA file cannot be read.
pub fn prepare(url: &str) -> Result<(String, MakePgTls), String> {
    let (url, root) = split_url(url);
    Ok((url, MakePgTls::new(root)?))
}

/// A tokio-postgres error for a message: the server's SQLSTATE and message, or the error with
/// its cause (a TLS handshake's reason), and what to do when the server's certificate could not
/// be checked.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(s) if s.to_string().contains("certificate") => format!(
            "{e}: {s} (the server's TLS certificate is always checked: give the CA that signed \
             it with sslrootcert=FILE in the URL, or sslmode=disable on a trusted network)"
        ),
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// The TLS connector of [`prepare`] (rustls, certificates checked).
#[derive(Clone)]
pub struct MakePgTls {
    connector: tokio_rustls::TlsConnector,
}

impl MakePgTls {
    /// Trusting the PEM CAs of `root`, or the system's.
    pub fn new(root: Option<PathBuf>) -> Result<MakePgTls, String> {
        let connector = tls_connector(
            root.as_deref(),
            "the CAs for TLS to PostgreSQL: sslrootcert=FILE in the URL",
        )?;
        Ok(MakePgTls { connector })
    }
}

impl<S> MakeTlsConnect<S> for MakePgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{domain}: {e}")))?;
        Ok(PgTlsConnect {
            connector: self.connector.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// Any byte stream (the boxed TLS session over the socket).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TLS session to PostgreSQL.
pub struct PgTlsStream(Box<dyn Io>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (tokio-postgres then uses SCRAM-SHA-256, not -PLUS).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_keeps_what_tokio_postgres_reads() {
        let (u, r) =
            split_url("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem");
        assert_eq!(u, "postgres://u:p@h/d?sslmode=require");
        assert_eq!(r, Some(PathBuf::from("/tmp/ca.pem")));
        let (u, r) = split_url("postgres://u@h/d?sslrootcert=system");
        assert_eq!((u.as_str(), r), ("postgres://u@h/d", None));
        let (u, r) = split_url("postgres://u@h/d?sslmode=disable");
        assert_eq!((u.as_str(), r), ("postgres://u@h/d?sslmode=disable", None));
        let (u, _) = split_url("host=h user=u");
        assert_eq!(u, "host=h user=u");
    }
}
