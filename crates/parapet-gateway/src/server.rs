//! The accept loop, shared gateway state, connection limits, cancel-key mapping, policy reloads
//! (SIGHUP and file changes) and graceful shutdown.

use crate::config::{GatewayConfig, UpstreamConfig};
use crate::error::GatewayError;
use crate::events::{now_rfc3339, to_bytes};
use crate::scram::Verifier;
use crate::{startup, tls};
use parapet_guard::Guard;
use parapet_log::Log;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// Where to send a client's cancel request.
#[derive(Debug, Clone)]
struct CancelTarget {
    host: String,
    port: u16,
    key: (i32, i32),
}

/// State shared by every session.
pub(crate) struct Shared {
    pub config: GatewayConfig,
    pub users: HashMap<String, (crate::config::UserConfig, Verifier)>,
    pub targets: HashMap<String, crate::config::TargetConfig>,
    /// Each target's TLS connector (`None`: plain), built once.
    pub upstream_tls: HashMap<String, Option<tokio_rustls::TlsConnector>>,
    pub guard: Arc<Guard>,
    pub log: Log,
    pub tls: Option<TlsAcceptor>,
    /// The TLS certificate's channel binding data (SCRAM-SHA-256-PLUS), if it has any.
    pub tls_binding: Option<Vec<u8>>,
    /// Failed logins: what is recorded one by one, what is only counted.
    pub auth_failures: Arc<crate::authlog::AuthFailureLog>,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// Client connections open, logged in or not (`max_connections`).
    connections: AtomicUsize,
    /// Connections being refused for being over `max_connections` (bounded too).
    refusing: AtomicUsize,
    /// Sessions per gateway user (`max_connections_per_user`).
    user_sessions: Mutex<HashMap<String, usize>>,
}

/// One session of a user, counted against `max_connections_per_user` until dropped.
pub(crate) struct UserSlot {
    shared: Arc<Shared>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.shared.user_sessions.lock();
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// One accepted connection, counted against `max_connections` until dropped.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most over-limit connections answered at once; past that they are closed without a word.
const MAX_REFUSING: usize = 64;

impl Shared {
    /// Counts a session of `user`, or `None` when the user is at `max_connections_per_user`.
    pub fn user_slot(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut m = self.user_sessions.lock();
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= self.config.max_connections_per_user {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            shared: self.clone(),
            user: user.to_string(),
        })
    }

    /// Appends an event without waiting for it. It is submitted lazily: it rides along with the
    /// next decision's commit instead of starting a commit of its own (that the next decision
    /// would then have to wait behind), and is durable within `parapet_log::LAZY_COMMIT_DELAY`.
    pub fn event(&self, ev: serde_json::Value) {
        drop(self.log.submit_lazy(to_bytes(&ev)));
    }

    pub fn register_cancel(&self, key: (i32, i32), up: &UpstreamConfig, up_key: (i32, i32)) {
        self.cancels.lock().insert(
            key,
            CancelTarget {
                host: up.host.clone(),
                port: up.port,
                key: up_key,
            },
        );
    }

    pub fn unregister_cancel(&self, key: (i32, i32)) {
        self.cancels.lock().remove(&key);
    }

    /// Forwards a cancel request for a gateway key to the session's upstream backend.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = self.cancels.lock().get(&(pid, secret)).cloned();
        match target {
            Some(t) => {
                if let Err(e) = crate::upstream::cancel(&t.host, t.port, t.key).await {
                    tracing::warn!("forwarding cancel request failed: {e}");
                }
            }
            None => tracing::info!("cancel request with an unknown key ignored"),
        }
    }
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validates the configuration, loads TLS material and binds the listen address.
    pub async fn bind(
        config: GatewayConfig,
        guard: Arc<Guard>,
        log: Log,
    ) -> Result<Gateway, GatewayError> {
        let mut users = HashMap::new();
        for u in &config.users {
            let v = Verifier::parse(&u.scram).map_err(|reason| GatewayError::Verifier {
                user: u.name.clone(),
                reason,
            })?;
            if users.insert(u.name.clone(), (u.clone(), v)).is_some() {
                return Err(GatewayError::Config(format!(
                    "user {:?} is defined twice",
                    u.name
                )));
            }
        }
        let mut targets = HashMap::new();
        let mut upstream_tls = HashMap::new();
        for t in &config.targets {
            let connector = tls::upstream_connector(&t.upstream.tls).map_err(|e| {
                GatewayError::Config(format!("target {:?}: upstream TLS: {e}", t.name))
            })?;
            upstream_tls.insert(t.name.clone(), connector);
            if targets.insert(t.name.clone(), t.clone()).is_some() {
                return Err(GatewayError::Config(format!(
                    "target {:?} is defined twice",
                    t.name
                )));
            }
        }
        if config.require_tls && config.tls.is_none() {
            return Err(GatewayError::Config(
                "require_tls is set but no tls_cert/tls_key are configured".into(),
            ));
        }
        let (tls, tls_binding) = match config.tls.as_ref().map(tls::server).transpose()? {
            Some((acceptor, binding)) => (Some(acceptor), binding),
            None => (None, None),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: config.listen,
                    source,
                })?;
        guard.set_max_statement_size(config.max_statement_size);
        Ok(Gateway {
            shared: Arc::new(Shared {
                config,
                users,
                targets,
                upstream_tls,
                guard,
                log,
                tls,
                tls_binding,
                auth_failures: Arc::default(),
                cancels: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                refusing: AtomicUsize::new(0),
                user_sessions: Mutex::new(HashMap::new()),
            }),
            listener,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients until `shutdown` resolves; then closes sessions, records `gateway_stop`
    /// and closes the log.
    pub async fn run<F: Future<Output = ()>>(self, shutdown: F) -> Result<(), GatewayError> {
        let shared = self.shared;
        let addr = self.listener.local_addr()?;
        shared
            .log
            .append(to_bytes(
                &json!({"type":"gateway_start","time":now_rfc3339(),"listen":addr.to_string(),
                "policy_hash":shared.guard.policy_hash(),"version":env!("CARGO_PKG_VERSION"),
                "durability":format!("{:?}", shared.config.durability),
                "targets":shared.config.targets.iter().map(|t| &t.name).collect::<Vec<_>>()}),
            ))
            .await?;
        tracing::info!(%addr, "parapet gateway listening");
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let reloader = tokio::spawn(reload_loop(shared.clone(), stop_rx.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let open = shared.connections.fetch_add(1, Ordering::AcqRel);
                        let slot = ConnectionSlot(shared.clone());
                        if open >= shared.config.max_connections {
                            drop(slot);
                            refuse(&shared, tcp, peer);
                            continue;
                        }
                        let shared = shared.clone();
                        let stop = stop_rx.clone();
                        let alive = alive_tx.clone();
                        tokio::spawn(async move {
                            startup::handle(shared, tcp, peer, stop).await;
                            drop(slot);
                            drop(alive);
                        });
                    }
                    Err(e) => {
                        // E.g. too many open files: keep serving the others.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!("parapet gateway stopping");
        let _ = stop_tx.send(true);
        drop(alive_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
        reloader.abort();
        // Failed logins only counted so far get their summary before the stop.
        shared.auth_failures.flush(&shared.log);
        shared
            .log
            .append(to_bytes(
                &json!({"type":"gateway_stop","time":now_rfc3339()}),
            ))
            .await?;
        shared.log.close().await?;
        Ok(())
    }
}

/// Answers a connection over `max_connections` with FATAL 53300, as PostgreSQL does, without
/// reading what it sent (libpq reports an ErrorResponse even in answer to its SSLRequest). Then
/// waits up to a second for the client to close, so that the answer is not lost to a reset.
fn refuse(shared: &Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, max = shared.config.max_connections, "connection refused: too many clients");
    if shared.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut out = bytes::BytesMut::new();
        crate::protocol::backend::error(
            "53300",
            "sorry, too many clients already (parapet: [listen] max_connections)",
            None,
            true,
            &mut out,
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tcp.write_all(&out).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

fn mtimes(files: &[std::path::PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads policies on SIGHUP and when a policy file's modification time changes.
async fn reload_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let source = shared.config.policy.clone();
    let mut seen = mtimes(&source.files);
    let mut hup = if shared.config.reload_on_sighup {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP, policy reload on signal disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let poll = shared.config.policy_poll;
    loop {
        let trigger = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "sighup",
            _ = async { match poll { Some(p) if !source.files.is_empty() => tokio::time::sleep(p).await, _ => std::future::pending().await } } => {
                let now = mtimes(&source.files);
                if now == seen { continue; }
                "file_change"
            }
        };
        seen = mtimes(&source.files);
        match shared.guard.reload(&source) {
            Ok(r) => {
                tracing::info!(trigger, old = %r.old_hash, new = %r.new_hash, "policies reloaded");
                let ev = json!({"type":"policy_reload","time":now_rfc3339(),"trigger":trigger,
                    "old_hash":r.old_hash,"new_hash":r.new_hash,
                    "files":source.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                    "default_pack":source.default_pack});
                if let Err(e) = shared.log.append(to_bytes(&ev)).await {
                    tracing::error!("cannot record policy reload: {e}");
                }
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    "policy reload failed, the previous policies stay in force: {e}"
                );
                shared.event(
                    json!({"type":"policy_reload_failed","time":now_rfc3339(),"trigger":trigger,
                    "error":e.to_string(),"policy_hash":shared.guard.policy_hash()}),
                );
            }
        }
    }
}
