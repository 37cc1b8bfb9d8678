//! What the log holds, through the real `parapet serve` on a real PostgreSQL: statements longer
//! than one log entry (70 KB and multi-megabyte INSERTs, and a long refused statement) are judged,
//! run and recorded whole (reassembled from the log and compared), `parapet policy replay`
//! re-judges them and `parapet verify` passes; a flood of failed logins with ~10 KB startup
//! packets adds at most 2 KB per failure and every failure is accounted for; and every command
//! stops quietly when its standard output is a closed pipe.

mod common;

use common::{env, ALICE_PW};
use parapet_gateway::events::{Fed, TextReassembler};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARAPET: &str = env!("CARGO_BIN_EXE_parapet");

fn events(log_dir: &Path) -> Vec<(u64, Vec<u8>, serde_json::Value)> {
    let r = LogReader::open(log_dir).unwrap();
    r.entries(0, r.size())
        .map(|x| {
            let (i, b) = x.unwrap();
            let v = serde_json::from_slice(&b).unwrap();
            (i, b, v)
        })
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on the child we started.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

/// A fresh directory with a log, a config for `parapet serve` on a free port (with `extra`
/// lines in `[listen]`) and the policy file `team.cedar` (empty). Returns (dir, port, vkey).
fn serve_dir(name: &str, extra: &str) -> (PathBuf, u16, String) {
    let e = env();
    let dir = e.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let vkey = Log::init(
        &dir.join("log"),
        &format!("parapet.test/{name}"),
        &dir.join("log.key"),
    )
    .unwrap();
    std::fs::write(dir.join("team.cedar"), "").unwrap();
    let port = parapet::pgcluster::free_port().unwrap();
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\n\
         [listen]\npostgres = \"127.0.0.1:{port}\"\n{extra}\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\nenvironment = \"production\"\n\
         {}\n[policy]\nfiles = [\"team.cedar\"]\ndefault_pack = true\npoll_seconds = 0\n",
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()])
    );
    std::fs::write(dir.join("parapet.toml"), config).unwrap();
    (dir, port, vkey)
}

/// Stops `parapet serve` with SIGTERM and waits for it.
fn stop(mut gw: std::process::Child) {
    signal(gw.id(), libc::SIGTERM);
    let st = gw.wait().unwrap();
    assert!(st.success(), "parapet serve exited with {st}");
}

/// A text with everything JSON escaping grows: quotes, backslashes, newlines, tabs, a control
/// character, and multi-byte characters (which parts must not split).
fn awkward(i: usize) -> String {
    format!("row {i}: \"quoted\" back\\slash\ttab\nnewline \u{1} é ü 日本 🦀 it''s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_statements_are_recorded_whole_replayed_and_verified() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ws_t (id int, v text)");
    let (dir, port, vkey) = serve_dir("whole", "max_message_size = 16777216");
    let log_dir = dir.join("log");
    let gw = common::start_serve(&dir.join("parapet.toml"), port).await;
    let c = e.client(([127, 0, 0, 1], port).into()).await;

    // ~70 KB, simple protocol: a few long rows.
    let mut a = String::from("INSERT INTO ws_t VALUES ");
    for i in 0..40 {
        let v = awkward(i).repeat(30);
        // Raw control characters, quotes and backslashes in a standard string literal.
        let sep = if i > 0 { "," } else { "" };
        a.push_str(&format!("{sep}({i}, '{}')", v.replace('\'', "''")));
    }
    assert!((65_536..100_000).contains(&a.len()), "{}", a.len());
    c.simple_query(&a).await.unwrap();

    // ~3 MB, extended protocol (Parse): many short rows, so even the normalised text
    // (`($1, $2), …`) is too long for one entry.
    let mut b = String::from("INSERT INTO ws_t VALUES ");
    for i in 0..25_000 {
        b.push_str(&format!(
            "{}({}, 'bulk row {i} {}')",
            if i > 0 { "," } else { "" },
            1000 + i,
            "x".repeat(100)
        ));
    }
    // The last row calls a function: only a judge that sees the whole text knows.
    b.push_str(", (26000, md5('the last row'))");
    assert!(b.len() > 3_000_000, "{}", b.len());
    assert_eq!(c.execute(b.as_str(), &[]).await.unwrap(), 25_001);

    // A long refused statement: its refusal names its decision, which holds it whole.
    let refused = format!(
        "DELETE FROM ws_t /* {} */",
        "a comment that makes the statement long ".repeat(2500)
    );
    assert!(refused.len() > 100_000);
    let err = c.simple_query(&refused).await.unwrap_err();
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42501", "{}", db.message());
    let refused_at = common::audit_index(db.detail().unwrap_or(""));
    assert_eq!(
        e.direct("SELECT count(*) FROM ws_t WHERE id < 40 OR id >= 1000"),
        "25041"
    );
    drop(c);
    stop(gw);

    // Reassembled from the log, each text is exactly what was sent.
    let all = events(&log_dir);
    let mut texts = TextReassembler::new();
    let mut found = Vec::new();
    for (i, bytes, ev) in &all {
        assert!(bytes.len() <= 65_535);
        match texts.feed(ev).unwrap() {
            Fed::Part => {
                // Plain text, not an encoding of it: every part is a piece of one of the texts.
                let t = ev["text"].as_str().unwrap();
                assert!(
                    a.contains(t)
                        || b.contains(t)
                        || refused.contains(t)
                        || ev["field"] == "normalized",
                    "part at {i} is not plain statement text"
                );
            }
            Fed::Decision(whole) => {
                let n = ev["sql_parts"].as_u64().unwrap_or(0);
                if n > 0 {
                    let m = ev["normalized_parts"].as_u64().unwrap_or(0);
                    // The run is contiguous, just before the decision.
                    for k in 1..=n + m {
                        assert_eq!(all[(*i - k) as usize].2["type"], "statement_text");
                    }
                    assert!(ev.get("sql").is_none());
                    found.push((*i, whole, n, m));
                }
            }
            Fed::Other => {}
        }
    }
    assert_eq!(
        found.len(),
        3,
        "decisions stored in parts: {:?}",
        found.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    let sql = |k: usize| found[k].1.sql.as_deref().unwrap();
    assert_eq!(sql(0), a);
    assert_eq!(found[0].2, 2);
    assert_eq!(sql(1), b);
    assert!(
        found[1].3 > 0,
        "the 3 MB statement's normalised text is in parts too"
    );
    let norm = found[1].1.normalized.as_deref().unwrap();
    assert!(
        norm.starts_with("INSERT INTO ws_t VALUES ($1, $2)"),
        "{}",
        &norm[..80]
    );
    assert_eq!(sql(2), refused);
    assert_eq!(found[2].0, refused_at);
    assert_eq!(all[refused_at as usize].2["decision"], "deny");

    // `parapet verify` passes; `parapet policy replay` re-judges the whole texts.
    common::assert_verifies(&log_dir, &vkey);
    let replay = |policy: Option<&Path>| {
        let mut cmd = Command::new(PARAPET);
        cmd.args(["policy", "replay", "--json", "--log"])
            .arg(&log_dir);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rep = replay(None);
    assert_eq!(rep["unreadable_entries"], 0, "{rep}");
    assert_eq!(rep["decisions"], rep["unchanged"], "{rep}");
    let parts: u64 = found.iter().map(|f| f.2 + f.3).sum();
    assert_eq!(rep["statement_text_parts"], parts);
    // Under a set that forbids md5(), only the 3 MB statement turns: md5 is in its last part.
    let policy = dir.join("no-md5.cedar");
    std::fs::write(
        &policy,
        "@id(\"team.no-md5\")\n@reason(\"test\")\n\
         forbid (principal, action, resource) when { context.functions.contains(\"md5\") };\n",
    )
    .unwrap();
    let rep = replay(Some(&policy));
    assert_eq!(rep["newly_blocked"], 1, "{rep}");
    assert_eq!(
        rep["newly_blocked_by_rule"]["team.no-md5"]["count"], 1,
        "{rep}"
    );
    assert_eq!(rep["unreadable_entries"], 0, "{rep}");
}

/// Reads backend messages until one of type `want` (or an ErrorResponse); returns (type, body).
async fn read_until(s: &mut tokio::net::TcpStream, want: u8) -> (u8, Vec<u8>) {
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        if head[0] == want || head[0] == b'E' {
            return (head[0], body);
        }
    }
}

/// One failed login from `from` (a loopback address) with ~10 KB of startup parameters: an
/// unknown 4,000-byte user full of control characters, a long database and application_name.
async fn failed_login(gw: u16, from: std::net::Ipv4Addr, n: usize) -> Vec<String> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    let mut s = sock.connect(([127, 0, 0, 1], gw).into()).await.unwrap();
    let user = format!("{n:06}\u{1}\"{}", "u\u{2}\\é".repeat(798));
    let db = format!("db{n}{}", "d".repeat(2900));
    let app = format!("app{n}{}", "a".repeat(2800));
    let mut buf = bytes::BytesMut::new();
    frontend::startup_message(
        [
            ("user", user.as_str()),
            ("database", db.as_str()),
            ("application_name", app.as_str()),
        ],
        &mut buf,
    )
    .unwrap();
    assert!(buf.len() > 9_000 && buf.len() <= 10_000, "{}", buf.len());
    s.write_all(&buf).await.unwrap();
    let (t, _) = read_until(&mut s, b'R').await;
    assert_eq!(t, b'R');
    let mut scram = ScramSha256::new(b"wrong password", ChannelBinding::unsupported());
    buf.clear();
    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let (t, body) = read_until(&mut s, b'R').await;
    assert_eq!(t, b'R');
    scram.update(&body[4..]).unwrap();
    buf.clear();
    frontend::sasl_response(scram.message(), &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let (t, body) = read_until(&mut s, b'E').await;
    assert_eq!(t, b'E');
    assert!(String::from_utf8_lossy(&body).contains("28P01"));
    vec![user, db, app]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_logins_adds_at_most_2_kb_each_and_is_all_counted() {
    const ADDRS: u8 = 20;
    const EACH: usize = 15;
    let (dir, port, vkey) = serve_dir("authflood", "");
    let log_dir = dir.join("log");
    let gw = common::start_serve(&dir.join("parapet.toml"), port).await;
    let disk_before = du(&log_dir);
    let mut tasks = Vec::new();
    for a in 1..=ADDRS {
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for k in 0..EACH {
                sent.push(failed_login(port, [127, 0, 0, a].into(), a as usize * 100 + k).await);
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    // Another client still logs in and is served.
    let c = env().client(([127, 0, 0, 1], port).into()).await;
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    stop(gw);
    let total = usize::from(ADDRS) * EACH;

    let all = events(&log_dir);
    let mut individual = 0usize;
    let mut counted = 0u64;
    let mut bytes = 0usize;
    let mut per_addr = std::collections::HashMap::<String, usize>::new();
    for (_, b, ev) in &all {
        match ev["type"].as_str().unwrap() {
            "auth_failure" => {
                individual += 1;
                bytes += b.len();
                assert!(b.len() <= 2048, "auth_failure of {} bytes", b.len());
                assert_eq!(ev["reason"], "unknown user");
                *per_addr
                    .entry(ev["client_addr"].as_str().unwrap().into())
                    .or_default() += 1;
                // Truncated, with the length and hash of what was sent.
                let user = ev["user"].as_str().unwrap();
                let whole = sent
                    .iter()
                    .find(|s| s[0].starts_with(user) && user.len() >= 6)
                    .expect("user prefix of a sent user");
                assert_eq!(ev["truncated"]["user"]["bytes"], whole[0].len());
                assert_eq!(
                    ev["truncated"]["user"]["sha256"],
                    parapet_gateway::events::sha256_hex(whole[0].as_bytes())
                );
                assert_eq!(ev["truncated"]["target"]["bytes"], whole[1].len());
                assert_eq!(ev["truncated"]["application_name"]["bytes"], whole[2].len());
            }
            "auth_failure_summary" => {
                bytes += b.len();
                let n = ev["count"].as_u64().unwrap();
                let listed: u64 = ev["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["count"].as_u64().unwrap())
                    .sum();
                assert_eq!(listed + ev["other_count"].as_u64().unwrap(), n, "{ev}");
                counted += n;
            }
            _ => {}
        }
    }
    // Every failure is accounted for, once.
    assert_eq!(individual as u64 + counted, total as u64);
    assert!(counted > 0, "past the rate, failures are counted");
    assert!(per_addr.values().all(|&n| n <= 10), "{per_addr:?}");
    assert!(bytes <= 2048 * total, "{bytes} bytes for {total} failures");
    let disk_after = du(&log_dir);
    eprintln!(
        "{total} failed logins with ~10 KB startup packets: {individual} auth_failure events, \
         {counted} counted in summaries; {bytes} entry bytes ({} per failure), log directory grew \
         {} bytes ({} per failure)",
        bytes / total,
        disk_after.saturating_sub(disk_before),
        disk_after.saturating_sub(disk_before) / total as u64
    );
    common::assert_verifies(&log_dir, &vkey);
}

/// Bytes in the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}

/// A pipe whose read end is already closed: every write to the other end fails with EPIPE.
fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2) failed");
    // SAFETY: both descriptors are fresh from pipe(2) and owned exactly once here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    w
}

/// Runs `parapet args…` with stdout a closed pipe; asserts a quiet exit with status 141.
fn assert_quiet_on_closed_stdout(args: &[&str], stdin: &str) {
    let mut child = Command::new(PARAPET)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(141),
        "{args:?}: {} {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
}

#[test]
fn every_command_stops_quietly_when_stdout_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let key = tmp.path().join("key");
    let vkey = Log::init(&dir, "parapet.test/pipe", &key).unwrap();
    {
        let log = Log::open(&dir, &key).unwrap();
        let mut b = parapet_log::Batch::new();
        for i in 0..50 {
            b.push(format!("{{\"type\":\"x\",\"n\":{i}}}").as_bytes())
                .unwrap();
        }
        log.submit_batch(b).wait().unwrap();
    }
    let d = dir.to_str().unwrap();
    let k = key.to_str().unwrap();
    for args in [
        vec!["log", "proof", "inclusion", "--dir", d, "--index", "3"],
        vec!["log", "proof", "consistency", "--dir", d, "--old", "10"],
        vec!["verify", "--dir", d, "--vkey", &vkey],
        vec!["policy", "schema"],
        vec!["policy", "default-pack"],
        vec!["policy", "replay", "--log", d],
    ] {
        assert_quiet_on_closed_stdout(&args, "");
    }
    assert_quiet_on_closed_stdout(&["user", "add", "bob", "--password-stdin"], "pw-of-bob\n");
    assert_quiet_on_closed_stdout(&["policy", "eval"], "{\"sql\":\"SELECT 1\"}\n");
    // Appending: the entries are in (the log is closed properly), only the summary is lost.
    assert_quiet_on_closed_stdout(&["log", "append", "--dir", d, "--key", k], "a\nb\n");
    assert_eq!(LogReader::open(&dir).unwrap().size(), 52);
    common::assert_verifies(&dir, &vkey);

    // A reader that goes away mid-stream: the first answer is read, then the pipe is closed
    // and more input makes eval write again.
    let mut child = Command::new(PARAPET)
        .args(["policy", "eval"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"{\"sql\":\"SELECT 1\"}\n").unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"{");
    drop(stdout);
    for _ in 0..100 {
        if stdin.write_all(b"{\"sql\":\"SELECT 2\"}\n").is_err() {
            break; // It is gone already.
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
