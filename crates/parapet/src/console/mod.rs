//! The console: an HTTP API over the audit trail, inside `parapet serve`, off the statement path
//! (it reads the published log; it never touches the gateway's sessions or waits on them).
//!
//! - `/log/…`: the C2SP tlog-tiles read API ([`tiles`]), exactly the files' bytes;
//! - `/api/events`: search ([`index`]); `/api/events/stream`: the same filters, live, as
//!   Server-Sent Events, resumable with `Last-Event-ID` without gap or duplicate;
//! - `/api/entries/<index>`: one entry with its inclusion proof and the checkpoint it is proved
//!   against;
//! - `/api/approvals`: approval requests of `review` rules, approved or denied by operators whose
//!   token names a user in an approver group;
//! - `/metrics`: Prometheus text ([`metrics`]).
//!
//! Every `/api/` and `/metrics` request needs `Authorization: Bearer TOKEN` ([`auth`]), and so
//! does `/log/` unless `[console] public_log = true`; without it the answer is 401.

pub mod auth;
pub mod index;
pub mod metrics;
pub mod segment;
pub mod tiles;

use crate::config::ConsoleSection;
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use index::{Filter, Indexed};
use parapet_log::LogReader;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// How often the indexer looks for newly published entries.
const POLL: Duration = Duration::from_millis(100);
/// Entries stored as one segment, at most.
const BATCH: u64 = 10_000;
/// How often the indexer stores what it has prepared (one segment each time): an event is
/// searchable and streamed within about this plus [`POLL`] of its publication.
const STORE_EVERY: Duration = Duration::from_millis(250);

struct AppState {
    control: Option<parapet_gateway::control::Control>,
    tokens: auth::Tokens,
    public_log: bool,
    log_dir: PathBuf,
    index_path: PathBuf,
    metrics: Arc<metrics::Metrics>,
    live: broadcast::Sender<Arc<Indexed>>,
}

/// The search index's directory: `[console] index`, else `console-index` beside the log
/// directory.
pub fn index_dir(section: Option<&ConsoleSection>, log_dir: &Path) -> PathBuf {
    section.and_then(|s| s.index.clone()).unwrap_or_else(|| {
        log_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("console-index")
    })
}

/// A bound console, ready to serve.
pub struct Console {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    stop_indexer: Arc<AtomicBool>,
    indexer: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    /// Opens the index (catching up with the log in the background) and binds the listener;
    /// `/metrics` shows `alerts`' metrics too when given.
    pub async fn bind(
        section: &ConsoleSection,
        log_dir: &Path,
        control: Option<parapet_gateway::control::Control>,
        alerts: Option<&crate::alerts::AlertMetrics>,
    ) -> anyhow::Result<Console> {
        let tokens = auth::Tokens::new(&section.tokens)?;
        let reader = LogReader::open(log_dir)
            .with_context(|| format!("the console cannot read the log in {}", log_dir.display()))?;
        let origin = reader.checkpoint().origin.clone();
        let index_dir = index_dir(Some(section), log_dir);
        let ix = index::Index::open_for_log(&index_dir, &origin, reader.size())?;
        let index_path = ix.path().to_path_buf();
        let metrics = Arc::new(metrics::Metrics::with_alerts(alerts));
        let (live, _) = broadcast::channel(4096);
        let stop_indexer = Arc::new(AtomicBool::new(false));
        let indexer = {
            let (dir, metrics, live, stop) = (
                log_dir.to_path_buf(),
                metrics.clone(),
                live.clone(),
                stop_indexer.clone(),
            );
            std::thread::Builder::new()
                .name("parapet-index".into())
                .spawn(move || run_indexer(ix, &dir, &metrics, &live, &stop))?
        };
        let tls = match (&section.tls_cert, &section.tls_key) {
            (Some(cert), Some(key)) => Some(
                parapet_gateway::tls::acceptor(&parapet_gateway::TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .context("[console] tls_cert / tls_key")?,
            ),
            (None, None) => None,
            _ => anyhow::bail!("[console] tls_cert and tls_key must be given together"),
        };
        let state = Arc::new(AppState {
            control,
            tokens,
            public_log: section.public_log,
            log_dir: log_dir.to_path_buf(),
            index_path,
            metrics,
            live,
        });
        let app = Router::new()
            .route("/", get(ui))
            .route("/api/health", get(health))
            .route("/log/checkpoint", get(checkpoint))
            .route("/log/checkpoint.cosigned", get(cosigned))
            .route("/log/tile/{*rest}", get(tile))
            .route("/api/events", get(events))
            .route("/api/events/stream", get(stream))
            .route("/api/entries/{index}", get(entry))
            .route("/api/sessions", get(sessions))
            .route("/api/sessions/{id}/terminate", post(terminate))
            .route("/api/users", get(users))
            .route("/api/users/{name}/lock", post(lock))
            .route("/api/users/{name}/unlock", post(unlock))
            .route("/api/approvals", get(approvals))
            .route("/api/approvals/{id}", get(approval))
            .route("/api/approvals/{id}/approve", post(approve))
            .route("/api/approvals/{id}/deny", post(deny))
            .route("/metrics", get(metrics_text))
            .with_state(state);
        let listener = TcpListener::bind(section.listen)
            .await
            .with_context(|| format!("the console cannot listen on {}", section.listen))?;
        Ok(Console {
            listener,
            tls,
            app,
            stop_indexer,
            indexer: Some(indexer),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, _) = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("console accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let svc = hyper_util::service::TowerToHyperService::new(self.app.clone());
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                let res = match tls {
                    Some(a) => match a.accept(tcp).await {
                        Ok(s) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await
                    }
                };
                if let Err(e) = res {
                    tracing::debug!("console connection: {e}");
                }
            });
        }
        self.stop_indexer.store(true, Ordering::Relaxed);
        if let Some(h) = self.indexer.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Puts the calling thread (the indexer) in Linux's idle scheduling class: it runs only on CPU
/// time nothing else wants, so indexing never takes a core from the gateway's statements (the
/// console is off the statement path). Under a load that keeps every core busy the index falls
/// behind and catches up when the load eases; `parapet_index_lag_entries` shows by how much.
fn yield_to_statements() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(0, …) changes only the calling thread's policy and reads
        // `param`, which outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!(
                "the console's indexer cannot lower its CPU priority ({}); it competes with statements for CPU",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Tails the published log into the index, counts metrics, and feeds the live stream (after
/// each batch is committed, so the stream never shows what a search would not).
fn run_indexer(
    mut ix: index::Index,
    dir: &Path,
    metrics: &metrics::Metrics,
    live: &broadcast::Sender<Arc<Indexed>>,
    stop: &AtomicBool,
) {
    yield_to_statements();
    let mut indexed = match ix.indexed() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(
                "the search index cannot be read: {e:#}; rebuild it with `parapet index rebuild`"
            );
            return;
        }
    };
    // Metrics count what the log holds: the entries indexed before this start too.
    let mut counted = 0;
    // Published sizes not yet indexed, with when each was published (for the delay metric).
    let mut pending: VecDeque<(u64, SystemTime)> = VecDeque::new();
    // Entries prepared but not yet stored, and when the last batch was stored.
    let mut prepared: Vec<Indexed> = Vec::new();
    let mut stored_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // One look at the published log per round. The checkpoint's time is read first, so a
        // size published after it is timed from earlier, never later, than it was.
        let published = std::fs::metadata(dir.join("checkpoint"))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let reader = match LogReader::open(dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("the console cannot read the log: {e}");
                std::thread::sleep(POLL * 10);
                continue;
            }
        };
        let size = reader.size();
        metrics.progress(size, indexed);
        if size > indexed && pending.back().is_none_or(|(s, _)| *s < size) {
            pending.push_back((size, published));
        }
        if counted < indexed {
            let end = indexed.min(counted + BATCH);
            for (_, bytes) in reader.entries(counted, end).flatten() {
                if let Ok(v) = serde_json::from_slice(&bytes) {
                    metrics.count(&v);
                }
            }
            counted = end;
            continue;
        }
        // Entries are prepared as they are published and stored (made searchable, then
        // streamed) as one segment every STORE_EVERY, or at BATCH entries.
        let next = indexed + prepared.len() as u64;
        if next < size {
            let end = size.min(next + BATCH - prepared.len() as u64);
            for item in reader.entries(next, end) {
                match item {
                    Ok((i, bytes)) => prepared.push(ix.prepare_owned(i, bytes)),
                    Err(e) => {
                        tracing::warn!("the console cannot read entry {next}+: {e}");
                        break;
                    }
                }
            }
        }
        let due = prepared.len() as u64 >= BATCH
            || (!prepared.is_empty() && stored_at.elapsed() >= STORE_EVERY);
        if !due {
            if indexed + prepared.len() as u64 >= size {
                std::thread::sleep(POLL);
            }
            continue;
        }
        let batch = std::mem::take(&mut prepared);
        stored_at = Instant::now();
        if let Err(e) = ix.store(&batch) {
            tracing::error!("the search index cannot be written: {e:#}");
            std::thread::sleep(POLL * 10);
            // Prepared again from what the index holds.
            indexed = ix.indexed().unwrap_or(indexed);
            counted = counted.min(indexed);
            continue;
        }
        indexed += batch.len() as u64;
        counted = indexed;
        for e in batch {
            metrics.count_fields(
                e.kind.as_deref(),
                e.decision.as_deref(),
                e.rules.first().map(String::as_str),
                e.count,
            );
            let _ = live.send(Arc::new(e));
        }
        metrics.progress(size, indexed);
        while let Some((s, at)) = pending.front() {
            if *s > indexed {
                break;
            }
            let delay = at.elapsed().map_or(0.0, |d| d.as_secs_f64());
            metrics.indexed_after(delay);
            pending.pop_front();
        }
    }
}

/// The caller, or the 401 to answer.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<auth::Caller, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.tokens.check(h).ok_or_else(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a console token is required: Authorization: Bearer TOKEN (see `parapet console token`)\n",
        )
            .into_response()
    })
}

/// An operator, or the 401/403 to answer; and the gateway's control (503 without one).
fn operator(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(auth::Caller, parapet_gateway::control::Control), Response> {
    let caller = authorize(state, headers)?;
    if caller.role != crate::config::ConsoleRole::Operator {
        return Err((
            StatusCode::FORBIDDEN,
            "this needs an operator token (auditor tokens read only)\n",
        )
            .into_response());
    }
    let control = state.control.clone().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no gateway runs in this process\n",
        )
            .into_response()
    })?;
    Ok((caller, control))
}

/// A `{"reason":"…"}` body with a reason that is not empty.
#[derive(serde::Deserialize)]
struct Reason {
    reason: String,
}

fn reason(body: &[u8]) -> Result<String, Response> {
    match serde_json::from_slice::<Reason>(body) {
        Ok(r) if !r.reason.trim().is_empty() => Ok(r.reason.trim().to_string()),
        _ => Err(bad_request(
            "a JSON body {\"reason\":\"…\"} with a reason is required",
        )),
    }
}

async fn sessions(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let sessions = state
        .control
        .as_ref()
        .map(|c| c.sessions())
        .unwrap_or_default();
    axum::Json(serde_json::json!({ "sessions": sessions })).into_response()
}

async fn terminate(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let (caller, control) = match operator(&state, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match control.terminate(&id, &caller.name).await {
        Ok(true) => {
            axum::Json(serde_json::json!({"terminated": id, "by": caller.name})).into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, "no such live session\n").into_response(),
        Err(e) => internal(e),
    }
}

async fn users(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let Some(control) = &state.control else {
        return axum::Json(serde_json::json!({"users": []})).into_response();
    };
    let locked: std::collections::HashMap<String, String> =
        control.locked_users().into_iter().collect();
    let mut names = control.users();
    for u in locked.keys() {
        if !names.contains(u) {
            names.push(u.clone());
        }
    }
    names.sort();
    let users: Vec<serde_json::Value> = names
        .into_iter()
        .map(|n| {
            let reason = locked.get(&n);
            serde_json::json!({"name": n, "locked": reason.is_some(), "reason": reason})
        })
        .collect();
    axum::Json(serde_json::json!({ "users": users })).into_response()
}

async fn lock(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, control) = match operator(&state, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = match reason(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match control.lock_user(&name, &reason, &caller.name).await {
        Ok(n) => axum::Json(serde_json::json!({"locked": name, "reason": reason, "terminated": n, "by": caller.name}))
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn unlock(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, control) = match operator(&state, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = reason(&body) {
        return r;
    }
    match control.unlock_user(&name, &caller.name).await {
        Ok(true) => {
            axum::Json(serde_json::json!({"unlocked": name, "by": caller.name})).into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, "that user is not locked\n").into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /api/approvals[?all=true]`.
#[derive(serde::Deserialize)]
struct ApprovalsQuery {
    #[serde(default)]
    all: bool,
}

async fn approvals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ApprovalsQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let list = state
        .control
        .as_ref()
        .map(|c| c.approvals(q.all))
        .unwrap_or_default();
    axum::Json(serde_json::json!({ "approvals": list })).into_response()
}

async fn approval(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    match state.control.as_ref().and_then(|c| c.approval(&id)) {
        Some(a) => axum::Json(a).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no such open or recent approval request (the log has every one: search type=approval_request)\n",
        )
            .into_response(),
    }
}

/// The body of `POST /api/approvals/<id>/approve|deny`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Decide {
    reason: String,
    /// Approve as a maintenance window of this many seconds.
    window_seconds: Option<u64>,
    /// The window's review rules (default: the request's).
    rules: Option<Vec<String>>,
}

fn decide_body(body: &[u8]) -> Result<Decide, Response> {
    match serde_json::from_slice::<Decide>(body) {
        Ok(d) if !d.reason.trim().is_empty() => Ok(d),
        Ok(_) => Err(bad_request("a reason is required: {\"reason\":\"…\"}")),
        Err(e) => Err(bad_request(format_args!(
            "expected a JSON body {{\"reason\":\"…\"}} (approve also takes \"window_seconds\": N and \"rules\": [\"rule id\", …]): {e}"
        ))),
    }
}

fn approval_error(e: parapet_gateway::approvals::ApprovalError) -> Response {
    use parapet_gateway::approvals::ApprovalError as E;
    let status = match &e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::NotPending { .. } | E::Busy(_) => StatusCode::CONFLICT,
        E::NoUser
        | E::UnknownUser(_)
        | E::SelfApproval(_)
        | E::NotApprover { .. }
        | E::NoApprovers(_) => StatusCode::FORBIDDEN,
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::Log(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::State(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{e}\n")).into_response()
}

async fn approve(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, control) = match operator(&state, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let d = match decide_body(&body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let who = parapet_gateway::approvals::Approver {
        token: caller.name,
        user: caller.user,
    };
    let grant = parapet_gateway::approvals::Grant {
        reason: d.reason,
        window: d.window_seconds.map(Duration::from_secs),
        rules: d.rules,
    };
    match control.approve(&id, &who, &grant).await {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => approval_error(e),
    }
}

async fn deny(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, control) = match operator(&state, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let d = match decide_body(&body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if d.window_seconds.is_some() || d.rules.is_some() {
        return bad_request("a denial takes only a reason");
    }
    let who = parapet_gateway::approvals::Approver {
        token: caller.name,
        user: caller.user,
    };
    match control.deny(&id, &who, &d.reason).await {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => approval_error(e),
    }
}

fn log_access(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    if state.public_log {
        Ok(())
    } else {
        authorize(state, headers).map(|_| ())
    }
}

fn cache(state: &AppState, rest: &str) -> HeaderValue {
    let scope = if state.public_log {
        "public"
    } else {
        "private"
    };
    HeaderValue::from_str(&format!("{scope}, {rest}"))
        .unwrap_or(HeaderValue::from_static("no-store"))
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

fn internal(msg: impl std::fmt::Display) -> Response {
    tracing::warn!("console: {msg}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n")).into_response()
}

/// The web UI: one page, embedded in the binary; it holds no data (it asks for a token).
const UI: &str = include_str!("ui/index.html");

async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        UI,
    )
        .into_response()
}

async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let dir = state.log_dir.clone();
    let path = state.index_path.clone();
    let witnesses = state
        .control
        .as_ref()
        .and_then(|c| c.witness_status())
        .map(|w| {
            let since = |t: Option<std::time::SystemTime>| {
                t.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs())
            };
            serde_json::json!({
                "cosigned_size": w.cosigned_size,
                "cosigned_age_seconds": since(w.cosigned_at),
                "min_witnesses": w.min_witnesses,
                "witnesses": w.witnesses.iter().map(|h| serde_json::json!({
                    "name": h.name,
                    "cosigned_size": h.cosigned_size,
                    "last_cosigned_age_seconds": since(h.last_cosigned_at),
                    "error": h.error,
                    "refused": h.refused,
                })).collect::<Vec<_>>(),
            })
        });
    let res = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let r = LogReader::open(&dir)?;
        let age = std::fs::metadata(dir.join("checkpoint"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs());
        let newest = index::newest(&path)?.map_or(0, |i| i + 1);
        Ok(serde_json::json!({
            "origin": r.checkpoint().origin,
            "log_size": r.size(),
            "checkpoint_age_seconds": age,
            "indexed": newest,
            "index_lag": r.size().saturating_sub(newest),
            "witnessing": witnesses,
        }))
    })
    .await;
    match res {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => internal(format_args!("{e:#}")),
        Err(e) => internal(e),
    }
}

/// Serves a signed note of the log directory (`checkpoint`, `checkpoint.cosigned`).
async fn note_file(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    missing: &'static str,
) -> Response {
    if let Err(r) = log_access(state, headers) {
        return r;
    }
    match tokio::fs::read(state.log_dir.join(name)).await {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, cache(state, "max-age=2")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, missing).into_response()
        }
        Err(e) => internal(format_args!("cannot read {name}: {e}")),
    }
}

async fn checkpoint(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    note_file(
        &state,
        &headers,
        "checkpoint",
        "the log has no checkpoint\n",
    )
    .await
}

/// The latest checkpoint with a quorum of witness cosignatures (the same signed note with the
/// witnesses' `cosignature/v1` lines), when the log is witnessed.
async fn cosigned(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    note_file(
        &state,
        &headers,
        parapet_log::COSIGNED_CHECKPOINT,
        "the log has no cosigned checkpoint (no witnesses, or no quorum yet)\n",
    )
    .await
}

async fn tile(
    State(state): State<Arc<AppState>>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = log_access(&state, &headers) {
        return r;
    }
    let Some(t) = tiles::parse(&rest) else {
        return (StatusCode::NOT_FOUND, "not a tile path\n").into_response();
    };
    match tokio::fs::read(state.log_dir.join(&t.rel)).await {
        Ok(bytes) => {
            let cc = if t.full {
                cache(&state, "max-age=31536000, immutable")
            } else {
                cache(&state, "max-age=2")
            };
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CACHE_CONTROL, cc),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "no such tile\n").into_response()
        }
        Err(e) => internal(format_args!("cannot read {}: {e}", t.rel)),
    }
}

async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let (path, dir) = (state.index_path.clone(), state.log_dir.clone());
    // A bad filter is the caller's error; a log that cannot be read is ours.
    let found = tokio::task::spawn_blocking(move || {
        let page = index::search(&path, &dir, &f)?;
        anyhow::Ok((|| {
            // The events are read from the log, which holds every entry the index does.
            let reader = LogReader::open(&dir)?;
            anyhow::Ok((index::load(&reader, &page.ids)?, page.next))
        })())
    })
    .await;
    let (events, next) = match found {
        Ok(Ok(Ok(page))) => page,
        Ok(Ok(Err(e))) => return internal(format_args!("{e:#}")),
        Ok(Err(e)) => return bad_request(format_args!("{e:#}")),
        Err(e) => return internal(e),
    };
    let mut body = String::from("{\"events\":[");
    for (n, (i, json)) in events.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"index\":{i},\"event\":{json}}}"));
    }
    body.push_str("],\"next\":");
    body.push_str(&match next {
        Some(n) => serde_json::Value::String(n).to_string(),
        None => "null".into(),
    });
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn entry(
    State(state): State<Arc<AppState>>,
    UrlPath(index): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let dir = state.log_dir.clone();
    let res = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<serde_json::Value>> {
        let r = LogReader::open(&dir)?;
        if index >= r.size() {
            return Ok(None);
        }
        let (_, bytes) = r
            .entries(index, index + 1)
            .next()
            .ok_or_else(|| anyhow::anyhow!("entry {index} missing"))??;
        let b64 = base64::engine::general_purpose::STANDARD;
        let proof: Vec<String> = r
            .inclusion_proof(index)?
            .iter()
            .map(|h| b64.encode(h))
            .collect();
        let event: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Some(serde_json::json!({
            "index": index,
            "event": event,
            "entry": b64.encode(&bytes),
            "leaf_hash": b64.encode(parapet_log::entry_leaf_hash(&bytes)),
            "inclusion_proof": proof,
            "checkpoint": String::from_utf8_lossy(r.checkpoint_note()),
        })))
    })
    .await;
    match res {
        Ok(Ok(Some(v))) => axum::Json(v).into_response(),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            "no such entry in the published log (yet)\n",
        )
            .into_response(),
        Ok(Err(e)) => internal(format_args!("{e:#}")),
        Err(e) => internal(e),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(state.control.as_ref().map(|c| c.commit_latency())),
    )
        .into_response()
}

/// Events for the stream, from the index (read from the log in `dir`): those after `last`
/// passing `f`, oldest first.
fn catch_up(
    path: &Path,
    dir: &Path,
    f: &Filter,
    last: Option<u64>,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut cursor = last;
    let reader = LogReader::open(dir)?;
    loop {
        let ids = index::after(path, cursor, 1000)?;
        let (Some(&from), Some(&to)) = (ids.first(), ids.last()) else {
            return Ok(out);
        };
        // The same filters as the search, over this range.
        let mut page_filter = f.clone();
        page_filter.before = Some((to + 1).to_string());
        page_filter.limit = Some(1000);
        let mut hits = index::search(path, dir, &page_filter)?.ids;
        hits.retain(|i| *i >= from);
        hits.reverse();
        out.extend(index::load(&reader, &hits)?);
        cursor = Some(to);
        if out.len() >= 10_000 {
            return Ok(out);
        }
    }
}

async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(mut f): Query<Filter>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    f.before = None;
    f.limit = None;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Subscribe first, then catch up from the index: nothing falls between.
    let mut sub = state.live.subscribe();
    let (path, dir) = (state.index_path.clone(), state.log_dir.clone());
    let start = match resume {
        Some(n) => Some(n),
        // A new stream starts after the newest event indexed.
        None => {
            let p = path.clone();
            tokio::task::spawn_blocking(move || index::newest(&p))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let mut last = start;
        let send = |i: u64, json: &str| {
            Event::default()
                .id(i.to_string())
                .data(format!("{{\"index\":{i},\"event\":{json}}}"))
        };
        'outer: loop {
            // Catch up (at the start, and after falling behind the live feed).
            let (p, d, ff) = (path.clone(), dir.clone(), f.clone());
            let rows = match tokio::task::spawn_blocking(move || catch_up(&p, &d, &ff, last)).await
            {
                Ok(Ok(rows)) => rows,
                _ => break,
            };
            let caught_up = rows.len() < 10_000;
            for (i, json) in rows {
                if tx.send(send(i, &json)).await.is_err() {
                    break 'outer;
                }
                last = Some(i);
            }
            if !caught_up {
                continue;
            }
            loop {
                match sub.recv().await {
                    Ok(e) => {
                        // Already sent (caught up from the index), or not for this stream.
                        if last.is_some_and(|l| e.index <= l) || !index::matches(&f, &e) {
                            continue;
                        }
                        if tx.send(send(e.index, &e.json)).await.is_err() {
                            break 'outer;
                        }
                        last = Some(e.index);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'outer,
                    Err(broadcast::error::RecvError::Closed) => break 'outer,
                }
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|e| e.map(Ok::<_, std::convert::Infallible>))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
