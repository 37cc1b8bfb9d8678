//! A log served over HTTP by the C2SP tlog-tiles read API (`URL/checkpoint`, `URL/tile/…`,
//! `URL/tile/entries/…`) as a [`TileSource`], so that the verifier checks it exactly as a local
//! directory: Parapet's console (`/log/`, with a bearer token unless it is public), a bucket
//! served publicly, any static web server. HTTP/1.1 over `http://` or `https://` (rustls,
//! trusting the system's CAs or a given CA file); idle connections are kept for the next request.

use crate::blocking::BlockingRuntime;
use crate::error::LogError;
use crate::tiles::TileSource;
use crate::witness_client::tls_connector;
use http_body_util::{BodyExt, Empty, Limited};
use parking_lot::Mutex;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Longest one request (connecting, sending, reading the whole answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer accepted: a full entry bundle of the largest entries (256 × (2 + 65,535)
/// bytes) with room to spare.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

use crate::witness_client::ConnectError;

type Conn = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

/// A log served over HTTP at a base URL, read with blocking calls (from any thread).
pub struct HttpSource {
    base: String,
    tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    port: u16,
    prefix: String,
    authorization: Option<String>,
    idle: Mutex<Vec<Conn>>,
    rt: BlockingRuntime,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpSource {
    /// A source for the log at `url` (`http[s]://host[:port][/prefix/]`; files are fetched at
    /// `<url>/checkpoint`, `<url>/tile/…`). With `token`, every request carries
    /// `Authorization: Bearer <token>`. For `https://`, the server's certificate is checked
    /// against the CAs of `ca_file` (default: the system's, [`crate::witness_client::SYSTEM_ROOTS`]).
    pub fn new(url: &str, token: Option<&str>, ca_file: Option<&Path>) -> Result<Self, LogError> {
        let bad = |reason: String| LogError::malformed(format!("log URL {url:?}"), reason);
        let u = url::Url::parse(url).map_err(|e| {
            bad(format!(
                "not a URL ({e}); give the log's base URL, e.g. https://console.example.com/log/"
            ))
        })?;
        let tls = match u.scheme() {
            "http" => None,
            "https" => Some(
                tls_connector(ca_file, "give the CA certificates with --ca-file").map_err(bad)?,
            ),
            s => return Err(bad(format!("scheme {s:?} is not http or https"))),
        };
        if u.query().is_some() || u.fragment().is_some() {
            return Err(bad(
                "it has a query or fragment; give the base URL under which checkpoint and tile/ \
                 are served"
                    .into(),
            ));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "it carries credentials; give a bearer token separately (--token)".into(),
            ));
        }
        let host = u
            .host_str()
            .ok_or_else(|| bad("it has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port_or_known_default()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let prefix = u.path().trim_end_matches('/').to_string();
        let authorization = match token {
            None => None,
            Some(t) => {
                let t = t.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(LogError::malformed(
                        "token",
                        "it is empty or holds spaces or non-ASCII characters",
                    ));
                }
                Some(format!("Bearer {t}"))
            }
        };
        let rt = BlockingRuntime::new("parapet-http-source", 1)
            .map_err(|e| LogError::io("starting the HTTP client's runtime", e))?;
        let base = format!("{}://{}{}", u.scheme(), authority(&host, port), prefix);
        Ok(HttpSource {
            base,
            tls,
            host,
            port,
            prefix,
            authorization,
            idle: Mutex::new(Vec::new()),
            rt,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `<base>/<path>`: `Ok(Some(body))` for 200, `Ok(None)` for 404, an error naming the
    /// URL and the status for anything else.
    fn get(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        let url = format!("{}/{path}", self.base);
        let fut =
            async { tokio::time::timeout(REQUEST_TIMEOUT, self.fetch(path, &url, buf)).await };
        match self.rt.block_on(fut)? {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "GET {url}: no complete answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn fetch(&self, path: &str, url: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        let host = authority(&self.host, self.port);
        let request = || {
            let mut r = hyper::Request::get(format!("{}/{path}", self.prefix))
                .header(hyper::header::HOST, host.as_str())
                .header(
                    hyper::header::USER_AGENT,
                    concat!("parapet-log/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(a) = &self.authorization {
                r = r.header(hyper::header::AUTHORIZATION, a.as_str());
            }
            r.body(Empty::new())
                .map_err(|e| io::Error::other(format!("GET {url}: building the request: {e}")))
        };
        let mut kept = self.idle.lock().pop();
        if let Some(c) = kept.as_mut() {
            if c.ready().await.is_err() {
                kept = None;
            }
        }
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(c) => c,
            None => self.connect(url).await?,
        };
        let resp = match sender.send_request(request()?).await {
            Ok(r) => r,
            Err(e) if reused && (e.is_canceled() || e.is_closed()) => {
                sender = self.connect(url).await?;
                sender
                    .send_request(request()?)
                    .await
                    .map_err(|e| io::Error::other(format!("GET {url}: {e}")))?
            }
            Err(e) => return Err(io::Error::other(format!("GET {url}: {e}"))),
        };
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| io::Error::other(format!("GET {url}: reading the answer: {e}")))?
            .to_bytes();
        self.idle.lock().push(sender);
        buf.clear();
        match status.as_u16() {
            200 => {
                buf.extend_from_slice(&body);
                Ok(true)
            }
            404 => Ok(false),
            code => {
                let hint = match code {
                    401 | 403 if self.authorization.is_none() => {
                        " (the server wants a token: give it with --token; Parapet's console \
                         serves /log/ without one only with [console] public_log = true)"
                    }
                    401 | 403 => {
                        " (the token was refused: check it, e.g. with `parapet console token`)"
                    }
                    _ => "",
                };
                let text: String = String::from_utf8_lossy(&body)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                let said = if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.trim())
                };
                Err(io::Error::other(format!(
                    "GET {url}: HTTP {status}{said}{hint}"
                )))
            }
        }
    }

    /// Opens an HTTP/1.1 connection (over TLS for `https://`, checking the server's
    /// certificate); its driver runs on the source's runtime until the sender is dropped.
    async fn connect(&self, url: &str) -> io::Result<Conn> {
        let host = self.host.as_str();
        crate::witness_client::http1_connect(host, self.port, self.tls.as_ref())
            .await
            .map_err(|e| match e {
                ConnectError::Connect(e) => {
                    io::Error::new(e.kind(), format!("GET {url}: cannot connect: {e}"))
                }
                ConnectError::ServerName(e) => {
                    io::Error::other(format!("{host:?} is not a TLS server name: {e}"))
                }
                ConnectError::Tls(e) => {
                    io::Error::new(e.kind(), format!("GET {url}: TLS failed: {e}"))
                }
                ConnectError::Handshake(e) => {
                    io::Error::other(format!("GET {url}: HTTP handshake failed: {e}"))
                }
            })
    }
}

impl TileSource for HttpSource {
    fn location(&self) -> String {
        self.base.clone()
    }

    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        self.get(path, buf)
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = HttpSource::new("http://127.0.0.1:7070/log/", Some("pt_x"), None).unwrap();
        assert_eq!(s.base(), "http://127.0.0.1:7070/log");
        assert_eq!(s.prefix, "/log");
        assert_eq!(s.authorization.as_deref(), Some("Bearer pt_x"));
        let s = HttpSource::new("http://[::1]/", None, None).unwrap();
        assert_eq!(s.base(), "http://[::1]:80");
        assert_eq!(s.prefix, "");
        for bad in [
            "ftp://h/",
            "not a url",
            "http://h/log?x=1",
            "http://u:p@h/log/",
        ] {
            let e = HttpSource::new(bad, None, None).unwrap_err().to_string();
            assert!(e.contains("log URL"), "{bad}: {e}");
        }
        assert!(HttpSource::new("http://h/", Some("a b"), None).is_err());
        assert!(
            HttpSource::new("https://h/", None, Some(Path::new("/nonexistent/ca.pem"))).is_err()
        );
    }
}
