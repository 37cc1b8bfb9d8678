//! Storage drivers. The tree code talks to a [`Storage`]: it stages tile and bundle files,
//! makes them durable in one `sync`, then publishes the checkpoint atomically. A driver may also
//! keep a write-ahead journal (sequencing): one durable append per batch, so that tiles and
//! checkpoints need a full `sync` only now and then. The first driver, [`LocalDir`], is a
//! directory laid out exactly as C2SP tlog-tiles (so any static file server can serve it), plus
//! the journal file [`JOURNAL`]. Other drivers (PostgreSQL, S3) implement the same trait.

use crate::error::LogError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Name of the checkpoint file at the root of a log.
pub const CHECKPOINT: &str = "checkpoint";
/// Name of [`LocalDir`]'s write-ahead journal at the root of a log (not part of tlog-tiles;
/// verifiers ignore it).
pub const JOURNAL: &str = "journal";
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
    /// [`Storage::sync`] then [`Storage::publish_checkpoint`], returned as a
    /// [`PendingSync`] (a standalone one) for another thread to run, so that the writer
    /// integrates the next batch meanwhile. Takes what is to be synced now: files written after
    /// this call belong to the next sync. `Ok(None)` if the driver cannot (the default); the
    /// caller then syncs and publishes itself.
    fn sync_and_publish_later(&mut self) -> io::Result<Option<PendingSync>> {
        Ok(None)
    }
    /// Atomically replaces the checkpoint with the staged one; durable only after the next
    /// [`Storage::sync`]. Used when a journal record already makes the batch durable.
    fn publish_checkpoint_unsynced(&mut self) -> io::Result<()> {
        self.sync()?;
        self.publish_checkpoint()
    }
    /// Appends `record` to the write-ahead journal and makes it durable. `Ok(false)` if the
    /// driver keeps no journal (the default); then every batch is made durable with `sync`.
    fn journal_append(&mut self, record: &[u8]) -> io::Result<bool> {
        let _ = record;
        Ok(false)
    }
    /// Writes `record` at the end of the write-ahead journal without waiting for the disk, and
    /// returns the [`PendingSync`] that makes it durable, which another thread may run while
    /// the next record is being prepared (pipelining). `Ok(None)` if the driver keeps no journal.
    /// The default appends durably with [`Storage::journal_append`] and returns a sync with
    /// nothing left to do.
    fn journal_write(&mut self, record: &[u8]) -> io::Result<Option<PendingSync>> {
        Ok(self.journal_append(record)?.then(|| PendingSync::done(0)))
    }
    /// Durably withdraws the journal record at `mark` (the [`PendingSync::mark`] of its write)
    /// and every record written after it: their sync failed, so they may or may not be on disk,
    /// and they must never be replayed. Drivers whose `journal_write` is durable at once have
    /// nothing to withdraw (the default).
    fn journal_withdraw_from(&mut self, mark: u64) -> io::Result<()> {
        let _ = mark;
        Ok(())
    }
    /// Durably withdraws `record` if it is the last record in the journal (its append reported
    /// an error, possibly after the record reached the file), so that it is never replayed; does
    /// nothing if the last record is another one (the failed append wrote nothing).
    fn journal_discard_last(&mut self, record: &[u8]) -> io::Result<()> {
        let _ = record;
        Ok(())
    }
    /// Records appended since the last [`Storage::journal_clear`], oldest first. A record that
    /// was not completely written (a crash during the append) and everything after it is left
    /// out.
    fn journal_records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
    /// Durably empties the journal (its records are covered by a synced checkpoint).
    fn journal_clear(&mut self) -> io::Result<()> {
        Ok(())
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

/// Makes one journal record written by [`Storage::journal_write`] durable, together with every
/// record written before it (for [`LocalDir`], an `fdatasync` of the journal file). Safe to run
/// on another thread than the writer's.
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

    /// A sync that no later one covers (it syncs files other than the journal, see
    /// [`Storage::sync_and_publish_later`]); `mark` is the journal's end when it was made.
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

    /// Where the record starts, as the driver counts (see [`Storage::journal_withdraw_from`]).
    pub fn mark(&self) -> u64 {
        self.mark
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

/// The records in the journal of the log directory `dir`, oldest first, read without changing
/// anything (for verifiers; a writer reads them with [`Storage::journal_records`]).
pub fn read_journal(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    match JournalFile::open_read_only(dir)? {
        Some(mut j) => j.records(),
        None => Ok(Vec::new()),
    }
}

/// A log in a local directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Files written since the last sync, by slot: a partial tile's slot is its `.p` directory,
    /// so only the widest partial written is synced (narrower ones are superseded).
    unsynced: BTreeMap<PathBuf, PathBuf>,
    journal: Option<JournalFile>,
    dirty_dirs: BTreeSet<PathBuf>,
    known_dirs: BTreeSet<PathBuf>,
    janitor: Option<(std::sync::mpsc::Sender<Chore>, std::thread::JoinHandle<()>)>,
    /// Pre-created empty files and directories (see [`Pool`]), started on the first write.
    pools: Option<(Pool, Pool)>,
}

/// Background work kept off the append path.
enum Chore {
    /// Remove a file or directory tree.
    Remove(PathBuf),
    /// Move the files of a directory into the file pool and the emptied directory into the
    /// directory pool, for reuse (see `Pool`).
    Recycle(PathBuf, Recycler, Recycler),
    /// Close the last handle of a replaced file (freeing its blocks happens there).
    Close(File),
    /// Give a replaced checkpoint (hard-linked into the pool's quarantine directory) back to
    /// the pool once `CHECKPOINT_QUARANTINE` has passed.
    Hold(PathBuf, Recycler),
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

/// Empties the pool file `path` for reuse, but only if it is the file's sole name. A
/// quarantined checkpoint is a hard link; if the process died between linking it and replacing
/// the checkpoint, that link names the published checkpoint, and a file with a second name must
/// never be emptied or rewritten. Such a file is not reused (the caller removes this one name).
fn empty_sole_link(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => f.metadata().is_ok_and(|m| m.nlink() == 1) && f.set_len(0).is_ok(),
        Err(_) => false,
    }
}

/// Removes a directory tree or a file, whichever `path` is; errors are ignored (garbage).
fn remove_any(path: &Path) {
    let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
}

/// A name prefix unique to this process run, so that names made in the pool never collide with
/// what an earlier run left there.
fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{t:x}{:x}", std::process::id())
    })
}

/// Marks `dir` as the top of a directory hierarchy (`chattr +T`, the ext2/3/4 `TOPDIR` flag):
/// ext4 then spreads directories created in it over block groups with many free inodes, as it
/// does for directories in `/`, instead of keeping them next to their parent.
///
/// That matters on ext4 without a journal: it never reuses an inode freed in the last minute
/// (five if not yet written back), and finds a free one by scanning its block group from the
/// start past every such inode. Under a temp directory where other programs keep deleting files
/// that scan made each new file cost 0.1–1 ms (about 1,000 files/s against 20,000+/s in a quiet
/// group, measured on the 2-vCPU benchmark machine). A hint only: errors are ignored (file
/// systems without the flag refuse it, and lose nothing). No crate wraps this ioctl.
fn spread_subdirectories(dir: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        /// `FS_TOPDIR_FL` from `linux/fs.h`.
        const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
        let Ok(d) = File::open(dir) else { return };
        let mut flags: libc::c_int = 0;
        // SAFETY: both ioctls read or write one `int` through a pointer to a live local, on a
        // descriptor this function owns.
        unsafe {
            if libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0
                && flags & FS_TOPDIR_FL == 0
            {
                flags |= FS_TOPDIR_FL;
                libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
}

/// Directory (under the log root) of pre-created files and directories.
const POOL_DIR: &str = ".pool";
/// How many pre-created files (and directories) are kept ready.
const POOL_SIZE: usize = 256;
/// Items the pool creates in one subdirectory before handing them out (see `Pool::start`).
const POOL_CHUNK: usize = 32;
/// The pool creates new items only while fewer than this are ready (recycled ones come first).
const POOL_LOW: usize = 2 * POOL_CHUNK;
/// Subdirectories the pool rotates through: enough that the one being filled holds no item
/// still queued (the queue holds at most POOL_SIZE / POOL_CHUNK chunks).
const POOL_SUBDIRS: u64 = (POOL_SIZE / POOL_CHUNK) as u64 + 2;

/// Empty files (or directories) created ahead of need by a background thread, in
/// [`POOL_DIR`]. Creating an inode is the slowest step of writing a small tile (on ext4 without
/// a journal it scans for recently deleted inodes, ~0.1–0.6 ms); with a pool the append path only
/// renames one into place. What an earlier run left in the pool is reused when it starts. No
/// crate does this; it is a few lines over std.
struct Pool {
    /// In a mutex only so that `LocalDir` stays `Sync` (readers share it across threads).
    rx: parking_lot::Mutex<std::sync::mpsc::Receiver<PathBuf>>,
    /// Items in `rx` (the thread creates new ones only while this is low).
    ready: Arc<AtomicUsize>,
    recycler: Recycler,
    /// Tells the thread to stop (set when the pool is dropped).
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, AtomicOrdering::Relaxed);
    }
}

/// Hands used files or directories back to a [`Pool`]: deleting and creating inodes is what
/// costs (on ext4 without a journal every deletion also slows later creations for a while), so
/// superseded partial tiles are reused instead. A recycled item is at least one full sync old.
#[derive(Clone)]
struct Recycler {
    dir: PathBuf,
    /// Recycles files (emptied before reuse) rather than directories.
    files: bool,
    tx: std::sync::mpsc::Sender<PathBuf>,
}

impl Recycler {
    /// Moves `p` into the pool; removes it if that fails.
    fn give(&self, p: &Path) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dst = self.dir.join(format!(
            "{}-{}",
            run_tag(),
            NEXT.fetch_add(1, AtomicOrdering::Relaxed)
        ));
        // Files are handed out empty: the writer then needs no O_TRUNC, which on ext4 would make
        // closing the file start its writeback at once (the replace-via-truncate heuristic).
        let emptied = |d: &Path| !self.files || empty_sole_link(d);
        if fs::rename(p, &dst).is_ok() && emptied(&dst) {
            if let Err(e) = self.tx.send(dst) {
                remove_any(&e.0);
            }
        } else {
            remove_any(p);
            remove_any(&dst);
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    fn start(dir: PathBuf, dirs: bool) -> Pool {
        let (tx, rx) = std::sync::mpsc::sync_channel(POOL_SIZE);
        let (recycle_tx, recycled) = std::sync::mpsc::channel::<PathBuf>();
        let ready = Arc::new(AtomicUsize::new(0));
        let recycler = Recycler {
            dir: dir.join("r"),
            files: !dirs,
            tx: recycle_tx,
        };
        let count = ready.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let _ = std::thread::Builder::new()
            .name("parapet-log-pool".into())
            .spawn(move || {
                // What an earlier run left in the pool is reused, not deleted and created again.
                let leftovers: Vec<PathBuf> = fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|sub| fs::read_dir(sub.path()).ok())
                    .flat_map(|items| items.flatten().map(|e| e.path()))
                    .collect();
                if fs::create_dir_all(dir.join("r")).is_err()
                    || (!dirs && fs::create_dir_all(dir.join("q")).is_err())
                {
                    return;
                }
                let offer = |p: PathBuf| {
                    count.fetch_add(1, AtomicOrdering::Relaxed);
                    tx.send(p).is_ok()
                };
                for p in leftovers {
                    let usable = if dirs {
                        fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none())
                    } else {
                        empty_sole_link(&p)
                    };
                    if !usable {
                        remove_any(&p);
                    } else if !offer(p) {
                        return;
                    }
                }
                // Created POOL_CHUNK at a time in POOL_SUBDIRS rotating subdirectories and handed
                // out a chunk at a time: creating an inode holds its directory's lock for long
                // (see above), and taking an item renames it out of its directory, so the
                // writer must never take from the directory being filled.
                //
                // The subdirectories are new for each run, in a directory marked as a top of a
                // hierarchy (see `spread_subdirectories`), so that ext4 places them, and the
                // files created in them, in block groups without recent deletions. Earlier runs'
                // subdirectories are removed once empty.
                spread_subdirectories(&dir);
                let ours = |sub: u64| dir.join(format!("{}-{sub}", run_tag()));
                for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if e.file_name() != "r" && e.file_name() != "q" {
                        let _ = fs::remove_dir(e.path());
                    }
                }
                for sub in 0..POOL_SUBDIRS {
                    if fs::create_dir_all(ours(sub)).is_err() {
                        return;
                    }
                }
                let mut n = 0u64;
                loop {
                    // Recycled items first.
                    while let Ok(p) = recycled.try_recv() {
                        if !offer(p) {
                            return;
                        }
                    }
                    if count.load(AtomicOrdering::Relaxed) < POOL_LOW {
                        // Running low: create one chunk in the next subdirectory, then hand it
                        // out whole.
                        let sub = ours((n / POOL_CHUNK as u64) % POOL_SUBDIRS);
                        let mut chunk = Vec::with_capacity(POOL_CHUNK);
                        for _ in 0..POOL_CHUNK {
                            if stopped.load(AtomicOrdering::Relaxed) {
                                return;
                            }
                            n += 1;
                            let p = sub.join(format!("{}-{n}", run_tag()));
                            let made = if dirs {
                                fs::create_dir(&p)
                            } else {
                                OpenOptions::new()
                                    .write(true)
                                    .create_new(true)
                                    .open(&p)
                                    .map(drop)
                            };
                            // On any error (a full disk, say) stop: writers create in place.
                            if made.is_err() {
                                return;
                            }
                            chunk.push(p);
                        }
                        for p in chunk {
                            if !offer(p) {
                                return;
                            }
                        }
                        continue;
                    }
                    // Enough ready: wait for recycled items, looking at the level now and then.
                    match recycled.recv_timeout(std::time::Duration::from_millis(20)) {
                        Ok(p) => {
                            if !offer(p) {
                                return;
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        Pool {
            rx: parking_lot::Mutex::new(rx),
            ready,
            recycler,
            stop,
        }
    }

    fn take(&self) -> Option<PathBuf> {
        let p = self.rx.lock().try_recv().ok();
        if p.is_some() {
            self.ready.fetch_sub(1, AtomicOrdering::Relaxed);
        }
        p
    }
}

impl LocalDir {
    /// A driver rooted at `root` (which must exist).
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_path_buf(),
            unsynced: BTreeMap::new(),
            journal: None,
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

/// How long a replaced checkpoint file is kept before its inode is reused.
const CHECKPOINT_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The janitor thread: runs chores in order; holds quarantined files until they are due.
fn janitor(rx: std::sync::mpsc::Receiver<Chore>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut held: std::collections::VecDeque<(std::time::Instant, PathBuf, Recycler)> =
        std::collections::VecDeque::new();
    loop {
        let msg = match held.front() {
            Some((due, ..)) => {
                rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now()))
            }
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Chore::Hold(p, r)) => {
                held.push_back((std::time::Instant::now() + CHECKPOINT_QUARANTINE, p, r))
            }
            Ok(c) => run_chore(c),
            Err(RecvTimeoutError::Timeout) => {}
            // Shutting down: files still held stay in the quarantine directory, where the next
            // pool start finds and reuses them.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = std::time::Instant::now();
        while held.front().is_some_and(|(due, ..)| *due <= now) {
            if let Some((_, p, r)) = held.pop_front() {
                r.give(&p);
            }
        }
    }
}

fn run_chore(c: Chore) {
    match c {
        Chore::Remove(p) => remove_any(&p),
        Chore::Close(f) => drop(f),
        Chore::Hold(p, r) => r.give(&p),
        Chore::Recycle(dir, files, dirs) => {
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    files.give(&e.path());
                }
            }
            dirs.give(&dir);
        }
    }
}

impl LocalDir {
    fn journal(&mut self) -> io::Result<&mut JournalFile> {
        if self.journal.is_none() {
            self.journal = Some(JournalFile::open(&self.root)?);
        }
        match self.journal.as_mut() {
            Some(j) => Ok(j),
            None => Err(io::Error::other("internal error: journal not open")),
        }
    }
}

/// [`LocalDir`]'s write-ahead journal: one file, zero-filled ahead of use so that appending a
/// record and `fdatasync` change no file metadata (one disk write and one flush per batch).
///
/// Layout: a 4 KiB header block (`JOURNAL_MAGIC`, generation u64 BE, SHA-256 of both), then
/// records, each `RECORD_MAGIC`, generation u64 BE, payload length u32 BE, payload, SHA-256 of
/// all of that. Clearing bumps the generation in the header; records of older generations left in
/// the file no longer count. Reading stops at the first record that is torn, of another
/// generation, or fails its checksum. No crate offers such a journal over one plain file with
/// this cost profile, hence hand-written.
#[derive(Debug)]
struct JournalFile {
    /// Shared with the writer's flusher thread, which syncs it (see [`PendingSync`]).
    file: Arc<File>,
    generation: u64,
    /// Where the next record goes.
    pos: u64,
    /// Bytes of the file known to be allocated and written (zeros or records).
    len: u64,
    /// Start and checksum of the last record written.
    last: Option<(u64, [u8; 32])>,
}

const JOURNAL_MAGIC: &[u8; 8] = b"PPJNL\x00\x00\x01";
const RECORD_MAGIC: &[u8; 4] = b"PPJR";
const JOURNAL_HEADER: u64 = 4096;
const JOURNAL_GROW: u64 = 4 << 20;
const RECORD_OVERHEAD: usize = 4 + 8 + 4 + 32;

/// The generation in the journal header of `file` (`len` bytes long), or `None` if the header
/// is missing or damaged.
fn read_generation(file: &File, len: u64) -> Option<u64> {
    let mut head = [0u8; 48];
    let valid = len >= JOURNAL_HEADER
        && file.read_exact_at(&mut head, 0).is_ok()
        && &head[..8] == JOURNAL_MAGIC
        && Sha256::digest(&head[..16])[..] == head[16..48];
    valid.then(|| u64::from_be_bytes(head[8..16].try_into().unwrap_or([0; 8])))
}

impl JournalFile {
    fn open(root: &Path) -> io::Result<JournalFile> {
        let path = root.join(JOURNAL);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let mut j = JournalFile {
            file: Arc::new(file),
            generation: 0,
            pos: JOURNAL_HEADER,
            len,
            last: None,
        };
        if let Some(generation) = read_generation(&j.file, len) {
            j.generation = generation;
            // Position after the records already there (they stay until cleared).
            j.records()?;
        } else {
            // New (or unusable) journal: start generation 1 with no records.
            j.len = 0;
            j.file.set_len(0)?;
            j.grow(JOURNAL_HEADER)?;
            j.write_header(1)?;
            if !existed {
                sync_dir(root)?;
            }
        }
        Ok(j)
    }

    /// Opens the journal of `root` for reading only; `None` if there is none (or no valid header).
    fn open_read_only(root: &Path) -> io::Result<Option<JournalFile>> {
        let file = match File::open(root.join(JOURNAL)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok(read_generation(&file, len).map(|generation| JournalFile {
            file: Arc::new(file),
            generation,
            pos: JOURNAL_HEADER,
            len,
            last: None,
        }))
    }

    /// Extends the file with zeros to at least `want` bytes and syncs it (size change).
    fn grow(&mut self, want: u64) -> io::Result<()> {
        if want <= self.len {
            return Ok(());
        }
        // Double (up to JOURNAL_GROW at a time) so small logs keep a small journal.
        let step = self.len.clamp(1 << 20, JOURNAL_GROW);
        let new_len = want.div_ceil(step) * step;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.len;
        while at < new_len {
            let n = (new_len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = new_len;
        Ok(())
    }

    fn write_header(&mut self, generation: u64) -> io::Result<()> {
        let mut head = Vec::with_capacity(48);
        head.extend_from_slice(JOURNAL_MAGIC);
        head.extend_from_slice(&generation.to_be_bytes());
        let sum = Sha256::digest(&head);
        head.extend_from_slice(&sum);
        self.file.write_all_at(&head, 0)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.pos = JOURNAL_HEADER;
        self.last = None;
        Ok(())
    }

    /// Writes a record and syncs it on this thread.
    fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let end = self.write_record(payload)?;
        self.file.sync_data()?;
        self.pos = end;
        Ok(())
    }

    /// Writes a record without syncing it; returns the sync to run (on any thread).
    fn write(&mut self, payload: &[u8]) -> io::Result<PendingSync> {
        let start = self.pos;
        self.pos = self.write_record(payload)?;
        let file = self.file.clone();
        Ok(PendingSync::new(start, move || file.sync_data()))
    }

    /// Withdraws the record at `at` and those after it (see [`Storage::journal_withdraw_from`]):
    /// overwrites its magic, so reading stops before it, makes that durable, and writes the next
    /// record in its place.
    fn withdraw_from(&mut self, at: u64) -> io::Result<()> {
        if at < JOURNAL_HEADER || at >= self.pos {
            return Ok(());
        }
        self.erase_from(at)
    }

    /// Overwrites the magic of the record at `at` (reading stops there), makes that durable, and
    /// moves the write position there.
    fn erase_from(&mut self, at: u64) -> io::Result<()> {
        self.file.write_all_at(&[0u8; 4], at)?;
        self.file.sync_data()?;
        self.pos = at;
        self.last = None;
        Ok(())
    }

    /// Frames `payload` as a record: magic, generation, length, payload, SHA-256 of all that.
    fn frame(&self, payload: &[u8]) -> io::Result<(Vec<u8>, [u8; 32])> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("journal record over 4 GiB"))?;
        let mut rec = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
        rec.extend_from_slice(RECORD_MAGIC);
        rec.extend_from_slice(&self.generation.to_be_bytes());
        rec.extend_from_slice(&len.to_be_bytes());
        rec.extend_from_slice(payload);
        let sum: [u8; 32] = Sha256::digest(&rec).into();
        rec.extend_from_slice(&sum);
        Ok((rec, sum))
    }

    /// Writes `payload` as a record at the write position (not yet synced); returns where it
    /// ends.
    fn write_record(&mut self, payload: &[u8]) -> io::Result<u64> {
        let (rec, sum) = self.frame(payload)?;
        let end = self.pos + rec.len() as u64;
        // Remembered before writing: a write that fails half-way can still be withdrawn.
        self.last = Some((self.pos, sum));
        self.grow(end)?;
        self.file.write_all_at(&rec, self.pos)?;
        Ok(end)
    }

    fn records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut pos = JOURNAL_HEADER;
        let mut head = [0u8; 16];
        loop {
            if pos + RECORD_OVERHEAD as u64 > self.len
                || self.file.read_exact_at(&mut head, pos).is_err()
                || &head[..4] != RECORD_MAGIC
                || head[4..12] != self.generation.to_be_bytes()
            {
                break;
            }
            let n = u32::from_be_bytes(head[12..16].try_into().unwrap_or([0; 4])) as u64;
            let total = 16 + n + 32;
            if pos + total > self.len {
                break;
            }
            let mut rec = vec![0u8; total as usize];
            self.file.read_exact_at(&mut rec, pos)?;
            let body = &rec[..16 + n as usize];
            if Sha256::digest(body)[..] != rec[16 + n as usize..] {
                break;
            }
            out.push(body[16..].to_vec());
            pos += total;
        }
        self.pos = pos;
        Ok(out)
    }

    /// If the last record written is `payload`'s, overwrites its magic (so reading stops before
    /// it), makes that durable, and writes the next record in its place.
    fn discard_last(&mut self, payload: &[u8]) -> io::Result<()> {
        let (_, sum) = self.frame(payload)?;
        match self.last {
            Some((at, last)) if last == sum => self.erase_from(at),
            _ => Ok(()),
        }
    }

    fn clear(&mut self) -> io::Result<()> {
        if self.pos == JOURNAL_HEADER {
            return Ok(());
        }
        self.write_header(self.generation + 1)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
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
        // Withdrawing from the journal's end (if this sync fails) removes nothing.
        let mark = self.journal.as_ref().map_or(0, |j| j.pos);
        let paths: Vec<PathBuf> = self.to_sync().cloned().collect();
        self.unsynced.clear();
        self.dirty_dirs.clear();
        let tmp = self.staged_checkpoint();
        let cp = self.root.join(CHECKPOINT);
        let root = self.root.clone();
        // The old checkpoint's inode is freed by the rename (no quarantine for reuse, which
        // needs the pool, see `rename_checkpoint`): one file per bulk batch.
        Ok(Some(PendingSync::standalone(mark, move || {
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

    fn journal_append(&mut self, record: &[u8]) -> io::Result<bool> {
        self.journal()?.append(record)?;
        Ok(true)
    }

    fn journal_write(&mut self, record: &[u8]) -> io::Result<Option<PendingSync>> {
        self.journal()?.write(record).map(Some)
    }

    fn journal_withdraw_from(&mut self, mark: u64) -> io::Result<()> {
        self.journal()?.withdraw_from(mark)
    }

    fn journal_discard_last(&mut self, record: &[u8]) -> io::Result<()> {
        self.journal()?.discard_last(record)
    }

    fn journal_records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.journal()?.records()
    }

    fn journal_clear(&mut self) -> io::Result<()> {
        self.journal()?.clear()
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
