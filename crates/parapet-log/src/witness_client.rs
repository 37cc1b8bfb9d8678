//! The log's witness client (C2SP tlog-witness): at most once a second, sends the log's
//! published checkpoint with a consistency proof to each configured witness through
//! `add-checkpoint`, and publishes the checkpoint with the cosignatures it collected (a quorum
//! of them) as extra signature lines of the same note, in the file [`COSIGNED_CHECKPOINT`].
//!
//! It runs on its own thread and only reads the log directory: witnesses never sit on the
//! statement path. A witness that is down or refuses delays cosigning, never an append; the
//! client says so (a `tracing` warning, and [`WitnessStatus`] through
//! [`crate::Log::witness_status`]).

use crate::error::LogError;
use crate::note::{parse_note, CosignatureVerifier};
use crate::reader::LogReader;
use crate::witness::{AddCheckpoint, SIZE_CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// File of the log directory holding the latest checkpoint published with a quorum of
/// cosignatures (the log's signature line, then one cosignature line per witness).
pub const COSIGNED_CHECKPOINT: &str = "checkpoint.cosigned";

/// Shortest time between two rounds of `add-checkpoint` requests (and publications of
/// [`COSIGNED_CHECKPOINT`]).
pub const COSIGN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a witness may take to answer one request.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest witness response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One witness the log asks for cosignatures (`[[log.witnesses]]`).
#[derive(Debug, Clone)]
pub struct WitnessEndpoint {
    /// The witness's name (its key name).
    pub name: String,
    /// Base URL (`http[s]://host[:port][/prefix]`); requests go to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's `cosignature/v1` verifier key.
    pub vkey: CosignatureVerifier,
    /// For an `https://` URL: PEM file of the CA certificates to trust (default: the system's,
    /// [`SYSTEM_ROOTS`]).
    pub ca_file: Option<PathBuf>,
}

impl WitnessEndpoint {
    /// Checks and builds an endpoint: the key's name must be `name`, the URL an `http://` URL.
    pub fn new(name: &str, url: &str, vkey: &str) -> Result<WitnessEndpoint, LogError> {
        let vkey = CosignatureVerifier::parse(vkey)?;
        if vkey.name() != name {
            return Err(LogError::malformed(
                format!("witness {name}"),
                format!(
                    "its vkey is named {:?}; name and vkey must be the witness's (as printed by \
                     `parapet witness init`)",
                    vkey.name()
                ),
            ));
        }
        parse_url(url).map_err(|r| LogError::malformed(format!("witness {name} url"), r))?;
        Ok(WitnessEndpoint {
            name: name.to_string(),
            url: url.to_string(),
            vkey,
            ca_file: None,
        })
    }

    /// Trusts the CA certificates of PEM file `ca_file` (instead of the system's) for an
    /// `https://` witness; checks that the file holds at least one.
    pub fn with_ca_file(mut self, ca_file: &Path) -> Result<WitnessEndpoint, LogError> {
        tls_connector(Some(ca_file), WITNESS_CA_HINT)
            .map_err(|r| LogError::malformed(format!("witness {} ca_file", self.name), r))?;
        self.ca_file = Some(ca_file.to_path_buf());
        Ok(self)
    }
}

/// The system's trusted CA certificates (Debian's bundle), for `https://` witnesses.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a witness's unreadable CA file is fixed.
const WITNESS_CA_HINT: &str = "set ca_file for this witness";

/// A TLS client connector trusting the CAs of `ca_file` (default [`SYSTEM_ROOTS`]), for the
/// witnesses and for any other HTTPS client of Parapet (the alerts); `hint` ends the message of
/// an unreadable file (e.g. "set ca_file for this witness").
pub fn tls_connector(
    ca_file: Option<&Path>,
    hint: &str,
) -> Result<tokio_rustls::TlsConnector, String> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_ROOTS));
    let pem = fs::read(path).map_err(|e| {
        format!(
            "cannot read the CA certificates {}: {e} ({hint})",
            path.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The witnesses of a log and how many must cosign a checkpoint before it is published.
#[derive(Debug, Clone)]
pub struct WitnessPolicy {
    /// The witnesses.
    pub witnesses: Vec<WitnessEndpoint>,
    /// Quorum: cosignatures needed to publish a cosigned checkpoint (1..=witnesses).
    pub min_witnesses: usize,
}

impl WitnessPolicy {
    /// Checks the quorum against the witnesses.
    pub fn new(
        witnesses: Vec<WitnessEndpoint>,
        min_witnesses: usize,
    ) -> Result<WitnessPolicy, LogError> {
        if witnesses.is_empty() {
            return Err(LogError::malformed(
                "witnesses",
                "no witness configured: add [[log.witnesses]] entries",
            ));
        }
        if min_witnesses == 0 || min_witnesses > witnesses.len() {
            return Err(LogError::malformed(
                "min_witnesses",
                format!(
                    "{min_witnesses} is not between 1 and the number of witnesses ({})",
                    witnesses.len()
                ),
            ));
        }
        for (i, w) in witnesses.iter().enumerate() {
            if witnesses[..i].iter().any(|o| o.vkey == w.vkey) {
                return Err(LogError::malformed(
                    format!("witness {}", w.name),
                    "listed twice: each witness counts once towards the quorum",
                ));
            }
        }
        Ok(WitnessPolicy {
            witnesses,
            min_witnesses,
        })
    }
}

/// What the witness client knows, for health displays ([`crate::Log::witness_status`]).
#[derive(Debug, Clone, Default)]
pub struct WitnessStatus {
    /// Size of the latest checkpoint published with a quorum of cosignatures (0: none yet).
    pub cosigned_size: u64,
    /// When it was cosigned (the newest of its quorum's cosignature timestamps).
    pub cosigned_at: Option<SystemTime>,
    /// Size of the log's published checkpoint at the last round.
    pub log_size: u64,
    /// The quorum.
    pub min_witnesses: usize,
    /// Each witness, in configuration order.
    pub witnesses: Vec<WitnessHealth>,
}

/// One witness as the client last saw it.
#[derive(Debug, Clone, Default)]
pub struct WitnessHealth {
    /// The witness's name.
    pub name: String,
    /// The largest size it cosigned for this log, as far as the client knows.
    pub cosigned_size: Option<u64>,
    /// When it last cosigned (its cosignature's timestamp).
    pub last_cosigned_at: Option<SystemTime>,
    /// The last failure, cleared by the next cosignature.
    pub error: Option<String>,
    /// The witness refused the log's checkpoint (it saw an inconsistent or larger tree): the
    /// log may have been rewritten or truncated. Cleared by the next cosignature.
    pub refused: bool,
}

impl WitnessStatus {
    /// Age of the latest cosigned checkpoint, if there is one.
    pub fn cosigned_age(&self) -> Option<Duration> {
        self.cosigned_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
    }
}

/// The running client: its thread stops when this is dropped, after a last round (at most
/// [`WITNESS_TIMEOUT`]) for the checkpoint the closing log published last.
pub(crate) struct WitnessClient {
    status: Arc<parking_lot::Mutex<WitnessStatus>>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WitnessClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessClient").finish_non_exhaustive()
    }
}

impl Drop for WitnessClient {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WitnessClient {
    /// Starts the client for the log in `dir`.
    pub(crate) fn start(dir: &Path, policy: WitnessPolicy) -> Result<WitnessClient, LogError> {
        let status = Arc::new(parking_lot::Mutex::new(WitnessStatus {
            min_witnesses: policy.min_witnesses,
            witnesses: policy
                .witnesses
                .iter()
                .map(|w| WitnessHealth {
                    name: w.name.clone(),
                    ..WitnessHealth::default()
                })
                .collect(),
            ..WitnessStatus::default()
        }));
        let stop = Arc::new(tokio::sync::Notify::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LogError::io("starting the witness client's runtime", e))?;
        let mut state = ClientState::new(dir.to_path_buf(), policy, status.clone());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("parapet-log-witness".into())
            .spawn(move || {
                rt.block_on(async move {
                    state.load_published();
                    loop {
                        let started = Instant::now();
                        let stopped = tokio::select! {
                            _ = stop2.notified() => true,
                            _ = state.round() => false,
                        };
                        let wait = COSIGN_INTERVAL.saturating_sub(started.elapsed());
                        let stopped = stopped
                            || tokio::select! {
                                _ = stop2.notified() => true,
                                _ = tokio::time::sleep(wait) => false,
                            };
                        if stopped {
                            // The log is closing and has published its last checkpoint: one
                            // last round (still at most one a second), so that a log stopped
                            // cleanly is witnessed to its end — unless it is witnessed already.
                            if !state.changed() {
                                return;
                            }
                            tokio::time::sleep(COSIGN_INTERVAL.saturating_sub(started.elapsed()))
                                .await;
                            let _ = tokio::time::timeout(WITNESS_TIMEOUT, state.round()).await;
                            return;
                        }
                    }
                })
            })
            .map_err(|e| LogError::io("starting the witness client thread", e))?;
        Ok(WitnessClient {
            status,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn status(&self) -> WitnessStatus {
        self.status.lock().clone()
    }
}

struct PerWitness {
    endpoint: WitnessEndpoint,
    /// The size the witness cosigned last, as far as we know (None: unknown, ask with 0).
    known: Option<u64>,
    /// The cosignature line (and its timestamp) this witness gave for checkpoint text `.0`.
    line: Option<(String, String, u64)>,
    /// The kind of the last failure warned about, and when (see [`ClientState::fail`]).
    last_warning: Option<(String, Instant)>,
    /// A kept-alive HTTP/1.1 connection to the witness (tlog-witness: clients SHOULD).
    conn: Option<Conn>,
}

/// The sending half of an HTTP/1.1 client connection.
type Conn = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

struct ClientState {
    dir: PathBuf,
    min: usize,
    witnesses: Vec<PerWitness>,
    status: Arc<parking_lot::Mutex<WitnessStatus>>,
    /// The log's checkpoint note of the last round every witness cosigned.
    done: Option<Vec<u8>>,
    /// Text of the cosigned checkpoint last published, and how many cosignatures it carries.
    published: Option<(String, usize)>,
}

enum Outcome {
    Cosigned {
        line: String,
        timestamp: u64,
    },
    /// 409 with another size: retry from it.
    Moved(u64),
    Failed {
        error: String,
        refused: bool,
    },
}

impl ClientState {
    fn new(
        dir: PathBuf,
        policy: WitnessPolicy,
        status: Arc<parking_lot::Mutex<WitnessStatus>>,
    ) -> ClientState {
        ClientState {
            dir,
            min: policy.min_witnesses,
            witnesses: policy
                .witnesses
                .into_iter()
                .map(|endpoint| PerWitness {
                    endpoint,
                    known: None,
                    line: None,
                    last_warning: None,
                    conn: None,
                })
                .collect(),
            status,
            done: None,
            published: None,
        }
    }

    /// Starts from the cosigned checkpoint already published (by an earlier run): each
    /// witness's valid cosignature there tells the size it cosigned.
    fn load_published(&mut self) {
        let Ok(note) = fs::read(self.dir.join(COSIGNED_CHECKPOINT)) else {
            return;
        };
        let Ok(parsed) = parse_note(&note) else {
            return;
        };
        let Ok(cp) = crate::checkpoint::Checkpoint::parse(parsed.text, "cosigned checkpoint")
        else {
            return;
        };
        let mut newest = None;
        let mut count = 0;
        let mut st = self.status.lock();
        for (i, w) in self.witnesses.iter_mut().enumerate() {
            if let Ok(Some((ts, _))) = w.endpoint.vkey.find(&parsed) {
                w.known = Some(cp.size);
                count += 1;
                newest = newest.max(Some(ts));
                st.witnesses[i].cosigned_size = Some(cp.size);
                st.witnesses[i].last_cosigned_at = Some(unix(ts));
            }
        }
        if count >= self.min {
            self.published = Some((parsed.text.to_string(), count));
            st.cosigned_size = cp.size;
            st.cosigned_at = newest.map(unix);
        }
    }

    /// Whether the published checkpoint differs from the one every witness cosigned last.
    fn changed(&self) -> bool {
        match crate::driver::read_checkpoint_file(&self.dir) {
            Ok(note) => self.done.as_deref() != Some(&note[..]),
            Err(_) => false,
        }
    }

    /// One round: if the published checkpoint changed (or a witness failed last time), ask
    /// every witness that has not cosigned it yet, then publish it if a quorum cosigned.
    async fn round(&mut self) {
        let reader = match LogReader::open(&self.dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "witness client: cannot read the log's checkpoint");
                return;
            }
        };
        let note = reader.checkpoint_note().to_vec();
        let size = reader.size();
        self.status.lock().log_size = size;
        if self.done.as_deref() == Some(&note[..]) {
            return;
        }
        let text = match parse_note(&note) {
            Ok(p) => p.text.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "witness client: the log's checkpoint is malformed");
                return;
            }
        };
        // A new checkpoint: cosignatures of the previous one do not count.
        for w in &mut self.witnesses {
            if w.line.as_ref().is_some_and(|(t, _, _)| *t != text) {
                w.line = None;
            }
        }
        // Up to two attempts per witness: the second after a 409 that names another size.
        for _attempt in 0..2 {
            let mut set = tokio::task::JoinSet::new();
            let mut failures = Vec::new();
            for (i, w) in self.witnesses.iter_mut().enumerate() {
                if w.line.is_some() {
                    continue;
                }
                let old = w.known.unwrap_or(0);
                if old > size {
                    failures.push((
                        i,
                        format!(
                            "the witness has cosigned size {old} but the log has only {size} \
                             entries: the log was truncated or replaced"
                        ),
                        true,
                    ));
                    continue;
                }
                let body = match reader.consistency_proof(old) {
                    Ok(proof) if proof.len() > crate::witness::MAX_PROOF_LINES => {
                        failures.push((
                            i,
                            format!(
                                "the consistency proof from size {old} has {} hashes, more than \
                                 tlog-witness allows ({})",
                                proof.len(),
                                crate::witness::MAX_PROOF_LINES
                            ),
                            false,
                        ));
                        continue;
                    }
                    Ok(proof) => AddCheckpoint::encode(old, &proof, &note),
                    Err(e) => {
                        failures.push((
                            i,
                            format!("cannot build the consistency proof from size {old}: {e}"),
                            false,
                        ));
                        continue;
                    }
                };
                let endpoint = w.endpoint.clone();
                let text = text.clone();
                let conn = w.conn.take();
                set.spawn(async move {
                    let (out, conn) = ask(&endpoint, conn, old, body, &text).await;
                    (i, old, out, conn)
                });
            }
            for (i, error, refused) in failures {
                self.fail(i, error, refused);
            }
            if set.is_empty() {
                break;
            }
            let mut moved = false;
            while let Some(r) = set.join_next().await {
                let Ok((i, old, out, conn)) = r else { continue };
                self.witnesses[i].conn = conn;
                match out {
                    Outcome::Cosigned { line, timestamp } => {
                        let w = &mut self.witnesses[i];
                        w.known = Some(size);
                        w.line = Some((text.clone(), line, timestamp));
                        if w.last_warning.take().is_some() {
                            tracing::info!(
                                witness = %w.endpoint.name,
                                "witness cosigns the log's checkpoints again (size {size})"
                            );
                        }
                        let mut st = self.status.lock();
                        let h = &mut st.witnesses[i];
                        h.cosigned_size = Some(size);
                        h.last_cosigned_at = Some(unix(timestamp));
                        h.error = None;
                        h.refused = false;
                    }
                    Outcome::Moved(m) if m != old => {
                        self.witnesses[i].known = Some(m);
                        moved = true;
                        if m > size {
                            self.fail(
                                i,
                                format!(
                                    "the witness has cosigned size {m} but the log has only \
                                     {size} entries: the log was truncated or replaced"
                                ),
                                true,
                            );
                        }
                    }
                    Outcome::Moved(m) => self.fail(
                        i,
                        format!(
                            "the witness refuses: it cosigned a checkpoint of size {m} that this \
                             log's checkpoint of size {size} does not extend (409 Conflict): the \
                             log was rewritten"
                        ),
                        true,
                    ),
                    Outcome::Failed { error, refused } => self.fail(i, error, refused),
                }
            }
            if !moved {
                break;
            }
        }
        let lines: Vec<(String, u64)> = self
            .witnesses
            .iter()
            .filter_map(|w| w.line.as_ref())
            .filter(|(t, _, _)| *t == text)
            .map(|(_, l, t)| (l.clone(), *t))
            .collect();
        if lines.len() == self.witnesses.len() {
            self.done = Some(note.clone());
        }
        if lines.len() < self.min {
            return;
        }
        if self
            .published
            .as_ref()
            .is_some_and(|(t, n)| *t == text && *n >= lines.len())
        {
            return;
        }
        let mut cosigned = String::from_utf8_lossy(&note).into_owned();
        for (l, _) in &lines {
            cosigned.push_str(l);
        }
        match publish(&self.dir, cosigned.as_bytes()) {
            Ok(()) => {
                self.published = Some((text.clone(), lines.len()));
                let mut st = self.status.lock();
                st.cosigned_size = size;
                st.cosigned_at = lines.iter().map(|(_, t)| *t).max().map(unix);
            }
            Err(e) => {
                self.done = None;
                tracing::warn!(error = %e, "witness client: cannot publish the cosigned checkpoint");
            }
        }
    }

    /// Records a failure of witness `i`, warning once per kind of failure (the message without
    /// its numbers, which change as the log grows) and once a minute while it lasts.
    fn fail(&mut self, i: usize, error: String, refused: bool) {
        let w = &mut self.witnesses[i];
        let kind: String = error.chars().filter(|c| !c.is_ascii_digit()).collect();
        let due = match &w.last_warning {
            Some((k, at)) => *k != kind || at.elapsed() >= Duration::from_secs(60),
            None => true,
        };
        if due {
            if refused {
                tracing::warn!(
                    witness = %w.endpoint.name,
                    url = %w.endpoint.url,
                    "witness REFUSED to cosign the log's checkpoint: {error}"
                );
            } else {
                tracing::warn!(
                    witness = %w.endpoint.name,
                    url = %w.endpoint.url,
                    "witness did not cosign (retrying every second): {error}"
                );
            }
            w.last_warning = Some((kind, Instant::now()));
        }
        let mut st = self.status.lock();
        st.witnesses[i].error = Some(error);
        st.witnesses[i].refused = refused;
    }
}

fn unix(ts: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts)
}

/// Writes the cosigned checkpoint atomically and durably (new file, fsync, rename, directory
/// fsync).
fn publish(dir: &Path, note: &[u8]) -> Result<(), LogError> {
    let p = dir.join(COSIGNED_CHECKPOINT);
    let tmp = dir.join(format!(".{COSIGNED_CHECKPOINT}.new"));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(note)?;
        f.sync_all()?;
        fs::rename(&tmp, &p)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| LogError::io(format!("writing {}", p.display()), e))
}

/// Where a witness URL points.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    prefix: String,
}

/// Scheme, host, port and path prefix of an `http://` or `https://` witness URL.
fn parse_url(url: &str) -> Result<Target, String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        s => {
            return Err(format!(
                "{url:?}: scheme {s:?} is not http or https (a witness's base URL, e.g. \
                 https://witness.example.com)"
            ))
        }
    };
    let host = u
        .host_str()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let prefix = u.path().trim_end_matches('/').to_string();
    Ok(Target {
        tls,
        host,
        port,
        prefix,
    })
}

/// Sends one `add-checkpoint` request (on `conn` if it is still open) and interprets the
/// answer; returns the connection for the next request.
async fn ask(
    endpoint: &WitnessEndpoint,
    conn: Option<Conn>,
    old: u64,
    body: Vec<u8>,
    text: &str,
) -> (Outcome, Option<Conn>) {
    let failed = |error: String| Outcome::Failed {
        error,
        refused: false,
    };
    let (status, ctype, resp, conn) =
        match tokio::time::timeout(WITNESS_TIMEOUT, post(endpoint, conn, body)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return (failed(e), None),
            Err(_) => {
                return (
                    failed(format!("no answer within {} s", WITNESS_TIMEOUT.as_secs())),
                    None,
                )
            }
        };
    (interpret(endpoint, old, status, ctype, &resp, text), conn)
}

/// What an answer to `add-checkpoint` (sent with old size `old`) means.
fn interpret(
    endpoint: &WitnessEndpoint,
    old: u64,
    status: u16,
    ctype: Option<String>,
    resp: &[u8],
    text: &str,
) -> Outcome {
    let failed = |error: String| Outcome::Failed {
        error,
        refused: false,
    };
    let resp_text = String::from_utf8_lossy(resp);
    match status {
        200 => {
            let note = format!("{text}\n{resp_text}");
            let parsed = match parse_note(note.as_bytes()) {
                Ok(p) => p,
                Err(e) => {
                    return failed(format!(
                        "answered 200 with a body that is not signature lines: {e}"
                    ))
                }
            };
            match endpoint.vkey.find(&parsed) {
                Ok(Some((timestamp, line))) => Outcome::Cosigned { line, timestamp },
                Ok(None) => failed(format!(
                    "answered 200 without a cosignature by its key {}",
                    endpoint.vkey.to_key_text()
                )),
                Err(e) => failed(format!("answered 200 with a bad cosignature: {e}")),
            }
        }
        409 => {
            let is_size = ctype
                .as_deref()
                .is_some_and(|c| c.trim().starts_with(SIZE_CONTENT_TYPE));
            match resp_text
                .strip_suffix('\n')
                .filter(|_| is_size)
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(m) => Outcome::Moved(m),
                None => failed(format!(
                    "answered 409 without a size (content type {:?}, body {:?})",
                    ctype.unwrap_or_default(),
                    truncate(&resp_text)
                )),
            }
        }
        403 | 404 | 422 => Outcome::Failed {
            error: format!(
                "the witness refuses ({status}): {} (sent old size {old})",
                truncate(resp_text.trim_end())
            ),
            refused: true,
        },
        s => failed(format!("answered {s}: {}", truncate(resp_text.trim_end()))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

/// POSTs `body` to `<url>/add-checkpoint` over HTTP/1.1, on `conn` if it is still open (a
/// kept-alive connection the witness closed meanwhile is replaced once); returns the status,
/// content type, body and the connection.
async fn post(
    endpoint: &WitnessEndpoint,
    conn: Option<Conn>,
    body: Vec<u8>,
) -> Result<(u16, Option<String>, Vec<u8>, Option<Conn>), String> {
    let url = endpoint.url.as_str();
    let t = parse_url(url)?;
    let body = bytes::Bytes::from(body);
    let host_header = match (t.tls, t.port) {
        (false, 80) | (true, 443) => t.host.clone(),
        _ if t.host.contains(':') => format!("[{}]:{}", t.host, t.port),
        _ => format!("{}:{}", t.host, t.port),
    };
    let request = || {
        hyper::Request::post(format!("{}/add-checkpoint", t.prefix))
            .header(hyper::header::HOST, host_header.as_str())
            .header(hyper::header::USER_AGENT, "parapet-log")
            .body(Full::new(body.clone()))
            .map_err(|e| format!("building the request: {e}"))
    };
    let mut reused = false;
    let mut kept = None;
    if let Some(mut c) = conn {
        if c.ready().await.is_ok() {
            kept = Some(c);
        }
    }
    let mut sender = match kept {
        Some(c) => {
            reused = true;
            c
        }
        None => connect(&t, endpoint.ca_file.as_deref()).await?,
    };
    let resp = match sender.send_request(request()?).await {
        Ok(r) => r,
        Err(e) if reused && (e.is_canceled() || e.is_closed()) => {
            sender = connect(&t, endpoint.ca_file.as_deref()).await?;
            sender
                .send_request(request()?)
                .await
                .map_err(|e| format!("request to {url} failed: {e}"))?
        }
        Err(e) => return Err(format!("request to {url} failed: {e}")),
    };
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {url}: {e}"))?
        .to_bytes()
        .to_vec();
    Ok((status, ctype, body, Some(sender)))
}

/// Why [`http1_connect`] failed, by step, for the caller to word.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connection.
    Connect(std::io::Error),
    /// The host is not a name a TLS certificate can be checked against.
    ServerName(String),
    /// The TLS handshake.
    Tls(std::io::Error),
    /// The HTTP/1.1 handshake.
    Handshake(hyper::Error),
}

/// Opens an HTTP/1.1 connection to `host:port`, over TLS with `tls` (the server's certificate
/// checked for `host`) or plain without it; the connection's driver is spawned on the current
/// runtime and runs until the sender is dropped or the server closes it. The one way the log's
/// HTTP clients (witnesses, [`crate::http_source`]) and the gateway's alerts connect.
pub async fn http1_connect<B>(
    host: &str,
    port: u16,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ConnectError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(ConnectError::Connect)?;
    let _ = stream.set_nodelay(true);
    let Some(connector) = tls else {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(sender);
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ConnectError::ServerName(e.to_string()))?;
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(ConnectError::Tls)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Opens an HTTP/1.1 connection (over TLS for `https://`, checking the witness's certificate
/// against `ca_file` or the system's CAs); its driver runs on the client's runtime until the
/// sender is dropped or the witness closes it.
async fn connect(t: &Target, ca_file: Option<&Path>) -> Result<Conn, String> {
    let (host, port) = (t.host.as_str(), t.port);
    let connector = if t.tls {
        Some(tls_connector(ca_file, WITNESS_CA_HINT)?)
    } else {
        None
    };
    http1_connect(host, port, connector.as_ref())
        .await
        .map_err(|e| match e {
            ConnectError::Connect(e) => format!("cannot connect to {host}:{port}: {e}"),
            ConnectError::ServerName(e) => format!("{host:?} is not a TLS server name: {e}"),
            ConnectError::Tls(e) => format!("TLS with {host}:{port} failed: {e}"),
            ConnectError::Handshake(e) => format!("HTTP handshake with {host}:{port} failed: {e}"),
        })
}
