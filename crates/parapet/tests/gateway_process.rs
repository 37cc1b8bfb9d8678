//! The real `parapet serve` process: policies reloaded on SIGHUP (a good set takes effect and is
//! an audit event; a broken set is refused, recorded, and the old set stays in force),
//! `[log] statement_text = "normalized"` keeping literals out of the log, and a clean stop on
//! SIGTERM that records `gateway_stop` and leaves a log that verifies.

mod common;

use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use std::path::Path;
use std::time::Duration;

fn events(log_dir: &Path) -> Vec<serde_json::Value> {
    let r = LogReader::open(log_dir).unwrap();
    r.entries(0, r.size())
        .map(|x| serde_json::from_slice(&x.unwrap().1).unwrap())
        .collect()
}

/// Waits (up to 10 s) for an event of type `ty` after the first `skip` entries.
async fn wait_event(log_dir: &Path, skip: usize, ty: &str) -> serde_json::Value {
    for _ in 0..200 {
        if let Some(v) = events(log_dir)
            .into_iter()
            .skip(skip)
            // Decisions on statements: a login's startup parameters are a decision too.
            .find(|v| v["type"] == ty && v["protocol"] != "startup")
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {ty} event in the log within 10 s");
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on the child we started.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

const WATCH_INSERTS: &str = "@id(\"team.no-hup-inserts\")\n@reason(\"hup_t is read-only now\")\n\
    forbid (principal, action, resource) when { context.kinds.contains(\"insert\") };\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_normalized_statements_and_sigterm() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS hup_t (id int, secret text)");
    let dir = e.dir.join("process");
    std::fs::create_dir_all(&dir).unwrap();
    let log_dir = dir.join("log");
    let vkey = Log::init(&log_dir, "parapet.test/process", &dir.join("log.key")).unwrap();
    // v1: a harmless rule (no statement here creates a view).
    let policy = dir.join("team.cedar");
    std::fs::write(
        &policy,
        "@id(\"team.no-views\")\n@reason(\"no views\")\n\
         forbid (principal, action, resource) when { context.kinds.contains(\"create\") && context.kinds.contains(\"view\") };\n",
    )
    .unwrap();
    let port = parapet::pgcluster::free_port().unwrap();
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\nstatement_text = \"normalized\"\n\
         [listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\nenvironment = \"production\"\n\
         {}\n[policy]\nfiles = [\"team.cedar\"]\ndefault_pack = true\npoll_seconds = 0\n",
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()])
    );
    std::fs::write(dir.join("parapet.toml"), config).unwrap();
    let mut gw = common::start_serve(&dir.join("parapet.toml"), port).await;
    let pid = gw.id();
    let c = e.client(([127, 0, 0, 1], port).into()).await;

    // statement_text = "normalized": the decision carries the normalised text and fingerprint,
    // and the literal never reaches the log.
    c.simple_query("INSERT INTO hup_t VALUES (1, 'top-secret-literal')")
        .await
        .unwrap();
    let dec = wait_event(&log_dir, 0, "decision").await;
    assert!(dec.get("sql").is_none(), "sql recorded: {dec}");
    let norm = dec["normalized"].as_str().expect("normalized text");
    assert!(norm.contains("hup_t") && norm.contains("$"), "{norm}");
    assert!(dec["fingerprint"].is_string());
    let r = LogReader::open(&log_dir).unwrap();
    for entry in r.entries(0, r.size()) {
        let (i, b) = entry.unwrap();
        assert!(
            !String::from_utf8_lossy(&b).contains("top-secret-literal"),
            "entry {i} holds the literal"
        );
    }

    // SIGHUP after changing the file: the new set is in force, and the reload is recorded.
    let before = events(&log_dir).len();
    std::fs::write(&policy, WATCH_INSERTS).unwrap();
    signal(pid, libc::SIGHUP);
    let reload = wait_event(&log_dir, before, "policy_reload").await;
    assert_eq!(reload["trigger"], "sighup");
    assert_ne!(reload["old_hash"], reload["new_hash"]);
    let err = c
        .simple_query("INSERT INTO hup_t VALUES (2, 'x')")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message()
            .starts_with("parapet: blocked by team.no-hup-inserts:"),
        "{}",
        db.message()
    );

    // SIGHUP with a broken file: refused, recorded, the previous set stays in force.
    let before = events(&log_dir).len();
    std::fs::write(&policy, "forbid (principal, action, resource) when { ;\n").unwrap();
    signal(pid, libc::SIGHUP);
    let failed = wait_event(&log_dir, before, "policy_reload_failed").await;
    assert_eq!(failed["trigger"], "sighup");
    assert_eq!(failed["policy_hash"], reload["new_hash"]);
    let err = c
        .simple_query("INSERT INTO hup_t VALUES (3, 'x')")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .expect("server error")
        .message()
        .starts_with("parapet: blocked by team.no-hup-inserts:"));
    assert_eq!(
        e.direct("SELECT count(*) FROM hup_t WHERE id > 1"),
        "0",
        "a blocked insert reached the database"
    );
    // Still serving reads.
    let rows = c.simple_query("SELECT count(*) FROM hup_t").await.unwrap();
    assert!(!rows.is_empty());
    drop(c);

    // SIGTERM: a clean stop that records gateway_stop; the log verifies.
    signal(pid, libc::SIGTERM);
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = gw.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = match status {
        Some(s) => s,
        None => {
            let _ = gw.kill();
            panic!("parapet serve did not stop within 10 s of SIGTERM");
        }
    };
    assert!(status.success(), "parapet serve exited with {status}");
    let last = events(&log_dir).pop().unwrap();
    assert_eq!(last["type"], "gateway_stop");
    common::assert_verifies(&log_dir, &vkey);
}
