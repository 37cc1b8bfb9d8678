//! `kill -9` of a real `parapet serve` process in the middle of a write load: afterwards
//! `parapet verify` passes and every statement PostgreSQL executed has its decision in the log.

mod common;

use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_executed_statement() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS crash_t (id bigint primary key)");
    let dir = e.dir.join("crash");
    std::fs::create_dir_all(&dir).unwrap();
    let log_dir = dir.join("log");
    let key = dir.join("log.key");
    let vkey = Log::init(&log_dir, "parapet.test/crash", &key).unwrap();
    let port = parapet::pgcluster::free_port().unwrap();
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\n[listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\nenvironment = \"production\"\n\
         {}\n[policy]\ndefault_pack = true\n",
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()])
    );
    std::fs::write(dir.join("parapet.toml"), config).unwrap();
    let mut gw = common::start_serve(&dir.join("parapet.toml"), port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let c = e.client(([127, 0, 0, 1], port).into()).await;
            let mut acked = Vec::new();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let id = w * 1_000_000 + i;
                i += 1;
                // Both protocols.
                let r = if i % 2 == 0 {
                    c.simple_query(&format!("INSERT INTO crash_t VALUES ({id})"))
                        .await
                        .map(|_| ())
                } else {
                    c.execute(&format!("INSERT INTO crash_t VALUES ({id})"), &[])
                        .await
                        .map(|_| ())
                };
                match r {
                    Ok(()) => acked.push(id),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gw.kill().expect("kill -9"); // SIGKILL
    gw.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 20,
        "the load did not run ({} statements)",
        acked.len()
    );

    // What the dead gateway left verifies as it is, and `verify` says how many acknowledged
    // entries only the journal holds; `parapet log recover` (or restarting the gateway)
    // publishes them.
    let published = LogReader::open(&log_dir).unwrap().size();
    let pending = parapet_log::unpublished_entries(&log_dir, published).unwrap();
    let note = common::assert_verifies(&log_dir, &vkey);
    if pending > 0 {
        assert!(
            note.contains(&format!("holds {pending} acknowledged entries")),
            "{note}"
        );
        assert!(
            note.contains("run `parapet log recover --dir") && !note.contains("  "),
            "{note}"
        );
    } else {
        assert!(!note.contains("note: the journal"), "{note}");
    }
    let recover = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["log", "recover", "--dir"])
        .arg(&log_dir)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run parapet log recover");
    let said = String::from_utf8_lossy(&recover.stdout);
    assert!(
        recover.status.success() && said.contains("recovered"),
        "parapet log recover failed: {said} {}",
        String::from_utf8_lossy(&recover.stderr)
    );
    let note = common::assert_verifies(&log_dir, &vkey);
    assert!(!note.contains("note: the journal"), "{note}");
    assert!(LogReader::open(&log_dir).unwrap().size() >= published + pending);

    let executed: HashSet<i64> = e
        .direct("SELECT id FROM crash_t")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        acked.is_subset(&executed),
        "an acknowledged insert is missing from the table"
    );
    let r = LogReader::open(&log_dir).unwrap();
    let mut logged = HashSet::new();
    for entry in r.entries(0, r.size()) {
        let (_, b) = entry.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        if v["type"] == "decision" && v["decision"] == "allow" {
            if let Some(id) = v["sql"]
                .as_str()
                .and_then(|s| s.strip_prefix("INSERT INTO crash_t VALUES ("))
            {
                logged.insert(id.trim_end_matches(')').parse::<i64>().unwrap());
            }
        }
    }
    let missing: Vec<_> = executed.difference(&logged).collect();
    assert!(
        missing.is_empty(),
        "{} executed statements have no decision in the log: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(executed.len() >= acked.len());
}
