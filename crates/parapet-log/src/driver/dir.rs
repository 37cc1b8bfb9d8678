//! [`LocalDir`]: the storage driver for a local directory laid out exactly as C2SP tlog-tiles
//! (so any static file server can serve it). I/O only: files are written under a temporary or
//! pooled name and renamed into place (a full tile, to a path no checkpoint covers yet, may be
//! created in place), synced together with parallel fsyncs, and the checkpoint is published by
//! a rename.

use super::pool::{janitor, run_chore, run_tag, Chore, Pool, POOL_DIR};
use super::{Driver, CHECKPOINT, TMP_PREFIX};
use crate::error::LogError;
use crate::sequencer::PendingSync;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// The storage driver of a log in a local directory: its files (its sequencer, the journal, is
/// [`crate::sequencer::DirJournal`]).
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Files written since the last sync, by slot: a partial tile's slot is its `.p` directory,
    /// so only the widest partial written is synced (narrower ones are superseded).
    unsynced: BTreeMap<PathBuf, PathBuf>,
    dirty_dirs: BTreeSet<PathBuf>,
    known_dirs: BTreeSet<PathBuf>,
    janitor: Option<(std::sync::mpsc::Sender<Chore>, std::thread::JoinHandle<()>)>,
    /// Pre-created empty files and directories (see [`Pool`]), started on the first write.
    pools: Option<(Pool, Pool)>,
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        // Finish pending removals before the log counts as closed.
        if let Some((tx, handle)) = self.janitor.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl LocalDir {
    /// A driver rooted at `root` (which must exist).
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_path_buf(),
            unsynced: BTreeMap::new(),
            dirty_dirs: BTreeSet::new(),
            known_dirs: BTreeSet::new(),
            janitor: None,
            pools: None,
        }
    }

    /// Drops `dir` and the directories under it from `known_dirs` (they are being removed).
    /// Paths under `dir` sort right after it, so this looks at those only.
    fn forget_dirs_under(&mut self, dir: &Path) {
        let gone: Vec<PathBuf> = self
            .known_dirs
            .range(dir.to_path_buf()..)
            .take_while(|d| d.starts_with(dir))
            .cloned()
            .collect();
        for d in gone {
            self.known_dirs.remove(&d);
        }
    }

    /// What the next sync covers: the files written and directories changed since the last one.
    fn to_sync(&self) -> impl Iterator<Item = &PathBuf> {
        self.unsynced.values().chain(self.dirty_dirs.iter())
    }

    /// Where the next checkpoint is staged before it is renamed over `checkpoint`.
    fn staged_checkpoint(&self) -> PathBuf {
        self.root.join(format!("{TMP_PREFIX}{CHECKPOINT}"))
    }

    fn pools(&mut self) -> &(Pool, Pool) {
        let root = &self.root;
        self.pools.get_or_insert_with(|| {
            (
                Pool::start(root.join(POOL_DIR).join("f"), false),
                Pool::start(root.join(POOL_DIR).join("d"), true),
            )
        })
    }

    /// Hands work to the background janitor thread (started on first use); does it here if the
    /// thread cannot run.
    fn chore(&mut self, chore: Chore) {
        if self.janitor.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Chore>();
            let spawned = std::thread::Builder::new()
                .name("parapet-log-janitor".into())
                .spawn(move || janitor(rx));
            if let Ok(handle) = spawned {
                self.janitor = Some((tx, handle));
            }
        }
        let unsent = match &self.janitor {
            Some((tx, _)) => tx.send(chore).err().map(|e| e.0),
            None => Some(chore),
        };
        if let Some(c) = unsent {
            run_chore(c);
        }
    }

    /// Renames the staged checkpoint over the published one. The old file stays open until the
    /// janitor closes it, so freeing its blocks happens off the append path.
    ///
    /// With a pool, the old checkpoint's inode is kept instead (hard-linked into the pool's
    /// quarantine directory first) and reused after `CHECKPOINT_QUARANTINE`: one file per batch
    /// is neither created nor deleted. A reader that opened the old checkpoint would have to wait
    /// that long before reading it to see it change.
    fn rename_checkpoint(&mut self) -> io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.staged_checkpoint();
        let cp = self.root.join(CHECKPOINT);
        let held = self.pools.as_ref().and_then(|(f, _)| {
            let q = f.recycler.dir.with_file_name("q").join(format!(
                "{}-{}",
                run_tag(),
                NEXT.fetch_add(1, AtomicOrdering::Relaxed)
            ));
            fs::hard_link(&cp, &q)
                .ok()
                .map(|()| (q, f.recycler.clone()))
        });
        let old = match held {
            Some(_) => None,
            None => File::open(&cp).ok(),
        };
        fs::rename(&tmp, &cp)?;
        match (held, old) {
            (Some((q, r)), _) => self.chore(Chore::Hold(q, r)),
            (None, Some(f)) => self.chore(Chore::Close(f)),
            (None, None) => {}
        }
        self.unsynced.remove(&tmp);
        Ok(())
    }

    /// Creates `dir` and any missing parents, remembering which parents need an fsync.
    fn ensure_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.known_dirs.contains(dir) {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir.to_path_buf();
        while !cur.is_dir() {
            missing.push(cur.clone());
            match cur.parent() {
                Some(p) => cur = p.to_path_buf(),
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            let pooled = self.pools().1.take();
            let moved = pooled.is_some_and(|p| fs::rename(p, &d).is_ok());
            match if moved { Ok(()) } else { fs::create_dir(&d) } {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(p) = d.parent() {
                self.dirty_dirs.insert(p.to_path_buf());
            }
        }
        if self.known_dirs.len() > 4096 {
            self.known_dirs.clear();
        }
        self.known_dirs.insert(dir.to_path_buf());
        Ok(())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Most fsyncs a sync runs at once.
const SYNC_THREADS: usize = 32;

/// The threads that run parallel fsyncs: started on first use and kept for the process, shared by
/// every log in it. Spawning and joining up to 32 threads per sync cost the writer thread a few
/// per cent of a bulk load. rayon-core's pool is used for its scoped jobs only (fsync blocks, so
/// the pool has more threads than cores).
fn sync_threads() -> Option<&'static rayon_core::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon_core::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(SYNC_THREADS)
            .thread_name(|i| format!("parapet-log-sync-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Opens and fsyncs all `paths` (regular files and directories) concurrently; a path removed
/// since it was written (a superseded partial tile) has nothing to sync. On journaling file
/// systems concurrent fsyncs share journal commits, so a batch costs about one disk flush instead
/// of one per file; the opening (a path lookup each) is spread over the same threads. std has no
/// parallel fsync and no crate offers one.
fn sync_all_parallel(paths: &[&Path]) -> io::Result<()> {
    let sync_one = |p: &Path| match File::open(p) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| sync_one(p));
    }
    let jobs = paths.len().min(SYNC_THREADS);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_err: parking_lot::Mutex<Option<io::Error>> = parking_lot::Mutex::new(None);
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(p) = paths.get(i) else { break };
        if let Err(e) = sync_one(p) {
            first_err.lock().get_or_insert(e);
        }
    };
    match sync_threads() {
        Some(pool) => pool.scope(|s| {
            for _ in 0..jobs {
                s.spawn(|_| work());
            }
        }),
        // No pool (threads could not be started): scoped threads for this sync only.
        None => std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(work);
            }
        }),
    }
    match first_err.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Driver for LocalDir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        match File::open(self.root.join(path)) {
            Ok(mut f) => {
                f.read_to_end(buf)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let full = self.root.join(path);
        let (dir, name) = match (full.parent(), full.file_name()) {
            (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
            _ => return Err(io::Error::other(format!("bad log path {path}"))),
        };
        self.ensure_dir(&dir)?;
        // Write to a pre-created file (or a temporary name) and rename over the target: a reader
        // never sees a half-written file, and a file left by an interrupted batch is replaced
        // whole.
        let partial = dir.extension().is_some_and(|e| e == "p");
        let pooled = self.pools().0.take();
        // A full tile is written once, to a path no published checkpoint covers yet (readers
        // follow the checkpoint), so with no pooled file at hand it is created in place: one
        // directory operation instead of a create and a rename. A file already there (left by
        // an interrupted batch) is replaced whole below.
        let in_place = pooled.is_none() && !partial && create_new_with(&full, data)?;
        if !in_place {
            let tmp = fill(pooled, &dir.join(format!("{TMP_PREFIX}{name}")), data)?;
            fs::rename(&tmp, &full)?;
        }
        let slot = if partial { dir.clone() } else { full.clone() };
        self.unsynced.insert(slot, full);
        self.dirty_dirs.insert(dir);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        // On failure everything stays listed, so a later sync retries it.
        let paths: Vec<&Path> = self.to_sync().map(PathBuf::as_path).collect();
        sync_all_parallel(&paths)?;
        self.unsynced.clear();
        self.dirty_dirs.clear();
        Ok(())
    }

    fn stage_checkpoint(&mut self, data: &[u8]) -> io::Result<()> {
        let tmp = self.staged_checkpoint();
        // Only a pool already started by tile writes: `Log::init`, which writes nothing but the
        // first checkpoint, should not start one.
        let pooled = self.pools.as_ref().and_then(|(f, _)| f.take());
        let written = fill(pooled, &tmp, data)?;
        if written != tmp {
            fs::rename(&written, &tmp)?;
        }
        self.unsynced.insert(tmp.clone(), tmp);
        Ok(())
    }

    fn publish_checkpoint(&mut self) -> io::Result<()> {
        self.rename_checkpoint()?;
        sync_dir(&self.root)
    }

    fn sync_and_publish_later(&mut self) -> io::Result<Option<PendingSync>> {
        let paths: Vec<PathBuf> = self.to_sync().cloned().collect();
        self.unsynced.clear();
        self.dirty_dirs.clear();
        let tmp = self.staged_checkpoint();
        let cp = self.root.join(CHECKPOINT);
        let root = self.root.clone();
        // The old checkpoint's inode is freed by the rename (no quarantine for reuse, which
        // needs the pool, see `rename_checkpoint`): one file per bulk batch.
        Ok(Some(PendingSync::standalone(0, move || {
            let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            sync_all_parallel(&refs)?;
            fs::rename(&tmp, &cp)?;
            sync_dir(&root)
        })))
    }

    fn publish_checkpoint_unsynced(&mut self) -> io::Result<()> {
        self.rename_checkpoint()?;
        let cp = self.root.join(CHECKPOINT);
        self.unsynced.insert(cp.clone(), cp);
        self.dirty_dirs.insert(self.root.clone());
        Ok(())
    }

    fn remove(&mut self, path: &str) -> io::Result<()> {
        let full = self.root.join(path);
        self.forget_dirs_under(&full);
        let r = match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&full),
            Ok(_) => fs::remove_file(&full),
            Err(e) => Err(e),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn remove_later(&mut self, path: &str) {
        // Deleting is slow on file systems mounted with `discard`; keep it off the append path.
        let full = self.root.join(path);
        self.forget_dirs_under(&full);
        let recyclers = self
            .pools
            .as_ref()
            .map(|(f, d)| (f.recycler.clone(), d.recycler.clone()));
        match recyclers {
            Some((f, d)) if full.extension().is_some_and(|e| e == "p") => {
                self.chore(Chore::Recycle(full, f, d))
            }
            _ => self.chore(Chore::Remove(full)),
        }
    }

    fn remove_temp_files(&mut self, dir: &str) -> io::Result<()> {
        let d = self.root.join(dir);
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// Reads the checkpoint file of the log in `dir`.
pub fn read_checkpoint_file(dir: &Path) -> Result<Vec<u8>, LogError> {
    let p = dir.join(CHECKPOINT);
    match fs::read(&p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LogError::NotALog {
            dir: dir.display().to_string(),
        }),
        Err(e) => Err(LogError::io(format!("reading {}", p.display()), e)),
    }
}

/// Writes `data` into the pool file `pooled` (see `write_existing`) or, without one or if it
/// cannot be used, into a new file `fallback`; returns the path that holds the data (not yet
/// synced). A pooled file saves creating an inode (see `Pool`).
fn fill(pooled: Option<PathBuf>, fallback: &Path, data: &[u8]) -> io::Result<PathBuf> {
    if let Some(p) = pooled {
        if write_existing(&p, data).is_ok() {
            return Ok(p);
        }
    }
    create_with(fallback, data)?;
    Ok(fallback.to_path_buf())
}

/// Creates `path`, which must not exist, and writes `data` to it, not yet synced. Returns false
/// if `path` exists already; removes what it created if the write fails.
fn create_new_with(path: &Path, data: &[u8]) -> io::Result<bool> {
    let mut f = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Err(e) = f.write_all(data) {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

/// Creates (or truncates) `path` and writes `data` to it, not yet synced.
fn create_with(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)
}

/// Writes `data` over the existing, normally empty pool file `path` (no `O_CREAT`, so opening
/// does not take its directory's lock; no `O_TRUNC`, see `Recycler::give`), cutting any longer
/// old content.
fn write_existing(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut f = OpenOptions::new().write(true).open(path)?;
    // Never write into a file that has another name (see `empty_sole_link`).
    if f.metadata()?.nlink() != 1 {
        return Err(io::Error::other("pool file has another name"));
    }
    f.write_all(data)?;
    if f.metadata()?.len() != data.len() as u64 {
        f.set_len(data.len() as u64)?;
    }
    Ok(())
}
