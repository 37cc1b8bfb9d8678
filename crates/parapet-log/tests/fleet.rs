//! The fleet log (`Log::init_fleet` / `Log::open_fleet`) with a real PostgreSQL cluster
//! (tests/common/postgres.rs) and a real Garage (tests/common/garage.rs):
//! - three `Log`s of one process (three connections) append at once;
//! - PostgreSQL stopped: appends fail; started again: they work again (reconnect), and so does
//!   integration;
//! - three processes (this test binary re-run as `fleet_child`) append at once; one that does
//!   not integrate is killed with SIGKILL, then the one that integrates (found through its
//!   advisory lock); another takes integration over;
//! - afterwards the bucket verifies (through the driver and over HTTP from Garage's website
//!   endpoint), its checkpoint has as many entries as PostgreSQL sequenced and as the state row
//!   says, every acknowledged entry is at its index, and no entry appears twice.

#[path = "common/garage.rs"]
mod garage;
#[path = "common/postgres.rs"]
mod postgres;

use parapet_log::driver::{Driver, S3Config, S3Driver};
use parapet_log::http_source::HttpSource;
use parapet_log::note::NoteVerifier;
use parapet_log::tile::{bundle_path, for_each_bundle_entry, tile_width};
use parapet_log::verify::verify_source;
use parapet_log::{Log, LogError};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ORIGIN: &str = "parapet.test/fleet";

/// Acknowledged entries: index → entry.
type Acks = Arc<Mutex<Vec<(u64, String)>>>;

fn s3_config(g: &garage::Garage) -> S3Config {
    S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    }
}

/// Appends `n` entries `{tag} {k}` through `log`, 64 in flight; records the acknowledged ones.
async fn append(log: &Log, tag: &str, n: usize, acks: &Acks) -> Result<(), LogError> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let tickets: Vec<_> = chunk
            .iter()
            .map(|k| {
                let e = format!("{tag} {k}");
                (log.submit(e.clone().into_bytes()), e)
            })
            .collect();
        for (t, e) in tickets {
            let i = t.await?;
            acks.lock().unwrap().push((i, e));
        }
    }
    Ok(())
}

/// A child process appending to the fleet log; its acknowledgements are collected.
struct ChildAppender {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn spawn_child(
    url: &str,
    g: &garage::Garage,
    key: &std::path::Path,
    tag: &str,
    count: usize,
    stop_file: &std::path::Path,
    acks: &Acks,
) -> ChildAppender {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "fleet_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("PARAPET_FLEET_URL", url)
        .env("PARAPET_FLEET_BUCKET", &g.bucket)
        .env("PARAPET_FLEET_ENDPOINT", &g.endpoint)
        .env("PARAPET_FLEET_REGION", &g.region)
        .env("PARAPET_FLEET_KEY", key)
        .env("PARAPET_FLEET_TAG", tag)
        .env("PARAPET_FLEET_COUNT", count.to_string())
        .env("PARAPET_FLEET_STOP", stop_file)
        .envs(g.aws_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a child appender");
    let out = child.stdout.take().expect("stdout");
    let acks = acks.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ACK ") {
                if let Some((i, e)) = rest.split_once(' ') {
                    acks.lock()
                        .unwrap()
                        .push((i.parse().expect("index"), e.to_string()));
                }
            }
        }
    });
    ChildAppender {
        child,
        reader: Some(reader),
    }
}

impl ChildAppender {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        self.wait();
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let st = self.child.wait().expect("wait for child");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        st
    }
}

/// The OS pid of the process holding the integrator lock, if any.
fn integrator_pid(pg: &postgres::Postgres) -> Option<u32> {
    let name = pg.psql(
        "fleet",
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted",
    );
    name.strip_prefix("parapet fleet integrator ")
        .and_then(|p| p.trim().parse().ok())
}

/// Waits (up to 60 s) until `cond` holds; panics with `what` otherwise.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every entry of the published log of `size` entries, in index order.
fn published_entries(st: &S3Driver, size: u64) -> Vec<String> {
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    for i in 0..size.div_ceil(256) {
        let w = tile_width(0, i, size);
        assert!(
            Driver::read_into(st, &bundle_path(i, w), &mut buf).unwrap(),
            "bundle {i} missing"
        );
        for_each_bundle_entry(&buf, w as usize, |_, e| {
            entries.push(String::from_utf8_lossy(e).into_owned());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    }
    entries
}

#[test]
fn a_fleet_of_appenders_shares_one_log_through_kills_and_a_postgres_restart() {
    let pg = postgres::Postgres::start();
    pg.psql("postgres", "CREATE DATABASE fleet");
    let url = pg.url("fleet");
    let g = garage::Garage::start("parapet-fleet");
    // One test in this binary (fleet_child runs only in child processes): nothing else reads
    // the environment meanwhile.
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let s3 = s3_config(&g);
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("fleet.key");
    let vkey = Log::init_fleet(&url, &s3, ORIGIN, &key).unwrap();
    let again = Log::init_fleet(&url, &s3, ORIGIN, &tmp.path().join("other.key")).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let vkey = NoteVerifier::parse(&vkey).unwrap();
    let acks: Acks = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Three logs (three connections each) append at once.
    let logs: Vec<Log> = (0..3)
        .map(|_| Log::open_fleet(&url, &s3, &key).unwrap())
        .collect();
    rt.block_on(async {
        let tasks: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(l, log)| {
                let (log, acks) = (log.clone(), acks.clone());
                tokio::spawn(async move { append(&log, &format!("inproc{l}"), 1500, &acks).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().expect("appended");
        }
    });
    assert_eq!(acks.lock().unwrap().len(), 4500);

    // PostgreSQL down: appends fail (nothing acknowledged); back up: they work again.
    pg.ctl("stop");
    let failed = rt.block_on(logs[0].append(b"while postgres is down".to_vec()));
    assert!(
        failed.is_err(),
        "an append succeeded without PostgreSQL: {failed:?}"
    );
    pg.ctl("start");
    let mut ok = None;
    for attempt in 0..100 {
        match rt.block_on(logs[1].append(format!("after restart {attempt}").into_bytes())) {
            Ok(i) => {
                acks.lock()
                    .unwrap()
                    .push((i, format!("after restart {attempt}")));
                ok = Some(i);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert!(
        ok.is_some(),
        "appends did not recover after PostgreSQL came back"
    );
    rt.block_on(append(&logs[2], "restarted", 500, &acks))
        .expect("appends after restart");
    drop(logs);

    // Three processes append at once (each at least 4000 entries, then until told to stop);
    // one is killed, then the one that integrates.
    let stop_file = tmp.path().join("stop");
    let mut children: Vec<ChildAppender> = (0..3)
        .map(|c| {
            spawn_child(
                &url,
                &g,
                &key,
                &format!("child{c}"),
                4000,
                &stop_file,
                &acks,
            )
        })
        .collect();
    let base = acks.lock().unwrap().len();
    wait_for("the children acknowledged 2000 entries", || {
        acks.lock().unwrap().len() >= base + 2000
    });
    wait_for("a child integrates", || {
        integrator_pid(&pg).is_some_and(|p| children.iter().any(|c| c.pid() == p))
    });
    let integrating = integrator_pid(&pg).unwrap();
    let bystander = children
        .iter()
        .position(|c| c.pid() != integrating)
        .unwrap();
    children[bystander].kill9();
    let after_first = acks.lock().unwrap().len();
    wait_for("the children acknowledged 1000 more entries", || {
        acks.lock().unwrap().len() >= after_first + 1000
    });
    let integrating = integrator_pid(&pg).expect("an integrator");
    let victim = children
        .iter()
        .position(|c| c.pid() == integrating)
        .expect("the integrator is a child");
    children[victim].kill9();
    wait_for("another process takes integration over", || {
        integrator_pid(&pg).is_some_and(|p| p != integrating)
    });
    let after_takeover = acks.lock().unwrap().len();
    wait_for("the survivor acknowledged 500 more entries", || {
        acks.lock().unwrap().len() >= after_takeover + 500
    });
    std::fs::write(&stop_file, b"stop").unwrap();
    for (i, c) in children.iter_mut().enumerate() {
        if i != bystander && i != victim {
            assert!(c.wait().success(), "the surviving child failed");
        }
    }

    // A last process publishes whatever is left; then everything agrees.
    let log = Log::open_fleet(&url, &s3, &key).unwrap();
    let sequenced: u64 = pg
        .psql("fleet", "SELECT next FROM parapet_fleet_sequence")
        .parse()
        .unwrap();
    let st = S3Driver::new(&s3).unwrap();
    wait_for(
        "the bucket's checkpoint covers every sequenced entry",
        || verify_source(&st, &vkey, None, &|_| {}).is_ok_and(|r| r.checkpoint.size == sequenced),
    );
    drop(log);
    let from_bucket = verify_source(&st, &vkey, None, &|_| {}).unwrap();
    let web = HttpSource::new(&g.web_url, None, None).unwrap();
    let over_http = verify_source(&web, &vkey, None, &|_| {}).unwrap();
    assert_eq!(over_http.checkpoint.size, sequenced);
    assert_eq!(over_http.checkpoint.root, from_bucket.checkpoint.root);
    let state: u64 = pg
        .psql("fleet", "SELECT size FROM parapet_fleet_state")
        .parse()
        .unwrap();
    assert_eq!(state, sequenced, "the state row and the sequence disagree");
    let entries = published_entries(&st, sequenced);
    let mut seen = HashSet::new();
    for e in &entries {
        assert!(seen.insert(e.as_str()), "entry {e:?} appears twice");
    }
    let acks = acks.lock().unwrap();
    let mut by_index = HashMap::new();
    for (i, e) in acks.iter() {
        assert!(
            by_index.insert(*i, e).is_none(),
            "index {i} acknowledged twice"
        );
        assert_eq!(
            entries.get(*i as usize).map(String::as_str),
            Some(e.as_str()),
            "acknowledged entry {e:?} is not at index {i}"
        );
    }
    assert!(
        acks.len() >= 4500 + 501 + 4000,
        "{} acknowledged",
        acks.len()
    );
    assert!(
        pg.psql("fleet", "SELECT count(*) FROM parapet_fleet_batches") == "0",
        "published batches were not deleted"
    );
}

/// A child appender of the test above (run only by it, in a process of its own).
#[test]
#[ignore = "a helper process of the fleet test"]
fn fleet_child() {
    if std::env::var_os("PARAPET_FLEET_URL").is_none() {
        // Not started by the fleet test (e.g. `--include-ignored`): nothing to do.
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let s3 = S3Config {
        bucket: var("PARAPET_FLEET_BUCKET"),
        endpoint: Some(var("PARAPET_FLEET_ENDPOINT")),
        region: var("PARAPET_FLEET_REGION"),
    };
    let tag = var("PARAPET_FLEET_TAG");
    let count: usize = var("PARAPET_FLEET_COUNT").parse().unwrap();
    let log = Log::open_fleet(
        &var("PARAPET_FLEET_URL"),
        &s3,
        std::path::Path::new(&var("PARAPET_FLEET_KEY")),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stop = std::path::PathBuf::from(var("PARAPET_FLEET_STOP"));
    rt.block_on(async {
        let mut from = 0;
        while from < count || !stop.exists() {
            let chunk: Vec<usize> = (from..from + 32).collect();
            from += 32;
            let tickets: Vec<_> = chunk
                .iter()
                .map(|k| {
                    let e = format!("{tag} {k}");
                    (log.submit(e.clone().into_bytes()), e)
                })
                .collect();
            for (t, e) in tickets {
                let i = t.await.expect("appended");
                println!("ACK {i} {e}");
            }
        }
    });
    drop(log);
}
