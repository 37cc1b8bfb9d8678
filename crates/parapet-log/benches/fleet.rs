//! `cargo bench -p parapet-log --bench fleet`: the fleet log (`Log::open_fleet`) with a real
//! PostgreSQL (fsync on, `synchronous_commit = on`) and a real Garage, both started here:
//! aggregate durable entries/s with in-process appenders (200-byte entries), from 1 process and
//! from 3 processes appending at once (this binary re-run as children), and the time from an
//! entry's acknowledgement to the first checkpoint in the bucket that covers it (its tiles are
//! written before that checkpoint): p50, p99. `PARAPET_BENCH_SECS` (default 5) sets each
//! phase's length, `PARAPET_BENCH_TASKS` (default 512) the appenders per process.

#[path = "../tests/common/garage.rs"]
mod garage;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use parapet_log::driver::{Driver, S3Config, S3Driver};
use parapet_log::Log;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ENTRY: usize = 200;

/// Sampled acknowledgements: (index, when).
type Samples = Arc<Mutex<Vec<(u64, Instant)>>>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Appends from `tasks` tasks for `secs`; returns the entries acknowledged. With `samples`,
/// records (index, acknowledgement time) of about one entry every 10 ms.
fn run_appenders(log: &Log, tasks: usize, secs: u64, tag: &str, samples: Option<Samples>) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_sample = Arc::new(Mutex::new(Instant::now()));
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (log, count, stop) = (log.clone(), count.clone(), stop.clone());
            let (samples, last_sample) = (samples.clone(), last_sample.clone());
            let tag = tag.to_string();
            handles.push(tokio::spawn(async move {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut e = format!("{tag} {t} {k} ").into_bytes();
                    e.resize(ENTRY, b'x');
                    let i = log.submit(e).await.expect("durable append");
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(s) = &samples {
                        let now = Instant::now();
                        let mut last = last_sample.lock().unwrap();
                        if now.duration_since(*last) >= Duration::from_millis(10) {
                            *last = now;
                            s.lock().unwrap().push((i, now));
                        }
                    }
                    k += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.await.expect("appender task");
        }
    });
    count.load(Ordering::Relaxed)
}

/// The size of the bucket's checkpoint.
fn checkpoint_size(st: &S3Driver) -> u64 {
    let mut buf = Vec::new();
    if !Driver::read_into(st, "checkpoint", &mut buf).unwrap_or(false) {
        return 0;
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// What the publication watcher saw: for each sample (index, ack time) the time until a
/// checkpoint covered it, and the integrator's rate (entries published per second from the
/// phase's start until the last sample was covered).
struct Watched {
    latencies: Vec<Duration>,
    published_per_s: f64,
}

/// Watches the bucket's checkpoint (see [`Watched`]).
fn watch_publication(
    s3: S3Config,
    samples: Samples,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Watched> {
    std::thread::spawn(move || {
        let st = S3Driver::new(&s3).expect("driver");
        let (start, start_size) = (Instant::now(), checkpoint_size(&st));
        let mut lat = Vec::new();
        let mut next = 0usize;
        loop {
            let size = checkpoint_size(&st);
            let now = Instant::now();
            let s = samples.lock().unwrap();
            while next < s.len() && s[next].0 < size {
                lat.push(now.saturating_duration_since(s[next].1));
                next += 1;
            }
            let done = stop.load(Ordering::Acquire) && next == s.len();
            drop(s);
            if done {
                return Watched {
                    latencies: lat,
                    published_per_s: (size - start_size) as f64
                        / now.duration_since(start).as_secs_f64(),
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn child() {
    let var = |k: &str| std::env::var(k).expect("child env");
    let s3 = S3Config {
        bucket: var("PARAPET_FLEET_BUCKET"),
        endpoint: Some(var("PARAPET_FLEET_ENDPOINT")),
        region: var("PARAPET_FLEET_REGION"),
    };
    let log = Log::open_fleet(
        &var("PARAPET_FLEET_URL"),
        &s3,
        Path::new(&var("PARAPET_FLEET_KEY")),
    )
    .expect("open fleet log");
    let n = run_appenders(
        &log,
        env_num("PARAPET_BENCH_TASKS", 512) as usize,
        env_num("PARAPET_BENCH_SECS", 5),
        &var("PARAPET_FLEET_TAG"),
        None,
    );
    println!("COUNT {n}");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if std::env::var_os("PARAPET_FLEET_CHILD").is_some() {
        return child();
    }
    let secs = env_num("PARAPET_BENCH_SECS", 5);
    let tasks = env_num("PARAPET_BENCH_TASKS", 512) as usize;
    let pg = postgres::Postgres::start();
    pg.psql("postgres", "CREATE DATABASE fleet");
    let url = pg.url("fleet");
    let g = garage::Garage::start("parapet-fleet-bench");
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let s3 = S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = tmp.path().join("fleet.key");
    Log::init_fleet(&url, &s3, "parapet.bench/fleet", &key).expect("init");
    println!(
        "fleet log bench: {tasks} appenders per process, {ENTRY}-byte entries, {secs} s per phase, \
         PostgreSQL 15 (fsync on, synchronous_commit on) and Garage on this machine; load before: {}",
        loadavg()
    );

    // 1 process.
    let log = Log::open_fleet(&url, &s3, &key).expect("open");
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_publication(s3.clone(), samples.clone(), stop.clone());
    let n = run_appenders(&log, tasks, secs, "one", Some(samples.clone()));
    stop.store(true, Ordering::Release);
    let w = watcher.join().expect("watcher");
    let mut lat = w.latencies;
    println!(
        "1 process:   {:>9.0} durable entries/s; integrated and published {:>7.0}/s; ack -> \
         published checkpoint p50 {:?}, p99 {:?} ({} samples); load {}",
        n as f64 / secs as f64,
        w.published_per_s,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        lat.len(),
        loadavg()
    );
    drop(log);

    // 3 processes: two children and this one (which samples publication latency).
    let exe = std::env::current_exe().expect("bench binary");
    let children: Vec<_> = (0..2)
        .map(|c| {
            std::process::Command::new(&exe)
                .env("PARAPET_FLEET_CHILD", "1")
                .env("PARAPET_FLEET_URL", &url)
                .env("PARAPET_FLEET_BUCKET", &g.bucket)
                .env("PARAPET_FLEET_ENDPOINT", &g.endpoint)
                .env("PARAPET_FLEET_REGION", &g.region)
                .env("PARAPET_FLEET_KEY", &key)
                .env("PARAPET_FLEET_TAG", format!("child{c}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a child")
        })
        .collect();
    let log = Log::open_fleet(&url, &s3, &key).expect("open");
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_publication(s3.clone(), samples.clone(), stop.clone());
    let mine = run_appenders(&log, tasks, secs, "three", Some(samples.clone()));
    let mut total = mine;
    for c in children {
        let out = c.wait_with_output().expect("child");
        let text = String::from_utf8_lossy(&out.stdout);
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("COUNT ").and_then(|n| n.parse::<u64>().ok()))
            .expect("child count");
    }
    stop.store(true, Ordering::Release);
    let w = watcher.join().expect("watcher");
    let mut lat = w.latencies;
    println!(
        "3 processes: {:>9.0} durable entries/s aggregate; integrated and published {:>7.0}/s; \
         ack -> published checkpoint p50 {:?}, p99 {:?} ({} samples); load {}",
        total as f64 / secs as f64,
        w.published_per_s,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        lat.len(),
        loadavg()
    );
    drop(log);
}
