//! The log's error type. Every message says what went wrong and what to do about it.

use std::sync::Arc;

/// Errors of the log. Cheap to clone (one failed batch fails many tickets with the same error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The disk is full.
    #[error(
        "log directory {dir}: no space left on device; free space and restart; \
         the log is intact up to size {size}"
    )]
    NoSpace {
        /// The log directory.
        dir: String,
        /// Entries acknowledged before the failure (all intact).
        size: u64,
    },
    /// An entry is larger than the format allows.
    #[error(
        "entry of {len} bytes refused: log entries are limited to 65535 bytes \
         (tlog-tiles entry bundles store a 16-bit length); shorten or split the entry"
    )]
    EntryTooLarge {
        /// Size of the refused entry.
        len: usize,
    },
    /// A file that must not be overwritten already exists.
    #[error(
        "{path} already exists; refusing to overwrite it (choose another path or move it away)"
    )]
    AlreadyExists {
        /// The existing file or directory.
        path: String,
    },
    /// The directory holds no log.
    #[error("{dir} is not a log (it has no checkpoint file); create one with `parapet log init`")]
    NotALog {
        /// The directory.
        dir: String,
    },
    /// The origin cannot be used.
    #[error(
        "invalid origin {origin:?}: it must be non-empty, without spaces, '+' or newlines \
         (e.g. example.com/audit)"
    )]
    InvalidOrigin {
        /// The refused origin.
        origin: String,
    },
    /// A signing key file could not be used.
    #[error("signing key {path}: {reason}")]
    BadSigningKey {
        /// The key file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A verifier key could not be parsed.
    #[error(
        "verifier key {key:?}: {reason} (expected name+hex8+base64, as printed by `parapet log init`)"
    )]
    BadVerifierKey {
        /// The key text (public).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something read from the log (or given by the user) is not well formed.
    #[error("{what}: {reason}")]
    Malformed {
        /// What was being parsed, naming the file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Verification found the log or a checkpoint unsound; names the first bad entry or tile.
    #[error("{0}")]
    Tampered(String),
    /// A proof was asked for something outside the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// A proof did not verify.
    #[error("proof does not verify: {0}")]
    BadProof(String),
    /// The log was closed.
    #[error("the log is closed; open it again to append")]
    Closed,
    /// The background writer stopped before answering.
    #[error("the log writer stopped before this entry was durable; reopen the log and retry")]
    WriterGone,
}

impl LogError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> LogError {
        LogError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> LogError {
        LogError::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
