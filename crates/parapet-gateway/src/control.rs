//! What operators can do to a running gateway (the console's actions): list the live sessions,
//! terminate one, lock and unlock users (approvals are in [`crate::approvals`]). Every action is first an audit event naming the
//! operator, durable before it takes effect; locks are rebuilt from those events when the
//! gateway starts, so they survive a restart.

use crate::error::GatewayError;
use crate::events::now_rfc3339;
use crate::shared::Shared;
use parapet_log::LogReader;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A live session as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// Session id (as in its audit events).
    pub id: String,
    /// Gateway user.
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Client address.
    pub client_addr: String,
    /// The client's application_name.
    pub application_name: String,
    /// Target.
    pub target: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// Statements judged so far.
    pub statements: u64,
    /// When the last one was judged (RFC 3339), if any.
    pub last_statement: Option<String>,
}

/// What a session shares with the registry while it lives.
pub(crate) struct LiveSession {
    pub(crate) summary: SessionSummary,
    pub(crate) stats: Arc<SessionStats>,
    /// Ends the session with this message (FATAL 57P01).
    pub(crate) kill: tokio::sync::watch::Sender<Option<String>>,
    /// The client's cancel key (its upstream backend, for a cancel request).
    pub(crate) cancel_key: (i32, i32),
}

/// Counters a session updates as it judges statements.
#[derive(Debug, Default)]
pub(crate) struct SessionStats {
    pub(crate) statements: AtomicU64,
    pub(crate) last: parking_lot::Mutex<Option<String>>,
}

impl SessionStats {
    pub(crate) fn statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        *self.last.lock() = Some(now_rfc3339());
    }
}

/// Operators' handle on a running gateway ([`crate::Gateway::control`]).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl Control {
    /// The live sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        let live = self.shared.live.lock();
        let mut v: Vec<SessionSummary> = live
            .values()
            .map(|s| {
                let mut sum = s.summary.clone();
                sum.statements = s.stats.statements.load(Ordering::Relaxed);
                sum.last_statement = s.stats.last.lock().clone();
                sum
            })
            .collect();
        v.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        v
    }

    /// Appends an operator's action to the log and waits until it is durable.
    async fn record(&self, ev: serde_json::Value) -> Result<u64, GatewayError> {
        let ticket = self.shared.log.submit(crate::events::to_bytes(&ev));
        Ok(ticket.await?)
    }

    /// Terminates session `id` on behalf of operator `by`: its running statement is cancelled
    /// on the server, the client gets FATAL 57P01 naming the operator, and both connections
    /// close. `false` when there is no such session.
    pub async fn terminate(&self, id: &str, by: &str) -> Result<bool, GatewayError> {
        if !self.shared.live.lock().contains_key(id) {
            return Ok(false);
        }
        self.record(
            json!({"type": "session_terminate", "time": now_rfc3339(), "session": id, "by": by}),
        )
        .await?;
        self.kill(
            id,
            &format!("parapet: terminating connection: session terminated by operator {by}"),
        )
        .await;
        Ok(true)
    }

    async fn kill(&self, id: &str, message: &str) {
        let found = self
            .shared
            .live
            .lock()
            .get(id)
            .map(|s| (s.cancel_key, s.kill.clone()));
        if let Some((key, kill)) = found {
            // The client hears why first; then the statement still running on the server is
            // cancelled (the session's end closes its connection, which the server may notice
            // only when it next writes).
            let target = self.shared.cancels.lock().get(&key).cloned();
            let _ = kill.send(Some(message.to_string()));
            if let Some(t) = target {
                t.cancel().await;
            }
        }
    }

    /// Locks `user` on behalf of `by`: new sessions are refused (28000, with the reason) and
    /// live ones terminated (in a fleet, on every gateway). Returns how many were terminated
    /// here. The lock is an audit event first, then written to the fleet's state.
    pub async fn lock_user(
        &self,
        user: &str,
        reason: &str,
        by: &str,
    ) -> Result<usize, GatewayError> {
        self.record(json!({"type": "user_lock", "time": now_rfc3339(), "user": user, "reason": reason, "by": by}))
            .await?;
        let info = crate::fleet::LockInfo {
            reason: reason.to_string(),
            by: by.to_string(),
        };
        self.shared
            .state
            .set_lock(user, Some(info))
            .await
            .map_err(|e| {
                GatewayError::State(crate::fleet::StateError {
                    reason: format!(
                        "{}; the lock of {user} is recorded in the audit log but not in force: lock the user again",
                        e.reason
                    ),
                    where_: e.where_,
                })
            })?;
        let ids: Vec<String> = self
            .shared
            .live
            .lock()
            .values()
            .filter(|s| s.summary.user == user)
            .map(|s| s.summary.id.clone())
            .collect();
        for id in &ids {
            self.kill(
                id,
                &format!("parapet: terminating connection: user {user} was locked by operator {by}: {reason}"),
            )
            .await;
        }
        Ok(ids.len())
    }

    /// Unlocks `user` on behalf of `by`; `false` when it was not locked.
    pub async fn unlock_user(&self, user: &str, by: &str) -> Result<bool, GatewayError> {
        if self.shared.state.lock_of(user).await?.is_none() {
            return Ok(false);
        }
        self.record(json!({"type": "user_unlock", "time": now_rfc3339(), "user": user, "by": by}))
            .await?;
        self.shared.state.set_lock(user, None).await?;
        Ok(true)
    }

    /// Ends this gateway's live sessions of every user locked in the fleet's state (called when
    /// the locks change elsewhere).
    pub(crate) async fn enforce_locks(&self) {
        let locks = self.shared.state.known_locks();
        if locks.is_empty() {
            return;
        }
        let doomed: Vec<(String, String, crate::fleet::LockInfo)> = self
            .shared
            .live
            .lock()
            .values()
            .filter_map(|s| {
                locks
                    .get(&s.summary.user)
                    .map(|l| (s.summary.id.clone(), s.summary.user.clone(), l.clone()))
            })
            .collect();
        for (id, user, l) in doomed {
            self.kill(
                &id,
                &format!(
                    "parapet: terminating connection: user {user} was locked by operator {}: {}",
                    l.by, l.reason
                ),
            )
            .await;
        }
    }

    /// The log's witnessing, if witnesses are configured: the last cosigned size and its age,
    /// and each witness's state.
    pub fn witness_status(&self) -> Option<parapet_log::WitnessStatus> {
        self.shared.log.witness_status()
    }

    /// How long statements have waited for their decisions to be durable.
    pub fn commit_latency(&self) -> LatencySnapshot {
        self.shared.commit_latency.snapshot()
    }

    /// The gateway's users, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.users.keys().cloned().collect();
        v.sort();
        v
    }

    /// Locked users and the reasons (in a fleet, as this gateway last heard from PostgreSQL).
    pub fn locked_users(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .shared
            .state
            .known_locks()
            .into_iter()
            .map(|(u, l)| (u, l.reason))
            .collect();
        v.sort();
        v
    }
}

/// What a gateway rebuilds from the published log at start.
pub(crate) struct Rebuilt {
    /// The locks in force at its end.
    pub(crate) locks: HashMap<String, crate::fleet::LockInfo>,
    /// The approval requests and approvals still open.
    pub(crate) approvals: crate::approvals::Book,
    /// The size of the log read.
    pub(crate) size: u64,
}

/// The locks in force at the end of the published log in `dir` (its `user_lock` and
/// `user_unlock` events, in order), and the approval requests and approvals still open (its
/// `approval_*` events, see [`crate::approvals`]). One pass; only entries that mention them are
/// parsed.
pub(crate) fn state_from_log(
    dir: &Path,
    ttl: std::time::Duration,
) -> Result<Rebuilt, GatewayError> {
    let mut locks = HashMap::new();
    let approvals = crate::approvals::Book::default();
    let reader = match LogReader::open(dir) {
        Ok(r) => r,
        Err(e) => return Err(GatewayError::Log(e)),
    };
    for item in reader.entries(0, reader.size()) {
        let (_, bytes) = item?;
        let lock = bytes.windows(9).any(|w| w == b"user_lock")
            || bytes.windows(11).any(|w| w == b"user_unlock");
        const APPROVAL: &[u8] = b"\"type\":\"approval_";
        let approval = bytes.windows(APPROVAL.len()).any(|w| w == APPROVAL);
        if !lock && !approval {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if approval {
            approvals.apply(&v, ttl);
            continue;
        }
        let user = v.get("user").and_then(|u| u.as_str()).unwrap_or("");
        match v.get("type").and_then(|t| t.as_str()) {
            Some("user_lock") => {
                let text = |k: &str| v.get(k).and_then(|r| r.as_str()).unwrap_or("").to_string();
                locks.insert(
                    user.to_string(),
                    crate::fleet::LockInfo {
                        reason: text("reason"),
                        by: text("by"),
                    },
                );
            }
            Some("user_unlock") => {
                locks.remove(user);
            }
            _ => {}
        }
    }
    approvals.keep_open();
    Ok(Rebuilt {
        locks,
        approvals,
        size: reader.size(),
    })
}

/// Feeds the approval book with the events the published log in `dir` gains beyond entry
/// `from` (a fleet's mirror, which other gateways' events reach as it advances): every
/// `approval_*` event, applied as at start but never moving a request back (its own events come
/// back this way too). Polls every 200 ms until `stop`.
pub(crate) async fn follow_log(
    shared: Arc<Shared>,
    mut from: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const APPROVAL: &[u8] = b"\"type\":\"approval_";
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        let dir = shared.log_dir.clone();
        let ttl = shared.config.review.ttl;
        let book = shared.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<u64, GatewayError> {
            let reader = LogReader::open(&dir)?;
            let size = reader.size();
            let mut applied = false;
            for item in reader.entries(from, size) {
                let (_, bytes) = item?;
                if !bytes.windows(APPROVAL.len()).any(|w| w == APPROVAL) {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    book.approvals.apply(&v, ttl);
                    applied = true;
                }
            }
            if applied {
                book.approvals.changed();
            }
            Ok(size.max(from))
        })
        .await;
        match read {
            Ok(Ok(size)) => from = size,
            Ok(Err(e)) => tracing::warn!("cannot follow the log for approvals: {e}"),
            Err(e) => tracing::warn!("cannot follow the log for approvals: {e}"),
        }
    }
}

/// Upper bounds (µs) of the commit-latency buckets.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// How long statements waited for their decision to be durable (the log's commit, as the
/// statement path sees it): counts per bucket of [`LATENCY_BUCKETS_US`] plus one past the last,
/// their sum and count. Lock-free; recorded once per judged statement.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 15],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Cumulative counts: observations at or under each bound of [`LATENCY_BUCKETS_US`].
    pub cumulative: Vec<(u64, u64)>,
    /// Sum of all observations, µs.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one wait.
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut acc = 0;
        let cumulative = LATENCY_BUCKETS_US
            .iter()
            .enumerate()
            .map(|(i, b)| {
                acc += self.buckets[i].load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        LatencySnapshot {
            cumulative,
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}
