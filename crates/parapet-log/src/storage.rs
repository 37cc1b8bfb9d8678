//! Storage drivers. The tree code talks to a [`Storage`]: it stages tile and bundle files,
//! makes them durable in one `sync`, then publishes the checkpoint atomically. The first driver,
//! [`LocalDir`], is a directory laid out exactly as C2SP tlog-tiles (so any static file server
//! can serve it). Other drivers (PostgreSQL, S3) implement the same trait.

use crate::error::LogError;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Name of the checkpoint file at the root of a log.
pub const CHECKPOINT: &str = "checkpoint";
const TMP_PREFIX: &str = ".tmp-";

/// Where a log's files live. Paths are tlog-tiles relative paths (`tile/0/000.p/5`).
pub trait Storage: Send + 'static {
    /// Human-readable location (for error messages).
    fn location(&self) -> String;
    /// Reads a whole file into `buf` (cleared first); `Ok(false)` if it does not exist.
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool>;
    /// Writes a whole file. It replaces any previous content atomically but need not be durable
    /// before [`Storage::sync`].
    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Makes every file written since the last `sync` durable (data and directory entries).
    fn sync(&mut self) -> io::Result<()>;
    /// Stages the next checkpoint: written now, made durable by the next [`Storage::sync`]
    /// (together with the tiles), visible only after [`Storage::publish_checkpoint`].
    fn stage_checkpoint(&mut self, data: &[u8]) -> io::Result<()>;
    /// Atomically replaces the checkpoint with the staged one, durably. Called after `sync`.
    fn publish_checkpoint(&mut self) -> io::Result<()>;
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

/// A log in a local directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    unsynced: Vec<File>,
    dirty_dirs: BTreeSet<PathBuf>,
    known_dirs: BTreeSet<PathBuf>,
    janitor: Option<(
        std::sync::mpsc::Sender<PathBuf>,
        std::thread::JoinHandle<()>,
    )>,
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
            unsynced: Vec::new(),
            dirty_dirs: BTreeSet::new(),
            known_dirs: BTreeSet::new(),
            janitor: None,
        }
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
            match fs::create_dir(&d) {
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs all `files` (regular files and directories) concurrently. On journaling file systems
/// concurrent fsyncs share journal commits, so a batch costs about one disk flush instead of one
/// per file. std has no parallel fsync and no crate fits this small need, hence scoped threads.
fn sync_all_parallel(files: &[File]) -> io::Result<()> {
    if files.len() <= 1 {
        for f in files {
            f.sync_all()?;
        }
        return Ok(());
    }
    let threads = files.len().min(32);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_err: parking_lot::Mutex<Option<io::Error>> = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                if let Err(e) = f.sync_all() {
                    first_err.lock().get_or_insert(e);
                }
            });
        }
    });
    match first_err.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Storage for LocalDir {
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
        // Write to a temporary name and rename over the target: a reader never sees a half-written
        // file, and a file left by an interrupted batch is replaced whole.
        let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
        let f = create_with(&tmp, data)?;
        fs::rename(&tmp, &full)?;
        self.unsynced.push(f);
        self.dirty_dirs.insert(dir);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut files = std::mem::take(&mut self.unsynced);
        for d in std::mem::take(&mut self.dirty_dirs) {
            files.push(File::open(&d)?);
        }
        sync_all_parallel(&files)
    }

    fn stage_checkpoint(&mut self, data: &[u8]) -> io::Result<()> {
        let tmp = self.root.join(format!("{TMP_PREFIX}{CHECKPOINT}"));
        let f = create_with(&tmp, data)?;
        self.unsynced.push(f);
        Ok(())
    }

    fn publish_checkpoint(&mut self) -> io::Result<()> {
        let tmp = self.root.join(format!("{TMP_PREFIX}{CHECKPOINT}"));
        fs::rename(&tmp, self.root.join(CHECKPOINT))?;
        sync_dir(&self.root)
    }

    fn remove(&mut self, path: &str) -> io::Result<()> {
        let full = self.root.join(path);
        self.known_dirs.retain(|d| !d.starts_with(&full));
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
        self.known_dirs.retain(|d| !d.starts_with(&full));
        if self.janitor.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new()
                .name("parapet-log-janitor".into())
                .spawn(move || {
                    for p in rx {
                        let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                    }
                });
            if let Ok(handle) = spawned {
                self.janitor = Some((tx, handle));
            }
        }
        let sent = match &self.janitor {
            Some((tx, _)) => tx.send(full.clone()).is_ok(),
            None => false,
        };
        if !sent {
            let _ = fs::remove_dir_all(&full);
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

/// Creates (or truncates) `path`, writes `data` to it and returns the open file, not yet synced.
fn create_with(path: &Path, data: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)?;
    Ok(f)
}
