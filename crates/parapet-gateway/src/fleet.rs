//! State that must hold across every gateway sharing one log: user locks and the use of
//! single-use approvals. Behind one small trait, [`FleetState`], with two implementations:
//!
//! - [`LocalState`]: one gateway on its own log (`[log] backend = "dir"`): locks in memory,
//!   rebuilt from the log's `user_lock`/`user_unlock` events at start; an approval's use is
//!   decided by the gateway's own approval book (no claim needed).
//! - [`PgFleetState`]: a fleet (`[log] backend = "postgres"`): tables `parapet_user_locks` and
//!   `parapet_approval_claims` in the fleet's PostgreSQL. The lock table is authoritative (a
//!   login asks it, and is refused when it cannot be asked); a lock or unlock is sent to every
//!   gateway with `NOTIFY parapet_user_locks`, on which each terminates its own live sessions of
//!   a newly locked user. Using a single-use approval is an `INSERT … ON CONFLICT DO NOTHING`
//!   of its id, committed (`synchronous_commit = on`) before the statement runs, so it runs at
//!   most once fleet-wide however far each gateway's view of the log lags.
//!
//! Either way, every lock, unlock, grant and use is first an audit event in the log (as
//! before); the table is written after it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// A boxed future (the trait is used as `dyn FleetState`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user's lock: why, and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The operator's reason.
    pub reason: String,
    /// The operator (console token name).
    pub by: String,
}

/// The fleet's state cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the fleet's PostgreSQL ({where_}) cannot be used: {reason}")]
pub struct StateError {
    /// Which database (URL without password).
    pub where_: String,
    /// Why.
    pub reason: String,
}

/// Where locks and approval uses are kept (see the module docs).
pub trait FleetState: Send + Sync + 'static {
    /// `"local"` or `"postgres"` (for logs).
    fn kind(&self) -> &'static str;
    /// Whether `user` is locked now. Authoritative: an error means "cannot tell", and the
    /// caller refuses the login (fail closed).
    fn lock_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>>;
    /// Locks `user` (`Some`) or unlocks it (`None`). Returns whether it was locked before.
    fn set_lock<'a>(
        &'a self,
        user: &'a str,
        lock: Option<LockInfo>,
    ) -> BoxFuture<'a, Result<bool, StateError>>;
    /// The locks as last known here (kept current by the implementation; for listings and the
    /// check made as a session registers).
    fn known_locks(&self) -> HashMap<String, LockInfo>;
    /// Claims `what` (a single-use approval's id, or a one-time action on a request) for
    /// `owner`: `true` for the first claim ever, `false` if it was claimed before (anywhere).
    fn claim<'a>(
        &'a self,
        what: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>>;
    /// Bumped whenever the locks change elsewhere (another gateway); `None` if they cannot.
    fn lock_changes(&self) -> Option<watch::Receiver<u64>>;
    /// Whether other gateways write the same log: then the approval book follows the published
    /// log (the mirror) as it advances, and claims decide.
    fn is_fleet(&self) -> bool;
}

/// One gateway's state: locks in memory (rebuilt from its log at start); claims always succeed
/// (the approval book itself allows one use).
#[derive(Debug, Default)]
pub struct LocalState {
    locks: Mutex<HashMap<String, LockInfo>>,
}

impl LocalState {
    /// With the locks rebuilt from the log.
    pub fn new(locks: HashMap<String, LockInfo>) -> LocalState {
        LocalState {
            locks: Mutex::new(locks),
        }
    }
}

impl FleetState for LocalState {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn lock_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        let l = self.locks.lock().get(user).cloned();
        Box::pin(async move { Ok(l) })
    }
    fn set_lock<'a>(
        &'a self,
        user: &'a str,
        lock: Option<LockInfo>,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        let was = {
            let mut m = self.locks.lock();
            match lock {
                Some(l) => m.insert(user.to_string(), l).is_some(),
                None => m.remove(user).is_some(),
            }
        };
        Box::pin(async move { Ok(was) })
    }
    fn known_locks(&self) -> HashMap<String, LockInfo> {
        self.locks.lock().clone()
    }
    fn claim<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async { Ok(true) })
    }
    fn lock_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    fn is_fleet(&self) -> bool {
        false
    }
}

/// Longest a query to the fleet's PostgreSQL may take before the login, lock or claim waiting
/// on it fails (closed).
pub const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The NOTIFY channel of lock changes.
pub const LOCK_CHANNEL: &str = "parapet_user_locks";

const SCHEMA: &str = "BEGIN;
SELECT pg_advisory_xact_lock(hashtext('parapet_fleet_state'));
CREATE TABLE IF NOT EXISTS parapet_user_locks (
    user_name text PRIMARY KEY,
    reason text NOT NULL,
    locked_by text NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS parapet_approval_claims (
    claim text PRIMARY KEY,
    owner text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
COMMIT;";

/// A fleet's state in PostgreSQL (see the module docs).
pub struct PgFleetState {
    url: String,
    shown: String,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    known: Mutex<HashMap<String, LockInfo>>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for PgFleetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFleetState")
            .field("database", &self.shown)
            .finish_non_exhaustive()
    }
}

/// `url` without its password, for messages.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl PgFleetState {
    /// Connects to the fleet's PostgreSQL at `url` (a libpq URL), creates the tables if
    /// missing, reads the locks, and starts listening for lock changes (a task on the current
    /// Tokio runtime, reconnecting after a failure and re-reading the locks then).
    pub async fn connect(url: &str) -> Result<Arc<PgFleetState>, StateError> {
        let (tx, _) = watch::channel(0u64);
        let state = Arc::new(PgFleetState {
            url: url.to_string(),
            shown: shown_url(url),
            client: tokio::sync::Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            changes: tx,
        });
        let c = state.client().await?;
        state.timed(c.batch_execute(SCHEMA)).await?;
        state.reload(&c).await?;
        tokio::spawn(listen(Arc::downgrade(&state)));
        Ok(state)
    }

    fn error(&self, reason: impl std::fmt::Display) -> StateError {
        StateError {
            where_: self.shown.clone(),
            reason: reason.to_string(),
        }
    }

    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(STATE_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(pg_error(&e))),
            Err(_) => Err(self.error(format!("no answer within {} s", STATE_TIMEOUT.as_secs()))),
        }
    }

    async fn open(&self) -> Result<tokio_postgres::Client, StateError> {
        let (url, tls) = parapet_log::pg_tls::prepare(&self.url).map_err(|e| self.error(e))?;
        let (client, conn) = self.timed(tokio_postgres::connect(&url, tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("connection to the fleet's PostgreSQL ended: {e}");
            }
        });
        // Claims and locks are acknowledged only once durable.
        self.timed(client.batch_execute("SET synchronous_commit = on"))
            .await?;
        Ok(client)
    }

    /// The shared connection, (re)opened if needed.
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StateError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(self.open().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Re-reads every lock; bumps the change counter if they differ from those known.
    async fn reload(&self, c: &tokio_postgres::Client) -> Result<(), StateError> {
        let rows = self
            .timed(c.query(
                "SELECT user_name, reason, locked_by FROM parapet_user_locks",
                &[],
            ))
            .await?;
        let now: HashMap<String, LockInfo> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    LockInfo {
                        reason: r.get(1),
                        by: r.get(2),
                    },
                )
            })
            .collect();
        let changed = {
            let mut known = self.known.lock();
            let changed = *known != now;
            *known = now;
            changed
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

/// A PostgreSQL error with its server message, when there is one.
fn pg_error(e: &tokio_postgres::Error) -> String {
    parapet_log::pg_tls::describe(e)
}

/// Listens for lock changes until the state is dropped: on each notification, and after each
/// (re)connection, the locks are re-read.
async fn listen(state: Weak<PgFleetState>) {
    let mut warned = false;
    loop {
        let Some(s) = state.upgrade() else { return };
        let opened = match parapet_log::pg_tls::prepare(&s.url) {
            Ok((url, tls)) => s.timed(tokio_postgres::connect(&url, tls)).await,
            Err(e) => Err(s.error(e)),
        };
        let (client, mut conn) = match opened {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        "cannot listen for fleet lock changes (retrying every second): {e}"
                    );
                    warned = true;
                }
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        let ok = s
            .timed(client.batch_execute(&format!("LISTEN {LOCK_CHANNEL}")))
            .await
            .is_ok()
            && s.reload(&client).await.is_ok();
        drop(s);
        if ok {
            if warned {
                tracing::info!("listening for fleet lock changes again");
                warned = false;
            }
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let Some(s) = state.upgrade() else { return };
                if let Err(e) = s.reload(&client).await {
                    tracing::warn!("cannot re-read the fleet's locks: {e}");
                    break;
                }
                // A user unlocked and locked again in between counts as a change too.
                s.changes.send_modify(|n| *n += 1);
            }
        }
        driver.abort();
        if !warned {
            tracing::warn!("lost the fleet's lock notifications; reconnecting");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl FleetState for PgFleetState {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn lock_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = self
                .timed(c.query_opt(
                    "SELECT reason, locked_by FROM parapet_user_locks WHERE user_name = $1",
                    &[&user],
                ))
                .await?;
            Ok(row.map(|r| LockInfo {
                reason: r.get(0),
                by: r.get(1),
            }))
        })
    }

    fn set_lock<'a>(
        &'a self,
        user: &'a str,
        lock: Option<LockInfo>,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            // One statement: the row and the notification commit together.
            let was = match &lock {
                Some(l) => {
                    let row = self
                        .timed(c.query_one(
                            "WITH old AS (SELECT 1 FROM parapet_user_locks WHERE user_name = $1), \
                             up AS (INSERT INTO parapet_user_locks (user_name, reason, locked_by) \
                             VALUES ($1, $2, $3) ON CONFLICT (user_name) DO UPDATE \
                             SET reason = EXCLUDED.reason, locked_by = EXCLUDED.locked_by, \
                             locked_at = now() RETURNING 1) \
                             SELECT EXISTS (SELECT 1 FROM old), \
                             pg_notify('parapet_user_locks', $1) FROM up",
                            &[&user, &l.reason, &l.by],
                        ))
                        .await?;
                    row.get::<_, bool>(0)
                }
                None => {
                    let rows = self
                        .timed(c.query(
                            "WITH gone AS (DELETE FROM parapet_user_locks WHERE user_name = $1 \
                             RETURNING 1) SELECT pg_notify('parapet_user_locks', $1) FROM gone",
                            &[&user],
                        ))
                        .await?;
                    !rows.is_empty()
                }
            };
            {
                let mut known = self.known.lock();
                match lock {
                    Some(l) => known.insert(user.to_string(), l),
                    None => known.remove(user),
                };
            }
            Ok(was)
        })
    }

    fn known_locks(&self) -> HashMap<String, LockInfo> {
        self.known.lock().clone()
    }

    fn claim<'a>(
        &'a self,
        what: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = self
                .timed(c.execute(
                    "INSERT INTO parapet_approval_claims (claim, owner) VALUES ($1, $2) \
                     ON CONFLICT (claim) DO NOTHING",
                    &[&what, &owner],
                ))
                .await?;
            Ok(n == 1)
        })
    }

    fn lock_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn is_fleet(&self) -> bool {
        true
    }
}
