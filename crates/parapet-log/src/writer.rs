//! The writer: the thread that runs the log's four roles in turn (see `docs/log.md`,
//! "Architecture"). It takes a batch from the [`crate::queue`], integrates it (extends the
//! tree's right edge, [`crate::integrator`]), hands its batch record to the
//! [`crate::sequencer`] and the record's sync to the flusher thread ([`crate::flush`]), which
//! acknowledges the batch once it is durable; it publishes tiles and a signed checkpoint through
//! the storage [`crate::driver`] later, and recovers after an error. It owns the timing policy:
//! when to publish, to sync fully, to recover.
//!
//! Durability comes one of two ways. A batch of up to [`crate::JOURNAL_MAX_RECORD`] entry bytes
//! is made durable by its record alone (entries, start index and the roots before and after);
//! its tiles and signed checkpoint are reproduced exactly from the records if the process dies,
//! so the batch is acknowledged as soon as its record is durable. Whatever needs a durable tree
//! first (publication, a full sync, recovery) waits for the flusher to catch up. The files are
//! written (published) at most [`PUBLISH_INTERVAL`] later, together for every batch since the
//! last publication, without waiting for the disk; every [`FULL_SYNC_INTERVAL`] (or
//! [`FULL_SYNC_BYTES`] of records) they are synced and the sequencer's records cleared. Opening
//! the log replays the records onto the last synced tree. Larger batches (bulk loads), and
//! sequencers that keep no records, are made durable directly: tiles and the staged checkpoint
//! are synced, then the checkpoint is published.

use crate::checkpoint::Checkpoint;
use crate::driver::{Driver, CHECKPOINT};
use crate::error::LogError;
use crate::flush::{Ack, Flusher};
use crate::hash::leaf_hash;
use crate::integrator::{remove_garbage, Integrator, TreeState};
use crate::note::NoteSigner;
use crate::queue::{Gather, Item, LocalQueue, Next, Queue};
use crate::sequencer::{BatchRecord, PendingSync, RecordBuilder, Sequencer};
use crate::tile::for_each_bundle_entry;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Longest the tiles and checkpoint stay unsynced (durable only through the journal).
pub const FULL_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1000);

/// Longest a journaled batch waits to be published: its tiles and a checkpoint covering it
/// written to the log directory, where readers and verifiers see them. Publishing once for many
/// batches writes each partial tile once instead of once per batch.
pub const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Most bytes of completed tiles held in memory before they are published early.
const PUBLISH_PENDING_BYTES: usize = 8 << 20;

/// Most journal bytes written before the tiles and checkpoint are synced and the journal cleared
/// (bounds the journal and the replay work when the log is next opened).
pub const FULL_SYNC_BYTES: usize = 32 << 20;

/// What [`start`] hands the log's handles.
pub(crate) struct Started {
    /// Where submissions go.
    pub(crate) queue: Arc<LocalQueue>,
    /// Entries acknowledged (durable).
    pub(crate) acked: Arc<AtomicU64>,
    /// The writer thread (joined when the last handle is dropped).
    pub(crate) thread: std::thread::JoinHandle<()>,
}

/// Recovers the log whose verified checkpoint is `cp` (see [`open_tree`]) and starts its writer
/// and flusher threads.
pub(crate) fn start<D: Driver, Q: Sequencer>(
    mut driver: D,
    mut sequencer: Q,
    signer: NoteSigner,
    cp: &Checkpoint,
) -> Result<Started, LogError> {
    let location = driver.location();
    let tree = open_tree(&mut driver, &mut sequencer, &signer, cp)?;
    let queue = Arc::new(LocalQueue::default());
    let acked = Arc::new(AtomicU64::new(tree.size()));
    let tree_size = tree.size();
    let flusher = Flusher::start(
        acked.clone(),
        Arc::new(move |e, size, what| io_error(&location, size, what, e)),
    )
    .map_err(|e| LogError::io("starting the log flusher thread", e))?;
    let w = Writer {
        driver,
        sequencer,
        signer,
        origin: cp.origin.clone(),
        tree,
        queue: queue.clone(),
        acked: acked.clone(),
        broken: false,
        close_ack: None,
        journal_bytes: 0,
        unsynced_since: None,
        deferred_removals: Vec::new(),
        published: tree_size,
        last_publish: std::time::Instant::now(),
        committed: tree_size,
        flusher,
        direct_in_flight: false,
    };
    let thread = std::thread::Builder::new()
        .name("parapet-log-writer".into())
        .spawn(move || w.run())
        .map_err(|e| LogError::io("starting the log writer thread", e))?;
    Ok(Started {
        queue,
        acked,
        thread,
    })
}

/// The writer thread's state.
struct Writer<D: Driver, Q: Sequencer> {
    /// Reads and writes the log's files.
    driver: D,
    /// Makes each batch durable (assigns its indices for good).
    sequencer: Q,
    signer: NoteSigner,
    origin: String,
    tree: TreeState,
    queue: Arc<LocalQueue>,
    /// Entries acknowledged (durable): what `Log::size` reports; raised by the flusher.
    acked: Arc<AtomicU64>,
    broken: bool,
    close_ack: Option<oneshot::Sender<Result<(), LogError>>>,
    /// Journal bytes written since the last full sync.
    journal_bytes: usize,
    /// When the first batch not yet fully synced (durable only through the journal) committed.
    unsynced_since: Option<std::time::Instant>,
    /// `.p` directories superseded since the last full sync: removed only after the next one,
    /// because the journal's replay starts from the last synced tree, whose partials they are.
    deferred_removals: Vec<String>,
    /// Size of the checkpoint last written to storage (at most the acknowledged size).
    published: u64,
    /// When the checkpoint was last written (or, while `broken`, recovery last failed).
    last_publish: std::time::Instant,
    /// Tree size handed to the journal (or synced): at least the acknowledged size, which
    /// catches up once the flusher has synced the journal.
    committed: u64,
    /// Syncs journal records and acknowledges their batches on its own thread.
    flusher: Flusher,
    /// A batch that skipped the journal is with the flusher, which syncs its files and
    /// publishes its checkpoint (see [`Writer::commit`]); [`Writer::drain`] settles it.
    direct_in_flight: bool,
}

impl<D: Driver, Q: Sequencer> Writer<D, Q> {
    /// Runs until every handle is dropped (or the log is closed) and the queue is empty.
    fn run(mut self) {
        let mut gather = Gather::new();
        loop {
            let (items, idle_due) =
                match self.queue.next_batch(&mut gather, || self.idle_deadline()) {
                    Next::Batch { items, idle_due } => (items, idle_due),
                    Next::Stop => {
                        self.finish();
                        return;
                    }
                };
            if items.is_empty() {
                if idle_due {
                    self.background_work();
                }
                continue;
            }
            let started = std::time::Instant::now();
            let closing = self.process(items);
            gather.committed_in(started.elapsed());
            if closing {
                self.finish();
                let ack = self.close_ack.take();
                drop(self);
                if let Some(tx) = ack {
                    let _ = tx.send(Ok(()));
                }
                return;
            }
            self.background_work();
        }
    }

    /// Leaves the writer to recover before its next batch, or while idle one
    /// [`FULL_SYNC_INTERVAL`] from now (not at once: the cause may persist, e.g. a full disk).
    fn mark_broken(&mut self) {
        self.broken = true;
        self.last_publish = std::time::Instant::now();
    }

    /// When the next publication or full sync is due, if one is pending.
    fn idle_deadline(&self) -> Option<std::time::Instant> {
        if self.broken {
            // Retry recovery now and then (the cause may be gone, e.g. space freed), so that
            // acknowledged entries get published even if no batch comes to recover first.
            return Some(self.last_publish + FULL_SYNC_INTERVAL);
        }
        let sync = self.unsynced_since.map(|t| t + FULL_SYNC_INTERVAL);
        let publish =
            (self.published < self.tree.size()).then_some(self.last_publish + PUBLISH_INTERVAL);
        [sync, publish].into_iter().flatten().min()
    }

    /// Publishes, or syncs fully, whatever is due.
    fn background_work(&mut self) {
        if self.broken {
            if self.last_publish.elapsed() >= FULL_SYNC_INTERVAL {
                match self.recover() {
                    Ok(()) => self.broken = false,
                    Err(e) => {
                        tracing::error!(error = %e, "log recovery failed; retrying later");
                        self.mark_broken();
                    }
                }
            }
            return;
        }
        let sync_due = self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= FULL_SYNC_INTERVAL)
            || self.journal_bytes >= FULL_SYNC_BYTES;
        if sync_due {
            self.full_sync_logged();
        } else if self.published < self.tree.size()
            && (self.last_publish.elapsed() >= PUBLISH_INTERVAL
                || self.tree.pending_bytes() >= PUBLISH_PENDING_BYTES)
        {
            if let Err(e) = self.publish() {
                tracing::error!(error = %e, "publishing the log's tiles failed");
                // The journal holds every acknowledged entry; the next batch (or a retry one
                // interval from now) recovers first.
                self.mark_broken();
            }
        }
    }

    /// Writes the tiles completed and changed since the last publication and a signed
    /// checkpoint of the current tree, without waiting for the disk (the journal already holds
    /// every batch they cover).
    fn publish(&mut self) -> Result<(), LogError> {
        if self.published == self.tree.size() {
            return Ok(());
        }
        self.drain()?;
        let cp = self.stage_current()?;
        self.driver
            .publish_checkpoint_unsynced()
            .map_err(|e| self.io_error("publishing the checkpoint", e))?;
        self.published = cp.size;
        self.last_publish = std::time::Instant::now();
        // Superseded partials stay until the next full sync: replay starts from the synced tree.
        self.deferred_removals.extend(self.tree.take_superseded());
        Ok(())
    }

    /// Writes the tiles not yet written and stages a signed checkpoint of the current tree
    /// (not yet published); returns that checkpoint.
    fn stage_current(&mut self) -> Result<Checkpoint, LogError> {
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: Vec::new(),
        };
        // Only the holder of the integration lock publishes (see `Sequencer::fence`).
        self.sequencer
            .fence(cp.size, &cp.root)
            .map_err(|e| self.io_error("publishing (integration fence)", e))?;
        self.tree
            .write_partials(&mut self.driver)
            .map_err(|e| self.io_error("writing tiles", e))?;
        let note = self.signer.sign(&cp.to_text());
        self.driver
            .stage_checkpoint(note.as_bytes())
            .map_err(|e| self.io_error("writing the checkpoint", e))?;
        Ok(cp)
    }

    /// Syncs tiles, directories and checkpoint, then clears the journal and removes what the
    /// synced tree no longer needs.
    fn full_sync(&mut self) -> Result<(), LogError> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        self.drain()?;
        self.publish()?;
        self.driver
            .sync()
            .map_err(|e| self.io_error("syncing tiles", e))?;
        self.after_sync()
    }

    /// Once everything written is synced: clears the journal (its records are covered) and
    /// removes the superseded partial tiles that had to wait for this.
    fn after_sync(&mut self) -> Result<(), LogError> {
        self.deferred_removals.extend(self.tree.take_superseded());
        self.clear_synced()
    }

    /// Clears the journal and removes the deferred partial tiles: everything written up to the
    /// last sync's start is synced (the tiles completed since stay for the next one).
    fn clear_synced(&mut self) -> Result<(), LogError> {
        if self.unsynced_since.is_some() {
            self.sequencer
                .clear()
                .map_err(|e| self.io_error("clearing the journal", e))?;
            self.journal_bytes = 0;
            self.unsynced_since = None;
        }
        for p in std::mem::take(&mut self.deferred_removals) {
            self.driver.remove_later(&p);
        }
        Ok(())
    }

    /// [`Writer::full_sync`] outside a batch: a failure is logged and leaves the writer to
    /// recover before its next batch (the journal still holds every acknowledged entry).
    fn full_sync_logged(&mut self) {
        if let Err(e) = self.full_sync() {
            tracing::error!(error = %e, "log sync failed");
            self.mark_broken();
        }
    }

    /// Leaves storage fully synced and the journal empty (clean shutdown).
    fn finish(&mut self) {
        if self.drain().is_ok() && !self.broken {
            self.full_sync_logged();
        }
    }

    /// Entries acknowledged so far (what `Log::size` reports; the directory may lag).
    fn acked_size(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    fn io_error(&self, what: &str, e: io::Error) -> LogError {
        io_error(&self.driver.location(), self.acked_size(), what, e)
    }

    /// Waits until every batch handed to the flusher is durable and acknowledged (or failed),
    /// so that what follows (publication, a full sync, recovery) covers only durable batches.
    /// If a journal sync failed, withdraws the records in doubt, leaves the writer to recover
    /// and returns the error.
    fn drain(&mut self) -> Result<(), LogError> {
        let direct = std::mem::take(&mut self.direct_in_flight);
        let Some((mark, e)) = self.flusher.drain() else {
            // A batch that skipped the journal is synced: so is everything written before it.
            return if direct { self.clear_synced() } else { Ok(()) };
        };
        if let Err(w) = self.sequencer.withdraw_from(mark) {
            tracing::error!(error = %w, "withdrawing failed batches from the journal failed");
        }
        self.mark_broken();
        Err(e)
    }

    /// Rebuilds the tree from durable state after a failure: the checkpoint on disk plus the
    /// journal's records (every acknowledged batch), exactly as when the log is opened.
    fn recover(&mut self) -> Result<(), LogError> {
        // Batches in flight end first (a failed sync's records are withdrawn here).
        let _ = self.drain();
        let mut buf = Vec::new();
        let found = self
            .driver
            .read_into(CHECKPOINT, &mut buf)
            .map_err(|e| self.io_error("reading the checkpoint", e))?;
        if !found {
            return Err(LogError::NotALog {
                dir: self.driver.location(),
            });
        }
        let text = self.signer.verifier().open(&buf, "checkpoint")?.to_string();
        let cp = Checkpoint::parse(&text, "checkpoint")?;
        self.tree = match open_tree(&mut self.driver, &mut self.sequencer, &self.signer, &cp) {
            Ok(tree) => tree,
            Err(LogError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
                return Err(self.io_error(
                    "recovering from the journal",
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            Err(e) => return Err(e),
        };
        // open_tree synced everything and cleared the journal.
        for p in std::mem::take(&mut self.deferred_removals) {
            self.driver.remove_later(&p);
        }
        self.journal_bytes = 0;
        self.unsynced_since = None;
        self.published = self.tree.size();
        self.committed = self.tree.size();
        self.last_publish = std::time::Instant::now();
        self.acked.store(self.tree.size(), Ordering::Release);
        Ok(())
    }

    /// Integrates one batch; returns true if the log was closed.
    fn process(&mut self, items: Vec<Item>) -> bool {
        let mut closing = false;
        if self.flusher.has_failed() {
            // A journal sync failed: the tree holds batches that are not durable. Withdraw
            // them (drain) and rebuild from the durable state before going on.
            let _ = self.drain();
        }
        if self.broken {
            match self.recover() {
                Ok(()) => self.broken = false,
                Err(e) => {
                    for it in items {
                        closing |= it.fail(e.clone());
                    }
                    return closing;
                }
            }
        }
        let mut acks = Vec::with_capacity(items.len());
        let mut close = None;
        let mut result = Ok(());
        let first = self.tree.size();
        let mut record = RecordBuilder::new(first, &self.tree.root());
        for it in items {
            match it {
                Item::One {
                    entry, leaf, tx, ..
                } => {
                    let idx = self.tree.size();
                    if result.is_ok() {
                        result = self.tree.append(&entry, leaf);
                        record.push(&entry);
                    }
                    acks.push(Ack::One(tx, idx));
                }
                Item::Many { batch, tx } => {
                    let start = self.tree.size();
                    for (e, h) in batch.iter() {
                        if result.is_err() {
                            break;
                        }
                        result = self.tree.append(e, *h);
                        record.push(e);
                    }
                    acks.push(Ack::Many(tx, start..self.tree.size()));
                }
                Item::Close { tx } => {
                    closing = true;
                    close = Some(tx);
                }
            }
        }
        let result = result
            .map_err(|e| self.io_error("writing tiles", e))
            .and_then(|()| {
                let rec = record.finish(&self.tree.root());
                self.commit(rec)
            });
        match result {
            // Journaled: acknowledged once the record is durable, by the flusher (or at once, for a
            // small batch synced here; see `crate::flush`).
            Ok(Some(sync)) => {
                let entries = self.tree.size() - first;
                self.flusher.submit(sync, acks, self.tree.size(), entries)
            }
            Ok(None) => acks.into_iter().for_each(Ack::ok),
            Err(e) => {
                tracing::error!(error = %e, "log batch failed");
                self.mark_broken();
                self.tree.take_superseded();
                for a in acks {
                    a.fail(e.clone());
                }
                if let Some(tx) = close.take() {
                    let _ = tx.send(Err(e));
                }
            }
        }
        // Answered after the writer (and its storage) is torn down.
        if close.is_some() {
            self.close_ack = close;
        }
        closing
    }

    /// Makes the batch durable: through one journal record when `record` is given and the
    /// storage keeps a journal (its tiles and checkpoint are published later, see
    /// [`Writer::publish`]), otherwise by writing and syncing everything before publishing the
    /// checkpoint. A journaled batch is durable once the returned sync has run (the flusher
    /// runs it); `None` means the batch is durable already.
    fn commit(&mut self, record: Option<Vec<u8>>) -> Result<Option<PendingSync>, LogError> {
        if self.tree.size() == self.committed {
            return Ok(None);
        }
        if let Some(rec) = record {
            if self.direct_in_flight {
                // Settle it first: it clears the journal once its sync has covered everything
                // written before it, which must not include this record.
                self.drain()?;
            }
            match self.sequencer.sequence(&rec) {
                Ok(Some(sync)) => {
                    self.committed = self.tree.size();
                    self.journal_bytes += rec.len();
                    self.unsynced_since
                        .get_or_insert_with(std::time::Instant::now);
                    return Ok(Some(sync));
                }
                Ok(None) => {}
                Err(e) => {
                    // The record may be on disk in full: withdraw it, so that the failed batch
                    // is never replayed.
                    if let Err(e) = self.sequencer.discard_last(&rec) {
                        tracing::error!(error = %e, "withdrawing a failed batch from the journal failed");
                    }
                    return Err(self.io_error("writing the journal", e));
                }
            }
        }
        // The checkpoint published here covers the batches still in flight: they end first.
        self.drain()?;
        let cp = self.stage_current()?;
        // The flusher syncs the files and publishes the checkpoint, then acknowledges the
        // batch, while this thread integrates the next one (bulk loads: the next batch's
        // hashing overlaps this one's disk flush).
        match self.driver.sync_and_publish_later() {
            Ok(Some(sync)) => {
                self.committed = cp.size;
                self.published = cp.size;
                self.last_publish = std::time::Instant::now();
                self.deferred_removals.extend(self.tree.take_superseded());
                self.direct_in_flight = true;
                // If it fails, withdrawing from the sequencer's end withdraws nothing.
                return Ok(Some(sync.marked(self.sequencer.end_mark())));
            }
            Ok(None) => {}
            Err(e) => return Err(self.io_error("syncing tiles", e)),
        }
        self.driver
            .sync()
            .map_err(|e| self.io_error("syncing tiles", e))?;
        self.driver
            .publish_checkpoint()
            .map_err(|e| self.io_error("publishing the checkpoint", e))?;
        self.acked.store(cp.size, Ordering::Release);
        self.committed = cp.size;
        self.published = cp.size;
        self.last_publish = std::time::Instant::now();
        // Everything the journal held is now synced too.
        self.after_sync().map(|()| None)
    }
}

/// The error a submitter sees for an I/O error while `what`, in the log at `location` whose
/// acknowledged size is `size`.
pub(crate) fn io_error(location: &str, size: u64, what: &str, e: io::Error) -> LogError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        LogError::NoSpace {
            dir: location.to_string(),
            size,
        }
    } else {
        LogError::io(
            format!(
                "log directory {location}: {what} failed (the log is intact up to size {size}; \
                 fix the cause — later appends retry from the last checkpoint)"
            ),
            e,
        )
    }
}

/// Rebuilds the tree when a log is opened: loads the last fully synced tree, replays the
/// journal's records onto it (rewriting their tiles), syncs everything, publishes the
/// checkpoint, clears the journal and removes what an interrupted batch left behind.
/// `cp` is the checkpoint file's content, verified by the caller.
pub(crate) fn open_tree<D: Driver, Q: Sequencer>(
    st: &mut D,
    seq: &mut Q,
    signer: &NoteSigner,
    cp: &Checkpoint,
) -> Result<TreeState, LogError> {
    let location = st.location();
    let io = |what: &str, e: io::Error| LogError::io(format!("{location}: {what}"), e);
    let records = seq.records().map_err(|e| io("reading the journal", e))?;
    let Some(first) = records.first() else {
        let tree = TreeState::load(st, cp)?;
        // Only the holder of the integration lock removes anything: a stale writer recovering
        // from an older checkpoint would remove what the holder published since. A writer that
        // cannot pass the fence leaves the garbage for the holder (or the next open).
        if seq.fence(tree.size(), &tree.root()).is_ok() {
            remove_garbage(st, cp.size)
                .and_then(|()| st.sync())
                .map_err(|e| io("cleaning up", e))?;
        }
        return Ok(tree);
    };
    let first = BatchRecord::parse(first)?;
    if first.start > cp.size {
        return Err(LogError::Tampered(format!(
            "{location}: the journal starts at entry {} but the checkpoint has only {} entries; \
             the checkpoint was replaced by an older one",
            first.start, cp.size
        )));
    }
    let base = Checkpoint {
        origin: cp.origin.clone(),
        size: first.start,
        root: first.root_before,
        extensions: Vec::new(),
    };
    let mut tree = TreeState::load(st, &base)?;
    for rec in &records {
        let rec = BatchRecord::parse(rec)?;
        if rec.start != tree.size() {
            break;
        }
        for_each_bundle_entry(rec.entries, rec.count as usize, |_, e| {
            tree.append(e, leaf_hash(e))
        })
        .map_err(|e| LogError::Tampered(format!("journal: record at entry {}: {e}", rec.start)))?
        .map_err(|e| io("rewriting tiles from the journal", e))?;
        tree.write_full(st)
            .map_err(|e| io("rewriting tiles from the journal", e))?;
        if tree.root() != rec.root_after {
            return Err(LogError::Tampered(format!(
                "journal: the record at entry {} does not reproduce its root hash",
                rec.start
            )));
        }
    }
    if tree.size() < cp.size {
        // The checkpoint is ahead of the journal (cannot happen unless the journal was lost):
        // the checkpoint is the truth as long as its tiles are intact.
        tree = TreeState::load(st, cp)?;
    }
    // Full tiles rewritten above hold the bytes they always had; what follows publishes.
    seq.fence(tree.size(), &tree.root())
        .map_err(|e| io("taking over integration", e))?;
    tree.write_partials(st)
        .map_err(|e| io("writing partial tiles", e))?;
    let now = Checkpoint {
        origin: cp.origin.clone(),
        size: tree.size(),
        root: tree.root(),
        extensions: Vec::new(),
    };
    st.stage_checkpoint(signer.sign(&now.to_text()).as_bytes())
        .and_then(|()| st.sync())
        .and_then(|()| st.publish_checkpoint())
        .map_err(|e| io("publishing the recovered checkpoint", e))?;
    seq.clear().map_err(|e| io("clearing the journal", e))?;
    // Removals are done (synced) before the log opens: a driver that removes in the background
    // (S3) must not leave deletes in flight that land after another writer took over.
    remove_garbage(st, tree.size())
        .and_then(|()| st.sync())
        .map_err(|e| io("cleaning up", e))?;
    for p in tree.take_superseded() {
        st.remove_later(&p);
    }
    Ok(tree)
}
