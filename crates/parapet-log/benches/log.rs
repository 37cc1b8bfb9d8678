//! `cargo bench -p parapet-log`: durable append throughput (1, 16, 256 concurrent appenders,
//! 200-byte entries), bulk load, and verify throughput on a 1,000,000-entry log, each shown next
//! to the machine's physical limits measured in the same run (raw SHA-256 speed, fsync rate of
//! the disk holding the log). Prints a table. Set `PARAPET_BENCH_DIR` to choose the disk
//! (default: the system temp dir), `PARAPET_BENCH_SECS` for the append phases (default 3) and
//! `PARAPET_BENCH_ONLY=appenders` (or `bulk`) to run only some phases (bulk includes verify),
//! and `PARAPET_BENCH_TASKS=1,16,256` for the appender counts.

use parapet_log::note::NoteVerifier;
use parapet_log::verify::verify_log;
use parapet_log::{bulk, Log};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRY: usize = 200;

fn sha256_mb_s() -> f64 {
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut n = 0u64;
    let mut acc = 0u8;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..16 {
            acc ^= Sha256::digest(&buf)[0];
            n += buf.len() as u64;
        }
    }
    std::hint::black_box(acc);
    n as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn fsync_per_s(dir: &Path) -> f64 {
    let p = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&p).expect("create probe file");
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(p);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Sequential write bandwidth of the disk: 64 MiB written in 1 MiB chunks, then fdatasync
/// (best of two).
fn disk_write_mb_s(dir: &Path) -> f64 {
    let p = dir.join("write-probe");
    let chunk = vec![0x33u8; 1 << 20];
    let mut best = 0f64;
    for _ in 0..2 {
        let mut f = std::fs::File::create(&p).expect("create probe file");
        let start = Instant::now();
        for _ in 0..64 {
            f.write_all(&chunk).expect("write");
        }
        f.sync_data().expect("fdatasync");
        best = best.max(64.0 * 1.048576 / start.elapsed().as_secs_f64());
        drop(f);
        let _ = std::fs::remove_file(&p);
    }
    best
}

/// File creations per second in a new directory beside the logs (what writing a new tile file
/// costs in inode allocation on this file system).
fn creates_per_s(dir: &Path) -> f64 {
    let d = dir.join("create-probe");
    std::fs::create_dir(&d).expect("create probe dir");
    let start = Instant::now();
    let n = 300;
    for i in 0..n {
        std::fs::File::create(d.join(i.to_string())).expect("create probe file");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    rate
}

/// Bytes the log writes per 200-byte entry: the bundle (2 + 200), the leaf hash in its level-0
/// tile (32), and its share of the level-1 tile (32 / 256).
const DISK_BYTES_PER_ENTRY: f64 = 2.0 + ENTRY as f64 + 32.0 + 32.0 / 256.0;

fn entry(task: usize, seq: u64) -> Vec<u8> {
    let mut e = format!("{{\"task\":{task},\"seq\":{seq},\"pad\":\"").into_bytes();
    e.resize(ENTRY - 2, b'x');
    e.extend_from_slice(b"\"}");
    e
}

fn concurrent_appends(root: &Path, tasks: usize, secs: u64) -> (f64, f64) {
    let dir = root.join(format!("appenders-{tasks}"));
    let key = root.join(format!("appenders-{tasks}.key"));
    Log::init(&dir, "bench.example/log", &key).expect("init");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let log = Log::open(&dir, &key).expect("open");
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut hs = Vec::new();
        let start_size = log.size();
        let start = Instant::now();
        for t in 0..tasks {
            let (log, stop, count) = (log.clone(), stop.clone(), count.clone());
            hs.push(tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    log.append(entry(t, seq)).await.expect("append");
                    seq += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.await.expect("task");
        }
        let el = start.elapsed().as_secs_f64();
        let n = count.load(Ordering::Relaxed);
        assert_eq!(log.size() - start_size, n);
        log.close().await.expect("close");
        (n as f64 / el, n as f64)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("PARAPET_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let root = tmp.path();
    let secs: u64 = std::env::var("PARAPET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    eprintln!("measuring SHA-256 and fsync ...");
    let sha = sha256_mb_s();
    let fsync = fsync_per_s(root);
    let disk_mb_s = disk_write_mb_s(root);
    let creates = creates_per_s(root);

    let mut rows: Vec<(String, String, String)> = Vec::new();
    rows.push((
        "raw SHA-256 (1 thread, 1 MiB buffers)".into(),
        format!("{sha:.0} MB/s"),
        "limit".into(),
    ));
    rows.push((
        "disk fsync (4 KiB write + fdatasync)".into(),
        format!("{fsync:.0} /s"),
        "limit".into(),
    ));
    rows.push((
        "disk write (64 MiB + fdatasync)".into(),
        format!("{disk_mb_s:.0} MB/s"),
        "limit".into(),
    ));
    rows.push((
        "file creation (new empty files, no sync)".into(),
        format!("{creates:.0} /s"),
        "limit".into(),
    ));
    let only = std::env::var("PARAPET_BENCH_ONLY").unwrap_or_default();
    let want = |phase: &str| only.is_empty() || only.split(',').any(|p| p == phase);
    let counts: Vec<usize> = std::env::var("PARAPET_BENCH_TASKS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    for tasks in counts {
        if !want("appenders") {
            break;
        }
        eprintln!("{tasks} concurrent appenders for {secs}s ...");
        let (rate, _) = concurrent_appends(root, tasks, secs);
        rows.push((
            format!("durable appends, {tasks} concurrent appenders (200 B)"),
            format!("{rate:.0} entries/s"),
            format!("{:.2} entries per fsync", rate / fsync),
        ));
    }

    // Bulk load of 1,000,000 lines of 200 bytes (the `parapet log append` path).
    if !want("bulk") {
        print_table(&base, rows);
        return;
    }
    eprintln!("bulk append of 1,000,000 lines ...");
    let dir = root.join("bulk");
    let key = root.join("bulk.key");
    let vkey = Log::init(&dir, "bench.example/bulk", &key).expect("init");
    let n = 1_000_000u64;
    let mut input = Vec::with_capacity(n as usize * (ENTRY + 1));
    for i in 0..n {
        input.extend_from_slice(&entry(0, i));
        input.push(b'\n');
    }
    let log = Log::open(&dir, &key).expect("open");
    let start = Instant::now();
    let s = bulk::append_lines(&log, &input[..], |_| {}).expect("bulk append");
    let el = start.elapsed().as_secs_f64();
    assert_eq!(s.indices.end - s.indices.start, n);
    drop(log);
    let bulk_rate = n as f64 / el;
    rows.push((
        "bulk append, 1,000,000 × 200 B lines".into(),
        format!("{bulk_rate:.0} entries/s"),
        format!(
            "{:.0}% of disk write ({:.0} MB/s written); {:.0}% of SHA-256",
            100.0 * bulk_rate * DISK_BYTES_PER_ENTRY / 1e6 / disk_mb_s,
            bulk_rate * DISK_BYTES_PER_ENTRY / 1e6,
            100.0 * bulk_rate * ENTRY as f64 / 1e6 / sha,
        ),
    ));

    eprintln!("verify of 1,000,000 entries ...");
    let v = NoteVerifier::parse(&vkey).expect("vkey");
    let start = Instant::now();
    let rep = verify_log(&dir, &v, None, &|_| {}).expect("verify");
    let el = start.elapsed().as_secs_f64();
    assert_eq!(rep.checkpoint.size, n);
    let mbs = rep.entry_bytes as f64 / el / 1e6;
    rows.push((
        "verify, 1,000,000 entries".into(),
        format!("{mbs:.0} MB/s, {:.0} entries/s", n as f64 / el),
        format!("{:.0}% of SHA-256", 100.0 * mbs / sha),
    ));
    print_table(&base, rows);
}

fn print_table(base: &Path, rows: Vec<(String, String, String)>) {
    let cores = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1);
    println!();
    println!(
        "parapet-log benchmark ({cores} cores, log on {})",
        base.display()
    );
    println!();
    println!("| measurement | result | vs physical limit |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}
