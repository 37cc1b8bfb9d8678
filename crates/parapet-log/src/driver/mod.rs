//! The storage driver: I/O only, the last of the log's four roles (queue → sequencer →
//! integrator → storage driver; see `docs/log.md`, "Architecture"). A driver reads and writes
//! the files of the C2SP tlog-tiles layout — hash tiles, entry bundles, the checkpoint — by
//! their relative paths (`tile/0/x001/234`, `tile/entries/005.p/20`, `checkpoint`), makes them
//! durable, and publishes the checkpoint. It computes nothing and decides nothing: which tiles
//! exist is the integrator's business, durability of entries the sequencer's.
//!
//! [`LocalDir`] is the driver of a local directory; [`S3Driver`] that of an S3-compatible bucket
//! (`write` = PUT, `sync` = wait for the uploads, `publish_checkpoint` = PUT of the checkpoint
//! object).

pub(crate) mod dir;
mod pool;
mod s3;

pub use dir::{read_checkpoint_file, LocalDir};
pub use s3::{S3Config, S3Driver};

use crate::sequencer::PendingSync;
use std::io;

/// Name of the checkpoint file at the root of a log.
pub const CHECKPOINT: &str = "checkpoint";
/// Prefix of temporary files in a log directory.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Where a log's files live: the storage-driver role. Paths are tlog-tiles relative paths.
///
/// What an implementation must guarantee:
/// - `write` replaces a file whole: a reader sees the old content or the new, never a mix;
/// - after `sync` returns, every file written before it is durable;
/// - the published checkpoint changes only in `publish_checkpoint*`, atomically, and only to
///   the staged one; the writer stages it after the tiles it covers are written, so readers
///   who follow the checkpoint always find its tiles;
/// - a full tile or bundle is written once (re-written only after a crash or a takeover, with
///   the same bytes): a driver may refuse, or raise an alarm on, a different re-write.
///
/// The writer calls a driver from one thread at a time; readers may share it (`read_into`
/// takes `&self`).
pub trait Driver: Send + 'static {
    /// Human-readable location (for error messages).
    fn location(&self) -> String;
    /// Reads a whole file into `buf` (cleared first); `Ok(false)` if it does not exist.
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool>;
    /// Writes a whole file. It replaces any previous content atomically but need not be durable
    /// before [`Driver::sync`].
    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Makes every file written since the last `sync` durable (data and directory entries).
    fn sync(&mut self) -> io::Result<()>;
    /// Stages the next checkpoint: written now, made durable by the next [`Driver::sync`]
    /// (together with the tiles), visible only after [`Driver::publish_checkpoint`].
    fn stage_checkpoint(&mut self, data: &[u8]) -> io::Result<()>;
    /// Atomically replaces the checkpoint with the staged one, durably. Called after `sync`.
    fn publish_checkpoint(&mut self) -> io::Result<()>;
    /// [`Driver::sync`] then [`Driver::publish_checkpoint`], returned as a standalone
    /// [`PendingSync`] for another thread to run, so that the writer integrates the next batch
    /// meanwhile. Takes what is to be synced now: files written after this call belong to the
    /// next sync. `Ok(None)` if the driver cannot (the default); the caller then syncs and
    /// publishes itself. The writer sets the sync's mark (see [`PendingSync::mark`]).
    fn sync_and_publish_later(&mut self) -> io::Result<Option<PendingSync>> {
        Ok(None)
    }
    /// Atomically replaces the checkpoint with the staged one; durable only after the next
    /// [`Driver::sync`]. Used when the sequencer already makes the batches durable.
    fn publish_checkpoint_unsynced(&mut self) -> io::Result<()> {
        self.sync()?;
        self.publish_checkpoint()
    }
    /// Removes a file or directory tree if present (garbage that no checkpoint refers to).
    fn remove(&mut self, path: &str) -> io::Result<()>;
    /// Removes a file or directory tree that no current or future checkpoint needs (superseded
    /// partial tiles); may happen in the background.
    fn remove_later(&mut self, path: &str) {
        let _ = self.remove(path);
    }
    /// Removes temporary files an interrupted write left in directory `dir` (`""` = the root).
    fn remove_temp_files(&mut self, dir: &str) -> io::Result<()> {
        let _ = dir;
        Ok(())
    }
}
