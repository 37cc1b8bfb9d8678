//! `parapet-log`: Parapet's tamper-evident, append-only audit log.
//!
//! The log follows the transparency-log standards exactly, so independent verifiers, witnesses
//! and monitors work with it unchanged:
//! - Merkle tree and proofs: RFC 9162 / RFC 6962 ([`hash`], [`proof`]).
//! - Storage layout: C2SP tlog-tiles on a local directory ([`tile`], [`driver`]).
//! - Checkpoints: C2SP tlog-checkpoint signed as a C2SP signed-note with Ed25519
//!   ([`checkpoint`], [`note`]).
//! - Proof output: C2SP tlog-proof ([`LogReader::inclusion_proof_text`]).
//! - Witnesses: C2SP tlog-witness (`add-checkpoint`) and tlog-cosignature (`cosignature/v1`):
//!   the witness's protocol logic and state ([`witness`]), the log's client
//!   ([`Log::start_witnessing`], [`witness_client`]) and quorum verification
//!   ([`verify::verify_witnessed`]).
//! - Reading a published log, for verification, from any [`TileSource`]: a directory, or a log
//!   served over HTTP by the tlog-tiles read API ([`http_source`]); and following one into a
//!   verified local mirror ([`mirror`]).
//!
//! Architecture, after Tessera: four roles, each in its module behind one small trait. The
//! queue (`queue`: submission, group commit) feeds one writer thread; the [`sequencer`] makes
//! each batch durable, assigning its indices for good ([`sequencer::Sequencer`]; the local
//! directory's is the journal, [`sequencer::DirJournal`]); the integrator (`integrator`) turns
//! the tree's state into tiles, bundles and a checkpoint; the storage [`driver`] does the I/O
//! ([`driver::Driver`]; [`driver::LocalDir`]). [`Log::open_with`] takes any driver and
//! sequencer. See `docs/log.md`, "Architecture".
//!
//! PINNED PUBLIC API (other crates compile against these signatures):
//!
//! - [`Log::init`] creates an empty log and a signing key, returns the verifier key.
//! - [`Log::open`] opens an existing log for appending (crash recovery happens here).
//! - [`Log::submit`] queues one entry and returns an [`AppendTicket`] (a `'static` future) that
//!   resolves to the entry's index once the entry, its tiles and a covering checkpoint are durable
//!   (through the write-ahead journal, from which they are reproduced exactly; the files are
//!   published within [`PUBLISH_INTERVAL`]).
//!   Entries are indexed in submission order.
//! - [`Log::submit_run`] queues several entries as one contiguous run (no other entry lands
//!   between them) with the same durability and group commit as [`Log::submit`]; its ticket
//!   resolves to the index of the run's last entry.
//! - [`Log::append`] is `submit(..).await`.
//! - [`LogReader`] reads entries of a log on disk (used by `parapet policy replay` and tests).
//! - [`Log::init_fleet`] / [`Log::open_fleet`]: the same `Log` for a fleet's log, appended to by
//!   any number of processes at once, sequenced in PostgreSQL and published to an S3 bucket.

#![warn(missing_docs)]

mod blocking;
pub mod bulk;
pub mod checkpoint;
pub mod driver;
mod error;
mod fleet;
mod flush;
pub mod hash;
pub mod http_source;
mod integrator;
pub mod mirror;
pub mod note;
pub mod pg_tls;
pub mod proof;
mod queue;
mod reader;
pub mod sequencer;
pub mod tile;
mod tiles;
pub mod verify;
pub mod witness;
pub mod witness_client;
mod writer;

pub use error::LogError;
pub use queue::{LAZY_COMMIT_DELAY, MAX_BATCH_ENTRIES};
pub use reader::{
    EntryIter, LogReader, ProofText, CONSISTENCY_PROOF_HEADER, INCLUSION_PROOF_HEADER,
};
pub use sequencer::JOURNAL_MAX_RECORD;
pub use tiles::TileSource;
pub use witness_client::{
    WitnessEndpoint, WitnessHealth, WitnessPolicy, WitnessStatus, COSIGNED_CHECKPOINT,
};
pub use writer::{FULL_SYNC_BYTES, FULL_SYNC_INTERVAL, PUBLISH_INTERVAL};

use crate::checkpoint::Checkpoint;
use crate::driver::{Driver, LocalDir, S3Config, S3Driver};
use crate::hash::{empty_root, leaf_hash, Hash};
use crate::note::{valid_key_name, NoteSigner};
use crate::queue::{BatchData, Item, LocalQueue, Queue};
use crate::sequencer::{DirJournal, Sequencer};
use crate::tile::MAX_ENTRY_SIZE;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A handle for appending to an open log. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<LocalQueue>,
    /// Entries acknowledged (durable); raised by the writer's flusher.
    size: Arc<AtomicU64>,
    dir: PathBuf,
    origin: String,
    writer: Option<std::thread::JoinHandle<()>>,
    witness: std::sync::OnceLock<witness_client::WitnessClient>,
    /// A fleet log's integrator thread (stopped after the writer, see [`Log::open_fleet`]).
    integrator: Option<fleet::publish::IntegratorThread>,
}

impl Drop for Inner {
    /// Dropping the last handle commits what is queued, syncs the log, empties the journal and
    /// waits for all that, so the log can be reopened at once.
    fn drop(&mut self) {
        self.queue.shut_down();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        // Its last round publishes what this process sequenced, if it integrates.
        drop(self.integrator.take());
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.dir)
            .field("origin", &self.inner.origin)
            .field("size", &self.size())
            .finish()
    }
}

fn read_signer(key_file: &Path) -> Result<NoteSigner, LogError> {
    let text = fs::read_to_string(key_file).map_err(|e| LogError::BadSigningKey {
        path: key_file.display().to_string(),
        reason: format!("cannot read it: {e}"),
    })?;
    NoteSigner::parse(text.trim()).map_err(|reason| LogError::BadSigningKey {
        path: key_file.display().to_string(),
        reason: format!(
            "{reason} (expected PRIVATE+KEY+name+keyid+key, as written by `parapet log init`)"
        ),
    })
}

/// Writes `key_text` (a signing key in its file format) to `key_file` (mode 0600; refuses to
/// overwrite) durably: the log's key and a witness's.
pub(crate) fn write_key_file(key_file: &Path, key_text: &str) -> Result<(), LogError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_file)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                LogError::AlreadyExists {
                    path: key_file.display().to_string(),
                }
            } else {
                LogError::io(format!("creating key file {}", key_file.display()), e)
            }
        })?;
    f.write_all(format!("{key_text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| LogError::io(format!("writing key file {}", key_file.display()), e))?;
    sync_parent(key_file)
}

fn sync_parent(path: &Path) -> Result<(), LogError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::File::open(&parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| LogError::io(format!("syncing directory {}", parent.display()), e))
}

impl Log {
    /// Creates an empty log in `dir` with origin `origin` and a new Ed25519 key in `key_file`
    /// (mode 0600, refuses to overwrite); publishes the size-0 checkpoint.
    /// Returns the verifier key (`name+keyhash+base64`).
    pub fn init(dir: &Path, origin: &str, key_file: &Path) -> Result<String, LogError> {
        if !valid_key_name(origin) {
            return Err(LogError::InvalidOrigin {
                origin: origin.to_string(),
            });
        }
        let cp_path = dir.join(driver::CHECKPOINT);
        if cp_path.exists() {
            return Err(LogError::AlreadyExists {
                path: cp_path.display().to_string(),
            });
        }
        if key_file.exists() {
            return Err(LogError::AlreadyExists {
                path: key_file.display().to_string(),
            });
        }
        fs::create_dir_all(dir)
            .map_err(|e| LogError::io(format!("creating log directory {}", dir.display()), e))?;
        let signer = NoteSigner::generate(origin);
        write_key_file(key_file, &signer.to_key_text())?;
        let cp = Checkpoint {
            origin: origin.to_string(),
            size: 0,
            root: empty_root(),
            extensions: Vec::new(),
        };
        let mut st = LocalDir::new(dir);
        st.stage_checkpoint(signer.sign(&cp.to_text()).as_bytes())
            .and_then(|()| st.sync())
            .and_then(|()| st.publish_checkpoint())
            .map_err(|e| LogError::io(format!("writing {}", cp_path.display()), e))?;
        sync_parent(dir)?;
        Ok(signer.verifier().to_key_text())
    }

    /// Creates an empty log in the storage of `driver` (any backend): publishes the size-0
    /// checkpoint of origin `signer.name()`, signed by `signer`; refuses if the storage holds
    /// a checkpoint already. Returns the verifier key. [`Log::init`] does this for a directory
    /// (and creates the key file).
    pub fn init_with<D: Driver>(driver: &mut D, signer: &NoteSigner) -> Result<String, LogError> {
        let location = driver.location();
        let mut existing = Vec::new();
        let found = driver
            .read_into(driver::CHECKPOINT, &mut existing)
            .map_err(|e| LogError::io(format!("{location}: reading the checkpoint"), e))?;
        if found {
            return Err(LogError::AlreadyExists {
                path: format!("{location}: {}", driver::CHECKPOINT),
            });
        }
        let cp = Checkpoint {
            origin: signer.name().to_string(),
            size: 0,
            root: empty_root(),
            extensions: Vec::new(),
        };
        driver
            .stage_checkpoint(signer.sign(&cp.to_text()).as_bytes())
            .and_then(|()| driver.sync())
            .and_then(|()| driver.publish_checkpoint())
            .map_err(|e| LogError::io(format!("{location}: writing the checkpoint"), e))?;
        Ok(signer.verifier().to_key_text())
    }

    /// Opens an existing log for appending, recovering from any interrupted batch.
    pub fn open(dir: &Path, key_file: &Path) -> Result<Log, LogError> {
        let signer = read_signer(key_file)?;
        Self::open_with(LocalDir::new(dir), DirJournal::new(dir), signer).map_err(|e| match e {
            LogError::Tampered(m) if m.starts_with("checkpoint:") => LogError::BadSigningKey {
                path: key_file.display().to_string(),
                reason: format!(
                    "it does not sign the checkpoint of {} (wrong key for this log, or the checkpoint was modified)",
                    dir.display()
                ),
            },
            e => e,
        })
    }

    /// Opens the log whose files `driver` holds and whose batches `sequencer` makes durable,
    /// with signing key `signer`, recovering from any interrupted batch (the published
    /// checkpoint plus the sequencer's records are the truth; anything beyond is discarded).
    /// [`Log::open`] is `open_with(LocalDir::new(dir), DirJournal::new(dir), signer)`.
    pub fn open_with<D: Driver, Q: Sequencer>(
        driver: D,
        sequencer: Q,
        signer: NoteSigner,
    ) -> Result<Log, LogError> {
        let location = driver.location();
        let mut note = Vec::new();
        let found = driver
            .read_into(driver::CHECKPOINT, &mut note)
            .map_err(|e| LogError::io(format!("{location}: reading the checkpoint"), e))?;
        if !found {
            return Err(LogError::NotALog { dir: location });
        }
        let text = signer.verifier().open(&note, "checkpoint")?;
        let cp = Checkpoint::parse(text, &format!("{location}/checkpoint"))?;
        let started = writer::start(driver, sequencer, signer, &cp)?;
        Ok(Log {
            inner: Arc::new(Inner {
                queue: started.queue,
                size: started.acked,
                dir: PathBuf::from(location),
                origin: cp.origin,
                writer: Some(started.thread),
                witness: std::sync::OnceLock::new(),
                integrator: None,
            }),
        })
    }

    /// Creates an empty fleet log (see [`Log::open_fleet`]): the tables `parapet_fleet_*` in
    /// the database of `postgres_url` (refuses if they hold a log), a new Ed25519 key of origin
    /// `origin` in `key_file` (mode 0600, refuses to overwrite), and the size-0 checkpoint in the
    /// bucket of `s3` (refuses if the bucket holds one). S3 credentials come from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Returns the verifier key.
    pub fn init_fleet(
        postgres_url: &str,
        s3: &S3Config,
        origin: &str,
        key_file: &Path,
    ) -> Result<String, LogError> {
        if !valid_key_name(origin) {
            return Err(LogError::InvalidOrigin {
                origin: origin.to_string(),
            });
        }
        if key_file.exists() {
            return Err(LogError::AlreadyExists {
                path: key_file.display().to_string(),
            });
        }
        let mut driver = S3Driver::new(s3).map_err(|e| LogError::io("opening the bucket", e))?;
        let mut existing = Vec::new();
        let location = Driver::location(&driver);
        if Driver::read_into(&driver, driver::CHECKPOINT, &mut existing)
            .map_err(|e| LogError::io(format!("{location}: reading the checkpoint"), e))?
        {
            return Err(LogError::AlreadyExists {
                path: format!("{location}: {}", driver::CHECKPOINT),
            });
        }
        let signer = NoteSigner::generate(origin);
        write_key_file(key_file, &signer.to_key_text())?;
        fleet::create_tables(postgres_url, origin)?;
        Self::init_with(&mut driver, &signer)
    }

    /// Opens the fleet log sequenced in the PostgreSQL of `postgres_url` and published to the
    /// bucket of `s3`, signing with the key in `key_file` (the same for every process of the
    /// fleet). Any number of processes may hold it open and append at once: each batch is
    /// committed in PostgreSQL (`synchronous_commit = on`) before its tickets resolve, and
    /// indices are contiguous across the fleet. One process at a time, elected with an advisory
    /// lock and fenced by generation, integrates and publishes the tiles and checkpoint (within
    /// a second of the acknowledgement). While PostgreSQL is unreachable appends fail; they
    /// reconnect once it is back. [`Log::size`] is the highest index + 1 this process had
    /// acknowledged. See `docs/log.md`, "Fleet".
    pub fn open_fleet(postgres_url: &str, s3: &S3Config, key_file: &Path) -> Result<Log, LogError> {
        let signer = read_signer(key_file)?;
        let origin = fleet::read_origin(postgres_url)?;
        let driver = S3Driver::new(s3).map_err(|e| LogError::io("opening the bucket", e))?;
        let location = Driver::location(&driver);
        let mut note = Vec::new();
        let found = Driver::read_into(&driver, driver::CHECKPOINT, &mut note)
            .map_err(|e| LogError::io(format!("{location}: reading the checkpoint"), e))?;
        if !found {
            return Err(LogError::NotALog { dir: location });
        }
        signer
            .verifier()
            .open(&note, "checkpoint")
            .map_err(|_| LogError::BadSigningKey {
                path: key_file.display().to_string(),
                reason: format!(
                    "it does not sign the checkpoint of {location} (wrong key for this log, or \
                     the checkpoint was modified)"
                ),
            })?;
        if signer.name() != origin {
            return Err(LogError::BadSigningKey {
                path: key_file.display().to_string(),
                reason: format!("its name is not the log's origin {origin:?}"),
            });
        }
        let queue = Arc::new(LocalQueue::default());
        let size = Arc::new(AtomicU64::new(0));
        let writer = fleet::append::start(postgres_url, queue.clone(), size.clone())
            .map_err(|e| LogError::io("opening the fleet log", e))?;
        let integrator = fleet::publish::start(postgres_url, s3, signer, &origin)
            .map_err(|e| LogError::io("starting the fleet log's integrator", e))?;
        Ok(Log {
            inner: Arc::new(Inner {
                queue,
                size,
                dir: PathBuf::from(location),
                origin,
                writer: Some(writer),
                witness: std::sync::OnceLock::new(),
                integrator: Some(integrator),
            }),
        })
    }

    /// For a fleet log ([`Log::open_fleet`]): whether this process integrates (holds the
    /// integrator lock) now, and the size of the checkpoint it last published. `None` for a
    /// log of one writer.
    pub fn fleet_status(&self) -> Option<(bool, u64)> {
        self.inner.integrator.as_ref().map(|t| {
            let s = t.shared();
            (
                s.integrating.load(Ordering::Acquire),
                s.published.load(Ordering::Acquire),
            )
        })
    }

    /// Queues `entry`; the returned ticket resolves to its index once it is durable.
    /// Cheap and non-blocking: hashes the entry and pushes it on the writer's queue.
    pub fn submit(&self, entry: Vec<u8>) -> AppendTicket {
        self.submit_with(entry, false)
    }

    /// Queues `entry` without asking for a commit of its own: it is ordered like any other entry
    /// and becomes durable with the next commit that an ordinary [`Log::submit`] starts, or at
    /// the latest [`LAZY_COMMIT_DELAY`] after it was queued. For records nobody waits on (the
    /// gateway's outcome and session events), so they share the commit of the next decision
    /// instead of starting one that the next decision would have to wait behind. The ticket
    /// still resolves only once the entry is durable.
    pub fn submit_lazy(&self, entry: Vec<u8>) -> AppendTicket {
        self.submit_with(entry, true)
    }

    fn submit_with(&self, entry: Vec<u8>, lazy: bool) -> AppendTicket {
        if entry.len() > MAX_ENTRY_SIZE {
            return AppendTicket::failed(LogError::EntryTooLarge { len: entry.len() });
        }
        let leaf = leaf_hash(&entry);
        let (tx, rx) = oneshot::channel();
        match self.inner.queue.push(Item::One {
            entry,
            leaf,
            tx,
            lazy,
        }) {
            Ok(()) => AppendTicket {
                rx: Some(TicketRx::One(rx)),
                ready: None,
            },
            Err(_) => AppendTicket::failed(LogError::Closed),
        }
    }

    /// Queues the entries of `run` as one contiguous run: they get consecutive indices, in
    /// order, with no other entry between them, and are integrated in the same batch (so they
    /// become durable together). Otherwise like [`Log::submit`]: it asks for a prompt commit,
    /// shares it with whatever else is queued, and is ordered with every other submission. The
    /// ticket resolves to the index of the run's **last** entry once the whole run is durable
    /// (the first is that minus `run.len() - 1`). An empty run, or one of more than
    /// [`MAX_BATCH_ENTRIES`] entries, is refused.
    pub fn submit_run(&self, run: Batch) -> AppendTicket {
        if run.is_empty() || run.len() > MAX_BATCH_ENTRIES {
            return AppendTicket::failed(LogError::malformed(
                "run",
                format!(
                    "{} entries: a run holds 1 to {MAX_BATCH_ENTRIES} entries",
                    run.len()
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        match self.inner.queue.push(Item::Many { batch: run.0, tx }) {
            Ok(()) => AppendTicket {
                rx: Some(TicketRx::Last(rx)),
                ready: None,
            },
            Err(_) => AppendTicket::failed(LogError::Closed),
        }
    }

    /// Queues a batch of entries as one unit; the ticket resolves to their index range.
    pub fn submit_batch(&self, batch: Batch) -> BatchTicket {
        let (tx, rx) = oneshot::channel();
        if batch.len() > MAX_BATCH_ENTRIES {
            let _ = tx.send(Err(LogError::malformed(
                "batch",
                format!(
                    "{} entries is over the limit of {MAX_BATCH_ENTRIES}",
                    batch.len()
                ),
            )));
            return BatchTicket { rx };
        }
        if let Err(Item::Many { tx, .. }) = self.inner.queue.push(Item::Many { batch: batch.0, tx })
        {
            let _ = tx.send(Err(LogError::Closed));
        }
        BatchTicket { rx }
    }

    /// Appends `entry` durably and returns its index.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, LogError> {
        self.submit(entry).await
    }

    /// Number of entries durably in the log (acknowledged). The checkpoint in the log directory,
    /// which readers see, catches up within [`PUBLISH_INTERVAL`].
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts asking `policy`'s witnesses to cosign the log's published checkpoints (C2SP
    /// tlog-witness), on a thread of its own that lives as long as the log: at most once every
    /// [`witness_client::COSIGN_INTERVAL`] it sends the latest published checkpoint with a
    /// consistency proof to each witness, and publishes it with the cosignatures collected,
    /// once a quorum cosigned, in [`COSIGNED_CHECKPOINT`]. Appends never wait for it. When the
    /// last handle is dropped, a last round (at most [`witness_client::WITNESS_TIMEOUT`]) has
    /// the final checkpoint cosigned. Once per log; a second call fails.
    pub fn start_witnessing(&self, policy: WitnessPolicy) -> Result<(), LogError> {
        let client = witness_client::WitnessClient::start(&self.inner.dir, policy)?;
        self.inner
            .witness
            .set(client)
            .map_err(|_| LogError::malformed("witnesses", "the log is already being witnessed"))
    }

    /// What the witness client knows: the last cosigned size and its age, and each witness's
    /// state. `None` if [`Log::start_witnessing`] was not called.
    pub fn witness_status(&self) -> Option<WitnessStatus> {
        self.inner.witness.get().map(|c| c.status())
    }

    /// Flushes every queued entry and stops the background writer. Later submits fail with
    /// [`LogError::Closed`].
    pub async fn close(&self) -> Result<(), LogError> {
        let (tx, rx) = oneshot::channel();
        if !self.inner.queue.close(Item::Close { tx }) {
            return Ok(());
        }
        rx.await.map_err(|_| LogError::WriterGone)?
    }
}

/// For the fleet log sequenced at `postgres_url` (see [`Log::open_fleet`]): how many entries
/// it has sequenced (acknowledged), and the tree size its integrator last committed (and
/// publishes within a second). Reads only.
pub fn fleet_sizes(postgres_url: &str) -> Result<(u64, u64), LogError> {
    fleet::sizes(postgres_url)
}

/// How many acknowledged entries the journal of log directory `dir` holds beyond `published`
/// entries (the size of the checkpoint a reader sees): non-zero while a writer has not yet
/// published them (up to [`PUBLISH_INTERVAL`]), or after it stopped without doing so (a crash;
/// `parapet log recover` publishes them). Reads only.
pub fn unpublished_entries(dir: &Path, published: u64) -> Result<u64, LogError> {
    let records = sequencer::read_journal(dir)
        .map_err(|e| LogError::io(format!("{}: reading the journal", dir.display()), e))?;
    Ok(sequencer::journal_end(&records)?.map_or(0, |end| end.saturating_sub(published)))
}

/// A queued append: resolves to the entry's index (for [`Log::submit_run`], the index of the
/// run's last entry) once durable. `Send + 'static`.
#[derive(Debug)]
pub struct AppendTicket {
    rx: Option<TicketRx>,
    ready: Option<LogError>,
}

/// What an [`AppendTicket`] waits on.
#[derive(Debug)]
enum TicketRx {
    /// One entry: its index.
    One(oneshot::Receiver<Result<u64, LogError>>),
    /// A run: its index range, of which the ticket gives the last index.
    Last(oneshot::Receiver<Result<Range<u64>, LogError>>),
}

impl AppendTicket {
    fn failed(e: LogError) -> AppendTicket {
        AppendTicket {
            rx: None,
            ready: Some(e),
        }
    }
}

impl Future for AppendTicket {
    type Output = Result<u64, LogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.ready.take() {
            return Poll::Ready(Err(e));
        }
        match this.rx.as_mut() {
            None => Poll::Ready(Err(LogError::WriterGone)),
            Some(TicketRx::One(rx)) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(LogError::WriterGone)),
            },
            Some(TicketRx::Last(rx)) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(r))) => Poll::Ready(match r.end.checked_sub(1) {
                    Some(last) if !r.is_empty() => Ok(last),
                    _ => Err(LogError::WriterGone),
                }),
                Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(LogError::WriterGone)),
            },
        }
    }
}

/// Entries submitted together with [`Log::submit_batch`] (bulk loading) or [`Log::submit_run`]
/// (a contiguous run). Leaf hashes are computed as entries are pushed, i.e. on the caller's
/// thread.
#[derive(Debug, Default)]
pub struct Batch(BatchData);

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds an entry; refuses entries over 65535 bytes.
    pub fn push(&mut self, entry: &[u8]) -> Result<(), LogError> {
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(LogError::EntryTooLarge { len: entry.len() });
        }
        self.0.data.extend_from_slice(entry);
        self.0.ends.push(self.0.data.len());
        self.0.leaves.push(leaf_hash(entry));
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.ends.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.0.ends.is_empty()
    }

    /// Total entry bytes.
    pub fn bytes(&self) -> usize {
        self.0.data.len()
    }
}

/// A queued [`Batch`]: resolves to the batch's index range once durable.
#[derive(Debug)]
pub struct BatchTicket {
    rx: oneshot::Receiver<Result<Range<u64>, LogError>>,
}

impl BatchTicket {
    /// Blocks the current thread until the batch is durable. Do not call from async code
    /// (await the ticket instead).
    pub fn wait(self) -> Result<Range<u64>, LogError> {
        self.rx.blocking_recv().map_err(|_| LogError::WriterGone)?
    }
}

impl Future for BatchTicket {
    type Output = Result<Range<u64>, LogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.get_mut().rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(LogError::WriterGone)),
        }
    }
}

/// Leaf hash of an entry (re-exported for verifiers and tests).
pub fn entry_leaf_hash(entry: &[u8]) -> Hash {
    leaf_hash(entry)
}

/// Reads a signing key file written by [`Log::init`].
pub fn read_signing_key(key_file: &Path) -> Result<NoteSigner, LogError> {
    read_signer(key_file)
}
