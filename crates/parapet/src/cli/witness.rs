//! `parapet witness …`: a C2SP tlog-witness. `init` creates the witness's `cosignature/v1` key;
//! `serve` answers `POST /add-checkpoint` over HTTP/1.1 for the logs it is told to trust. The
//! checks, the cosigning and the durable state are `parapet_log::witness::Witness`; this module
//! is the HTTP around it.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use parapet_log::note::NoteVerifier;
use parapet_log::witness::{Witness, MAX_REQUEST_BYTES};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `parapet witness` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum WitnessCommand {
    /// Create a witness key; prints its cosignature/v1 verifier key as the last line.
    Init {
        /// File for the new Ed25519 key (mode 0600; never overwritten).
        #[arg(long)]
        key: PathBuf,
        /// The witness's name, also its key name (e.g. witness.example.com/w1).
        #[arg(long)]
        name: String,
    },
    /// Run the witness: answer `POST /add-checkpoint` (C2SP tlog-witness) for the given logs.
    Serve(ServeArgs),
}

/// Arguments of `parapet witness serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The witness's key file (from `parapet witness init`).
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on for HTTP (e.g. 127.0.0.1:7380).
    #[arg(long)]
    pub listen: SocketAddr,
    /// State directory: the latest checkpoint cosigned for each log (created if missing).
    #[arg(long)]
    pub state: PathBuf,
    /// Verifier key of a log to witness (its name is the log's origin), or a file holding it.
    /// Repeatable.
    #[arg(long = "log", required = true)]
    pub logs: Vec<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs `parapet witness …`.
pub fn run(cmd: WitnessCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WitnessCommand::Init { key, name } => {
            let vkey = Witness::init_key(&key, &name)?;
            crate::outln!("created witness {name}")?;
            crate::outln!("witness key: {} (keep it secret)", key.display())?;
            crate::outln!("verifier key (cosignature/v1):")?;
            crate::outln!("{vkey}")?;
            Ok(ExitCode::SUCCESS)
        }
        WitnessCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::cli::serve::init_tracing();
    let signer = Witness::read_key(&args.key)?;
    let mut logs = Vec::new();
    for l in &args.logs {
        let v: NoteVerifier = crate::cli::log::parse_vkey(l)
            .with_context(|| format!("--log {l}: expected a log's verifier key"))?;
        logs.push(v);
    }
    let names: Vec<String> = logs.iter().map(|l| l.name().to_string()).collect();
    let witness = Arc::new(Witness::open(signer, logs, &args.state)?);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(parapet_gateway::tls::acceptor(
            &parapet_gateway::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
            },
        )?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "parapet: witness {} listening on {}://{} for {}",
            witness.name(),
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?,
            names.join(", ")
        );
        eprintln!("parapet: witness verifier key: {}", witness.verifier_key());
        let stop = crate::cli::serve::stop_signal();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut stop => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let witness = witness.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                match tls {
                    None => {
                        serve_connection(hyper_util::rt::TokioIo::new(stream), witness, peer).await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(s)) => {
                                serve_connection(hyper_util::rt::TokioIo::new(s), witness, peer)
                                    .await
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves HTTP/1.1 (keep-alive) on one connection.
async fn serve_connection<I>(io: I, witness: Arc<Witness>, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let witness = witness.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&witness, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one request: `POST /add-checkpoint` only.
async fn handle(
    witness: &Arc<Witness>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/add-checkpoint" {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: this witness serves POST /add-checkpoint (C2SP tlog-witness)\n".into(),
        );
    }
    if req.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "add-checkpoint takes POST\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                PLAIN,
                format!("cannot read the request body (at most {MAX_REQUEST_BYTES} bytes): {e}\n"),
            )
        }
    };
    let w = witness.clone();
    // Checking, storing (fsync) and signing block: off the async threads.
    let result = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        w.add_checkpoint(&body, now)
    })
    .await;
    match result {
        Ok(Ok(lines)) => {
            tracing::debug!("cosigned");
            text(StatusCode::OK, PLAIN, lines)
        }
        Ok(Err(refusal)) => {
            // A 409 is usually a client learning the size cosigned last; 403/422 are refusals.
            if refusal.status() == 422 || refusal.status() == 403 {
                tracing::warn!("refused to cosign: {refusal}");
            } else {
                tracing::info!("refused to cosign: {refusal}");
            }
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, refusal.content_type(), refusal.body())
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("the witness failed: {e}\n"),
        ),
    }
}
