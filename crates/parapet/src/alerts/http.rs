//! The alerts' HTTP client: one POST at a time over HTTP/1.1 (hyper, as the log's witness
//! client), kept alive between requests, with TLS (rustls) for `https://` receivers checked
//! against the system's CAs or the alert's `ca_file`.
//!
//! Receiver URLs often carry a secret in their path (Slack's webhook URLs do): this module
//! never puts more than scheme, host and port into a message.

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use std::path::Path;
use std::time::Duration;

/// The system's trusted CA certificates (Debian's bundle), the default for `https://`.
pub use parapet_log::witness_client::SYSTEM_ROOTS;

/// Longest one request may take, connection and answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read (the rest is ignored: only the status matters).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The sending half of an HTTP/1.1 client connection.
type Conn = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

/// A receiver's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After` in seconds, when the receiver gave one.
    pub retry_after: Option<Duration>,
    /// The start of the body (for the log when it is not a success).
    pub body: String,
}

/// Where an alert's URL points.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://`.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query sent in the request line.
    pub path: String,
    /// `Authorization: Basic …` from user information in the URL.
    pub basic: Option<String>,
}

impl Target {
    /// Parses an `http://` or `https://` URL; the error never repeats the URL (it may hold a
    /// secret).
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        let tls = match u.scheme() {
            "http" => false,
            "https" => true,
            s => return Err(format!("scheme {s:?} is not http or https")),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        let basic = (!u.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let pair = format!(
                "{}:{}",
                decode(u.username()),
                decode(u.password().unwrap_or(""))
            );
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Target {
            tls,
            host,
            port,
            path,
            basic,
        })
    }

    /// `scheme://host:port`, what messages may show of the URL.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (false, 80) | (true, 443) if !self.host.contains(':') => self.host.clone(),
            (false, 80) | (true, 443) => format!("[{}]", self.host),
            _ if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A TLS connector trusting the CAs of `ca_file` (default [`SYSTEM_ROOTS`]): the witness
/// client's, with the alerts' hint.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    parapet_log::witness_client::tls_connector(ca_file, "set ca_file")
}

/// A client for one receiver, keeping its connection open between requests.
pub struct Client {
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<Conn>,
}

impl Client {
    /// A client for `url` (its TLS set up now, so a bad `ca_file` shows at start).
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Client, String> {
        let target = Target::parse(url)?;
        let tls = if target.tls {
            Some(tls_connector(ca_file)?)
        } else {
            None
        };
        Ok(Client {
            target,
            tls,
            conn: None,
        })
    }

    /// `scheme://host:port` of the receiver.
    pub fn origin(&self) -> String {
        self.target.origin()
    }

    /// Connects to the receiver (TCP, and TLS with its certificate checked for `https://`)
    /// without sending anything, within [`REQUEST_TIMEOUT`]: what `parapet doctor` checks.
    pub async fn probe(&self) -> Result<(), String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.connect()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(format!(
                "{} does not answer within {} s",
                self.origin(),
                REQUEST_TIMEOUT.as_secs()
            )),
        }
    }

    /// POSTs `body` with `headers` (within [`REQUEST_TIMEOUT`]); a kept-alive connection the
    /// receiver closed meanwhile is replaced once.
    pub async fn post(
        &mut self,
        headers: &[(&str, String)],
        body: bytes::Bytes,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.post_inner(headers, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(format!(
                    "no answer from {} within {} s",
                    self.origin(),
                    REQUEST_TIMEOUT.as_secs()
                ))
            }
        }
    }

    async fn post_inner(
        &mut self,
        headers: &[(&str, String)],
        body: bytes::Bytes,
    ) -> Result<Answer, String> {
        let host = self.target.host_header();
        let request = || {
            let mut r = hyper::Request::post(self.target.path.as_str())
                .header(hyper::header::HOST, host.as_str())
                .header(
                    hyper::header::USER_AGENT,
                    concat!("parapet/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(b) = &self.target.basic {
                r = r.header(hyper::header::AUTHORIZATION, b.as_str());
            }
            for (k, v) in headers {
                r = r.header(*k, v.as_str());
            }
            r.body(Full::new(body.clone()))
                .map_err(|e| format!("building the request: {e}"))
        };
        let mut kept = None;
        if let Some(mut c) = self.conn.take() {
            if c.ready().await.is_ok() {
                kept = Some(c);
            }
        }
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(c) => c,
            None => self.connect().await?,
        };
        let origin = self.origin();
        let resp = match sender.send_request(request()?).await {
            Ok(r) => r,
            Err(e) if reused && (e.is_canceled() || e.is_closed()) => {
                sender = self.connect().await?;
                sender
                    .send_request(request()?)
                    .await
                    .map_err(|e| format!("request to {origin} failed: {e}"))?
            }
            Err(e) => return Err(format!("request to {origin} failed: {e}")),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.conn = Some(sender);
        Ok(Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        })
    }

    /// Opens an HTTP/1.1 connection (over TLS for `https://`); its driver runs on the runtime
    /// until the sender is dropped or the receiver closes it.
    async fn connect(&self) -> Result<Conn, String> {
        use parapet_log::witness_client::{http1_connect, ConnectError};
        let (host, port) = (self.target.host.as_str(), self.target.port);
        http1_connect(host, port, self.tls.as_ref())
            .await
            .map_err(|e| match e {
                ConnectError::Connect(e) => format!("cannot connect to {}: {e}", self.origin()),
                ConnectError::ServerName(e) => format!("{host:?} is not a TLS server name: {e}"),
                ConnectError::Tls(e) => format!("TLS with {host}:{port} failed: {e}"),
                ConnectError::Handshake(e) => {
                    format!("HTTP handshake with {host}:{port} failed: {e}")
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn urls_are_http_or_https_with_a_host_and_errors_do_not_repeat_them() {
        let t = Target::parse("https://hooks.example.com/services/T0/B0/SECRET?x=1").expect("url");
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.com", 443));
        assert_eq!(t.path, "/services/T0/B0/SECRET?x=1");
        assert_eq!(t.origin(), "https://hooks.example.com:443");
        assert_eq!(t.host_header(), "hooks.example.com");
        let t = Target::parse("http://[::1]:8080").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(t.host_header(), "[::1]:8080");
        let t = Target::parse("http://u%40x:p%3A@h/").expect("url");
        assert_eq!(
            t.basic.as_deref(),
            Some(
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("u@x:p:")
                )
                .as_str()
            )
        );
        for bad in ["ftp://h/SECRET", "not a url SECRET", "unix:/SECRET"] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert!(tls_connector(Some(Path::new("/dev/null")))
            .err()
            .is_some_and(|e| e.contains("no PEM certificate")));
    }

    /// An HTTPS receiver whose certificate a private CA signed: accepted with that CA as
    /// `ca_file` (one kept-alive connection for several requests), refused with the system's.
    #[tokio::test]
    async fn https_receivers_are_checked_against_ca_file_and_kept_alive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("leaf")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf cert");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("r.crt"), leaf.pem()).expect("write");
        std::fs::write(dir.join("r.key"), leaf_key.serialize_pem()).expect("write");
        let acceptor = parapet_gateway::tls::acceptor(&parapet_gateway::TlsSettings {
            cert: dir.join("r.crt"),
            key: dir.join("r.key"),
        })
        .expect("acceptor");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
        {
            let (connections, bodies) = (connections.clone(), bodies.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, connections, bodies) =
                        (acceptor.clone(), connections.clone(), bodies.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let bodies = bodies.clone();
                                async move {
                                    let sig = req
                                        .headers()
                                        .get("x-test")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string();
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes().to_vec())
                                        .unwrap_or_default();
                                    bodies.lock().expect("lock").push((sig, body));
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(bytes::Bytes::from_static(b"ok")),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        }
        let url = format!("https://localhost:{port}/hook");
        let mut c = Client::new(&url, Some(&dir.join("ca.pem"))).expect("client");
        c.probe().await.expect("reachable, certificate accepted");
        for n in 0..3 {
            let a = c
                .post(
                    &[("x-test", format!("n{n}"))],
                    bytes::Bytes::from(format!("body {n}")),
                )
                .await
                .expect("delivered over TLS");
            assert_eq!((a.status, a.body.as_str()), (200, "ok"));
        }
        // The probe's connection, then one kept alive for the three requests.
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
        let got = bodies.lock().expect("lock").clone();
        assert_eq!(
            got,
            (0..3)
                .map(|n| (format!("n{n}"), format!("body {n}").into_bytes()))
                .collect::<Vec<_>>()
        );
        if Path::new(SYSTEM_ROOTS).exists() {
            let mut c = Client::new(&url, None).expect("client");
            let e = c
                .post(&[], bytes::Bytes::from_static(b"x"))
                .await
                .expect_err("a private CA is not a system CA");
            assert!(e.contains("TLS with localhost"), "{e}");
        }
    }
}
