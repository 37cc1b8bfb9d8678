//! Connecting to a target's PostgreSQL server with the gateway's own credentials (trust,
//! cleartext, md5 or SCRAM-SHA-256 via `postgres-protocol`), over TCP (with TLS as `sslmode`
//! says) or, when the host is a directory, over the server's Unix-domain socket (libpq's
//! convention); forwarding cancel requests.

use crate::config::UpstreamConfig;
use crate::error::SessionError;
use crate::protocol::{backend::parse_error, cstr, frame};
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::io;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

/// The Unix-domain socket of `host:port` when `host` names a directory, as libpq reads it: the
/// host is an absolute path (in a URL, percent-encoded: `postgres://u@%2Fvar%2Frun%2Fpostgresql/db`)
/// and the socket is `<dir>/.s.PGSQL.<port>`.
pub(crate) fn socket_path(host: &str, port: u16) -> Option<PathBuf> {
    let dir = percent_decode(host)?;
    dir.starts_with('/')
        .then(|| PathBuf::from(dir).join(format!(".s.PGSQL.{port}")))
}

/// Decodes `%XX` escapes (the binary hands hosts over as the URL spells them). `None` if the
/// result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A plain connection to the server: TCP (Nagle off) or a Unix-domain socket (no TCP stack on
/// either side, cheaper per message). tokio-util's `Either` forwards reads and writes to
/// whichever it holds.
type Plain = Either<TcpStream, UnixStream>;
/// A connection to the server: plain, or TLS over TCP.
pub(crate) type UpStream = Either<Plain, Box<TlsStream<TcpStream>>>;
/// Read half of an [`UpStream`].
pub(crate) type UpRead =
    Either<Either<tcp::OwnedReadHalf, unix::OwnedReadHalf>, ReadHalf<Box<TlsStream<TcpStream>>>>;
/// Write half of an [`UpStream`].
pub(crate) type UpWrite =
    Either<Either<tcp::OwnedWriteHalf, unix::OwnedWriteHalf>, WriteHalf<Box<TlsStream<TcpStream>>>>;

/// Splits a connection into halves: owned ones with no lock between them when plain; a TLS
/// session has one state for both directions, so its halves share it.
pub(crate) fn into_split(s: UpStream) -> (UpRead, UpWrite) {
    match s {
        Either::Left(Either::Left(s)) => {
            let (r, w) = s.into_split();
            (Either::Left(Either::Left(r)), Either::Left(Either::Left(w)))
        }
        Either::Left(Either::Right(s)) => {
            let (r, w) = s.into_split();
            (
                Either::Left(Either::Right(r)),
                Either::Left(Either::Right(w)),
            )
        }
        Either::Right(s) => {
            let (r, w) = tokio::io::split(s);
            (Either::Right(r), Either::Right(w))
        }
    }
}

/// Opens the transport to `host:port`, negotiating TLS over TCP when a connector is given:
/// SSLRequest, then the handshake if the server accepts; if it declines, plain only with
/// `sslmode=prefer` (libpq's default).
async fn open_tls(
    host: &str,
    port: u16,
    tls: Option<&TlsConnector>,
    mode: crate::config::SslMode,
) -> Result<UpStream, SessionError> {
    let plain = open(host, port)
        .await
        .map_err(|e| up_err(format!("cannot connect to {host}:{port}: {e}")))?;
    // No TLS wanted, or a Unix-domain socket (where libpq does not use TLS either).
    let (connector, mut tcp) = match (tls, plain) {
        (Some(c), Either::Left(tcp)) => (c, tcp),
        (_, plain) => return Ok(Either::Left(plain)),
    };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| up_err(format!("{host} is not a valid TLS server name: {e}")))?;
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                up_err(format!(
                    "TLS to {host}:{port} failed: {e} (check sslmode and sslrootcert)"
                ))
            })?;
            Ok(Either::Right(Box::new(stream)))
        }
        b'N' if mode == crate::config::SslMode::Prefer => Ok(Either::Left(Either::Left(tcp))),
        b'N' => Err(up_err(format!(
            "server {host}:{port} does not support TLS, which sslmode requires"
        ))),
        other => Err(up_err(format!(
            "server {host}:{port} answered the TLS request with {:?}",
            other as char
        ))),
    }
}

/// Opens the plain transport to `host:port` (see [`socket_path`]).
async fn open(host: &str, port: u16) -> io::Result<Plain> {
    match socket_path(host, port) {
        Some(path) => UnixStream::connect(&path)
            .await
            .map(Either::Right)
            .map_err(|e| io::Error::new(e.kind(), format!("socket {}: {e}", path.display()))),
        None => {
            let s = TcpStream::connect((host, port)).await?;
            s.set_nodelay(true)?;
            Ok(Either::Left(s))
        }
    }
}

/// An authenticated upstream connection, ready for queries.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The socket.
    pub stream: UpStream,
    /// Raw ParameterStatus messages the server sent during startup, to relay to the client.
    pub parameter_status: BytesMut,
    /// Server backend pid and secret (for cancel requests).
    pub key: (i32, i32),
    /// Bytes read past the startup (normally empty).
    pub leftover: BytesMut,
}

fn up_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Upstream(e.to_string())
}

/// Connects and authenticates; `client_params` are forwarded (minus user/database/replication).
/// `tls`: the target's connector (see [`crate::tls::upstream_connector`]).
pub(crate) async fn connect(
    cfg: &UpstreamConfig,
    tls: Option<&TlsConnector>,
    client_params: &[(String, String)],
    cap: usize,
) -> Result<Upstream, SessionError> {
    let mut stream = open_tls(&cfg.host, cfg.port, tls, cfg.tls.mode).await?;
    let mut params: Vec<(&str, &str)> = vec![("user", &cfg.user), ("database", &cfg.database)];
    for (k, v) in client_params {
        if !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_.") {
            params.push((k, v));
        }
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).map_err(up_err)?;
    stream.write_all(&out).await?;
    out.clear();

    let password = cfg.password.as_deref().unwrap_or("");
    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut parameter_status = BytesMut::new();
    let mut key = (0, 0);
    loop {
        let (tag, len) = loop {
            match frame(&buf, cap).map_err(up_err)? {
                Some(f) => break f,
                None => {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(up_err("server closed the connection during startup"));
                    }
                }
            }
        };
        let msg = buf.split_to(len);
        let body = &msg[5..];
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(up_err("malformed authentication request"));
                }
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let payload = &body[4..];
                match code {
                    0 => {}
                    3 => {
                        frontend::password_message(password.as_bytes(), &mut out).map_err(up_err)?;
                    }
                    5 => {
                        let salt: [u8; 4] = payload
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| up_err("malformed md5 request"))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            cfg.user.as_bytes(),
                            password.as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut out).map_err(up_err)?;
                    }
                    10 => {
                        let mut rest = payload;
                        let mut ok = false;
                        while let Some((m, r)) = cstr(rest) {
                            if m.is_empty() {
                                break;
                            }
                            ok |= m == SCRAM_SHA_256;
                            rest = r;
                        }
                        if !ok {
                            return Err(up_err("server offers no SASL mechanism the gateway supports"));
                        }
                        let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                            .map_err(up_err)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| up_err("unexpected SASL continue"))?;
                        s.update(payload).map_err(up_err)?;
                        frontend::sasl_response(s.message(), &mut out).map_err(up_err)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| up_err("unexpected SASL final"))?;
                        s.finish(payload).map_err(up_err)?;
                    }
                    other => {
                        return Err(up_err(format!(
                            "server asks for authentication method {other}, which the gateway does not support (use scram-sha-256, md5, password or trust)"
                        )))
                    }
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
            }
            b'E' => {
                let f = parse_error(body);
                return Err(up_err(format!(
                    "server refused the gateway: {} ({})",
                    f.message, f.code
                )));
            }
            b'S' => parameter_status.extend_from_slice(&msg),
            b'K' => {
                let mut b = body;
                if b.len() < 8 {
                    return Err(up_err("malformed BackendKeyData"));
                }
                key = (b.get_i32(), b.get_i32());
            }
            b'Z' => {
                return Ok(Upstream {
                    stream,
                    parameter_status,
                    key,
                    leftover: buf,
                })
            }
            _ => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do.
        }
    }
}

/// Sends a CancelRequest for `key` to the server at `host:port` (in plain: PostgreSQL reads a
/// cancel request before, and regardless of, any TLS).
pub(crate) async fn cancel(host: &str, port: u16, key: (i32, i32)) -> std::io::Result<()> {
    let mut s = open(host, port).await?;
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    s.write_all(&out).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_directories_follow_libpq() {
        assert_eq!(
            socket_path("%2Fvar%2Frun%2Fpostgresql", 5433),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(
            socket_path("/tmp", 5432),
            Some(PathBuf::from("/tmp/.s.PGSQL.5432"))
        );
        assert_eq!(socket_path("db.internal", 5432), None);
        assert_eq!(socket_path("127.0.0.1", 5432), None);
        assert_eq!(socket_path("::1", 5432), None);
        assert_eq!(socket_path("%2", 5432), None);
        assert_eq!(socket_path("%zz", 5432), None);
    }
}

/// The server's reply to one simple Query, as it comes.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// Its rows, every column as text (`None`: NULL).
    pub(crate) rows: Vec<Vec<Option<String>>>,
    /// The server's error, if the query failed.
    pub(crate) error: Option<String>,
    /// Its SQLSTATE.
    pub(crate) sqlstate: Option<String>,
    /// The transaction status of its ReadyForQuery.
    pub(crate) status: u8,
}

impl Reply {
    /// Takes one message of the reply; true at its ReadyForQuery.
    pub(crate) fn take(&mut self, tag: u8, body: &[u8]) -> bool {
        match tag {
            b'D' => match data_row(body) {
                Some(row) => self.rows.push(row),
                None => {
                    self.error
                        .get_or_insert_with(|| "malformed DataRow from the server".into());
                }
            },
            b'E' => {
                let f = parse_error(body);
                self.error = Some(format!("{} ({})", f.message, f.code));
                self.sqlstate = Some(f.code);
            }
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                return true;
            }
            // RowDescription, CommandComplete, notices.
            _ => {}
        }
        false
    }
}

/// The columns of a DataRow as text (`None`: NULL).
fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut row = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let v = body.get(at..at + len)?;
        at += len;
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
    }
    Some(row)
}

/// Runs `sql` as one simple Query over an idle connection and reads its reply up to
/// ReadyForQuery; bytes past it stay in `leftover`.
pub(crate) async fn simple_query(
    stream: &mut UpStream,
    leftover: &mut BytesMut,
    sql: &str,
    cap: usize,
) -> Result<Reply, SessionError> {
    let mut out = BytesMut::new();
    crate::protocol::frontend::query(sql, &mut out);
    stream.write_all(&out).await?;
    let mut reply = Reply::default();
    loop {
        while let Some((tag, len)) = frame(leftover, cap).map_err(up_err)? {
            let msg = leftover.split_to(len);
            if reply.take(tag, &msg[5..]) {
                return Ok(reply);
            }
        }
        if stream.read_buf(leftover).await? == 0 {
            return Err(up_err("server closed the connection during a query"));
        }
    }
}
