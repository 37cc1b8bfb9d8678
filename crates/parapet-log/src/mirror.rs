//! A verified local mirror of a published log: follows a log read through any [`TileSource`]
//! (an S3 bucket through [`crate::driver::S3Driver`], a log served over HTTP through
//! [`crate::http_source::HttpSource`], another directory) into a local directory laid out
//! exactly as a directory log's published files (`checkpoint`, `tile/…`, `tile/entries/…`), so
//! that [`crate::LogReader`] and everything else that reads a log directory works on it
//! unchanged.
//!
//! Nothing is taken on trust. A new checkpoint is accepted only if it carries a valid signature
//! by the log's verifier key and extends the tree already mirrored: the mirror fetches the entry
//! bundles it adds, hashes the entries onto its own verified tree (the integrator's code), and
//! requires the result to have the checkpoint's root; it then fetches every hash tile and bundle
//! it computed and requires the published copy to be byte for byte the same, and checks an RFC
//! 9162 consistency proof from the previous checkpoint, read from the tiles. Only then are the
//! files written locally and the checkpoint last (atomically, by a rename). A mismatch of any
//! kind (a bad signature, a truncated or forked tree, a modified entry, bundle or tile) is an
//! **alarm**: logged as an error, and the mirror stops advancing for good (until restarted), so
//! that a rewritten log is never silently accepted. A source that cannot be read, or a tile not
//! yet (or no longer) there, is only retried at the next poll.

use crate::checkpoint::Checkpoint;
use crate::driver::{Driver, LocalDir, CHECKPOINT};
use crate::error::LogError;
use crate::hash::leaf_hash;
use crate::integrator::{Integrator, TreeState};
use crate::note::NoteVerifier;
use crate::proof::{consistency_proof, verify_consistency};
use crate::tile::{bundle_path, for_each_bundle_entry, tile_width, BundleError, TILE_WIDTH};
use crate::tiles::{TileNodes, TileSource};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often a running mirror reads the published checkpoint.
pub const MIRROR_POLL: Duration = Duration::from_millis(200);

/// Entry bundles fetched before the full tiles they complete are checked and written (bounds
/// the memory of a long catch-up).
const BUNDLES_PER_ROUND: u64 = 64;

/// Why a mirror did not advance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    /// The published log contradicts what was verified, or does not verify: the mirror stops
    /// advancing for good.
    #[error("ALARM: {0}")]
    Alarm(String),
    /// The source could not be read (or a tile was not there yet): retried at the next poll.
    #[error("{0}")]
    Unavailable(String),
}

impl From<LogError> for MirrorError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Tampered(m) | LogError::BadProof(m) => MirrorError::Alarm(m),
            e @ (LogError::Malformed { .. } | LogError::BadVerifierKey { .. }) => {
                MirrorError::Alarm(e.to_string())
            }
            e => MirrorError::Unavailable(e.to_string()),
        }
    }
}

/// A mirror of the log published at `source` in a local directory (see the module docs). Call
/// [`Mirror::step`] to follow the source once, or [`Mirror::start`] to follow it on a thread.
pub struct Mirror<S: TileSource> {
    source: S,
    dir: PathBuf,
    local: LocalDir,
    vkey: NoteVerifier,
    /// The verified tree, as published locally.
    tree: TreeState,
    /// The local checkpoint note (empty before the first).
    note: Vec<u8>,
    alarm: Option<String>,
    /// An older, consistent checkpoint was seen at the source and reported (once until the
    /// source moves on).
    stale_seen: bool,
}

impl<S: TileSource> std::fmt::Debug for Mirror<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("source", &self.source.location())
            .field("dir", &self.dir)
            .field("size", &self.tree.size())
            .finish_non_exhaustive()
    }
}

/// What a driver was asked to write (the integrator's output, checked before it goes to disk).
#[derive(Default)]
struct Collect(Vec<(String, Vec<u8>)>);

impl Driver for Collect {
    fn location(&self) -> String {
        "the mirror's computed tiles".into()
    }
    fn read_into(&self, _: &str, _: &mut Vec<u8>) -> io::Result<bool> {
        Ok(false)
    }
    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.0.push((path.to_string(), data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn stage_checkpoint(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn publish_checkpoint(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: &str) -> io::Result<()> {
        Ok(())
    }
}

impl<S: TileSource> Mirror<S> {
    /// A mirror of the log at `source`, signed by `vkey`, in `dir` (created if missing). If
    /// `dir` holds a checkpoint already (an earlier run's), it must be signed by `vkey` and
    /// its tiles must have its root; the mirror goes on from it.
    pub fn open(source: S, dir: &Path, vkey: NoteVerifier) -> Result<Mirror<S>, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LogError::io(
                format!("creating the mirror directory {}", dir.display()),
                e,
            )
        })?;
        let mut local = LocalDir::new(dir);
        let _ = local.remove_temp_files("");
        let mut note = Vec::new();
        let found = Driver::read_into(&local, CHECKPOINT, &mut note)
            .map_err(|e| LogError::io(format!("{}: reading the checkpoint", dir.display()), e))?;
        let tree = if found {
            let what = format!("{}/checkpoint", dir.display());
            let text = vkey.open(&note, &what).map_err(|e| {
                LogError::Tampered(format!(
                    "{e} (the mirror directory {} holds a checkpoint that is not this log's; \
                     move it away to mirror the log afresh)",
                    dir.display()
                ))
            })?;
            let cp = Checkpoint::parse(text, &what)?;
            TreeState::load(&local, &cp)?
        } else {
            note.clear();
            TreeState::default()
        };
        Ok(Mirror {
            source,
            dir: dir.to_path_buf(),
            local,
            vkey,
            tree,
            note,
            alarm: None,
            stale_seen: false,
        })
    }

    /// Entries mirrored (the size of the local checkpoint; 0 before the first).
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The local directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The alarm that stopped the mirror, if any.
    pub fn alarm(&self) -> Option<&str> {
        self.alarm.as_deref()
    }

    /// Reads the published checkpoint once and, if it is new, checks and mirrors what it adds.
    /// `Ok(Some(size))` when the local checkpoint advanced, `Ok(None)` when nothing changed.
    /// After an alarm, every later call returns it again without reading anything.
    pub fn step(&mut self) -> Result<Option<u64>, MirrorError> {
        if let Some(a) = &self.alarm {
            return Err(MirrorError::Alarm(a.clone()));
        }
        match self.try_step() {
            Err(MirrorError::Alarm(m)) => {
                let m = format!(
                    "{m} (mirroring {} into {}; the mirror stops at size {})",
                    self.source.location(),
                    self.dir.display(),
                    self.tree.size()
                );
                self.alarm = Some(m.clone());
                Err(MirrorError::Alarm(m))
            }
            r => r,
        }
    }

    fn try_step(&mut self) -> Result<Option<u64>, MirrorError> {
        let loc = self.source.location();
        let mut note = Vec::new();
        let found = self
            .source
            .read_into(CHECKPOINT, &mut note)
            .map_err(|e| MirrorError::Unavailable(format!("{loc}: reading the checkpoint: {e}")))?;
        if !found {
            return Err(MirrorError::Unavailable(format!(
                "{loc} has no checkpoint (not a log, or not yet created)"
            )));
        }
        if note == self.note {
            return Ok(None);
        }
        let what = format!("{loc}/checkpoint");
        let text = self.vkey.open(&note, &what)?;
        let cp = Checkpoint::parse(text, &what)?;
        let (n0, r0) = (self.tree.size(), self.tree.root());
        let n1 = cp.size;
        if n1 < n0 {
            // An older checkpoint of this same log (its root is the verified tree's at that
            // size): a stale publication, e.g. the PUT of an integrator that was taken over
            // landing after its successor's. Nothing new to mirror; the mirror keeps its newer
            // tree and waits for the next checkpoint. Any other smaller tree is an alarm.
            let mut nodes = TileNodes::new(&self.local, n0);
            if crate::proof::root_hash(&mut nodes, n1)? == cp.root {
                if !self.stale_seen {
                    self.stale_seen = true;
                    tracing::warn!(
                        source = %loc,
                        "the source's checkpoint is older than this mirror's (size {n1}, this mirror verified {n0}) but consistent with it: a stale publication; waiting for a newer one"
                    );
                }
                return Ok(None);
            }
            return Err(MirrorError::Alarm(format!(
                "{what} has size {n1}, but this mirror verified size {n0}: the log was truncated \
                 or replaced"
            )));
        }
        self.stale_seen = false;
        if n1 == n0 {
            if cp.root != r0 {
                return Err(MirrorError::Alarm(format!(
                    "{what} has size {n1} with another root hash than this mirror verified at \
                     that size: the log was forked or rewritten"
                )));
            }
            // The same tree (e.g. the first, empty one): its note is published here as it is.
            self.publish(&note)?;
            self.note = note;
            return Ok(None);
        }
        let mut tree = self.tree.clone();
        let mut fetched: HashMap<String, Vec<u8>> = HashMap::new();
        let mut out = Collect::default();
        let first = n0 / TILE_WIDTH;
        let last = (n1 - 1) / TILE_WIDTH;
        let mut buf = Vec::new();
        for i in first..=last {
            let w = tile_width(0, i, n1);
            let path = self.fetch(&bundle_path(i, w), &mut buf)?;
            let skip = if i == first { n0 % TILE_WIDTH } else { 0 } as usize;
            if skip > 0 {
                let held = tree.partial_bundle();
                if buf.len() < held.len() || buf[..held.len()] != held[..] {
                    return Err(MirrorError::Alarm(format!(
                        "{loc}/{path}: this entry bundle holds other entries than those verified \
                         before (an old entry was modified: the log was rewritten)"
                    )));
                }
            }
            let mut failed = None;
            let parsed = for_each_bundle_entry(&buf, w as usize, |k, e| {
                if k >= skip {
                    if let Err(err) = tree.append(e, leaf_hash(e)) {
                        failed = Some(err);
                    }
                }
                Ok::<(), ()>(())
            });
            match parsed {
                Ok(_) => {}
                Err(BundleError::TrailingBytes(_)) if path != bundle_path(i, w) => {}
                Err(e) => {
                    return Err(MirrorError::Alarm(format!(
                        "{loc}/{path}: malformed entry bundle: {e}"
                    )))
                }
            }
            if let Some(e) = failed {
                return Err(MirrorError::Unavailable(format!(
                    "integrating entries: {e}"
                )));
            }
            fetched.insert(bundle_path(i, w), std::mem::take(&mut buf));
            if (i - first + 1) % BUNDLES_PER_ROUND == 0 {
                tree.write_full(&mut out)
                    .map_err(|e| MirrorError::Unavailable(e.to_string()))?;
                self.check_and_write(&mut out, &mut fetched)?;
            }
        }
        if tree.size() != n1 || tree.root() != cp.root {
            return Err(MirrorError::Alarm(format!(
                "the entries {n0}..{n1} read from {loc} do not hash to the root of {what} (size \
                 {n1}): an entry bundle was modified, or the log was rewritten"
            )));
        }
        tree.write_partials(&mut out)
            .map_err(|e| MirrorError::Unavailable(e.to_string()))?;
        self.check_and_write(&mut out, &mut fetched)?;
        if n0 > 0 {
            let mut nodes = TileNodes::new(&self.local, n1);
            let proof = consistency_proof(&mut nodes, n0, n1)?;
            verify_consistency(n0, n1, &r0, &cp.root, &proof).map_err(|e| {
                MirrorError::Alarm(format!(
                    "{what} (size {n1}) is not consistent with the checkpoint of size {n0} \
                     verified before: {e}"
                ))
            })?;
        }
        self.publish(&note)?;
        for p in tree.take_superseded() {
            self.local.remove_later(&p);
        }
        self.tree = tree;
        self.note = note;
        Ok(Some(n1))
    }

    /// Makes the tiles written durable, then publishes `note` as the local checkpoint.
    fn publish(&mut self, note: &[u8]) -> Result<(), MirrorError> {
        let dir = self.dir.display().to_string();
        let io = |e: io::Error| MirrorError::Unavailable(format!("{dir}: writing the mirror: {e}"));
        self.local.sync().map_err(io)?;
        self.local.stage_checkpoint(note).map_err(io)?;
        self.local.sync().map_err(io)?;
        self.local.publish_checkpoint().map_err(io)
    }

    /// Reads `path` from the source into `buf`; a partial tile that is gone (the log grew) is
    /// read from the full tile. Returns the path read. Missing: retried later.
    fn fetch(&self, path: &str, buf: &mut Vec<u8>) -> Result<String, MirrorError> {
        let loc = self.source.location();
        let read = |p: &str, buf: &mut Vec<u8>| {
            self.source
                .read_into(p, buf)
                .map_err(|e| MirrorError::Unavailable(format!("{loc}: reading {p}: {e}")))
        };
        if read(path, buf)? {
            return Ok(path.to_string());
        }
        if let Some((full, _)) = path.split_once(".p/") {
            if read(full, buf)? {
                return Ok(full.to_string());
            }
        }
        Err(MirrorError::Unavailable(format!(
            "{loc}/{path} is missing (not yet published, or replaced since): trying again"
        )))
    }

    /// Checks each computed file against the published one (bundles against what was fetched,
    /// tiles fetched now) and writes it locally.
    fn check_and_write(
        &mut self,
        out: &mut Collect,
        fetched: &mut HashMap<String, Vec<u8>>,
    ) -> Result<(), MirrorError> {
        let loc = self.source.location();
        let mut buf = Vec::new();
        for (path, data) in std::mem::take(&mut out.0) {
            let remote = match fetched.remove(&path) {
                Some(b) => b,
                None => {
                    self.fetch(&path, &mut buf)?;
                    std::mem::take(&mut buf)
                }
            };
            // A partial read from the full tile or bundle: its prefix.
            let same = if path.contains(".p/") {
                remote.len() >= data.len() && remote[..data.len()] == data[..]
            } else {
                remote == data
            };
            if !same {
                let kind = if path.starts_with("tile/entries/") {
                    "entry bundle holds other entries than those verified before (an old entry \
                     was modified)"
                } else {
                    "hash tile does not match the one computed from the verified entries (the \
                     tile was modified)"
                };
                return Err(MirrorError::Alarm(format!("{loc}/{path}: this {kind}")));
            }
            self.local.write(&path, &data).map_err(|e| {
                MirrorError::Unavailable(format!("{}: writing {path}: {e}", self.dir.display()))
            })?;
        }
        Ok(())
    }
}

/// What a running mirror ([`Mirror::start`]) has done.
#[derive(Debug, Clone, Default)]
pub struct MirrorStatus {
    /// Entries mirrored and verified.
    pub size: u64,
    /// When the local checkpoint last advanced, or was found current.
    pub checked: Option<SystemTime>,
    /// The alarm that stopped it, if any.
    pub alarm: Option<String>,
    /// The last failure to read the source (cleared once a read succeeds).
    pub last_error: Option<String>,
}

/// A mirror following its source on a thread of its own ([`Mirror::start`]); dropping it stops
/// the thread.
pub struct MirrorHandle {
    status: Arc<(Mutex<MirrorStatus>, parking_lot::Condvar)>,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl<S: TileSource + Send + 'static> Mirror<S> {
    /// Follows the source on a thread: a [`Mirror::step`] every `poll` ([`MIRROR_POLL`]), or
    /// at once when [`MirrorHandle::wake`] is called. Alarms are logged (`tracing` error) once;
    /// read failures as warnings when they change.
    pub fn start(mut self, poll: Duration) -> Result<MirrorHandle, LogError> {
        let status = Arc::new((
            Mutex::new(MirrorStatus {
                size: self.size(),
                ..MirrorStatus::default()
            }),
            parking_lot::Condvar::new(),
        ));
        let (tx, rx) = mpsc::channel::<()>();
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("parapet-mirror".into())
            .spawn(move || loop {
                let r = self.step();
                {
                    let mut s = shared.0.lock();
                    match r {
                        Ok(_) => {
                            s.size = self.size();
                            s.checked = Some(SystemTime::now());
                            if s.last_error.take().is_some() {
                                tracing::info!(source = %self.source.location(), "the mirror reads its source again");
                            }
                        }
                        Err(MirrorError::Alarm(m)) => {
                            if s.alarm.is_none() {
                                tracing::error!(dir = %self.dir.display(), "log mirror ALARM: {m}");
                                s.alarm = Some(m);
                            }
                        }
                        Err(MirrorError::Unavailable(m)) => {
                            if s.last_error.as_deref() != Some(m.as_str()) {
                                tracing::warn!(dir = %self.dir.display(), "log mirror: {m}");
                            }
                            s.last_error = Some(m);
                        }
                    }
                }
                shared.1.notify_all();
                match rx.recv_timeout(poll) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| LogError::io("starting the log mirror's thread", e))?;
        Ok(MirrorHandle {
            status,
            wake: Some(tx),
            thread: Some(thread),
        })
    }
}

impl MirrorHandle {
    /// What the mirror has done so far.
    pub fn status(&self) -> MirrorStatus {
        self.status.0.lock().clone()
    }

    /// Reads the source now rather than at the next poll.
    pub fn wake(&self) {
        if let Some(tx) = &self.wake {
            let _ = tx.send(());
        }
    }

    /// Waits until the mirror has checked its source at least once since this call (advancing
    /// or finding it current), raised an alarm, or `timeout` passed; returns the status.
    pub fn wait_checked(&self, timeout: Duration) -> MirrorStatus {
        let since = SystemTime::now();
        self.wake();
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.status.0.lock();
        while s.alarm.is_none() && s.checked.is_none_or(|c| c < since) {
            if self.status.1.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.clone()
    }

    /// Waits until at least `size` entries are mirrored, an alarm is raised, or `timeout`
    /// passed; returns the status.
    pub fn wait_for_size(&self, size: u64, timeout: Duration) -> MirrorStatus {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.status.0.lock();
        while s.alarm.is_none() && s.size < size {
            if self.status.1.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.clone()
    }
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
