//! State shared by every connection of a gateway: configuration, users, targets and their TLS,
//! the guard and the log, counters behind the connection limits, and the cancel-key map. Built
//! once by `server` when the gateway binds; `startup` and `session` only read it (and count).

use crate::config::{GatewayConfig, UpstreamConfig};
use crate::events::to_bytes;
use crate::scram::Verifier;
use parapet_guard::Guard;
use parapet_log::Log;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Where to send a client's cancel request.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    host: String,
    port: u16,
    key: (i32, i32),
}

impl CancelTarget {
    /// Sends the upstream backend a cancel request.
    pub async fn cancel(&self) {
        if let Err(e) = crate::upstream::cancel(&self.host, self.port, self.key).await {
            tracing::warn!("forwarding cancel request failed: {e}");
        }
    }
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
    pub cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// Client connections open, logged in or not (`max_connections`).
    pub connections: AtomicUsize,
    /// Connections being refused for being over `max_connections` (bounded too).
    pub refusing: AtomicUsize,
    /// Sessions per gateway user (`max_connections_per_user`).
    pub user_sessions: Mutex<HashMap<String, usize>>,
    /// Each target's catalog (see [`crate::catalog`]).
    pub catalogs: HashMap<String, Arc<crate::catalog::CatalogSlot>>,
    /// Live sessions by id (the console lists and terminates them).
    pub live: Mutex<HashMap<String, crate::control::LiveSession>>,
    /// User locks and the use of single-use approvals: this gateway's own (rebuilt from the
    /// log at start), or the fleet's (PostgreSQL).
    pub state: Arc<dyn crate::fleet::FleetState>,
    /// The published log this gateway reads (its own log directory, or the fleet's mirror).
    pub log_dir: std::path::PathBuf,
    /// Approval requests, approvals and windows (rebuilt from the log at start).
    pub approvals: crate::approvals::Book,
    /// How long statements waited for their decisions to be durable.
    pub commit_latency: crate::control::LatencyHistogram,
    /// Targets whose superuser upstream role has been warned about.
    pub superuser_warned: Mutex<std::collections::HashSet<String>>,
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

impl Shared {
    /// The statement text a decision event records: the text itself, or none with
    /// `statement_text = "normalized"` (the normalised form is recorded either way).
    pub fn recorded_text<'a>(&self, sql: &'a str) -> Option<&'a str> {
        match self.config.statement_text {
            crate::config::StatementText::Full => Some(sql),
            crate::config::StatementText::Normalized => None,
        }
    }

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
            Some(t) => t.cancel().await,
            None => tracing::info!("cancel request with an unknown key ignored"),
        }
    }
}
