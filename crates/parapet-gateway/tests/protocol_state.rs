//! Protocol state the client cannot desynchronise: the gateway follows the server's own state
//! through COPY (Sync and Flush inside COPY FROM STDIN are ignored, as PostgreSQL does), the
//! unnamed and named prepared statements, and refusals that nothing in the session can switch
//! off; then connection limits and timeouts. Ends with a differential property test: random
//! interleavings of the simple, extended and COPY protocols, with refusals mixed in, sent through
//! the gateway and straight to the same server, must give the client the same replies, leave the
//! same rows, and leave an audit log whose outcomes name the statements that ran.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use parapet_gateway::Durability;
use parapet_guard::{Guard, PolicySource, RequestContext, Verdict};
use parapet_log::LogReader;
use postgres_protocol::message::frontend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn execute(out: &mut BytesMut) {
    frontend::execute("", 0, out).expect("execute");
}

fn copy_data(data: &str, out: &mut BytesMut) {
    out.put_u8(b'd');
    out.put_i32((4 + data.len()) as i32);
    out.put_slice(data.as_bytes());
}

fn copy_done(out: &mut BytesMut) {
    out.put_u8(b'c');
    out.put_i32(4);
}

fn flush(out: &mut BytesMut) {
    out.put_u8(b'H');
    out.put_i32(4);
}

/// The tag of the first CommandComplete.
fn first_tag(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'C')?;
    Some(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned())
}

impl Client {
    async fn send(&mut self, out: &BytesMut) {
        self.s.write_all(out).await.expect("write");
    }

    /// Runs one simple Query and returns its replies.
    async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        let mut out = BytesMut::new();
        query(sql, &mut out);
        self.send(&out).await;
        bounded(self.until_ready()).await
    }

    /// Messages up to and including the first of type `tag`.
    async fn until(&mut self, tag: u8) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = bounded(self.read_msg()).await;
            let done = m.0 == tag;
            v.push(m);
            if done {
                return v;
            }
        }
    }
}

/// Fails the test instead of hanging when the gateway never answers.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("no answer within 30 s: the session is desynchronised or stuck")
}

/// Every log entry, once the log shows every entry acknowledged so far.
fn entries(s: &Setup) -> Vec<(u64, serde_json::Value)> {
    let want = s.log.size();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = LogReader::open(&s.log_dir).expect("open log");
        if r.size() >= want {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "log not published");
        std::thread::sleep(Duration::from_millis(5));
    };
    r.entries(0, r.size())
        .map(|e| {
            let (i, bytes) = e.expect("entry");
            (i, serde_json::from_slice(&bytes).expect("json"))
        })
        .collect()
}

/// The server's own address, for clients that bypass the gateway.
fn server(s: &Setup) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.cluster.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_flush_inside_copy_are_ignored() {
    let s = setup(Durability::BeforeForward).await;
    let mut c = Client::connect(s.gw).await;
    c.simple("CREATE TABLE copy_simple (x int)").await;

    // Simple protocol, data sent before the server asked for it, with a Sync and a Flush inside.
    let mut out = BytesMut::new();
    query("COPY copy_simple FROM STDIN", &mut out);
    copy_data("1\n", &mut out);
    frontend::sync(&mut out);
    flush(&mut out);
    copy_data("2\n", &mut out);
    copy_done(&mut out);
    query("SELECT count(*) FROM copy_simple", &mut out);
    c.send(&out).await;
    let r1 = bounded(c.until_ready()).await;
    assert!(r1.iter().any(|m| m.0 == b'G'), "{r1:?}");
    assert_eq!(first_tag(&r1).as_deref(), Some("COPY 2"), "{r1:?}");
    let r2 = bounded(c.until_ready()).await;
    assert_eq!(
        first_value(&r2).as_deref(),
        Some("2"),
        "one ReadyForQuery per query"
    );

    // Extended protocol as libpq sends it: Parse/Bind/Describe/Execute/Sync at once (that Sync
    // arrives in copy-in mode and is ignored), then the data, CopyDone and another Sync.
    let mut out = BytesMut::new();
    parse("", "COPY copy_simple FROM STDIN", &mut out);
    bind("", &mut out);
    frontend::describe(b'P', "", &mut out).expect("describe");
    execute(&mut out);
    frontend::sync(&mut out);
    c.send(&out).await;
    c.until(b'G').await;
    let mut out = BytesMut::new();
    copy_data("3\n", &mut out);
    copy_done(&mut out);
    frontend::sync(&mut out);
    c.send(&out).await;
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_tag(&r).as_deref(), Some("COPY 1"), "{r:?}");

    // The same, when the COPY fails before it starts: then the first Sync is a real one.
    let mut out = BytesMut::new();
    parse("", "COPY copy_missing FROM STDIN", &mut out);
    bind("", &mut out);
    execute(&mut out);
    frontend::sync(&mut out);
    c.send(&out).await;
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("42P01"));

    // Replies still match requests: a refusal is still rewritten, counts are right.
    let r = c.simple("DROP TABLE copy_simple").await;
    let (code, msg) = first_error(&r).expect("refused");
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.starts_with("parapet: blocked by parapet.drop"), "{msg}");
    let r = c.simple("SELECT count(*) FROM copy_simple").await;
    assert_eq!(first_value(&r).as_deref(), Some("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cannot_be_switched_off() {
    let s = setup(Durability::BeforeForward).await;
    // Whatever a session may create or replace: here plpgsql's inline handler made a no-op
    // (straight on the server, so the test does not depend on what the policies allow), and a
    // prepared statement with the name refusals used to rely on.
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    let r = admin
        .simple(
            "CREATE OR REPLACE LANGUAGE plpgsql HANDLER plpgsql_call_handler \
             INLINE void_recv VALIDATOR plpgsql_validator",
        )
        .await;
    assert!(first_error(&r).is_none(), "{r:?}");
    let mut c = Client::connect(s.gw).await;
    c.simple("CREATE TABLE kept (x int)").await;
    c.simple("PREPARE parapet_refused AS SELECT 1").await;

    // Simple protocol: the refusal fails the transaction, so COMMIT rolls back.
    c.simple("BEGIN").await;
    c.simple("INSERT INTO kept VALUES (1)").await;
    let r = c.simple("DROP TABLE kept").await;
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("42501"));
    assert_eq!(r.last().map(|m| m.1.clone()), Some(b"E".to_vec()), "{r:?}");
    let r = c.simple("COMMIT").await;
    assert_eq!(first_tag(&r).as_deref(), Some("ROLLBACK"));

    // Extended protocol: the same.
    c.simple("BEGIN").await;
    c.simple("INSERT INTO kept VALUES (2)").await;
    let mut out = BytesMut::new();
    parse("", "DROP TABLE kept", &mut out);
    bind("", &mut out);
    execute(&mut out);
    frontend::sync(&mut out);
    c.send(&out).await;
    let r = bounded(c.until_ready()).await;
    let (code, msg) = first_error(&r).expect("refused");
    assert_eq!(code, "42501", "{msg}");
    assert_eq!(r.iter().filter(|m| m.0 == b'E').count(), 1, "{r:?}");
    let r = c.simple("COMMIT").await;
    assert_eq!(first_tag(&r).as_deref(), Some("ROLLBACK"));

    let r = c.simple("SELECT count(*) FROM kept").await;
    assert_eq!(
        first_value(&r).as_deref(),
        Some("0"),
        "nothing was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_as_the_server_keeps_them() {
    let s = setup(Durability::BeforeForward).await;
    let mut c = Client::connect(s.gw).await;
    let run = |out: &mut BytesMut| {
        bind("", out);
        execute(out);
        frontend::sync(out);
    };

    // A refused Parse of the unnamed statement drops the old one, as a failed Parse does.
    let mut out = BytesMut::new();
    parse("", "SELECT 'old'", &mut out);
    frontend::sync(&mut out);
    parse("", "DROP TABLE nothing_here", &mut out);
    frontend::sync(&mut out);
    run(&mut out);
    c.send(&out).await;
    bounded(c.until_ready()).await;
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("42501"));
    let r = bounded(c.until_ready()).await;
    assert_eq!(
        first_value(&r),
        None,
        "the old unnamed statement must not run: {r:?}"
    );
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("26000"));

    // A simple Query drops the unnamed statement too.
    let mut out = BytesMut::new();
    parse("", "SELECT 'again'", &mut out);
    frontend::sync(&mut out);
    query("SELECT 1", &mut out);
    run(&mut out);
    c.send(&out).await;
    bounded(c.until_ready()).await;
    bounded(c.until_ready()).await;
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("26000"));

    // A second Parse of a name in use fails on the server: executions of the name still run
    // the first statement, and their outcomes name its decision.
    let mut out = BytesMut::new();
    parse("s", "SELECT 'first'", &mut out);
    frontend::sync(&mut out);
    parse("s", "SELECT 'second'", &mut out);
    frontend::sync(&mut out);
    bind("s", &mut out);
    execute(&mut out);
    frontend::sync(&mut out);
    c.send(&out).await;
    bounded(c.until_ready()).await;
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_error(&r).map(|e| e.0).as_deref(), Some("42P05"));
    let r = bounded(c.until_ready()).await;
    assert_eq!(first_value(&r).as_deref(), Some("first"));
    // The execution's outcome (appended lazily, so waited for) names the first statement's
    // decision, and no outcome names the second's.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = entries(&s);
        let sql_of = |i: Option<u64>| {
            log.iter()
                .find(|(j, _)| Some(*j) == i)
                .and_then(|(_, e)| e["sql"].as_str().map(str::to_string))
        };
        let named: Vec<_> = log
            .iter()
            .filter(|(_, e)| e["type"] == "outcome")
            .filter_map(|(_, e)| sql_of(e["decision"].as_u64()))
            .collect();
        assert!(!named.iter().any(|q| q == "SELECT 'second'"), "{named:?}");
        if named.iter().any(|q| q == "SELECT 'first'") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no outcome names SELECT 'first': {named:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Startup parameters take effect on the server as settings: they are judged (and logged) as the
/// SETs they are, and a refused one refuses the login before anything reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_are_judged_as_settings() {
    let s = setup(Durability::BeforeForward).await;
    let login = |extra: &'static [(&'static str, &'static str)]| {
        let mut params = vec![("user", "alice"), ("database", "main")];
        params.extend_from_slice(extra);
        let gw = s.gw;
        async move { Client::try_connect_with(gw, &params).await }
    };
    for (extra, code, rule) in [
        (
            &[("options", "-c role=pg_read_server_files")][..],
            "42501",
            "parapet.set-role",
        ),
        (
            &[("options", "-c ROLE=pg_read_server_files")][..],
            "42501",
            "parapet.set-role",
        ),
        (
            &[("options", "--session-replication-role=replica")][..],
            "42501",
            "parapet.integrity-bypass",
        ),
        (
            &[("options", "-csession_replication_role=replica")][..],
            "42501",
            "parapet.integrity-bypass",
        ),
        (&[("options", "-d 5")][..], "42501", "not a setting"),
        (
            &[("client_encoding", "GBK")][..],
            "0A000",
            "client_encoding",
        ),
        (
            &[("standard_conforming_strings", "off")][..],
            "0A000",
            "standard_conforming_strings",
        ),
    ] {
        let err = login(extra)
            .await
            .err()
            .unwrap_or_else(|| panic!("{extra:?} must refuse the login"));
        assert!(
            err.starts_with(code) && err.contains(rule),
            "{extra:?}: {err}"
        );
    }
    // Harmless settings pass, and take effect.
    let mut c = login(&[
        ("options", "-c search_path=public --statement-timeout=5min"),
        ("application_name", "it's me"),
        ("client_encoding", "UTF8"),
    ])
    .await
    .expect("harmless settings log in");
    let r = c
        .simple("SELECT current_setting('statement_timeout')")
        .await;
    assert_eq!(first_value(&r).as_deref(), Some("5min"));
    // Changing them later ends the session before anything else is relayed: the guard would no
    // longer read statements as the server does.
    for set in [
        "SET client_encoding = 'SJIS'",
        "SET standard_conforming_strings = off",
        "SELECT set_config('client_encoding', 'BIG5', false)",
    ] {
        let mut c = Client::connect(s.gw).await;
        let mut out = BytesMut::new();
        query(set, &mut out);
        query("SELECT 'after'", &mut out);
        c.send(&out).await;
        let mut got = Vec::new();
        while let Some(m) = bounded(c.try_read_msg()).await {
            got.push(m);
        }
        assert_eq!(
            first_error(&got).map(|e| e.0).as_deref(),
            Some("0A000"),
            "{set}: {got:?}"
        );
        let after = got
            .iter()
            .any(|m| m.0 == b'D' && String::from_utf8_lossy(&m.1).contains("after"));
        assert!(
            !after,
            "{set}: a reply after the change was relayed: {got:?}"
        );
    }
    // Each login's settings are a decision in the log, refused or not.
    let startups: Vec<_> = entries(&s)
        .into_iter()
        .filter(|(_, e)| e["type"] == "decision" && e["protocol"] == "startup")
        .map(|(_, e)| {
            (
                e["decision"].clone(),
                e["sql"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        startups.contains(&(
            serde_json::json!("deny"),
            "SET \"role\" = 'pg_read_server_files'".to_string()
        )),
        "{startups:?}"
    );
    assert!(
        startups
            .iter()
            .any(|(d, sql)| d == "allow" && sql.contains("SET \"statement_timeout\" = '5min'")),
        "{startups:?}"
    );
}

/// The rows of table `hits`, as `1,2,…`.
async fn hits(admin: &mut Client) -> String {
    let r = admin
        .simple("SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM hits")
        .await;
    first_value(&r).unwrap_or_default()
}

/// A statement that may change how the server reads text (`client_encoding`,
/// `standard_conforming_strings`) is a barrier: what the client pipelines behind it is judged only
/// once the server has reported the settings in force, or is refused when that report cannot
/// come first. The attacks of issue 13: a string that hides an INSERT once
/// standard_conforming_strings is off, sent in the same write as the SET, never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_behind_a_reading_change_wait_for_its_report() {
    let s = setup(Durability::BeforeForward).await;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    admin.simple("CREATE TABLE hits (n int)").await;
    let hidden = r"SELECT 'x\', ' ; INSERT INTO hits VALUES (1); SELECT 1 -- '";
    // The guard reads one SELECT of two literals; the server, with the setting off, would run
    // the INSERT. In one write, and in two writes sent without waiting for the first answer.
    for split in [false, true] {
        let mut c = Client::connect(s.gw).await;
        let mut out = BytesMut::new();
        query("SET standard_conforming_strings = off", &mut out);
        if split {
            c.send(&out).await;
            out.clear();
        }
        query(hidden, &mut out);
        c.send(&out).await;
        let mut got = Vec::new();
        while let Some(m) = bounded(c.try_read_msg()).await {
            got.push(m);
        }
        assert_eq!(
            first_error(&got).map(|e| e.0).as_deref(),
            Some("0A000"),
            "split {split}: the session ends at the server's report: {got:?}"
        );
        assert_eq!(
            hits(&mut admin).await,
            "",
            "split {split}: the hidden INSERT ran"
        );
    }
    // In one extended-protocol batch the server reports only at Sync, so a statement between
    // the change and the Sync is refused, and never reaches the server.
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    parse("", "SET client_encoding = 'GBK'", &mut out);
    bind("", &mut out);
    execute(&mut out);
    parse("", "INSERT INTO hits VALUES (2)", &mut out);
    bind_exec_sync("", &mut out);
    c.send(&out).await;
    let mut got = Vec::new();
    while let Some(m) = bounded(c.try_read_msg()).await {
        let ready = m.0 == b'Z';
        got.push(m);
        if ready {
            break;
        }
    }
    let (code, msg) = first_error(&got).expect("the pipelined INSERT is refused");
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.contains("parapet.setting-pending"), "{msg}");
    assert_eq!(hits(&mut admin).await, "", "the pipelined INSERT ran");
    // Harmless changes cost nothing but the wait: everything pipelined behind them runs.
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    query("SET client_encoding = 'UTF8'", &mut out);
    query("INSERT INTO hits VALUES (3)", &mut out);
    parse("", "SET standard_conforming_strings = on", &mut out);
    bind_exec_sync("", &mut out);
    parse("", "INSERT INTO hits VALUES (4)", &mut out);
    bind_exec_sync("", &mut out);
    query("RESET client_encoding", &mut out);
    query("INSERT INTO hits VALUES (5)", &mut out);
    c.send(&out).await;
    for _ in 0..6 {
        let r = bounded(c.until_ready()).await;
        assert!(first_error(&r).is_none(), "{r:?}");
    }
    assert_eq!(hits(&mut admin).await, "3,4,5");
    let pending: Vec<_> = entries(&s)
        .into_iter()
        .filter(|(_, e)| {
            e["type"] == "decision"
                && e["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["id"] == "parapet.setting-pending"))
        })
        .map(|(_, e)| e["sql"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(pending, vec!["INSERT INTO hits VALUES (2)".to_string()]);
}

/// A Bind whose values are sent as text records them as sent; with `statement_text =
/// "normalized"` no value is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_bound_values_are_recorded_unless_texts_are_normalised() {
    for normalized in [false, true] {
        let s = setup_config(Durability::BeforeForward, false, |c| {
            if normalized {
                c.statement_text = parapet_gateway::StatementText::Normalized;
            }
        })
        .await;
        let mut c = Client::connect(s.gw).await;
        let mut out = BytesMut::new();
        parse("", "SELECT $1::text, $2::int4", &mut out);
        // Bind: unnamed portal and statement, no format codes (all text), two values.
        let values: [&[u8]; 2] = [b"caf\xc3\xa9 'x'", b"17"];
        let body_len = 1 + 1 + 2 + 2 + values.iter().map(|v| 4 + v.len()).sum::<usize>() + 2;
        out.put_u8(b'B');
        out.put_i32((4 + body_len) as i32);
        out.put_u8(0);
        out.put_u8(0);
        out.put_i16(0);
        out.put_i16(2);
        for v in values {
            out.put_i32(v.len() as i32);
            out.put_slice(v);
        }
        out.put_i16(0);
        execute(&mut out);
        frontend::sync(&mut out);
        c.send(&out).await;
        let r = bounded(c.until_ready()).await;
        assert_eq!(first_value(&r).as_deref(), Some("café 'x'"));
        drop(c);
        let mut outcome = None;
        for _ in 0..100 {
            outcome = entries(&s)
                .into_iter()
                .map(|(_, e)| e)
                .find(|e| e["type"] == "outcome" && e["tag"] == "SELECT 1");
            if outcome.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcome = outcome.expect("the execution's outcome");
        if normalized {
            assert!(outcome.get("params").is_none(), "{outcome}");
        } else {
            assert_eq!(
                outcome["params"],
                serde_json::json!(["café 'x'", "17"]),
                "{outcome}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_login_timeout() {
    let s = setup_config(Durability::BeforeForward, false, |c| {
        c.max_connections = 3;
        c.max_connections_per_user = 2;
        c.auth_timeout = Duration::from_secs(2);
    })
    .await;
    let a = Client::connect(s.gw).await;
    let _b = Client::connect(s.gw).await;
    let err = Client::try_connect(s.gw, "alice", "main")
        .await
        .err()
        .expect("a third session of alice is refused");
    assert!(
        err.starts_with("53300 too many connections for user"),
        "{err}"
    );

    // Two sessions and one connection that never logs in: the fourth connection is refused.
    let mut silent = TcpStream::connect(s.gw).await.expect("connect");
    // Let the gateway count it before the next one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(s.gw).await.expect("connect");
    let mut reply = Vec::new();
    bounded(over.read_to_end(&mut reply)).await.expect("read");
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let f = parapet_gateway::protocol::backend::parse_error(&reply[5..]);
    assert_eq!(f.code, "53300", "{}", f.message);

    // The silent connection is closed once the login timeout has passed...
    let mut sink = Vec::new();
    let n = bounded(silent.read_to_end(&mut sink)).await.unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a client that never logged in");
    // ...and the slots of closed connections are free again.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::connect(s.gw).await;
    assert_eq!(
        first_value(&c.simple("SELECT 'in'").await).as_deref(),
        Some("in")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_busy_ones_are_not() {
    let s = setup_config(Durability::BeforeForward, false, |c| {
        c.idle_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let mut busy = Client::connect(s.gw).await;
    let mut idle = Client::connect(s.gw).await;
    // A statement running longer than the idle timeout is not idleness.
    let r = busy.simple("SELECT pg_sleep(2.5), 'done'").await;
    assert!(first_error(&r).is_none(), "{r:?}");
    let m = bounded(idle.read_msg()).await;
    assert_eq!(m.0, b'E');
    let f = parapet_gateway::protocol::backend::parse_error(&m.1);
    assert_eq!(f.code, "57P05", "{}", f.message);
}

// ---------------------------------------------------------------------------------------------
// Differential property test.

/// One client step of a random session.
#[derive(Debug, Clone)]
enum Step {
    Query(String),
    Parse(&'static str, String),
    /// Bind the unnamed portal to a statement, then Execute it.
    BindExecute(&'static str),
    Sync,
    Flush,
    /// A simple-protocol COPY FROM STDIN with these rows, a Sync or Flush inside if given.
    Copy(Vec<u8>, Option<u8>),
    /// An extended-protocol COPY FROM STDIN as libpq sends it (Sync before the data).
    CopyExtended(Vec<u8>),
}

fn random_sql(rng: &mut StdRng) -> String {
    match rng.gen_range(0..12) {
        0 | 1 => format!("INSERT INTO t VALUES ({})", rng.gen_range(0..100)),
        2 => "SELECT count(*) FROM t".into(),
        3 => "BEGIN".into(),
        4 => "COMMIT".into(),
        5 => "ROLLBACK".into(),
        6 => "SELECT 1/0".into(),
        7 => "DROP TABLE t".into(),
        8 => "DELETE FROM t".into(),
        9 => format!("UPDATE t SET x = x + 1 WHERE x > {}", rng.gen_range(0..100)),
        10 => format!(
            "INSERT INTO t VALUES ({}); SELECT count(*) FROM t",
            rng.gen_range(0..100)
        ),
        _ => format!("DELETE FROM t WHERE x < {}", rng.gen_range(0..30)),
    }
}

fn random_session(rng: &mut StdRng) -> Vec<Step> {
    let names = ["", "", "a", "b"];
    (0..rng.gen_range(4..14))
        .map(|_| match rng.gen_range(0..10) {
            0 | 1 => Step::Query(random_sql(rng)),
            2 | 3 => Step::Parse(names[rng.gen_range(0..names.len())], random_sql(rng)),
            4 | 5 => Step::BindExecute(names[rng.gen_range(0..names.len())]),
            6 => Step::Sync,
            7 => Step::Flush,
            8 => Step::Copy(
                (0..rng.gen_range(0..3))
                    .map(|_| rng.gen_range(0..100))
                    .collect(),
                [None, Some(b'S'), Some(b'H')][rng.gen_range(0..3)],
            ),
            _ => Step::CopyExtended(
                (0..rng.gen_range(1..3))
                    .map(|_| rng.gen_range(0..100))
                    .collect(),
            ),
        })
        .collect()
}

/// The bytes of a session; `refused` statements are sent as text the server's parser rejects
/// (what the gateway sends the server in their place), so a straight run shows what the
/// gateway's client must see.
fn encode(steps: &[Step], refused: &dyn Fn(&str) -> bool) -> Vec<BytesMut> {
    let text = |sql: &str| {
        if refused(sql) {
            "parapet_refused_direct".to_string()
        } else {
            sql.to_string()
        }
    };
    let rows = |rows: &[u8], out: &mut BytesMut| {
        for r in rows {
            copy_data(&format!("{r}\n"), out);
        }
    };
    // Each step is its own write; COPY data follows at once, without waiting for the server.
    steps
        .iter()
        .map(|step| {
            let mut out = BytesMut::new();
            match step {
                Step::Query(sql) => query(&text(sql), &mut out),
                Step::Parse(name, sql) => parse(name, &text(sql), &mut out),
                Step::BindExecute(name) => {
                    bind(name, &mut out);
                    execute(&mut out);
                }
                Step::Sync => frontend::sync(&mut out),
                Step::Flush => flush(&mut out),
                Step::Copy(data, inner) => {
                    query("COPY t FROM STDIN", &mut out);
                    let (first, rest) = data.split_at(data.len().min(1));
                    rows(first, &mut out);
                    match inner {
                        Some(b'S') => frontend::sync(&mut out),
                        Some(_) => flush(&mut out),
                        None => {}
                    }
                    rows(rest, &mut out);
                    copy_done(&mut out);
                }
                Step::CopyExtended(data) => {
                    parse("", "COPY t FROM STDIN", &mut out);
                    bind("", &mut out);
                    execute(&mut out);
                    frontend::sync(&mut out);
                    rows(data, &mut out);
                    copy_done(&mut out);
                    frontend::sync(&mut out);
                }
            }
            out
        })
        .collect()
}

/// What a client sees, with what may differ between a gateway and a straight run made equal:
/// refusals (the gateway's 42501, the straight run's syntax error), and messages the server
/// sends on its own (notices, parameter status).
fn normalise(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| !matches!(m.0, b'N' | b'S' | b'A'))
        .map(|(tag, body)| match tag {
            b'E' => {
                let f = parapet_gateway::protocol::backend::parse_error(body);
                if f.code == "08P01" {
                    // The wording of a protocol violation is the gateway's or the server's.
                    return "E 08P01".into();
                }
                let refused = (f.code == "42501" && f.message.starts_with("parapet: blocked"))
                    || (f.code == "42601" && f.message.contains("parapet_refused_direct"));
                if refused {
                    "E refused".into()
                } else {
                    format!("E {}", f.code)
                }
            }
            b'C' | b'D' | b'Z' => format!("{} {}", *tag as char, String::from_utf8_lossy(body)),
            other => (*other as char).to_string(),
        })
        .collect()
}

/// Sends a session and reads what comes back, up to the end marker it closes with; on a
/// timeout, what came back until then.
async fn replay(c: &mut Client, writes: &[BytesMut]) -> Result<Vec<Msg>, Vec<Msg>> {
    for w in writes {
        c.send(w).await;
    }
    let mut end = BytesMut::new();
    frontend::sync(&mut end);
    query("ROLLBACK", &mut end);
    query("SELECT 'end of session'", &mut end);
    c.send(&end).await;
    let mut got = Vec::new();
    let mut last = false;
    loop {
        let Ok(m) = tokio::time::timeout(Duration::from_secs(20), c.try_read_msg()).await else {
            return Err(got);
        };
        // The server closes the connection on some protocol violations.
        let Some(m) = m else {
            got.push((b'X', Vec::new()));
            return Ok(got);
        };
        let done = last && m.0 == b'Z';
        last |= m.0 == b'D' && String::from_utf8_lossy(&m.1).contains("end of session");
        got.push(m);
        if done {
            return Ok(got);
        }
    }
}

async fn rows_of(c: &mut Client) -> String {
    let r = c
        .simple("SELECT coalesce(string_agg(x::text, ',' ORDER BY x), '') FROM t")
        .await;
    first_value(&r).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_behave_as_on_the_server() {
    let s = setup(Durability::BeforeForward).await;
    let guard = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack");
    let ctx = RequestContext {
        user: "alice".into(),
        groups: vec!["eng".into()],
        target: "main".into(),
        environment: "production".into(),
        ..RequestContext::default()
    };
    let refused = |sql: &str| guard.decide(sql, &ctx).verdict == Verdict::Deny;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    admin.simple("CREATE DATABASE direct").await;
    let mut admin_direct = Client::connect_to(server(&s), "postgres", "direct").await;
    let cases: u64 = std::env::var("PARAPET_PROTOCOL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let steps = random_session(&mut rng);
        eprintln!("case {seed}: {steps:?}");
        for a in [&mut admin, &mut admin_direct] {
            a.simple("DROP TABLE IF EXISTS t; CREATE TABLE t (x int)")
                .await;
        }
        let mut gw = Client::connect(s.gw).await;
        let mut direct = Client::connect_to(server(&s), "postgres", "direct").await;
        eprintln!("case {seed}: straight to the server");
        let straight = replay(&mut direct, &encode(&steps, &refused))
            .await
            .unwrap_or_else(|got| {
                panic!(
                    "seed {seed}: the server itself did not answer {steps:#?}: {:?}",
                    normalise(&got)
                )
            });
        eprintln!("case {seed}: through the gateway");
        let through = replay(&mut gw, &encode(&steps, &|_| false))
            .await
            .unwrap_or_else(|got| {
                panic!(
                    "seed {seed}: the gateway stopped answering {steps:#?}\ngot:  {:?}\nwant: {:?}",
                    normalise(&got),
                    normalise(&straight)
                )
            });
        assert_eq!(
            normalise(&through),
            normalise(&straight),
            "seed {seed}: the client's replies differ for {steps:#?}"
        );
        assert_eq!(
            rows_of(&mut admin).await,
            rows_of(&mut admin_direct).await,
            "seed {seed}: the server's effects differ for {steps:#?}"
        );
        drop(gw);
    }
    // The audit log agrees: every successful execution names the decision of a statement of
    // its own kind (a single statement's command tag starts with the statement's command).
    let log = entries(&s);
    let decision_sql = |i: u64| {
        log.iter()
            .find(|(j, _)| *j == i)
            .map(|(_, e)| e["sql"].as_str().unwrap_or("").to_string())
    };
    let mut checked = 0;
    for (_, e) in log.iter().filter(|(_, e)| e["type"] == "outcome") {
        let (Some(tag), Some(index)) = (e["tag"].as_str(), e["decision"].as_u64()) else {
            continue;
        };
        let sql = decision_sql(index).expect("an outcome names a logged decision");
        if sql.contains(';') || tag == "PortalSuspended" {
            continue;
        }
        let verb = tag.split(' ').next().unwrap_or("");
        // COMMIT of a failed transaction answers ROLLBACK.
        let rolled_back = verb == "ROLLBACK" && sql == "COMMIT";
        assert!(
            sql.to_uppercase().starts_with(verb) || rolled_back,
            "outcome {e} names decision {index}: {sql}"
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} outcomes checked");
}
