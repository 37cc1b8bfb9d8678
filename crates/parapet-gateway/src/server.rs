//! The accept loop, shared gateway state, connection limits, cancel-key mapping, policy reloads
//! (SIGHUP and file changes) and graceful shutdown.

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::events::{now_rfc3339, to_bytes};
use crate::scram::Verifier;
use crate::shared::Shared;
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

/// One accepted connection, counted against `max_connections` until dropped.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most over-limit connections answered at once; past that they are closed without a word.
const MAX_REFUSING: usize = 64;

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// The size of the published log the approval book was rebuilt from.
    followed: u64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// How a gateway of a fleet (several gateways writing one log) keeps what must hold
/// fleet-wide; see [`Gateway::bind_with`].
#[derive(Clone)]
pub struct FleetOptions {
    /// User locks and approval uses (e.g. [`crate::fleet::PgFleetState`]).
    pub state: Arc<dyn crate::fleet::FleetState>,
    /// The published log to read at start (locks, approvals) and to follow as it grows
    /// (approvals of the whole fleet): the verified mirror of the fleet's log.
    pub log_dir: std::path::PathBuf,
}

impl std::fmt::Debug for FleetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetOptions")
            .field("state", &self.state.kind())
            .field("log_dir", &self.log_dir)
            .finish()
    }
}

impl Gateway {
    /// Validates the configuration, loads TLS material and binds the listen address. Locks and
    /// approvals are this gateway's own, rebuilt from its log's directory.
    pub async fn bind(
        config: GatewayConfig,
        guard: Arc<Guard>,
        log: Log,
    ) -> Result<Gateway, GatewayError> {
        Self::bind_with(config, guard, log, None).await
    }

    /// [`Gateway::bind`], for a gateway of a fleet when `fleet` is given: locks and approval
    /// uses are kept in `fleet.state`, and the approval book is rebuilt from, and follows,
    /// `fleet.log_dir`.
    pub async fn bind_with(
        config: GatewayConfig,
        guard: Arc<Guard>,
        log: Log,
        fleet: Option<FleetOptions>,
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
        let log_dir = fleet
            .as_ref()
            .map_or_else(|| log.dir().to_path_buf(), |f| f.log_dir.clone());
        // A fleet's log has no directory of its own (`Log::dir` names the bucket): without a
        // mirror to read (FleetOptions), such a gateway starts with no locks or approvals.
        let rebuilt = if fleet.is_none() && log.fleet_status().is_some() {
            crate::control::Rebuilt {
                locks: HashMap::new(),
                approvals: Default::default(),
                size: 0,
            }
        } else {
            crate::control::state_from_log(&log_dir, config.review.ttl)?
        };
        let state: Arc<dyn crate::fleet::FleetState> = match &fleet {
            Some(f) => f.state.clone(),
            None => Arc::new(crate::fleet::LocalState::new(rebuilt.locks)),
        };
        let catalogs = targets
            .keys()
            .map(|name| (name.clone(), Arc::default()))
            .collect();
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
                catalogs,
                superuser_warned: Mutex::default(),
                live: Mutex::default(),
                commit_latency: Default::default(),
                state,
                log_dir,
                approvals: rebuilt.approvals,
            }),
            followed: rebuilt.size,
            listener,
        })
    }

    /// Operators' handle: live sessions, terminate, lock and unlock users (for the console).
    pub fn control(&self) -> crate::control::Control {
        crate::control::Control {
            shared: self.shared.clone(),
        }
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
        let sweeper = tokio::spawn(crate::approvals::sweep(shared.clone(), stop_rx.clone()));
        let follower = shared.state.is_fleet().then(|| {
            tokio::spawn(crate::control::follow_log(
                shared.clone(),
                self.followed,
                stop_rx.clone(),
            ))
        });
        let enforcer = shared.state.lock_changes().map(|mut changes| {
            let control = crate::control::Control {
                shared: shared.clone(),
            };
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    control.enforce_locks().await;
                }
            })
        });
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
        sweeper.abort();
        for t in [follower, enforcer].into_iter().flatten() {
            t.abort();
        }
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
