//! `parapet-log`: Parapet's tamper-evident, append-only audit log.
//!
//! PINNED PUBLIC API (other crates compile against these signatures; the log's owner fills the
//! bodies and may add to the API, but must not rename or change these):
//!
//! - [`Log::init`] creates an empty log and a signing key, returns the verifier key.
//! - [`Log::open`] opens an existing log for appending (crash recovery happens here).
//! - [`Log::submit`] queues one entry and returns an [`AppendTicket`] (a `'static` future) that
//!   resolves to the entry's index once the entry, its tiles and a covering checkpoint are durable.
//!   Entries are indexed in submission order.
//! - [`Log::append`] is `submit(..).await`.
//! - [`LogReader`] reads entries of a log on disk (used by `parapet policy replay` and tests).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Placeholder until implemented.
    #[error("not implemented yet")]
    Unimplemented,
}

/// A handle for appending to an open log. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Log {}

impl Log {
    /// Creates an empty log in `dir` with origin `origin` and a new Ed25519 key in `key_file`
    /// (mode 0600, refuses to overwrite); publishes the size-0 checkpoint.
    /// Returns the verifier key (`name+keyhash+base64`).
    pub fn init(dir: &Path, origin: &str, key_file: &Path) -> Result<String, LogError> {
        let _ = (dir, origin, key_file);
        Err(LogError::Unimplemented)
    }

    /// Opens an existing log for appending, recovering from any interrupted batch.
    pub fn open(dir: &Path, key_file: &Path) -> Result<Log, LogError> {
        let _ = (dir, key_file);
        Err(LogError::Unimplemented)
    }

    /// Queues `entry`; the returned ticket resolves to its index once it is durable.
    pub fn submit(&self, entry: Vec<u8>) -> AppendTicket {
        let _ = entry;
        AppendTicket {}
    }

    /// Appends `entry` durably and returns its index.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, LogError> {
        self.submit(entry).await
    }

    /// Number of entries durably in the log (covered by the latest published checkpoint).
    pub fn size(&self) -> u64 {
        0
    }

    /// Flushes every queued entry and stops the background writer.
    pub async fn close(&self) -> Result<(), LogError> {
        Ok(())
    }
}

/// A queued append: resolves to the entry's index once durable. `Send + 'static`.
#[derive(Debug)]
pub struct AppendTicket {}

impl Future for AppendTicket {
    type Output = Result<u64, LogError>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(LogError::Unimplemented))
    }
}

/// Reads a log directory (checkpoint and entries); independent of any writer.
#[derive(Debug)]
pub struct LogReader {}

impl LogReader {
    /// Opens the log in `dir` for reading.
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        let _ = dir;
        Err(LogError::Unimplemented)
    }

    /// Tree size of the latest checkpoint.
    pub fn size(&self) -> u64 {
        0
    }

    /// Iterates entries with indices in `start..end`.
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), LogError>> + '_ {
        let _ = (start, end);
        std::iter::empty()
    }
}
