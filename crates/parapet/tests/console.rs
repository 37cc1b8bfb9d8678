//! The console's HTTP API with a real gateway and PostgreSQL (`parapet quickstart`, the real
//! process): the 401s; the tlog-tiles read API, mirrored over HTTP and verified offline with
//! `parapet verify`; search with filters, full text and pages; one entry with its inclusion
//! proof checked against the signed checkpoint; the live stream, resumed after a disconnect with
//! `Last-Event-ID`, without gap or duplicate; metrics; `parapet console token`.

mod common;

use base64::Engine;
use common::http::*;
use parapet_log::note::NoteVerifier;
use parapet_log::tile::{bundle_path, tile_count, tile_path, tile_width};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_api_over_a_real_gateway() {
    let pg_port = free_port();
    let qs = Quickstart::start(pg_port);
    let console = qs.field("console:");
    let (url, token) = console
        .split_once("token:")
        .expect("console line with a token");
    let addr: SocketAddr = url
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("console address");
    let token = token.trim().to_string();
    let password = qs
        .field("password:")
        .split_whitespace()
        .next()
        .expect("password")
        .to_string();
    let vkey = NoteVerifier::parse(qs.field("verifier key:")).expect("vkey");
    let log_dir = std::path::PathBuf::from(qs.field("audit log:"));

    // Without a token: 401, everywhere but nowhere else.
    for path in [
        "/api/events",
        "/api/events/stream",
        "/api/entries/0",
        "/metrics",
        "/log/checkpoint",
        "/log/tile/entries/000.p/1",
    ] {
        let r = get(addr, path, None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        assert_eq!(
            get(addr, path, Some("pt_not-a-token")).status,
            401,
            "{path}"
        );
    }

    // Statements through the gateway.
    let conn = format!("host=127.0.0.1 port={pg_port} user=alice password={password} dbname=main application_name=console-test");
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect through the gateway");
    tokio::spawn(connection);
    let tag = format!("probe{}", std::process::id());
    c.batch_execute(&format!(
        "CREATE TABLE ledger_{tag} (id int); INSERT INTO ledger_{tag} VALUES (1), (2)"
    ))
    .await
    .expect("allowed");
    let err = c
        .batch_execute(&format!("DELETE FROM ledger_{tag}"))
        .await
        .expect_err("blocked");
    assert!(
        err.to_string().contains("parapet.delete-without-where")
            || err
                .as_db_error()
                .is_some_and(|e| e.message().contains("parapet.delete-without-where")),
        "{err:?}"
    );

    // Search: the blocked statement by user, decision and rule; by table; by full text.
    let denied = eventually("the denial in the index", || {
        let r = get(
            addr,
            "/api/events?user=alice&decision=deny&rule=parapet.delete-without-where",
            Some(&token),
        );
        assert_eq!(r.status, 200);
        let v = r.json();
        v["events"].as_array()?.first().cloned()
    });
    let deny_index = denied["index"].as_u64().expect("index");
    assert_eq!(denied["event"]["sql"], format!("DELETE FROM ledger_{tag}"));
    let by_table = get(
        addr,
        &format!("/api/events?table=ledger_{tag}&type=decision"),
        Some(&token),
    )
    .json();
    assert_eq!(
        by_table["events"].as_array().map(Vec::len),
        Some(2),
        "{by_table}"
    );
    let by_text = get(
        addr,
        &format!("/api/events?q=%22delete%20from%22%20ledger_{tag}"),
        Some(&token),
    )
    .json();
    assert_eq!(
        by_text["events"][0]["index"].as_u64(),
        Some(deny_index),
        "{by_text}"
    );
    let prefix = get(
        addr,
        &format!("/api/events?q=ledger_{}*&type=decision", &tag[..5]),
        Some(&token),
    )
    .json();
    assert!(
        prefix["events"].as_array().is_some_and(|a| a.len() >= 2),
        "{prefix}"
    );
    // Pages: newest first, `next` as `before`, null at the end.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/api/events?limit=3&before={b}"),
            None => "/api/events?limit=3".into(),
        };
        let page = get(addr, &path, Some(&token)).json();
        seen.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["index"].as_u64().expect("index")),
        );
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat: {seen:?}"
    );
    assert_eq!(
        *seen.last().expect("events"),
        0,
        "pages reach the first entry"
    );
    assert_eq!(
        get(addr, "/api/events?since=yesterday", Some(&token)).status,
        400
    );

    // One entry with its proof, checked here against the signed checkpoint.
    let e = get(addr, &format!("/api/entries/{deny_index}"), Some(&token)).json();
    let b64 = base64::engine::general_purpose::STANDARD;
    let cp_text = vkey
        .open(
            e["checkpoint"].as_str().expect("checkpoint").as_bytes(),
            "checkpoint",
        )
        .expect("the checkpoint is signed by the log's key");
    let cp = parapet_log::checkpoint::Checkpoint::parse(cp_text, "checkpoint").expect("checkpoint");
    let leaf: [u8; 32] = b64
        .decode(e["leaf_hash"].as_str().expect("leaf"))
        .expect("b64")
        .try_into()
        .expect("32 bytes");
    let proof: Vec<[u8; 32]> = e["inclusion_proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|h| {
            b64.decode(h.as_str().expect("str"))
                .expect("b64")
                .try_into()
                .expect("32 bytes")
        })
        .collect();
    parapet_log::proof::verify_inclusion(deny_index, cp.size, &leaf, &proof, &cp.root)
        .expect("the inclusion proof holds");
    assert_eq!(e["event"]["sql"], format!("DELETE FROM ledger_{tag}"));
    let raw = serde_json::to_vec(&e["event"]).expect("json");
    let _ = raw; // the leaf is over the entry's exact bytes, which the proof binds.
    assert_eq!(
        get(addr, "/api/entries/999999999", Some(&token)).status,
        404
    );

    // The tlog-tiles API: mirror the log over HTTP and verify the mirror offline.
    let cp_resp = get(addr, "/log/checkpoint", Some(&token));
    assert_eq!(
        cp_resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(cp_resp.header("content-encoding").is_none());
    let cp = parapet_log::checkpoint::Checkpoint::parse(
        vkey.open(&cp_resp.body, "checkpoint").expect("signed"),
        "checkpoint",
    )
    .expect("checkpoint");
    let mirror = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    let mut level = 0;
    while tile_count(level, cp.size) > 0 {
        for i in 0..tile_count(level, cp.size) {
            let w = tile_width(level, i, cp.size);
            paths.push(tile_path(level, i, w));
            if level == 0 {
                paths.push(bundle_path(i, w));
            }
        }
        level += 1;
    }
    for p in &paths {
        let r = get(addr, &format!("/log/{p}"), Some(&token));
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(
            r.header("content-type"),
            Some("application/octet-stream"),
            "{p}"
        );
        assert_eq!(
            r.body,
            std::fs::read(log_dir.join(p)).expect("the file"),
            "{p}: exactly the file's bytes"
        );
        if !p.contains(".p/") {
            assert_eq!(
                r.header("cache-control"),
                Some("private, max-age=31536000, immutable"),
                "{p}"
            );
        }
        let dst = mirror.path().join(p);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::write(dst, &r.body).expect("write");
    }
    std::fs::write(mirror.path().join("checkpoint"), &cp_resp.body).expect("write");
    let v = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["verify", "--dir"])
        .arg(mirror.path())
        .args(["--vkey", &vkey.to_key_text()])
        .output()
        .expect("parapet verify");
    assert!(
        v.status.success(),
        "the mirror verifies: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    for bad in [
        "/log/tile/0/../../log.key",
        "/log/journal",
        "/log/tile/0/x1/000",
    ] {
        assert_ne!(get(addr, bad, Some(&token)).status, 200, "{bad}");
    }

    // The live stream: a statement appears; after a disconnect, Last-Event-ID resumes with no
    // gap and no duplicate.
    let mut sse = Sse::open(
        addr,
        "/api/events/stream?user=alice&type=decision",
        &token,
        None,
    );
    c.simple_query(&format!("SELECT 'live-1-{tag}'"))
        .await
        .expect("select");
    let (id1, ev1) = sse.next();
    assert!(
        ev1["event"]["sql"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("live-1-{tag}"))),
        "{ev1}"
    );
    assert_eq!(ev1["index"].as_u64(), Some(id1));
    drop(sse);
    c.simple_query(&format!("SELECT 'live-2-{tag}'"))
        .await
        .expect("select");
    c.simple_query(&format!("SELECT 'live-3-{tag}'"))
        .await
        .expect("select");
    let mut sse = Sse::open(
        addr,
        "/api/events/stream?user=alice&type=decision",
        &token,
        Some(id1),
    );
    let (id2, ev2) = sse.next();
    let (id3, ev3) = sse.next();
    assert!(
        ev2["event"]["sql"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("live-2-{tag}"))),
        "{ev2}"
    );
    assert!(
        ev3["event"]["sql"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("live-3-{tag}"))),
        "{ev3}"
    );
    assert!(id1 < id2 && id2 < id3);
    // What the stream skipped in between (outcomes, other types) is what the filter excludes.
    let between = get(
        addr,
        &format!("/api/events?user=alice&type=decision&before={id3}&limit=5"),
        Some(&token),
    )
    .json();
    let ids: Vec<u64> = between["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["index"].as_u64())
        .filter(|i| *i > id1)
        .collect();
    assert_eq!(ids, vec![id2], "no gap");

    // The same search from a terminal, and its live tail.
    let log_arg = log_dir.to_str().expect("utf-8").to_string();
    let cli = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "events",
            "--log",
            &log_arg,
            "--user",
            "alice",
            "--decision",
            "deny",
            "--json",
        ])
        .output()
        .expect("parapet events");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines.last().and_then(|l| l["index"].as_u64()),
        Some(deny_index)
    );
    let table = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "events",
            "--log",
            &log_arg,
            "--rule",
            "parapet.delete-without-where",
        ])
        .output()
        .expect("parapet events");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("index") && h.contains("statement")),
        "{table}"
    );
    assert!(
        table.contains(&format!("DELETE FROM ledger_{tag}")) && table.contains("deny"),
        "{table}"
    );
    let mut follow = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "events", "--log", &log_arg, "--type", "decision", "--limit", "1", "--json", "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("parapet events --follow");
    let mut tail = BufReader::new(follow.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while tail.read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                return;
            }
        }
    });
    // The newest existing decision first: the scan is done, following has begun.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the newest decision within 10 s");
    c.simple_query(&format!("SELECT 'tail-{tag}'"))
        .await
        .expect("select");
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed event within 10 s");
    assert!(got.contains(&format!("tail-{tag}")), "{got}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Metrics (the commit-latency histogram counts every statement judged so far).
    let m = get(addr, "/metrics", Some(&token));
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("parapet_decision_commit_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        commits >= 5,
        "statements waited for durable decisions: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("parapet_decisions_total{")
                && l.contains("decision=\"deny\"")
                && l.contains("rule=\"parapet.delete-without-where\"")),
        "{text}"
    );
    for name in [
        "parapet_sessions_total",
        "parapet_statements_total",
        "parapet_log_size_entries",
        "parapet_index_lag_entries",
        "parapet_decision_commit_seconds_bucket{le=\"0.001\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("parapet_") || l.is_empty()),
        "{text}"
    );
}

#[test]
fn console_token_prints_a_token_and_its_block() {
    let o = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "console", "token", "--name", "ann", "--role", "auditor", "--user", "alice",
        ])
        .output()
        .expect("run");
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let token = out.lines().next().expect("token line").trim();
    assert!(token.starts_with("pt_") && token.len() > 30, "{out}");
    let block: String = out
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let v: toml::Value = toml::from_str(&block).expect("a TOML block");
    let t = &v["console"]["tokens"][0];
    assert_eq!(t["name"].as_str(), Some("ann"));
    assert_eq!(t["role"].as_str(), Some("auditor"));
    assert_eq!(t["user"].as_str(), Some("alice"));
    use sha2::Digest;
    assert_eq!(
        t["sha256"].as_str(),
        Some(hex::encode(sha2::Sha256::digest(token.as_bytes())).as_str())
    );
    assert!(
        !out.contains(&format!("= \"{token}\"")),
        "the token itself is not in the block"
    );
}

/// A `parapet serve` process; killed if the test ends without stopping it (a failed assert).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `parapet serve --config`; returns it once both listeners answer.
fn serve(config: &std::path::Path, ports: [u16; 2]) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("parapet serve");
    let served = Served(child);
    for p in ports {
        eventually("the listener", || TcpStream::connect(("127.0.0.1", p)).ok());
    }
    served
}

/// Stops it with SIGTERM; it must exit cleanly.
fn stop(mut served: Served) {
    // SAFETY: kill(2) on the child started here.
    unsafe {
        libc::kill(served.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = eventually("serve to stop", || served.0.try_wait().ok().flatten());
    assert!(status.success(), "{status}");
}

/// Sessions, terminate, and locks that survive a restart, through `parapet serve` with a real
/// PostgreSQL; auditors may not act; every action is an audit event naming the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_terminate_and_locks_that_survive_a_restart() {
    use parapet::pgcluster::{PgCluster, PgOptions};
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let pg_dir = tmp.path().join("pg");
    std::fs::create_dir(&pg_dir).expect("mkdir");
    let cluster = PgCluster::start(
        &pg_dir,
        &PgOptions {
            password: "su".into(),
            no_fsync: true,
            max_connections: 50,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#} (apt-get install postgresql)"));
    cluster
        .psql("postgres", "CREATE ROLE app LOGIN PASSWORD 'app'")
        .expect("role");
    cluster
        .psql("postgres", "CREATE DATABASE shop OWNER app")
        .expect("db");
    let (pg_port, console_port) = (free_port(), free_port());
    let dir = tmp.path().join("setup");
    let init = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "init",
            "--upstream",
            &cluster.url_as("app", "app", "shop"),
            "--user",
            "alice",
            "--listen",
            &format!("127.0.0.1:{pg_port}"),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = String::from_utf8_lossy(&init.stdout).into_owned();
    let password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .and_then(|r| r.split_whitespace().next())
        .expect("password")
        .to_string();
    let (op, aud) = (
        parapet::console::auth::generate(),
        parapet::console::auth::generate(),
    );
    let config = dir.join("parapet.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[console]\nlisten = \"127.0.0.1:{console_port}\"\n\n"
    ));
    text.push_str(&parapet::cli::console::token_block(
        "olga",
        parapet::config::ConsoleRole::Operator,
        &parapet::console::auth::digest(&op),
        None,
    ));
    text.push_str(&parapet::cli::console::token_block(
        "audrey",
        parapet::config::ConsoleRole::Auditor,
        &parapet::console::auth::digest(&aud),
        None,
    ));
    std::fs::write(&config, text).expect("write config");
    let addr = SocketAddr::from(([127, 0, 0, 1], console_port));
    let conn = format!("host=127.0.0.1 port={pg_port} user=alice password={password} dbname=main application_name=victim");
    // The client, and its connection's end (where an unsolicited FATAL is reported).
    let connect = || async {
        tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .map(|(c, connection)| (c, tokio::spawn(connection)))
    };

    let gw = serve(&config, [pg_port, console_port]);
    let (c, conn_end) = connect().await.expect("login");
    c.simple_query("SELECT 1").await.expect("select");
    let listed = get(addr, "/api/sessions", Some(&aud)).json();
    let s = listed["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["application_name"] == "victim"))
        .cloned()
        .unwrap_or_else(|| panic!("the session is listed: {listed}"));
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "main");
    assert!(
        s["statements"].as_u64().is_some_and(|n| n >= 1) && s["last_statement"].is_string(),
        "{s}"
    );
    let id = s["id"].as_str().expect("id").to_string();
    // Auditors read; they may not act.
    assert_eq!(
        post(addr, &format!("/api/sessions/{id}/terminate"), &aud, "{}").status,
        403
    );
    assert_eq!(
        post(addr, "/api/users/alice/lock", &aud, r#"{"reason":"x"}"#).status,
        403
    );
    // Terminate: the client hears who did it, and the session is gone.
    let r = post(addr, &format!("/api/sessions/{id}/terminate"), &op, "{}");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_end)
        .await
        .expect("the connection ends")
        .expect("join");
    let err = ended.expect_err("ended by the gateway's FATAL");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a FATAL from the gateway: {err:?}"));
    assert_eq!(db.code().code(), "57P01");
    assert!(
        db.message().contains("olga"),
        "the operator is named: {db:?}"
    );
    assert!(c.simple_query("SELECT 2").await.is_err());
    assert_eq!(
        post(addr, &format!("/api/sessions/{id}/terminate"), &op, "{}").status,
        404
    );
    // Lock: live sessions end, new ones are refused with the reason; a reason is required.
    let (live, live_end) = connect().await.expect("login");
    assert_eq!(post(addr, "/api/users/alice/lock", &op, "{}").status, 400);
    let r = post(
        addr,
        "/api/users/alice/lock",
        &op,
        r#"{"reason":"suspicious bulk export"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["terminated"], 1);
    let ended = tokio::time::timeout(Duration::from_secs(10), live_end)
        .await
        .expect("the live session ends")
        .expect("join");
    assert!(
        ended.is_err_and(|e| e.as_db_error().is_some_and(|d| d.code().code() == "57P01")),
        "the live session ended with 57P01"
    );
    assert!(live.simple_query("SELECT 3").await.is_err());
    let Err(refused) = connect().await else {
        panic!("refused while locked")
    };
    let db = refused.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("suspicious bulk export"), "{db:?}");
    // The lock survives a restart: it is rebuilt from the log.
    stop(gw);
    let gw = serve(&config, [pg_port, console_port]);
    let Err(refused) = connect().await else {
        panic!("still locked after a restart")
    };
    assert_eq!(
        refused
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .as_deref(),
        Some("28000")
    );
    let users = get(addr, "/api/users", Some(&aud)).json();
    assert_eq!(users["users"][0]["name"], "alice");
    assert_eq!(users["users"][0]["locked"], true);
    let r = post(
        addr,
        "/api/users/alice/unlock",
        &op,
        r#"{"reason":"cleared by security"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (c, _) = connect().await.expect("unlocked");
    c.simple_query("SELECT 4").await.expect("runs");
    // Every action is an audit event naming the operator.
    let found = eventually("the actions in the index", || {
        let page = get(addr, "/api/events?limit=200", Some(&aud)).json();
        let evs: Vec<serde_json::Value> = page["events"]
            .as_array()?
            .iter()
            .map(|e| e["event"].clone())
            .collect();
        let kinds = ["session_terminate", "user_lock", "user_unlock"];
        kinds
            .iter()
            .all(|k| evs.iter().any(|e| e["type"] == *k && e["by"] == "olga"))
            .then_some(evs)
    });
    assert!(found
        .iter()
        .any(|e| e["type"] == "login_refused" && e["user"] == "alice"));
    stop(gw);
    // The index is derived: rebuilt from the log, it answers the same.
    let rebuilt = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["index", "rebuild", "--config"])
        .arg(&config)
        .output()
        .expect("index rebuild");
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(String::from_utf8_lossy(&rebuilt.stdout).starts_with("indexed "));
    let gw = serve(&config, [pg_port, console_port]);
    let locks = get(addr, "/api/events?type=user_lock", Some(&aud)).json();
    assert_eq!(
        locks["events"][0]["event"]["reason"], "suspicious bulk export",
        "{locks}"
    );
    stop(gw);
}
