//! Each target's catalog (functions, operators, aggregates, casts, types: see
//! [`parapet_guard::catalog`]), so the guard knows a function by what it is, not by the name a
//! statement uses. A target's catalog is read with [`LOAD_QUERY`] over a session's own upstream
//! connection — at login when the target has none yet or it is older than [`MAX_AGE`], and by a
//! session after a statement that may change it (DDL), before anything behind that statement
//! is judged. A catalog read in a transaction (it sees the transaction's own uncommitted DDL)
//! stays the session's own; one read outside a transaction is the target's for every session.

use crate::error::SessionError;
use crate::upstream::{Reply, UpStream};
use bytes::BytesMut;
use parapet_guard::catalog::{Catalog, LOAD_QUERY};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A target's catalog is read again at the next login once it is this old (it may have changed
/// outside the gateway).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);

/// The catalog of one target, shared by its sessions.
#[derive(Default)]
pub(crate) struct CatalogSlot {
    /// Held while reading the catalog at login, so a burst of logins reads it once.
    loading: tokio::sync::Mutex<()>,
    current: Mutex<Option<(Arc<Catalog>, Instant)>>,
    /// Bumped at each new catalog; sessions compare it with the one they use.
    version: AtomicU64,
    /// Sessions whose committed DDL has been answered and which are reading the catalog again:
    /// other sessions wait for them before judging, so what runs after a DDL is judged with
    /// the catalog it made.
    rereading: AtomicUsize,
    reread: tokio::sync::Notify,
}

impl CatalogSlot {
    /// The current catalog and its version, if one was read.
    pub(crate) fn current(&self) -> Option<(Arc<Catalog>, u64)> {
        let c = self.current.lock();
        c.as_ref()
            .map(|(c, _)| (c.clone(), self.version.load(Ordering::Acquire)))
    }

    /// The version of the current catalog (cheap: sessions check it before judging).
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Makes `catalog` the target's; returns its version.
    pub(crate) fn publish(&self, catalog: Arc<Catalog>) -> u64 {
        let mut c = self.current.lock();
        *c = Some((catalog, Instant::now()));
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A session is reading the catalog again after its committed DDL.
    pub(crate) fn begin_reread(&self) {
        self.rereading.fetch_add(1, Ordering::SeqCst);
    }

    /// It is done (with a new catalog published, or none).
    pub(crate) fn end_reread(&self) {
        self.rereading.fetch_sub(1, Ordering::SeqCst);
        self.reread.notify_waiters();
    }

    /// Whether some session is reading the catalog again.
    pub(crate) fn rereading(&self) -> bool {
        self.rereading.load(Ordering::SeqCst) > 0
    }

    /// Waits (at most `limit`) until no session is reading the catalog again.
    pub(crate) async fn settled(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let wake = self.reread.notified();
            if !self.rereading() {
                return;
            }
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                tracing::warn!("a session took over {limit:?} to read the catalog again; judging with the catalog in force");
                return;
            }
        }
    }

    fn fresh(&self) -> Option<(Arc<Catalog>, u64)> {
        let c = self.current.lock();
        c.as_ref()
            .filter(|(_, at)| at.elapsed() < MAX_AGE)
            .map(|(c, _)| (c.clone(), self.version.load(Ordering::Acquire)))
    }

    /// The target's catalog for a new session on `stream` (idle, just logged in): the current
    /// one while fresh, else read anew over `stream`. When it cannot be read, the last one read
    /// serves; with none, the login fails (a session is never judged without its target's
    /// catalog).
    pub(crate) async fn for_login(
        &self,
        stream: &mut UpStream,
        leftover: &mut BytesMut,
        cap: usize,
    ) -> Result<(Arc<Catalog>, u64), SessionError> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _loading = self.loading.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        match read(stream, leftover, cap).await {
            Ok(catalog) => {
                let v = self.publish(catalog.clone());
                Ok((catalog, v))
            }
            Err(e) => match self.current() {
                Some(c) => {
                    tracing::warn!(
                        "cannot read the target's catalog again, using the last one read: {e}"
                    );
                    Ok(c)
                }
                None => Err(e),
            },
        }
    }
}

/// Reads the catalog over an idle upstream connection (nothing in flight): runs [`LOAD_QUERY`]
/// and reads up to its ReadyForQuery; bytes past it stay in `leftover`.
async fn read(
    stream: &mut UpStream,
    leftover: &mut BytesMut,
    cap: usize,
) -> Result<Arc<Catalog>, SessionError> {
    build(crate::upstream::simple_query(stream, leftover, LOAD_QUERY, cap).await?).await
}

/// Builds the catalog of a complete reply (analysing function bodies: off the async threads).
pub(crate) async fn build(reply: Reply) -> Result<Arc<Catalog>, SessionError> {
    let (rows, error) = (reply.rows, reply.error);
    if let Some(e) = error {
        return Err(SessionError::Upstream(format!(
            "cannot read the target's catalog: {e}"
        )));
    }
    tokio::task::spawn_blocking(move || Catalog::from_rows(rows))
        .await
        .map_err(|e| SessionError::Upstream(format!("reading the catalog failed: {e}")))?
        .map(Arc::new)
        .map_err(|e| SessionError::Upstream(e.to_string()))
}
