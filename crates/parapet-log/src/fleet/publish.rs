//! The fleet log's integrator: one process of the fleet at a time turns the sequenced batches
//! into the tree and publishes it. Every process runs this thread; it campaigns for the
//! advisory lock ([`super::INTEGRATOR_LOCK`], `pg_try_advisory_lock` on a dedicated connection,
//! retried every [`CAMPAIGN_INTERVAL`]). The holder takes a new generation in the state row
//! (fencing every older holder), loads the right edge of the published tree from the bucket,
//! catches up to the tree state committed in PostgreSQL (a holder that died after committing
//! but before publishing left it there), and then, every [`POLL_INTERVAL`] while there is work:
//! integrates the batches past its tree in index order, commits the new state (size, root)
//! conditional on its generation, writes tiles and bundles, then the signed checkpoint, then
//! deletes the batches that checkpoint covers. Any error drops the connection (and so the lock)
//! and campaigns again.

use super::{connect, pg_error, url_location, INTEGRATOR_LOCK};
use crate::blocking::BlockingRuntime;
use crate::checkpoint::Checkpoint;
use crate::driver::{Driver, S3Config, S3Driver, CHECKPOINT};
use crate::error::LogError;
use crate::hash::{leaf_hash, Hash};
use crate::integrator::{Integrator, TreeState};
use crate::note::NoteSigner;
use crate::tile::for_each_bundle_entry;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a process that does not hold the integrator lock tries to take it.
pub const CAMPAIGN_INTERVAL: Duration = Duration::from_millis(300);

/// How often the integrator looks for new batches when it found none.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Entries a round reads batches for: the batches starting within this many indices of the
/// tree's end (so at most twice this many entries, a batch holding at most
/// [`crate::MAX_BATCH_ENTRIES`]).
const ROUND_ENTRIES: i64 = crate::MAX_BATCH_ENTRIES as i64;

/// How often superseded partial tiles are removed from the bucket (each is a LIST and
/// DELETEs: done together, not on every round, so they do not hold publication up).
const REMOVE_INTERVAL: Duration = Duration::from_secs(2);

/// What the integrator thread shares with the log's handles.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stop: AtomicBool,
    /// Size of the checkpoint this process last published (0 if none).
    pub(crate) published: AtomicU64,
    /// Whether this process holds the integrator lock now.
    pub(crate) integrating: AtomicBool,
}

/// The running integrator thread; stopping it (drop) publishes what is sequenced if this
/// process holds the lock, then releases it.
pub(crate) struct IntegratorThread {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IntegratorThread {
    /// What the thread reports.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for IntegratorThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Starts the integrator thread of the fleet log at `url`, published to `s3`.
pub(crate) fn start(
    url: &str,
    s3: &S3Config,
    signer: NoteSigner,
    origin: &str,
) -> io::Result<IntegratorThread> {
    let shared = Arc::new(Shared::default());
    let w = Campaigner {
        idle: std::cell::RefCell::new(None),
        superseded: std::cell::RefCell::new((Vec::new(), std::time::Instant::now())),
        rt: BlockingRuntime::new("parapet-fleet-integrate", 1)?,
        url: url.to_string(),
        location: url_location(url),
        s3: s3.clone(),
        signer,
        origin: origin.to_string(),
        shared: shared.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("parapet-fleet-integrate".into())
        .spawn(move || w.run())?;
    Ok(IntegratorThread {
        shared,
        thread: Some(thread),
    })
}

struct Campaigner {
    /// The connection campaigning for the lock between attempts.
    idle: std::cell::RefCell<Option<tokio_postgres::Client>>,
    /// Superseded partial tiles to remove, and when they were last removed.
    superseded: std::cell::RefCell<(Vec<String>, std::time::Instant)>,
    rt: BlockingRuntime,
    url: String,
    location: String,
    s3: S3Config,
    signer: NoteSigner,
    origin: String,
    shared: Arc<Shared>,
}

/// The holder of the lock: its connection (which holds the lock) and generation.
struct Holder {
    client: tokio_postgres::Client,
    generation: i64,
    /// The tree state committed in PostgreSQL when this holder took over.
    size: u64,
    root: Hash,
}

/// One sequenced batch.
struct BatchRow {
    first: u64,
    count: u64,
    entries: Vec<u8>,
}

impl Campaigner {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d`, or less if the log is being closed.
    fn pause(&self, d: Duration) {
        if !self.stopping() {
            std::thread::park_timeout(d);
        }
    }

    fn run(self) {
        let mut last_error: Option<String> = None;
        while !self.stopping() {
            let r = self.campaign().and_then(|h| match h {
                Some(h) => {
                    self.shared.integrating.store(true, Ordering::Release);
                    let r = self.hold(h);
                    self.shared.integrating.store(false, Ordering::Release);
                    r.map(|()| true)
                }
                None => Ok(false),
            });
            match r {
                Ok(true) => return,
                Ok(false) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(error = %msg, "fleet log integrator: retrying");
                    }
                    last_error = Some(msg);
                }
            }
            self.pause(CAMPAIGN_INTERVAL);
        }
    }

    /// Tries to take the integrator lock; on success starts a new generation.
    fn campaign(&self) -> io::Result<Option<Holder>> {
        let (url, location) = (self.url.clone(), self.location.clone());
        let name = format!("parapet fleet integrator {}", std::process::id());
        // The connection of the last attempt, if it did not get the lock (kept, not reopened
        // every attempt); dropped on any error.
        let idle = self.idle.borrow_mut().take();
        let (holder, idle) = self.rt.block_on(async move {
            let client = match idle {
                Some(c) if !c.is_closed() => c,
                _ => connect(&url, &name).await?,
            };
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&INTEGRATOR_LOCK])
                .await
                .map_err(|e| pg_error(&location, "trying the integrator lock", e))?
                .get(0);
            if !got {
                return Ok((None, Some(client)));
            }
            let row = client
                .query_one(
                    "UPDATE parapet_fleet_state SET generation = generation + 1 WHERE id = 1 \
                     RETURNING generation, size, root",
                    &[],
                )
                .await
                .map_err(|e| pg_error(&location, "starting a generation", e))?;
            let root: Vec<u8> = row.get(2);
            let root: Hash = root.as_slice().try_into().map_err(|_| {
                io::Error::other(format!(
                    "{location}: parapet_fleet_state.root is not 32 bytes"
                ))
            })?;
            Ok::<_, io::Error>((
                Some(Holder {
                    client,
                    generation: row.get(0),
                    size: row.get::<_, i64>(1) as u64,
                    root,
                }),
                None,
            ))
        })??;
        *self.idle.borrow_mut() = idle;
        Ok(holder)
    }

    fn err(&self, e: LogError) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// Integrates and publishes while holding the lock; `Ok` once the log is being closed
    /// (after a last round).
    fn hold(&self, h: Holder) -> io::Result<()> {
        let mut driver = S3Driver::new(&self.s3)?;
        let location = driver.location();
        let mut note = Vec::new();
        if !driver.read_into(CHECKPOINT, &mut note)? {
            return Err(self.err(LogError::NotALog { dir: location }));
        }
        let text = self
            .signer
            .verifier()
            .open(&note, "checkpoint")
            .map_err(|e| self.err(e))?;
        let cp =
            Checkpoint::parse(text, &format!("{location}/checkpoint")).map_err(|e| self.err(e))?;
        if cp.size > h.size {
            return Err(io::Error::other(format!(
                "ALARM: {location}: the published checkpoint (size {}) is ahead of the tree state \
                 committed in PostgreSQL (size {}): the bucket or the database was replaced; \
                 integration stops",
                cp.size, h.size
            )));
        }
        let mut tree = TreeState::load(&driver, &cp).map_err(|e| self.err(e))?;
        // Catch up to the committed state: the batches past the checkpoint are kept until a
        // checkpoint covers them.
        while tree.size() < h.size {
            let rows = self.batches(&h, tree.size())?;
            let Some(first) = rows.first() else { break };
            if first.first != tree.size() {
                break;
            }
            for r in rows {
                if r.first != tree.size() || tree.size() >= h.size {
                    break;
                }
                self.integrate(&mut tree, &r)?;
            }
        }
        if tree.size() != h.size {
            // The batches are gone (a stale holder published an older checkpoint after the
            // newer one's batches were deleted): the committed tree's tiles are in the bucket.
            let committed = Checkpoint {
                origin: self.origin.clone(),
                size: h.size,
                root: h.root,
                extensions: Vec::new(),
            };
            tree = TreeState::load(&driver, &committed).map_err(|e| self.err(e))?;
        }
        if tree.root() != h.root {
            return Err(io::Error::other(format!(
                "ALARM: {location}: the sequenced batches give root {} at size {}, but PostgreSQL \
                 holds root {} for that size (a fork): integration stops",
                hex(&tree.root()),
                h.size,
                hex(&h.root)
            )));
        }
        // Past the committed state, only this holder writes (older ones are fenced).
        driver.sole_writer_from(h.size);
        let mut published = cp.size;
        if published < tree.size() {
            self.publish(&h, &mut driver, &mut tree)?;
            published = tree.size();
        }
        self.shared.published.store(published, Ordering::Release);
        loop {
            let stopping = self.stopping();
            let rows = self.batches(&h, tree.size())?;
            if rows.is_empty() {
                if stopping {
                    return self.delete_published(&h);
                }
                self.pause(POLL_INTERVAL);
                continue;
            }
            for r in &rows {
                if r.first != tree.size() {
                    return Err(io::Error::other(format!(
                        "{}: batch at {} found where {} was expected",
                        self.location,
                        r.first,
                        tree.size()
                    )));
                }
                self.integrate(&mut tree, r)?;
            }
            self.publish(&h, &mut driver, &mut tree)?;
            if stopping {
                // A last round: what was sequenced before the log was closed is published.
                let more = self.batches(&h, tree.size())?;
                if more.is_empty() {
                    return self.delete_published(&h);
                }
            }
        }
    }

    /// Deletes the batches the last published checkpoint covers (when the log closes; otherwise
    /// the next state commit does).
    fn delete_published(&self, h: &Holder) -> io::Result<()> {
        let covered = self.shared.published.load(Ordering::Acquire) as i64;
        let location = &self.location;
        self.rt.block_on(async {
            h.client
                .execute(
                    "DELETE FROM parapet_fleet_batches WHERE first < $1",
                    &[&covered],
                )
                .await
                .map(|_| ())
                .map_err(|e| pg_error(location, "deleting published batches", e))
        })?
    }

    /// The batches from index `from` on, in index order (those starting before
    /// `from + ROUND_ENTRIES`).
    fn batches(&self, h: &Holder, from: u64) -> io::Result<Vec<BatchRow>> {
        let location = &self.location;
        self.rt.block_on(async {
            let rows = h
                .client
                .query(
                    "SELECT first, count, entries FROM parapet_fleet_batches \
                     WHERE first >= $1 AND first < $1 + $2 ORDER BY first",
                    &[&(from as i64), &ROUND_ENTRIES],
                )
                .await
                .map_err(|e| pg_error(location, "reading sequenced batches", e))?;
            Ok(rows
                .into_iter()
                .map(|r| BatchRow {
                    first: r.get::<_, i64>(0) as u64,
                    count: r.get::<_, i32>(1) as u64,
                    entries: r.get(2),
                })
                .collect())
        })?
    }

    fn integrate(&self, tree: &mut TreeState, r: &BatchRow) -> io::Result<()> {
        for_each_bundle_entry(&r.entries, r.count as usize, |_, e| {
            tree.append(e, leaf_hash(e))
        })
        .map_err(|e| {
            io::Error::other(format!(
                "{}: the batch at {} is malformed: {e}",
                self.location, r.first
            ))
        })?
    }

    /// Commits the tree state under this holder's generation, then writes the tiles, the
    /// checkpoint, and deletes the batches it covers.
    fn publish(&self, h: &Holder, driver: &mut S3Driver, tree: &mut TreeState) -> io::Result<()> {
        let (size, root) = (tree.size(), tree.root());
        let location = &self.location;
        // The batches the last published checkpoint covers are deleted in the same transaction
        // (one commit per round).
        let covered = self.shared.published.load(Ordering::Acquire) as i64;
        let updated = self.rt.block_on(async {
            h.client
                .execute(
                    "WITH covered AS (DELETE FROM parapet_fleet_batches WHERE first < $4) \
                     UPDATE parapet_fleet_state SET size = $1, root = $2 \
                     WHERE id = 1 AND generation = $3",
                    &[&(size as i64), &root.as_slice(), &h.generation, &covered],
                )
                .await
                .map_err(|e| pg_error(location, "committing the tree state", e))
        })??;
        if updated == 0 {
            return Err(io::Error::other(format!(
                "{location}: another process took integration over (generation {} is no longer \
                 current): this one publishes nothing more",
                h.generation
            )));
        }
        tree.write_partials(driver)?;
        driver.sync()?;
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        driver.stage_checkpoint(self.signer.sign(&cp.to_text()).as_bytes())?;
        // A holder whose connection (and so lock) is gone publishes nothing.
        self.rt.block_on(async {
            h.client
                .simple_query("")
                .await
                .map_err(|e| pg_error(location, "checking the integrator lock", e))
        })??;
        driver.publish_checkpoint()?;
        self.shared.published.store(size, Ordering::Release);
        let mut superseded = self.superseded.borrow_mut();
        superseded.0.extend(tree.take_superseded());
        if superseded.1.elapsed() >= REMOVE_INTERVAL {
            for p in std::mem::take(&mut superseded.0) {
                driver.remove_later(&p);
            }
            superseded.1 = std::time::Instant::now();
        }
        drop(superseded);
        Ok(())
    }
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
