//! A fleet: three real `parapet serve` processes share one log (`[log] backend = "postgres"`,
//! sequenced in a PostgreSQL cluster of its own, published to one real Garage bucket), created
//! with the real `parapet log init --config FILE --key KEYFILE`. pgbench runs through each
//! gateway at once, inserting unique values into an upstream table. Mid-load one gateway that
//! does not integrate is killed with SIGKILL, then the one that integrates (found through its
//! advisory lock), then the sequencer's PostgreSQL is stopped (the surviving gateway refuses: SQLSTATE 58030)
//! and started again (`pg_ctl stop` / `start`). Afterwards
//! the log verifies from the bucket over HTTP (`parapet verify --url`, Garage's website
//! endpoint), the checkpoint's size is what PostgreSQL sequenced and integrated, every value in
//! the upstream table has the decision of its INSERT in the log, and no entry is there twice.

mod common;
#[path = "../../parapet-log/tests/common/garage.rs"]
mod garage;
#[path = "../../parapet-log/tests/common/postgres.rs"]
mod postgres;

use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::driver::{Driver, S3Config, S3Driver};
use parapet_log::tile::{bundle_path, for_each_bundle_entry, tile_width};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `parapet serve`, killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Starts `parapet serve --config CONFIG` (stderr in CONFIG.log) and waits until it listens.
fn start_gateway(config: &Path, port: u16) -> Serve {
    let log = config.with_extension("log");
    let child = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start parapet serve");
    let mut gw = Serve { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = gw.child.try_wait().unwrap().is_some();
        assert!(
            !exited && Instant::now() < deadline,
            "parapet serve did not start listening on {port}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gw
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

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every entry of the published log of `size` entries, in index order.
fn published_entries(st: &S3Driver, size: u64) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    for i in 0..size.div_ceil(256) {
        let w = tile_width(0, i, size);
        assert!(
            Driver::read_into(st, &bundle_path(i, w), &mut buf).unwrap(),
            "bundle {i} missing"
        );
        for_each_bundle_entry(&buf, w as usize, |_, e| {
            entries.push(e.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    }
    entries
}

/// Runs pgbench (`script`) through the gateway on `port` again and again until `stop`.
fn pgbench_loop(port: u16, script: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let script = script.to_path_buf();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            let _ = Command::new(common::tool("pgbench"))
                .args(["-n", "-c", "3", "-T", "2", "-h", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .arg("-f")
                .arg(&script)
                .args(["-U", "alice", "main"])
                .env("PGPASSWORD", ALICE_PW)
                .env("PGSSLMODE", "disable")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_log_through_kills_and_a_sequencer_restart() {
    let e = env();
    e.direct("CREATE TABLE fleet_items (v bigint PRIMARY KEY)");
    let seq = postgres::Postgres::start();
    seq.psql("postgres", "CREATE DATABASE fleet");
    let g = garage::Garage::start("parapet-fleet-gw");
    // One test in this binary: nothing else reads the environment meanwhile.
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let upstream = format!(
        "postgres://postgres:{}@127.0.0.1:{}/app",
        e.pg_password, e.pg_port
    );
    let user = parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()]);
    let ports: Vec<u16> = (0..3).map(|_| common::http::free_port()).collect();
    let configs: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            let config = format!(
                "[log]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nbucket = \"{}\"\n\
                 endpoint = \"{}\"\nregion = \"{}\"\ndir = \"local{n}\"\nkey = \"fleet.key\"\n\
                 origin = \"parapet.test/fleet\"\n\
                 [listen]\npostgres = \"127.0.0.1:{port}\"\n\
                 [[targets]]\nname = \"main\"\nupstream = \"{upstream}\"\n{user}\n\
                 [policy]\nfiles = []\ndefault_pack = true\npoll_seconds = 0\n",
                seq.url("fleet"),
                g.bucket,
                g.endpoint,
                g.region
            );
            let path = dir.join(format!("gw{n}.toml"));
            std::fs::write(&path, config).unwrap();
            path
        })
        .collect();

    // The real `parapet log init --config FILE --key KEYFILE`.
    let init = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["log", "init", "--config"])
        .arg(&configs[0])
        .arg("--key")
        .arg(dir.join("fleet.key"))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "parapet log init --config: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let stdout = String::from_utf8_lossy(&init.stdout).into_owned();
    let vkey = stdout.lines().last().unwrap().trim().to_string();
    assert!(vkey.starts_with("parapet.test/fleet+"), "{stdout}");
    std::fs::write(dir.join("fleet.vkey"), format!("{vkey}\n")).unwrap();

    let mut gateways = Vec::new();
    for (config, port) in configs.iter().zip(&ports) {
        gateways.push(start_gateway(config, *port));
    }
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "\\set v random(1, 9000000000000000000)\nINSERT INTO fleet_items VALUES (:v);\n",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = gateways
        .iter()
        .map(|gw| pgbench_loop(gw.port, &script, stop.clone()))
        .collect();
    let rows = || {
        e.direct("SELECT count(*) FROM fleet_items")
            .parse::<u64>()
            .unwrap()
    };

    wait_for("inserts through the gateways", || rows() >= 300);
    wait_for("a gateway integrates", || integrator_pid(&seq).is_some());
    let integrating = integrator_pid(&seq).unwrap();
    let bystander = gateways
        .iter()
        .position(|gw| gw.child.id() != integrating)
        .unwrap();
    gateways[bystander].kill9();
    let before = rows();
    wait_for("more inserts", || rows() >= before + 300);
    let integrating = integrator_pid(&seq).expect("an integrator");
    let victim = gateways
        .iter()
        .position(|gw| gw.child.id() == integrating)
        .expect("the integrator is a gateway");
    gateways[victim].kill9();
    wait_for("the last gateway takes integration over", || {
        integrator_pid(&seq).is_some_and(|p| p != integrating)
    });
    let before = rows();
    wait_for("more inserts", || rows() >= before + 200);
    // The sequencer down: the surviving gateway refuses (fail closed, SQLSTATE 58030); back up
    // (the same data directory, as `pg_ctl restart` would), it works again.
    seq.ctl("stop");
    let survivor = (0..3).find(|i| *i != bystander && *i != victim).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gateways[survivor].port));
    let refused = match tokio_postgres::connect(&e.gw_conninfo(addr), tokio_postgres::NoTls).await {
        Err(err) => err.code().cloned(),
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
                .batch_execute("INSERT INTO fleet_items VALUES (1)")
                .await
                .err()
                .and_then(|err| err.code().cloned())
        }
    };
    assert_eq!(
        refused.as_ref().map(|c| c.code()),
        Some("58030"),
        "with the sequencer down a gateway must refuse (fail closed)"
    );
    seq.ctl("start");
    let before = rows();
    wait_for("inserts after the sequencer's restart", || {
        rows() >= before + 200
    });
    stop.store(true, Ordering::Release);
    for l in loads {
        l.join().unwrap();
    }

    // Everything the sequencer holds gets published by the surviving gateway.
    let sequenced = || {
        seq.psql(
            "fleet",
            "SELECT s.next || ' ' || t.size FROM parapet_fleet_sequence s, parapet_fleet_state t",
        )
    };
    wait_for("the state catches up with the sequence", || {
        let s = sequenced();
        let (a, b) = s.split_once(' ').unwrap();
        a == b
    });
    let size: u64 = sequenced().split_once(' ').unwrap().0.parse().unwrap();
    let s3 = S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    };
    let st = S3Driver::new(&s3).unwrap();
    let vk = parapet_log::note::NoteVerifier::parse(&vkey).unwrap();
    wait_for("the checkpoint covers every sequenced entry", || {
        parapet_log::verify::verify_source(&st, &vk, None, &|_| {})
            .is_ok_and(|r| r.checkpoint.size == size)
    });
    let verify = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["verify", "--url", &g.web_url, "--vkey", &vkey])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "parapet verify --url: {report}");
    assert!(report.contains(&size.to_string()), "{report}");

    // `parapet doctor` reports the fleet log: PostgreSQL answers and the bucket verifies.
    let doctor = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["doctor", "--config"])
        .arg(&configs[2])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(
        said.contains(&format!("{size} entries sequenced, {size} integrated")),
        "{said}"
    );
    assert!(
        said.contains(&format!("bucket {} verifies", g.bucket)),
        "{said}"
    );

    let entries = published_entries(&st, size);
    let mut seen = HashSet::new();
    let mut sql = String::new();
    for e in &entries {
        assert!(seen.insert(e.as_slice()), "an entry is in the log twice");
        let v: serde_json::Value = serde_json::from_slice(e).expect("entry is JSON");
        if v["type"] == "decision" {
            if let Some(s) = v["sql"].as_str() {
                sql.push_str(s);
                sql.push('\n');
            }
        }
    }
    let values = e.direct("SELECT v FROM fleet_items");
    let values: Vec<&str> = values
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(values.len() >= 1000, "only {} inserts ran", values.len());
    eprintln!(
        "fleet: {} inserts ran through the gateways; the log holds {size} entries",
        values.len()
    );
    for v in values {
        assert!(
            sql.contains(&format!("INSERT INTO fleet_items VALUES ({v})")),
            "the INSERT of {v} ran but its decision is not in the log"
        );
    }
}
