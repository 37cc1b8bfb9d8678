//! [`super::LocalDir`]'s helpers off the append path: the pool of pre-created files and
//! directories (creating an inode is the slowest step of writing a small tile) and the janitor
//! thread that removes, recycles and closes files in the background.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Background work kept off the append path.
pub(super) enum Chore {
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
pub(super) fn remove_any(path: &Path) {
    let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
}

/// A name prefix unique to this process run, so that names made in the pool never collide with
/// what an earlier run left there.
pub(super) fn run_tag() -> &'static str {
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
pub(super) const POOL_DIR: &str = ".pool";
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
pub(super) struct Pool {
    /// In a mutex only so that `LocalDir` stays `Sync` (readers share it across threads).
    rx: parking_lot::Mutex<std::sync::mpsc::Receiver<PathBuf>>,
    /// Items in `rx` (the thread creates new ones only while this is low).
    ready: Arc<AtomicUsize>,
    pub(super) recycler: Recycler,
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
pub(super) struct Recycler {
    pub(super) dir: PathBuf,
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
    pub(super) fn start(dir: PathBuf, dirs: bool) -> Pool {
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

    pub(super) fn take(&self) -> Option<PathBuf> {
        let p = self.rx.lock().try_recv().ok();
        if p.is_some() {
            self.ready.fetch_sub(1, AtomicOrdering::Relaxed);
        }
        p
    }
}

/// How long a replaced checkpoint file is kept before its inode is reused.
const CHECKPOINT_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The janitor thread: runs chores in order; holds quarantined files until they are due.
pub(super) fn janitor(rx: std::sync::mpsc::Receiver<Chore>) {
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

pub(super) fn run_chore(c: Chore) {
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
