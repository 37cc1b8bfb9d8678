//! Issue 13's attacks, each through the real gateway on a real PostgreSQL: the guard must judge
//! what the server will run. Each attack is refused by the rule that names it and leaves no
//! effect on the server; a look-alike that is harmless passes. (String syntax and client
//! encoding, and startup parameters, are covered in `protocol_state.rs`:
//! `statements_behind_a_reading_change_wait_for_its_report` and
//! `startup_parameters_are_judged_as_settings`.)

mod common;

use common::*;
use parapet_gateway::Durability;
use std::net::SocketAddr;
use std::time::Duration;

/// Fails the test instead of hanging when the gateway never answers.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("no answer within 30 s")
}

/// Runs `sql` as one simple Query: the first value, or the first error (SQLSTATE, message).
async fn run(c: &mut Client, sql: &str) -> Result<Option<String>, (String, String)> {
    let mut out = bytes::BytesMut::new();
    query(sql, &mut out);
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &out)
        .await
        .expect("write");
    let r = bounded(c.until_ready()).await;
    match first_error(&r) {
        Some(e) => Err(e),
        None => Ok(first_value(&r)),
    }
}

/// `sql` is refused by `rule`.
async fn refused(c: &mut Client, sql: &str, rule: &str) {
    match run(c, sql).await {
        Err((code, msg)) => assert!(
            code == "42501" && msg.contains(rule),
            "{sql}: refused, but not by {rule}: {code} {msg}"
        ),
        Ok(v) => panic!("{sql}: ran through the gateway (returned {v:?}); {rule} must refuse it"),
    }
}

/// `sql` runs; its first value.
async fn runs(c: &mut Client, sql: &str) -> Option<String> {
    run(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: refused or failed: {e:?}"))
}

fn server(s: &Setup) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.cluster.port))
}

/// Blocked functions are reachable through other objects and other names: an operator, an
/// aggregate's transition function, an `internal` alias, SQL and PL/pgSQL wrappers (made straight
/// on the server, as a DBA or an earlier superuser might have), and the built-in alias
/// `pg_read_file_old`. The gateway reads the target's catalog and knows them by what they reach.
/// DDL that wires a blocked function into an object is refused itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_known_by_what_they_are() {
    let s = setup(Durability::BeforeForward).await;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    for sql in [
        "CREATE OPERATOR public.<<< (FUNCTION = pg_read_file, RIGHTARG = text)",
        "CREATE FUNCTION public.rd(text) RETURNS text LANGUAGE internal AS 'pg_read_file_all'",
        "CREATE FUNCTION public.wrapper(p text) RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file(p) $$",
        "CREATE FUNCTION public.wrap2(p text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN public.wrapper(p); END $$",
        "CREATE AGGREGATE public.readall(bigint, bigint) (SFUNC = pg_read_file, STYPE = text, INITCOND = 'PG_VERSION')",
        "CREATE FUNCTION public.kill(int) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_terminate_backend($1) $$",
        "CREATE FUNCTION public.shout(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) || '!' $$",
        "CREATE OPERATOR public.!!! (FUNCTION = public.shout, RIGHTARG = text)",
    ] {
        run(&mut admin, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // Each really reads the file on the server.
    let version = run(&mut admin, "SELECT <<< 'PG_VERSION'").await;
    assert!(
        version
            .as_ref()
            .is_ok_and(|v| v.as_deref().is_some_and(|v| v.starts_with("15"))),
        "{version:?}"
    );
    let mut c = Client::connect(s.gw).await;
    for sql in [
        "SELECT <<< 'PG_VERSION'",
        "SELECT OPERATOR(public.<<<) 'PG_VERSION'",
        "SELECT public.rd('PG_VERSION')",
        "SELECT rd('PG_VERSION')",
        "SELECT wrapper('PG_VERSION')",
        "SELECT wrap2('PG_VERSION')",
        "SELECT readall(0, 2) FROM generate_series(1, 1)",
        "SELECT pg_read_file_old('PG_VERSION', 0, 2)",
    ] {
        refused(&mut c, sql, "parapet.server-file-functions").await;
    }
    refused(
        &mut c,
        "SELECT kill(pg_backend_pid())",
        "parapet.session-control",
    )
    .await;
    // Wiring a blocked function into an object is refused.
    for sql in [
        "CREATE OPERATOR public.<<<< (FUNCTION = pg_read_file, RIGHTARG = text)",
        "CREATE AGGREGATE public.readall2(bigint, bigint) (SFUNC = pg_read_file, STYPE = text)",
        "CREATE FUNCTION public.rdx(text) RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file_old($1, 0, 10) $$",
    ] {
        refused(&mut c, sql, "parapet.server-file-functions").await;
    }
    let made = runs(
        &mut admin,
        "SELECT count(*) FROM pg_proc WHERE proname IN ('readall2', 'rdx')",
    )
    .await;
    assert_eq!(made.as_deref(), Some("0"));
    let ops = runs(
        &mut admin,
        "SELECT count(*) FROM pg_operator WHERE oprname = '<<<<'",
    )
    .await;
    assert_eq!(ops.as_deref(), Some("0"));
    // Look-alikes pass: a harmless user operator, built-in operators, casts and functions.
    assert_eq!(
        runs(&mut c, "SELECT !!! 'hi'").await.as_deref(),
        Some("HI!")
    );
    assert_eq!(runs(&mut c, "SELECT 1 + 2").await.as_deref(), Some("3"));
    assert_eq!(
        runs(&mut c, "SELECT '4'::int * 2").await.as_deref(),
        Some("8")
    );
    assert_eq!(
        runs(&mut c, "SELECT length('abc')").await.as_deref(),
        Some("3")
    );
    assert_eq!(
        runs(&mut c, "SELECT shout('x') || 'y'").await.as_deref(),
        Some("X!y")
    );
}

/// The catalog is read again after a statement that may change it, before anything behind that
/// statement is judged: inside a transaction (seeing its own DDL), and for the target's other
/// sessions once it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_follows_ddl() {
    let s = setup(Durability::BeforeForward).await;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    let mut c = Client::connect(s.gw).await;
    let mut other = Client::connect(s.gw).await;
    // Made on the server after the gateway read the catalog: unknown to it so far.
    run(
        &mut admin,
        "CREATE FUNCTION public.rd(text) RETURNS text LANGUAGE internal AS 'pg_read_file_all'",
    )
    .await
    .expect("alias made");
    // A harmless DDL pipelined with a call of the alias: the call waits for the DDL's answer and
    // for the catalog read after it.
    let mut out = bytes::BytesMut::new();
    query(
        "CREATE FUNCTION public.noop() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        &mut out,
    );
    query("SELECT rd('PG_VERSION')", &mut out);
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &out)
        .await
        .expect("write");
    let first = bounded(c.until_ready()).await;
    assert!(first_error(&first).is_none(), "{first:?}");
    let second = bounded(c.until_ready()).await;
    let (code, msg) = first_error(&second).expect("the alias is known after the DDL");
    assert!(
        code == "42501" && msg.contains("parapet.server-file-functions"),
        "{code} {msg}"
    );
    // Renamed inside a transaction: the new name is known within it.
    runs(&mut c, "BEGIN").await;
    runs(&mut c, "ALTER FUNCTION public.rd(text) RENAME TO rd3").await;
    refused(
        &mut c,
        "SELECT rd3('PG_VERSION')",
        "parapet.server-file-functions",
    )
    .await;
    // The refusal failed the transaction, as an error would: the rename is rolled back.
    runs(&mut c, "ROLLBACK").await;
    runs(&mut c, "ALTER FUNCTION public.rd(text) RENAME TO rd3").await;
    // Committed: another session knows it too.
    refused(
        &mut other,
        "SELECT rd3('PG_VERSION')",
        "parapet.server-file-functions",
    )
    .await;
    // A session that makes the catalog query fail (a tiny statement_timeout) cannot leave its
    // DDL unseen: either the catalog is read in time and the renamed alias is refused, or the
    // session ends. The file is never read.
    let mut short = Client::connect(s.gw).await;
    runs(&mut short, "SET statement_timeout = 1").await;
    let mut out = bytes::BytesMut::new();
    query("ALTER FUNCTION public.rd3(text) RENAME TO rd9", &mut out);
    query("SELECT rd9('PG_VERSION')", &mut out);
    tokio::io::AsyncWriteExt::write_all(&mut short.s, &out)
        .await
        .expect("write");
    // Up to the second ReadyForQuery, or the end of the session.
    let mut got = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        let Some(m) = bounded(short.try_read_msg()).await else {
            break;
        };
        ready += usize::from(m.0 == b'Z');
        got.push(m);
    }
    let leaked = got
        .iter()
        .any(|m| m.0 == b'D' && String::from_utf8_lossy(&m.1).contains("15"));
    assert!(!leaked, "the renamed alias read the file: {got:?}");
    let codes: Vec<String> = got
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| parapet_gateway::protocol::backend::parse_error(&m.1).code)
        .collect();
    assert!(
        codes.iter().any(|c| c == "0A000" || c == "42501"),
        "ended, or refused: {codes:?}"
    );
    // Back to rd3 for what follows, if the rename ran.
    let _ = run(&mut admin, "ALTER FUNCTION public.rd9(text) RENAME TO rd3").await;
    // In one extended-protocol batch, a statement after catalog DDL and before Sync is refused:
    // the catalog cannot be read in between.
    let mut out = bytes::BytesMut::new();
    parse(
        "",
        "ALTER FUNCTION public.rd3(text) RENAME TO rd4",
        &mut out,
    );
    bind("", &mut out);
    postgres_protocol::message::frontend::execute("", 0, &mut out).expect("execute");
    parse("", "SELECT rd4('PG_VERSION')", &mut out);
    bind_exec_sync("", &mut out);
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &out)
        .await
        .expect("write");
    let r = bounded(c.until_ready()).await;
    let (code, msg) = first_error(&r).expect("refused");
    assert!(
        code == "42501" && msg.contains("parapet.setting-pending"),
        "{code} {msg}"
    );
}

/// System catalogs are read-only through the gateway; SQL given as text to a function is judged
/// as the statement it is; MERGE that matches every row, default privileges for everyone, and
/// foreign tables over programs and server files are caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_writes_sql_in_text_merge_privileges_and_foreign_tables() {
    let s = setup(Durability::BeforeForward).await;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    for sql in [
        "CREATE FUNCTION public.harmless() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE ROLE mallory LOGIN",
        "CREATE TABLE m (id int)",
        "INSERT INTO m VALUES (1), (2)",
        "CREATE TABLE src (id int)",
        "INSERT INTO src VALUES (1), (2)",
        "CREATE EXTENSION file_fdw",
        "CREATE SERVER fs FOREIGN DATA WRAPPER file_fdw",
    ] {
        run(&mut admin, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let mut c = Client::connect(s.gw).await;
    for sql in [
        "UPDATE pg_proc SET prosrc = 'SELECT 2' WHERE proname = 'harmless'",
        "UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = 'mallory'",
        "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
        "WITH x AS (UPDATE pg_proc SET prosrc = 'SELECT 3' WHERE proname = 'harmless' RETURNING 1) SELECT 1",
    ] {
        refused(&mut c, sql, "parapet.catalog-write").await;
    }
    assert_eq!(
        runs(&mut admin, "SELECT public.harmless()")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        runs(
            &mut admin,
            "SELECT rolsuper FROM pg_authid WHERE rolname = 'mallory'"
        )
        .await
        .as_deref(),
        Some("f")
    );
    assert_eq!(
        runs(
            &mut c,
            "SELECT proname FROM pg_proc WHERE proname = 'harmless'"
        )
        .await
        .as_deref(),
        Some("harmless")
    );
    // SQL given as text.
    refused(
        &mut c,
        "SELECT query_to_xml('SELECT pg_read_file(''PG_VERSION'')', true, false, '')",
        "parapet.server-file-functions",
    )
    .await;
    let xml = runs(
        &mut c,
        "SELECT query_to_xml('SELECT 1 AS one', true, false, '')",
    )
    .await;
    assert!(xml.is_some_and(|x| x.contains("<one>1</one>")));
    // MERGE.
    refused(
        &mut c,
        "MERGE INTO m USING src ON true WHEN MATCHED THEN DELETE",
        "parapet.delete-without-where",
    )
    .await;
    assert_eq!(
        runs(&mut admin, "SELECT count(*) FROM m").await.as_deref(),
        Some("2")
    );
    runs(
        &mut c,
        "MERGE INTO m USING src ON m.id = src.id AND src.id = 1 WHEN MATCHED THEN DELETE",
    )
    .await;
    assert_eq!(
        runs(&mut admin, "SELECT count(*) FROM m").await.as_deref(),
        Some("1")
    );
    // Default privileges.
    refused(
        &mut c,
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC",
        "parapet.privileges",
    )
    .await;
    assert_eq!(
        runs(&mut admin, "SELECT count(*) FROM pg_default_acl")
            .await
            .as_deref(),
        Some("0")
    );
    // Foreign tables over a program or a server file.
    refused(
        &mut c,
        "CREATE FOREIGN TABLE ft (x text) SERVER fs OPTIONS (program 'id')",
        "parapet.copy-server-file",
    )
    .await;
    refused(
        &mut c,
        "CREATE FOREIGN TABLE ft2 (x text) SERVER fs OPTIONS (filename '/etc/hostname')",
        "parapet.copy-server-file",
    )
    .await;
    assert_eq!(
        runs(&mut admin, "SELECT count(*) FROM pg_foreign_table")
            .await
            .as_deref(),
        Some("0")
    );
}

/// Literals and comments that read differently under another string syntax or encoding; each is
/// one value under UTF-8 with standard-conforming strings.
const TRICKY: &[&str] = &[
    r"'a\'",
    r"'it''s'",
    r"E'\\x'",
    r"E'\''",
    r"$q$ ' ; DELETE FROM seen; $q$",
    r"U&'\0041'",
    r"'é\' || '/* not a comment */'",
    r"'--'",
    "/* c /* nested ' */ */ 'x'",
    "'x' -- trailing ' comment\n",
    r"'漢\'",
    r"'\' || ' ; DELETE FROM seen; SELECT '",
    r#"'"'"#,
    r"e'\\\\'",
];

/// The differential test of issue 13: under every client encoding PostgreSQL knows and both
/// string syntaxes, either the gateway refuses the session (the guard could not read what the
/// server will run) or, for generated texts of tricky literals, the statements the guard sees are
/// exactly the statements the server runs (each statement records itself in table `seen`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_encoding_and_both_string_syntaxes() {
    use rand::{Rng, SeedableRng};
    let s = setup(Durability::BeforeForward).await;
    let mut admin = Client::connect_to(server(&s), "postgres", "postgres").await;
    runs(&mut admin, "CREATE TABLE seen (k int, v text)").await;
    let names = runs(
        &mut admin,
        "SELECT string_agg(pg_encoding_to_char(i), ',' ORDER BY i) FROM generate_series(0, 127) i \
         WHERE pg_encoding_to_char(i) <> ''",
    )
    .await
    .expect("encodings");
    let mut readable = Vec::new();
    let mut refused_logins = 0;
    for enc in names.split(',') {
        for scs in ["on", "off"] {
            let params = |user: &'static str, db: &'static str| {
                vec![
                    ("user", user),
                    ("database", db),
                    ("client_encoding", enc),
                    ("standard_conforming_strings", scs),
                ]
            };
            let direct =
                Client::try_connect_with(server(&s), &params("postgres", "postgres")).await;
            let via = Client::try_connect_with(s.gw, &params("alice", "main")).await;
            let guardable = matches!(enc, "UTF8" | "SQL_ASCII") && scs == "on";
            match (direct.is_ok(), via) {
                (_, Ok(c)) => {
                    assert!(guardable, "{enc}/{scs}: the gateway let the session in");
                    readable.push((enc, c));
                }
                (true, Err(e)) => {
                    assert!(!guardable, "{enc}/{scs}: refused: {e}");
                    assert!(e.starts_with("0A000"), "{enc}/{scs}: {e}");
                    refused_logins += 1;
                }
                // The server itself refuses it (an encoding only a server may use).
                (false, Err(_)) => assert!(!guardable, "{enc}/{scs}"),
            }
        }
    }
    assert_eq!(
        readable.len(),
        2,
        "UTF8 and SQL_ASCII with standard strings"
    );
    assert!(
        refused_logins > 30,
        "only {refused_logins} settings refused"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut k = 0;
    let mut texts = Vec::new();
    for (enc, c) in &mut readable {
        for _ in 0..40 {
            let n = rng.gen_range(1..=4);
            let mut stmts = Vec::new();
            let mut ks = Vec::new();
            for _ in 0..n {
                k += 1;
                ks.push(k);
                let lit = TRICKY[rng.gen_range(0..TRICKY.len())];
                stmts.push(format!("INSERT INTO seen VALUES ({k}, {lit}\n)"));
            }
            let text = stmts.join(";\n");
            run(c, &text)
                .await
                .unwrap_or_else(|e| panic!("{enc}: {text}: {e:?}"));
            texts.push((text, ks));
        }
    }
    // The guard's reading of each text: the analysis the gateway's guard made of it.
    let guard = parapet_guard::Guard::load(&parapet_guard::PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack");
    let decisions = decisions(&s);
    for (text, ks) in texts {
        let d = decisions
            .iter()
            .find(|d| d["sql"].as_str() == Some(text.trim()))
            .unwrap_or_else(|| panic!("no decision for {text}"));
        assert_eq!(d["decision"], "allow", "{text}");
        let seen_by_guard: Vec<String> = guard
            .analyze(&text)
            .statements
            .iter()
            .map(|s| s.kind.clone())
            .collect();
        let list = ks
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let ran = runs(
            &mut admin,
            &format!("SELECT count(*) FROM seen WHERE k IN ({list})"),
        )
        .await;
        assert_eq!(
            (seen_by_guard.len(), ran),
            (ks.len(), Some(ks.len().to_string())),
            "{text}: the guard saw {seen_by_guard:?}"
        );
        assert!(seen_by_guard.iter().all(|k| k == "insert"), "{text}");
    }
    let total = runs(&mut admin, "SELECT count(*) FROM seen").await;
    assert_eq!(total, Some(k.to_string()), "a hidden statement ran");
}
