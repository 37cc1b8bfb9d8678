//! End-to-end tests of the library on real directories: appends, concurrency, reopen and
//! recovery, entry limits, the on-disk layout, verification, and I/O failures.

use parapet_log::checkpoint::Checkpoint;
use parapet_log::driver::{Driver, LocalDir};
use parapet_log::hash::leaf_hash;
use parapet_log::note::NoteVerifier;
use parapet_log::proof::{root_hash, verify_consistency, verify_inclusion, MemoryTree};
use parapet_log::sequencer::{DirJournal, PendingSync, Sequencer};
use parapet_log::verify::verify_log;
use parapet_log::{read_signing_key, Batch, Log, LogError, LogReader, ProofText};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn new_log(tmp: &Path) -> (PathBuf, PathBuf, NoteVerifier) {
    let dir = tmp.join("log");
    let key = tmp.join("key");
    let vkey = Log::init(&dir, "example.com/test", &key).unwrap();
    (dir, key, NoteVerifier::parse(&vkey).unwrap())
}

fn all_entries(dir: &Path) -> Vec<Vec<u8>> {
    let r = LogReader::open(dir).unwrap();
    r.entries(0, r.size())
        .enumerate()
        .map(|(i, e)| {
            let (idx, e) = e.unwrap();
            assert_eq!(idx, i as u64);
            e
        })
        .collect()
}

fn no_progress(_: u64) {}

/// A new log in `tmp` holding the entries "0" to "299", open.
fn log_holding_300(tmp: &Path) -> (PathBuf, PathBuf, NoteVerifier, Log) {
    let (dir, key, v) = new_log(tmp);
    let log = Log::open(&dir, &key).unwrap();
    log.submit_batch(batch_of((0..300).map(|i| format!("{i}"))))
        .wait()
        .unwrap();
    (dir, key, v, log)
}

/// A batch of `entries` (test data).
fn batch_of(entries: impl IntoIterator<Item = String>) -> Batch {
    let mut b = Batch::new();
    for e in entries {
        b.push(e.as_bytes()).unwrap();
    }
    b
}

#[test]
fn init_refuses_to_overwrite_and_sets_key_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, _) = new_log(tmp.path());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let e = Log::init(&dir, "example.com/test", &tmp.path().join("key2")).unwrap_err();
    assert!(matches!(e, LogError::AlreadyExists { .. }), "{e}");
    let e = Log::init(&tmp.path().join("other"), "example.com/test", &key).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let e = Log::init(&tmp.path().join("o2"), "bad origin", &tmp.path().join("k3")).unwrap_err();
    assert!(matches!(e, LogError::InvalidOrigin { .. }));
    // The size-0 checkpoint verifies.
    let v = NoteVerifier::parse(&read_signing_key(&key).unwrap().verifier().to_key_text()).unwrap();
    let rep = verify_log(&dir, &v, None, &no_progress).unwrap();
    assert_eq!(rep.checkpoint.size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_exactly_the_submitted_set() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for s in 0..40 {
                let e = format!("task {t} entry {s}").into_bytes();
                let idx = log.append(e.clone()).await.unwrap();
                got.push((idx, e));
            }
            got
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    log.close().await.unwrap();
    assert_eq!(log.size(), 64 * 40);
    let entries = all_entries(&dir);
    assert_eq!(entries.len(), 64 * 40);
    for (idx, e) in &acked {
        assert_eq!(&entries[*idx as usize], e);
    }
    let indices: HashSet<u64> = acked.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices.len(), 64 * 40);
    // Per task, indices increase in submission order.
    let rep = verify_log(&dir, &v, None, &no_progress).unwrap();
    let mut t = MemoryTree {
        leaves: entries.iter().map(|e| leaf_hash(e)).collect(),
    };
    assert_eq!(rep.checkpoint.root, root_hash(&mut t, 64 * 40).unwrap());
    // Closed: later appends fail clearly.
    assert!(matches!(
        log.append(b"late".to_vec()).await,
        Err(LogError::Closed)
    ));
}

/// Runs submitted with `submit_run` while other tasks submit single entries (eager and lazy)
/// land contiguously and in order; the ticket gives the last index; runs of large entries (over
/// the journal's record size, made durable directly) and small ones mix; and everything verifies
/// after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_contiguous_among_concurrent_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut runs = Vec::new();
            for s in 0..12u32 {
                if t % 2 == 0 {
                    // Singles, every third one lazy.
                    let e = format!("single {t}/{s}").into_bytes();
                    let ticket = if s % 3 == 0 {
                        log.submit_lazy(e)
                    } else {
                        log.submit(e)
                    };
                    ticket.await.unwrap();
                    continue;
                }
                // Runs of 1 to 24 entries; some of 60 KB entries (about 1.4 MB per run).
                let n = 1 + (t * 7 + s * 5) as usize % 24;
                let big = s % 4 == 1;
                let entries: Vec<Vec<u8>> = (0..n)
                    .map(|i| {
                        let mut e = format!("run {t}/{s} part {i}/{n} ").into_bytes();
                        if big {
                            e.resize(60_000, b'.');
                        }
                        e
                    })
                    .collect();
                let mut b = Batch::new();
                for e in &entries {
                    b.push(e).unwrap();
                }
                let last = log.submit_run(b).await.unwrap();
                runs.push((last, entries));
            }
            runs
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.extend(t.await.unwrap());
    }
    // Refused runs harm nothing.
    let e = log.submit_run(Batch::new()).await.unwrap_err();
    assert!(e.to_string().contains("run holds 1 to"), "{e}");
    drop(log);
    let all = all_entries(&dir);
    let mut covered = 0;
    for (last, entries) in &runs {
        let first = *last as usize + 1 - entries.len();
        assert_eq!(
            &all[first..=*last as usize],
            &entries[..],
            "run ending at {last}"
        );
        covered += entries.len();
    }
    let singles = all.iter().filter(|e| e.starts_with(b"single ")).count();
    assert_eq!(singles, 8 * 12);
    assert_eq!(all.len(), covered + singles);
    let rep = verify_log(&dir, &v, None, &no_progress).unwrap();
    assert_eq!(rep.checkpoint.size, all.len() as u64);
    // Reopened, a run goes on from where the log ended.
    let log = Log::open(&dir, &key).unwrap();
    let last = log
        .submit_run(batch_of(["a".into(), "b".into()]))
        .await
        .unwrap();
    assert_eq!(last, all.len() as u64 + 1);
}

#[tokio::test]
async fn oversized_entry_is_refused_and_harms_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    let a = log.submit(b"before".to_vec());
    let big = log.submit(vec![b'x'; 65536]);
    let max = log.submit(vec![b'y'; 65535]);
    let empty = log.submit(Vec::new());
    assert_eq!(a.await.unwrap(), 0);
    let e = big.await.unwrap_err();
    assert!(e.to_string().contains("65535"), "{e}");
    assert_eq!(max.await.unwrap(), 1);
    assert_eq!(empty.await.unwrap(), 2);
    drop(log);
    let entries = all_entries(&dir);
    assert_eq!(entries, vec![b"before".to_vec(), vec![b'y'; 65535], vec![]]);
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

#[test]
fn layout_follows_tlog_tiles_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let mut expect: Vec<Vec<u8>> = Vec::new();
    // Several sessions of odd sizes crossing tile boundaries, reopening each time.
    for (round, n) in [1usize, 254, 2, 300, 65_000, 1].into_iter().enumerate() {
        let log = Log::open(&dir, &key).unwrap();
        let mut b = Batch::new();
        for i in 0..n {
            let e = format!("r{round} e{i}").into_bytes();
            b.push(&e).unwrap();
            expect.push(e);
        }
        let r = log.submit_batch(b).wait().unwrap();
        assert_eq!(r.end, expect.len() as u64);
    }
    let n = expect.len() as u64; // 65558
    assert_eq!(all_entries(&dir), expect);
    // Exact files: full tiles, partials as .p/W, no superseded partials of full tiles.
    assert!(dir.join("tile/entries/000").is_file());
    assert!(dir.join("tile/0/255").is_file());
    assert!(dir.join("tile/1/000").is_file());
    assert!(dir.join(format!("tile/0/256.p/{}", n % 256)).is_file());
    assert!(dir
        .join(format!("tile/entries/256.p/{}", n % 256))
        .is_file());
    assert!(!dir.join("tile/1/001.p").exists()); // 256 level-8 nodes: tile/1/000 is full
    assert!(dir.join("tile/2/000.p/1").is_file());
    // Superseded partials of full tiles are removed (in the background, so allow a moment).
    let t0 = std::time::Instant::now();
    while dir.join("tile/0/000.p").exists() && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!dir.join("tile/0/000.p").exists());
    assert_eq!(
        std::fs::read(dir.join("tile/0/000")).unwrap().len(),
        256 * 32
    );
    // Hashes in tiles are the RFC 6962 leaf hashes and the checkpoint root is the RFC root.
    let t0 = std::fs::read(dir.join("tile/0/000")).unwrap();
    assert_eq!(&t0[32..64], &leaf_hash(&expect[1])[..]);
    let rep = verify_log(&dir, &v, None, &no_progress).unwrap();
    let mut mt = MemoryTree {
        leaves: expect.iter().map(|e| leaf_hash(e)).collect(),
    };
    assert_eq!(rep.checkpoint.root, root_hash(&mut mt, n).unwrap());
    assert_eq!(rep.checkpoint.size, n);
    // Proof texts verify against the printed checkpoint.
    let reader = LogReader::open(&dir).unwrap();
    for i in [0u64, 255, 256, 40_000, n - 1] {
        let p = ProofText::parse(&reader.inclusion_proof_text(i).unwrap()).unwrap();
        assert_eq!(p.number, i);
        let text = v.open(p.checkpoint.as_bytes(), "proof checkpoint").unwrap();
        let cp = Checkpoint::parse(text, "cp").unwrap();
        verify_inclusion(
            i,
            cp.size,
            &leaf_hash(&expect[i as usize]),
            &p.hashes,
            &cp.root,
        )
        .unwrap();
        assert!(verify_inclusion(i, cp.size, &leaf_hash(b"other"), &p.hashes, &cp.root).is_err());
    }
    for old in [1u64, 255, 256, 257, 65_000, n] {
        let p = ProofText::parse(&reader.consistency_proof_text(old).unwrap()).unwrap();
        assert_eq!(p.number, old);
        let old_root = root_hash(&mut mt, old).unwrap();
        verify_consistency(old, n, &old_root, &rep.checkpoint.root, &p.hashes).unwrap();
    }
    assert!(reader.inclusion_proof(n).is_err());
    assert!(reader.consistency_proof(n + 1).is_err());
}

#[test]
fn bulk_lines_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    let mut input = Vec::new();
    for i in 0..100_000 {
        input.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    input.extend_from_slice(b"\nlast without newline");
    let s = parapet_log::bulk::append_lines(&log, &input[..], no_progress).unwrap();
    assert_eq!(s.indices, 0..100_002);
    // A too-long line: earlier lines are kept, nothing after it is appended.
    let mut input = b"ok1\nok2\n".to_vec();
    input.extend(vec![b'z'; 70_000]);
    input.extend_from_slice(b"\nafter\n");
    let e = parapet_log::bulk::append_lines(&log, &input[..], no_progress).unwrap_err();
    assert!(e.to_string().contains("input line 3"), "{e}");
    assert!(e.to_string().contains("65535"), "{e}");
    drop(log);
    let entries = all_entries(&dir);
    assert_eq!(entries.len(), 100_004);
    assert_eq!(entries[100_000], b"");
    assert_eq!(entries[100_001], b"last without newline");
    assert_eq!(entries[100_003], b"ok2");
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

#[test]
fn open_discards_an_unpublished_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v, log) = log_holding_300(tmp.path());
    drop(log);
    let cp = std::fs::read(dir.join("checkpoint")).unwrap();
    // Simulate a batch interrupted before its checkpoint: more tiles, a temp file, old checkpoint.
    let log = Log::open(&dir, &key).unwrap();
    log.submit_batch(batch_of((0..600).map(|i| format!("lost {i}"))))
        .wait()
        .unwrap();
    drop(log);
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::write(dir.join("checkpoint"), &cp).unwrap();
    std::fs::write(dir.join("tile/0/.tmp-001"), b"junk").unwrap();
    assert!(dir.join("tile/0/002").exists());
    let log = Log::open(&dir, &key).unwrap();
    assert_eq!(log.size(), 300);
    assert!(!dir.join("tile/0/002").exists());
    assert!(!dir.join("tile/0/.tmp-001").exists());
    assert!(!dir.join("tile/0/001.p/200").exists());
    assert_eq!(
        log.submit_batch(batch_of((0..1000).map(|i| format!("new {i}"))))
            .wait()
            .unwrap(),
        300..1300
    );
    drop(log);
    let e = all_entries(&dir);
    assert_eq!(e[299], b"299");
    assert_eq!(e[300], b"new 0");
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

#[test]
fn a_file_already_at_a_full_tile_path_is_replaced_whole() {
    // Full tiles are created in place when no pooled file is ready; a file an interrupted batch
    // left at such a path (beyond every published checkpoint) must still be replaced, not kept.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, v, log) = log_holding_300(tmp.path());
    // Torn leftovers at the paths of the next full tile and bundle (index 1 covers 256..512).
    for p in ["tile/0/001", "tile/entries/001"] {
        std::fs::create_dir_all(dir.join(p).parent().unwrap()).unwrap();
        std::fs::write(dir.join(p), b"torn").unwrap();
    }
    assert_eq!(
        log.submit_batch(batch_of((300..600).map(|i| format!("{i}"))))
            .wait()
            .unwrap(),
        300..600
    );
    drop(log);
    assert_eq!(
        std::fs::metadata(dir.join("tile/0/001")).unwrap().len(),
        256 * 32
    );
    let e = all_entries(&dir);
    assert_eq!(e.len(), 600);
    assert_eq!(e[256], b"256");
    assert_eq!(e[599], b"599");
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

/// Real directory storage that fails with ENOSPC while `full` is set, or only its tile writes
/// while `tiles_full` is set, or, while `journal_fails` is set, reports EIO from journal appends
/// after the record was written and synced (fault injection). The files' side (the driver);
/// [`FillableJournal`] is the journal's.
struct FillableDisk {
    inner: LocalDir,
    full: Arc<AtomicBool>,
    tiles_full: Arc<AtomicBool>,
    sync_fails: Arc<AtomicBool>,
}

/// The journal (sequencer) of a [`FillableDisk`], with the same switches.
struct FillableJournal {
    inner: DirJournal,
    full: Arc<AtomicBool>,
    journal_fails: Arc<AtomicBool>,
    sync_fails: Arc<AtomicBool>,
}

/// The switches of a [`FillableDisk`], kept by the test while the log owns the disk.
struct Faults {
    full: Arc<AtomicBool>,
    tiles_full: Arc<AtomicBool>,
    /// Writing a journal record reports an error after the record reached the file.
    journal_fails: Arc<AtomicBool>,
    /// Syncing the journal (on the writer or the flusher thread) reports an error.
    sync_fails: Arc<AtomicBool>,
}

impl FillableDisk {
    /// Opens the log in `dir` on a fault-injecting disk, all faults off.
    fn open_log(dir: &Path, key: &Path) -> (Log, Faults) {
        let faults = Faults {
            full: Arc::new(AtomicBool::new(false)),
            tiles_full: Arc::new(AtomicBool::new(false)),
            journal_fails: Arc::new(AtomicBool::new(false)),
            sync_fails: Arc::new(AtomicBool::new(false)),
        };
        let st = FillableDisk {
            inner: LocalDir::new(dir),
            full: faults.full.clone(),
            tiles_full: faults.tiles_full.clone(),
            sync_fails: faults.sync_fails.clone(),
        };
        let journal = FillableJournal {
            inner: DirJournal::new(dir),
            full: faults.full.clone(),
            journal_fails: faults.journal_fails.clone(),
            sync_fails: faults.sync_fails.clone(),
        };
        let log = Log::open_with(st, journal, read_signing_key(key).unwrap()).unwrap();
        (log, faults)
    }

    fn check(&self) -> std::io::Result<()> {
        enospc_if(&self.full)
    }
}

fn enospc_if(full: &AtomicBool) -> std::io::Result<()> {
    if full.load(Ordering::SeqCst) {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    } else {
        Ok(())
    }
}

impl Driver for FillableDisk {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        self.inner.read_into(path, buf)
    }
    fn write(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        if self.tiles_full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.write(path, data)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn stage_checkpoint(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.stage_checkpoint(data)
    }
    fn publish_checkpoint(&mut self) -> std::io::Result<()> {
        self.inner.publish_checkpoint()
    }
    fn publish_checkpoint_unsynced(&mut self) -> std::io::Result<()> {
        self.inner.publish_checkpoint_unsynced()
    }
    fn sync_and_publish_later(&mut self) -> std::io::Result<Option<PendingSync>> {
        match self.inner.sync_and_publish_later()? {
            // Fails before anything is synced or the checkpoint replaced.
            Some(s) if self.sync_fails.load(Ordering::SeqCst) => {
                Ok(Some(PendingSync::standalone(s.mark(), || {
                    Err(std::io::Error::from_raw_os_error(libc::EIO))
                })))
            }
            s => Ok(s),
        }
    }
    fn remove(&mut self, path: &str) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn remove_temp_files(&mut self, dir: &str) -> std::io::Result<()> {
        self.inner.remove_temp_files(dir)
    }
}

impl Sequencer for FillableJournal {
    fn sequence(&mut self, record: &[u8]) -> std::io::Result<Option<PendingSync>> {
        enospc_if(&self.full)?;
        let sync = self.inner.sequence(record)?;
        if self.journal_fails.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        match sync {
            Some(s) if self.sync_fails.load(Ordering::SeqCst) => {
                let mark = s.mark();
                // The record may or may not have reached the disk: let it be there.
                s.run()?;
                Ok(Some(PendingSync::new(mark, || {
                    Err(std::io::Error::from_raw_os_error(libc::EIO))
                })))
            }
            s => Ok(s),
        }
    }
    fn withdraw_from(&mut self, mark: u64) -> std::io::Result<()> {
        self.inner.withdraw_from(mark)
    }
    fn discard_last(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.inner.discard_last(record)
    }
    fn records(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        self.inner.records()
    }
    fn clear(&mut self) -> std::io::Result<()> {
        self.inner.clear()
    }
    fn end_mark(&self) -> u64 {
        self.inner.end_mark()
    }
}

#[tokio::test]
async fn disk_full_fails_pending_appends_clearly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let (log, faults) = FillableDisk::open_log(&dir, &key);
    let full = faults.full;
    for i in 0..10u8 {
        log.append(vec![i]).await.unwrap();
    }
    full.store(true, Ordering::SeqCst);
    let t: Vec<_> = (0..5u8).map(|i| log.submit(vec![100 + i])).collect();
    for t in t {
        let e = t.await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no space left on device"), "{msg}");
        assert!(msg.contains("intact up to size 10"), "{msg}");
    }
    assert_eq!(log.size(), 10);
    // The published log still verifies and holds a prefix of the acknowledged entries (the
    // rest are in the journal, published once space comes back).
    verify_log(&dir, &v, None, &no_progress).unwrap();
    let published = all_entries(&dir);
    assert!(published.len() <= 10);
    assert!(published.iter().enumerate().all(|(i, e)| e == &[i as u8]));
    // Space comes back: the next append recovers from the checkpoint and succeeds.
    full.store(false, Ordering::SeqCst);
    assert_eq!(log.append(b"after".to_vec()).await.unwrap(), 10);
    log.close().await.unwrap();
    let e = all_entries(&dir);
    assert_eq!(e.len(), 11);
    assert_eq!(e[10], b"after");
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

#[test]
fn wrong_key_and_missing_log_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _key, _) = new_log(tmp.path());
    let other = tmp.path().join("other-key");
    Log::init(&tmp.path().join("log2"), "example.com/other", &other).unwrap();
    let e = Log::open(&dir, &other).unwrap_err();
    assert!(
        e.to_string().contains("does not sign the checkpoint"),
        "{e}"
    );
    let e = LogReader::open(&tmp.path().join("nothing")).unwrap_err();
    assert!(e.to_string().contains("parapet log init"), "{e}");
}

#[test]
fn handles_and_tickets_are_thread_safe() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send_static<T: Send + 'static>() {}
    send_sync::<Log>();
    send_static::<parapet_log::AppendTicket>();
    send_static::<parapet_log::BatchTicket>();
}

#[tokio::test]
async fn lazy_entries_ride_the_next_commit_and_commit_alone_after_the_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    // Two lazy entries, then an ordinary one: the ordinary one's commit covers all three, in
    // submission order.
    let a = log.submit_lazy(b"lazy-a".to_vec());
    let b = log.submit_lazy(b"lazy-b".to_vec());
    assert_eq!(log.append(b"urgent-c".to_vec()).await.unwrap(), 2);
    assert!(
        log.size() >= 3,
        "the commit of c must cover the lazy entries queued before it"
    );
    assert_eq!(a.await.unwrap(), 0);
    assert_eq!(b.await.unwrap(), 1);
    // A lazy entry with nothing after it is still made durable on its own. (The timeout only
    // turns a hang into a failure; it is far above LAZY_COMMIT_DELAY.)
    let d = log.submit_lazy(b"lazy-d".to_vec());
    let idx = tokio::time::timeout(std::time::Duration::from_secs(30), d)
        .await
        .expect("a lazy entry alone must be committed after LAZY_COMMIT_DELAY")
        .unwrap();
    assert_eq!(idx, 3);
    assert_eq!(log.size(), 4);
    // Lazy entries queued right before close are flushed by it.
    let e = log.submit_lazy(b"lazy-e".to_vec());
    log.close().await.unwrap();
    assert_eq!(e.await.unwrap(), 4);
    let want: Vec<Vec<u8>> = ["lazy-a", "lazy-b", "urgent-c", "lazy-d", "lazy-e"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(all_entries(&dir), want);
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

/// A power cut that kept only the journal (every tile and the newer checkpoint lost): opening
/// the log replays the journal file and restores every acknowledged entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_replays_the_journal_file_when_tiles_were_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let empty_checkpoint = std::fs::read(dir.join("checkpoint")).unwrap();
    let log = Log::open(&dir, &key).unwrap();
    // Submitted together, so they commit in a few journaled batches well before the periodic
    // full sync (FULL_SYNC_INTERVAL) clears the journal.
    let tickets: Vec<_> = (0..300)
        .map(|i| log.submit(format!("entry {i}").into_bytes()))
        .collect();
    let mut acked = Vec::new();
    for t in tickets {
        acked.push(t.await.unwrap());
    }
    let journal = std::fs::read(dir.join(parapet_log::sequencer::JOURNAL)).unwrap();
    drop(log);
    // The disk after the cut: the size-0 checkpoint and the journal, nothing else.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("checkpoint"), &empty_checkpoint).unwrap();
    std::fs::write(cut.join(parapet_log::sequencer::JOURNAL), &journal).unwrap();
    let records = DirJournal::new(&cut).records().unwrap();
    assert!(
        !records.is_empty(),
        "the journal copy holds no records (a full sync ran first; the machine is too slow?)"
    );
    let log = Log::open(&cut, &key).unwrap();
    assert_eq!(log.size(), 300);
    log.close().await.unwrap();
    assert!(DirJournal::new(&cut).records().unwrap().is_empty());
    verify_log(&cut, &v, None, &no_progress).unwrap();
    let e = all_entries(&cut);
    for (i, idx) in acked.iter().enumerate() {
        assert_eq!(e[*idx as usize], format!("entry {i}").into_bytes());
    }
    // A torn record at the journal's tail (a crash during its write) is ignored.
    let mut torn = journal.clone();
    let end = 4096 + records.iter().map(|r| r.len() + 48).sum::<usize>();
    torn[end - 10] ^= 0xff;
    let cut2 = tmp.path().join("cut2");
    std::fs::create_dir(&cut2).unwrap();
    std::fs::write(cut2.join("checkpoint"), &empty_checkpoint).unwrap();
    std::fs::write(cut2.join(parapet_log::sequencer::JOURNAL), &torn).unwrap();
    let kept = DirJournal::new(&cut2).records().unwrap();
    assert_eq!(kept.len(), records.len() - 1);
    let log = Log::open(&cut2, &key).unwrap();
    assert!(log.size() < 300);
    drop(log);
    verify_log(&cut2, &v, None, &no_progress).unwrap();
}

/// Tiles that cannot be written do not fail a batch whose journal record is durable; the
/// publication is retried while the log is idle, and once space is back the directory shows
/// every acknowledged entry without another append.
#[tokio::test]
async fn a_failed_publication_is_retried_while_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let (log, faults) = FillableDisk::open_log(&dir, &key);
    let tiles_full = faults.tiles_full;
    tiles_full.store(true, Ordering::SeqCst);
    for i in 0..10u8 {
        assert_eq!(log.append(vec![b'p', i]).await.unwrap(), u64::from(i));
    }
    tokio::time::sleep(parapet_log::PUBLISH_INTERVAL * 4).await;
    // Nothing could be published; what is there still verifies, and the journal tells.
    assert_eq!(all_entries(&dir).len(), 0);
    verify_log(&dir, &v, None, &no_progress).unwrap();
    assert_eq!(parapet_log::unpublished_entries(&dir, 0).unwrap(), 10);
    tiles_full.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + parapet_log::FULL_SYNC_INTERVAL * 5;
    while all_entries(&dir).len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the acknowledged entries were not published after space came back"
        );
        tokio::time::sleep(parapet_log::PUBLISH_INTERVAL).await;
    }
    verify_log(&dir, &v, None, &no_progress).unwrap();
    assert_eq!(parapet_log::unpublished_entries(&dir, 10).unwrap(), 0);
    assert_eq!(log.append(b"next".to_vec()).await.unwrap(), 10);
    log.close().await.unwrap();
    let e = all_entries(&dir);
    assert_eq!(e.len(), 11);
    assert_eq!(e[9], [b'p', 9]);
}

/// A batch whose journal append reports an error after the record reached the disk fails, and
/// its record is withdrawn: recovering from the journal does not replay it, and the entries
/// acknowledged after it follow the acknowledged ones.
#[tokio::test]
async fn a_failed_batch_is_withdrawn_from_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let (log, faults) = FillableDisk::open_log(&dir, &key);
    let journal_fails = faults.journal_fails;
    for i in 0..5u8 {
        log.append(vec![b'a', i]).await.unwrap();
    }
    journal_fails.store(true, Ordering::SeqCst);
    let e = log.append(b"failed".to_vec()).await.unwrap_err();
    assert!(e.to_string().contains("writing the journal"), "{e}");
    journal_fails.store(false, Ordering::SeqCst);
    assert_eq!(log.append(b"after".to_vec()).await.unwrap(), 5);
    // "after" got index 5: recovering from the journal did not replay the failed batch.
    log.close().await.unwrap();
    let e = all_entries(&dir);
    assert_eq!(e.len(), 6);
    assert_eq!(e[5], b"after");
    assert!(!e.iter().any(|x| x == b"failed"));
    verify_log(&dir, &v, None, &no_progress).unwrap();
}

/// Small batches' journal records are synced by the writer itself. When that sync fails, every
/// batch it covered (and any written after it) fails, none is ever replayed, and the log
/// carries on from the entries acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_whose_journal_sync_failed_are_withdrawn() {
    journal_sync_failure_withdraws(|log| {
        (0..20u8)
            .map(|i| failing(log.submit(vec![b'f', i])))
            .collect()
    })
    .await;
}

/// Larger batches' journal records are synced on the flusher thread while the writer goes on;
/// a failed sync there fails them the same way, and small batches queued behind them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_batches_whose_journal_sync_failed_on_the_flusher_are_withdrawn() {
    journal_sync_failure_withdraws(|log| {
        let big = (0..3)
            .map(|b| failing(log.submit_batch(batch_of((0..100).map(|i| format!("f{b}-{i}"))))));
        let small = (0..5u8).map(|i| failing(log.submit(vec![b'f', i])));
        big.chain(small).collect()
    })
    .await;
}

/// A submission expected to fail.
type Failing = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>> + Send>>;

/// `ticket` as a [`Failing`], whatever it resolves to on success.
fn failing<T>(
    ticket: impl std::future::Future<Output = Result<T, LogError>> + Send + 'static,
) -> Failing {
    Box::pin(async move { ticket.await.map(drop) })
}

/// In a log holding five entries whose journal syncs fail from now on, `submit` queues entries
/// starting with `f`: each must fail with the sync error, none may be kept, and the log goes on.
async fn journal_sync_failure_withdraws(submit: impl FnOnce(&Log) -> Vec<Failing>) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let (log, faults) = FillableDisk::open_log(&dir, &key);
    for i in 0..5u8 {
        log.append(vec![b'a', i]).await.unwrap();
    }
    faults.sync_fails.store(true, Ordering::SeqCst);
    for t in submit(&log) {
        let e = t.await.unwrap_err();
        assert!(e.to_string().contains("syncing the journal failed"), "{e}");
    }
    assert_eq!(log.size(), 5);
    let e = goes_on_after_sync_failures(log, &faults, &dir, &key, &v, 5).await;
    assert!(!e.iter().any(|x| x[0] == b'f'));
}

/// After `faults.sync_fails` is cleared, the log goes on: the next entry gets index `n`, the log
/// verifies, and opening it again replays nothing of the failed batches. Returns its entries.
async fn goes_on_after_sync_failures(
    log: Log,
    faults: &Faults,
    dir: &Path,
    key: &Path,
    v: &NoteVerifier,
    n: u64,
) -> Vec<Vec<u8>> {
    faults.sync_fails.store(false, Ordering::SeqCst);
    assert_eq!(log.append(b"after".to_vec()).await.unwrap(), n);
    log.close().await.unwrap();
    let e = all_entries(dir);
    assert_eq!(e.len() as u64, n + 1);
    assert_eq!(e[n as usize], b"after");
    verify_log(dir, v, None, &no_progress).unwrap();
    let log = Log::open(dir, key).unwrap();
    assert_eq!(log.size(), n + 1);
    log.close().await.unwrap();
    e
}

/// Batches over 1 MiB skip the journal: the flusher syncs their tiles and publishes their
/// checkpoint while the writer integrates the next batch. If that sync fails, the batch is
/// refused, never published, and the log goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_whose_tile_sync_failed_is_refused_and_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let (log, faults) = FillableDisk::open_log(&dir, &key);
    let big = |tag: u8| {
        let mut b = Batch::new();
        for i in 0..6000u32 {
            let mut e = vec![tag; 200];
            e[..4].copy_from_slice(&i.to_be_bytes());
            b.push(&e).unwrap();
        }
        b
    };
    assert_eq!(log.submit_batch(big(b'a')).await.unwrap(), 0..6000);
    // A small batch after a big one goes through the journal once the big one is settled.
    assert_eq!(log.append(b"small".to_vec()).await.unwrap(), 6000);
    assert_eq!(log.submit_batch(big(b'b')).await.unwrap(), 6001..12001);
    faults.sync_fails.store(true, Ordering::SeqCst);
    let e = log.submit_batch(big(b'f')).await.unwrap_err();
    assert!(
        e.to_string().contains("syncing tiles and the checkpoint"),
        "{e}"
    );
    assert_eq!(log.size(), 12001);
    let e = goes_on_after_sync_failures(log, &faults, &dir, &key, &v, 12001).await;
    assert_eq!(e[6000], b"small");
    assert_eq!(e[12000][4..], [b'b'; 196]);
}

/// A crash between keeping the old checkpoint (a hard link into the pool's quarantine) and
/// replacing it leaves a pool file that is also the published checkpoint. It must never be
/// emptied or reused: the checkpoint and every tile stay intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_file_that_is_also_the_checkpoint_is_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let log = Log::open(&dir, &key).unwrap();
    for i in 0..300u32 {
        log.append(format!("first {i}").into_bytes()).await.unwrap();
    }
    drop(log);
    // The crash window: the published checkpoint has another name in the quarantine (here 64,
    // so that they are what the pool would hand out first).
    std::fs::remove_dir_all(dir.join(".pool")).unwrap();
    let q = dir.join(".pool/f/q");
    std::fs::create_dir_all(&q).unwrap();
    for i in 0..64 {
        std::fs::hard_link(
            dir.join("checkpoint"),
            q.join(format!("left-by-a-crash-{i}")),
        )
        .unwrap();
    }
    let log = Log::open(&dir, &key).unwrap();
    for round in 0..6u32 {
        let tickets: Vec<_> = (0..100u32)
            .map(|i| log.submit(format!("second {round} {i}").into_bytes()))
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        // Let the pool thread hand out what it found before the next writes.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Past the checkpoint quarantine, so that recycled checkpoints have been reused too.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for i in 0..50u32 {
        log.append(format!("third {i}").into_bytes()).await.unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    verify_log(&dir, &v, None, &no_progress).unwrap();
    let e = all_entries(&dir);
    assert_eq!(e.len(), 950);
    assert_eq!(e[0], b"first 0");
    assert_eq!(e[949], b"third 49");
}

/// The journal of a writer that another process has fenced off (it took over integration with
/// a newer generation): sequencing still works, publishing must not.
struct Fenced(DirJournal);

impl Sequencer for Fenced {
    fn sequence(&mut self, record: &[u8]) -> std::io::Result<Option<PendingSync>> {
        self.0.sequence(record)
    }
    fn withdraw_from(&mut self, mark: u64) -> std::io::Result<()> {
        self.0.withdraw_from(mark)
    }
    fn discard_last(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.0.discard_last(record)
    }
    fn records(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        self.0.records()
    }
    fn clear(&mut self) -> std::io::Result<()> {
        self.0.clear()
    }
    fn end_mark(&self) -> u64 {
        self.0.end_mark()
    }
    fn fence(&mut self, _size: u64, _root: &parapet_log::hash::Hash) -> std::io::Result<()> {
        Err(std::io::Error::other("a newer integrator holds the lock"))
    }
}

/// A writer whose sequencer fences it off has its batches sequenced durably but publishes no
/// tile and no checkpoint, not even when it closes; the next writer publishes them.
#[tokio::test]
async fn a_fenced_writer_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, v) = new_log(tmp.path());
    let signer = read_signing_key(&key).unwrap();
    let log = Log::open_with(LocalDir::new(&dir), Fenced(DirJournal::new(&dir)), signer).unwrap();
    // One run: one batch, sequenced before any publication is attempted.
    let run = batch_of((0..10).map(|i| format!("f{i}")));
    assert_eq!(log.submit_run(run).await.unwrap(), 9);
    // Closing tries to publish, and is refused (its result depends on whether a publication was
    // attempted before it).
    let _ = log.close().await;
    drop(log);
    assert_eq!(LogReader::open(&dir).unwrap().size(), 0);
    assert!(!dir.join("tile").exists(), "the fenced writer wrote tiles");
    assert_eq!(parapet_log::unpublished_entries(&dir, 0).unwrap(), 10);
    verify_log(&dir, &v, None, &no_progress).unwrap();
    // The next writer (holding the lock) publishes what was sequenced.
    drop(Log::open(&dir, &key).unwrap());
    let e = all_entries(&dir);
    assert_eq!(e.len(), 10);
    assert_eq!(e[9], b"f9");
    verify_log(&dir, &v, None, &no_progress).unwrap();
}
