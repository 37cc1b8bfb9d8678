//! The sequencer: assigns indices durably. Second of the log's four roles (queue → sequencer →
//! integrator → storage driver; see `docs/log.md`, "Architecture").
//!
//! The writer hands the sequencer one **batch record** per batch: the index of its first entry
//! (u64 BE), the number of entries (u32 BE), the tree's roots before and after it (32 bytes
//! each), then each entry as a u16 BE length and its bytes (the entry-bundle encoding). Once the
//! record is durable the batch's indices are assigned for good, and its tickets resolve: the
//! tiles and checkpoint follow from the records deterministically, so they can be published
//! later (and re-published after a crash, byte for byte). [`DirJournal`] is the sequencer of a
//! local directory (a write-ahead journal file); [`PgSequencer`] keeps the records in PostgreSQL
//! (a row per batch, committed with `synchronous_commit = on`, fenced by generation).

mod journal;
mod postgres;

pub use journal::{read_journal, DirJournal, JOURNAL};
pub use postgres::PgSequencer;

use crate::error::LogError;
use crate::hash::Hash;
use crate::tile::push_bundle_entry;
use std::io;

/// The sequencer role: durable, contiguous index assignment. What an implementation must
/// guarantee:
/// - a record handed to [`Sequencer::sequence`] is durable once the returned [`PendingSync`]
///   has run (or at once, for [`PendingSync::done`]); the writer resolves the batch's tickets
///   only then, so no acknowledged entry is ever lost;
/// - records are kept in the order sequenced, and [`Sequencer::records`] returns every durable
///   record not yet cleared, oldest first, and never a torn or withdrawn one; their indices are
///   contiguous (each record starts where the one before it ends);
/// - [`Sequencer::withdraw_from`] and [`Sequencer::discard_last`] make sure a record whose
///   write or sync failed is never returned again (its batch was never acknowledged);
/// - [`Sequencer::fence`] fails once another process has taken over integration (a newer
///   generation), so that a stale writer publishes nothing.
///
/// The writer calls it from one thread; only [`PendingSync::run`] runs elsewhere.
pub trait Sequencer: Send + 'static {
    /// Writes `record` (a batch record, see the module documentation) without waiting for it to be durable, and returns
    /// the [`PendingSync`] that makes it durable, which another thread may run while the next
    /// record is being prepared (pipelining). `Ok(None)` if this sequencer keeps no records:
    /// the writer then makes every batch durable by syncing the driver directly.
    fn sequence(&mut self, record: &[u8]) -> io::Result<Option<PendingSync>>;
    /// Durably withdraws the record at `mark` (the [`PendingSync::mark`] of its write) and
    /// every record written after it: their sync failed, so they may or may not be durable,
    /// and they must never be replayed. A mark at or past the end withdraws nothing.
    fn withdraw_from(&mut self, mark: u64) -> io::Result<()>;
    /// Durably withdraws `record` if it is the last record written (its write reported an
    /// error, possibly after the record was stored), so that it is never replayed; does nothing
    /// if the last record is another one (the failed write stored nothing).
    fn discard_last(&mut self, record: &[u8]) -> io::Result<()>;
    /// The records sequenced since the last [`Sequencer::clear`], oldest first. A record that
    /// was not completely written (a crash during the write) and everything after it is left
    /// out.
    fn records(&mut self) -> io::Result<Vec<Vec<u8>>>;
    /// Durably forgets the records sequenced so far: a durable, published checkpoint covers
    /// them.
    fn clear(&mut self) -> io::Result<()>;
    /// The mark a record sequenced now would get (the end of the records).
    fn end_mark(&self) -> u64;
    /// Called before the writer publishes anything for the tree of `size` entries with root
    /// `root`: a sequencer shared by several processes commits that tree state under the
    /// integration lock here and fails if this process no longer holds it (generation fencing).
    /// A local directory has one writer: the default allows it.
    fn fence(&mut self, size: u64, root: &Hash) -> io::Result<()> {
        let _ = (size, root);
        Ok(())
    }
}

/// Makes one batch record written by [`Sequencer::sequence`] durable, together with every
/// record written before it (for [`DirJournal`], an `fdatasync` of the journal file); or, when
/// standalone, syncs a driver's files and publishes its checkpoint
/// ([`crate::driver::Driver::sync_and_publish_later`]). Safe to run on another thread than the
/// writer's (the flusher runs it).
pub struct PendingSync {
    mark: u64,
    sync: Option<Box<dyn FnOnce() -> io::Result<()> + Send>>,
    /// A later journal sync does not cover this one (see [`PendingSync::standalone`]).
    standalone: bool,
}

impl PendingSync {
    /// A sync for the journal record at `mark` that `run` performs; a later record's sync
    /// covers it.
    pub fn new(mark: u64, run: impl FnOnce() -> io::Result<()> + Send + 'static) -> PendingSync {
        PendingSync {
            mark,
            sync: Some(Box::new(run)),
            standalone: false,
        }
    }

    /// A sync that no later one covers (it syncs a driver's files, see
    /// [`crate::driver::Driver::sync_and_publish_later`]); the writer sets its mark to
    /// [`Sequencer::end_mark`].
    pub fn standalone(
        mark: u64,
        run: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> PendingSync {
        PendingSync {
            mark,
            sync: Some(Box::new(run)),
            standalone: true,
        }
    }

    /// A sync for a record that is already durable.
    pub fn done(mark: u64) -> PendingSync {
        PendingSync {
            mark,
            sync: None,
            standalone: false,
        }
    }

    /// Whether a later journal sync leaves this one still to run.
    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    /// Where the record starts, as the sequencer counts (see [`Sequencer::withdraw_from`]).
    pub fn mark(&self) -> u64 {
        self.mark
    }

    /// The same sync, with `mark` as its mark (the writer marks a driver's standalone sync with
    /// the sequencer's end, so that withdrawing from it, should it fail, withdraws nothing).
    pub(crate) fn marked(mut self, mark: u64) -> PendingSync {
        self.mark = mark;
        self
    }

    /// Makes the record (and those before it) durable.
    pub fn run(self) -> io::Result<()> {
        match self.sync {
            Some(f) => f(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("mark", &self.mark)
            .finish_non_exhaustive()
    }
}

/// Largest batch (entry bytes) made durable through the journal; larger batches are synced
/// directly, which costs less than writing their entries twice.
pub const JOURNAL_MAX_RECORD: usize = 1 << 20;

/// A batch record: one batch, with where it starts and the roots before and after it.
/// Layout: start u64 BE, count u32 BE, root before (32), root after (32), then each entry as
/// u16 BE length and bytes (the entry-bundle encoding).
pub(crate) struct BatchRecord<'a> {
    pub(crate) start: u64,
    pub(crate) count: u32,
    pub(crate) root_before: Hash,
    pub(crate) root_after: Hash,
    pub(crate) entries: &'a [u8],
}

const RECORD_HEAD: usize = 8 + 4 + 32 + 32;

impl<'a> BatchRecord<'a> {
    pub(crate) fn parse(rec: &'a [u8]) -> Result<BatchRecord<'a>, LogError> {
        let bad = || LogError::Tampered("journal: a record is malformed".into());
        if rec.len() < RECORD_HEAD {
            return Err(bad());
        }
        let hash = |r: &[u8]| -> Result<Hash, LogError> { r.try_into().map_err(|_| bad()) };
        Ok(BatchRecord {
            start: u64::from_be_bytes(rec[0..8].try_into().map_err(|_| bad())?),
            count: u32::from_be_bytes(rec[8..12].try_into().map_err(|_| bad())?),
            root_before: hash(&rec[12..44])?,
            root_after: hash(&rec[44..76])?,
            entries: &rec[RECORD_HEAD..],
        })
    }
}

/// Where the entries of journal `records` end (the tree size after the last record that
/// follows on from the one before), or `None` without records.
pub(crate) fn journal_end(records: &[Vec<u8>]) -> Result<Option<u64>, LogError> {
    let mut end: Option<u64> = None;
    for rec in records {
        let r = BatchRecord::parse(rec)?;
        if end.is_some_and(|e| e != r.start) {
            break;
        }
        end = Some(r.start + u64::from(r.count));
    }
    Ok(end)
}

/// Builds the journal record of the batch being integrated.
pub(crate) struct RecordBuilder {
    buf: Vec<u8>,
    count: u32,
    /// Too big for the journal: the batch is synced directly.
    overflow: bool,
}

impl RecordBuilder {
    pub(crate) fn new(start: u64, root_before: &Hash) -> RecordBuilder {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(&start.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(root_before);
        buf.extend_from_slice(&[0u8; 32]);
        RecordBuilder {
            buf,
            count: 0,
            overflow: false,
        }
    }

    pub(crate) fn push(&mut self, entry: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + 2 + entry.len() > RECORD_HEAD + JOURNAL_MAX_RECORD {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        push_bundle_entry(&mut self.buf, entry);
        self.count += 1;
    }

    /// The finished record, or `None` if the batch is too big for the journal.
    pub(crate) fn finish(mut self, root_after: &Hash) -> Option<Vec<u8>> {
        if self.overflow {
            return None;
        }
        self.buf[8..12].copy_from_slice(&self.count.to_be_bytes());
        self.buf[44..76].copy_from_slice(root_after);
        Some(self.buf)
    }
}
