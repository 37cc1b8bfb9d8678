//! End-to-end tests of the gateway with real clients (psql, tokio-postgres, pgbench) against a
//! real PostgreSQL cluster started by the harness in `common/`.

mod common;

use common::{audit_index, env, tool, ALICE_PW};
use std::process::Command;
use std::time::Duration;

fn db_error(e: &tokio_postgres::Error) -> &tokio_postgres::error::DbError {
    e.as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got {e:?}"))
}

#[test]
fn psql_results_match_direct() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS psql_t (id int primary key, name text)");
    let (ok, out, err) = e.psql(
        &e.gw_conninfo(e.gw),
        &["-c", "INSERT INTO psql_t VALUES (1, 'one'), (2, 'two')"],
        "",
    );
    assert!(ok && out == "INSERT 0 2", "{out} {err}");
    let script = "SELECT id, name FROM psql_t ORDER BY id;\n\
                  SELECT count(*), sum(id) FROM psql_t;\n\
                  SELECT current_user, current_database();\n";
    let (ok, via_gw, err) = e.psql(&e.gw_conninfo(e.gw), &["-v", "ON_ERROR_STOP=1"], script);
    assert!(ok, "psql through the gateway failed: {err}");
    let (ok, direct, err) = e.psql(&e.direct_conninfo(), &["-v", "ON_ERROR_STOP=1"], script);
    assert!(ok, "{err}");
    // Same results; the gateway logs in upstream with its own credentials (postgres/app).
    assert_eq!(via_gw, direct);
    assert_eq!(via_gw, "1|one\n2|two\n2|3\npostgres|app");
}

#[tokio::test]
async fn tokio_postgres_simple_extended_and_binary_params() {
    let e = env();
    for addr in [e.gw, e.gw_reply] {
        // Emptied straight on the server: through the gateway, a DELETE of every row is refused.
        e.direct("DROP TABLE IF EXISTS tp_t");
        let c = e.client(addr).await;
        c.batch_execute("CREATE TABLE tp_t (id int, b bytea, f float8)")
            .await
            .unwrap();
        // Extended protocol with binary parameters and results, named statement reused.
        let st = c
            .prepare("INSERT INTO tp_t VALUES ($1, $2, $3)")
            .await
            .unwrap();
        for i in 0..5i32 {
            c.execute(&st, &[&i, &vec![i as u8, 0, 255], &(i as f64 / 2.0)])
                .await
                .unwrap();
        }
        let rows = c
            .query(
                "SELECT id, b, f FROM tp_t WHERE id >= $1 ORDER BY id",
                &[&2i32],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        let b: Vec<u8> = rows[0].get(1);
        assert_eq!(
            (rows[0].get::<_, i32>(0), b, rows[2].get::<_, f64>(2)),
            (2, vec![2, 0, 255], 2.0)
        );
        // Simple protocol.
        let msgs = c
            .simple_query("SELECT 'a' AS x UNION ALL SELECT 'b'")
            .await
            .unwrap();
        let n = msgs
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(n, 2);
        // Pipelining: several queries in flight at once.
        let (a, b2, c3) = tokio::join!(
            c.query_one("SELECT 1::int4", &[]),
            c.query_one("SELECT $1::text", &[&"two"]),
            c.query_one("SELECT 3::int8", &[])
        );
        assert_eq!(
            (
                a.unwrap().get::<_, i32>(0),
                b2.unwrap().get::<_, String>(0),
                c3.unwrap().get::<_, i64>(0)
            ),
            (1, "two".into(), 3)
        );
        // A large result streams through.
        let big = c
            .query(
                "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(big.len(), 5000);
        // Server errors pass through unchanged and the session stays usable.
        let err = c.query("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!(db_error(&err).code().code(), "22012");
        assert_eq!(
            c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
            7
        );
    }
}

#[tokio::test]
async fn blocked_statements_simple_and_extended_outside_and_inside_transactions() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS blk_t (id int)");
    for addr in [e.gw, e.gw_reply] {
        let c = e.client(addr).await;
        // Simple protocol, outside a transaction.
        let err = c.batch_execute("DROP TABLE blk_t").await.unwrap_err();
        let db = db_error(&err);
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message()
                .starts_with("parapet: blocked by parapet.drop: DROP statements are blocked"),
            "{}",
            db.message()
        );
        let idx = audit_index(db.detail().expect("DETAIL"));
        let ev = e.entry(idx);
        assert_eq!(ev["type"], "decision");
        assert_eq!(ev["decision"], "deny");
        assert_eq!(ev["sql"], "DROP TABLE blk_t");
        assert_eq!(ev["user"], "alice");
        assert_eq!(ev["groups"], serde_json::json!(["eng"]));
        assert_eq!(ev["target"], "main");
        assert_eq!(ev["protocol"], "simple");
        assert_eq!(ev["rules"][0]["id"], "parapet.drop");
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );

        // Extended protocol, outside a transaction.
        let err = c.execute("DELETE FROM blk_t", &[]).await.unwrap_err();
        let db = db_error(&err);
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message()
                .starts_with("parapet: blocked by parapet.delete-without-where:"),
            "{}",
            db.message()
        );
        let ev = e.entry(audit_index(db.detail().expect("DETAIL")));
        assert_eq!(
            (ev["protocol"].as_str(), ev["decision"].as_str()),
            (Some("extended"), Some("deny"))
        );
        assert_eq!(
            c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
            2
        );

        // Simple protocol inside a transaction: the transaction fails on the server too.
        let marker = if addr == e.gw { 1001 } else { 2001 };
        let err = c
            .batch_execute(&format!("BEGIN; INSERT INTO blk_t VALUES ({marker})"))
            .await
            .err();
        assert!(err.is_none());
        let err = c.batch_execute("TRUNCATE blk_t").await.unwrap_err();
        assert_eq!(db_error(&err).code().code(), "42501");
        let err = c.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(
            db_error(&err).code().code(),
            "25P02",
            "server must see the transaction as failed"
        );
        c.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            e.direct(&format!("SELECT count(*) FROM blk_t WHERE id = {marker}")),
            "0"
        );

        // Extended protocol inside a transaction.
        let mut c = c;
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO blk_t VALUES ($1)", &[&(marker + 1)])
            .await
            .unwrap();
        let err = tx
            .execute("UPDATE blk_t SET id = $1", &[&5i32])
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).code().code(), "42501");
        let err = tx.query("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(db_error(&err).code().code(), "25P02");
        tx.commit().await.unwrap(); // the server answers ROLLBACK
        assert_eq!(
            e.direct(&format!(
                "SELECT count(*) FROM blk_t WHERE id = {}",
                marker + 1
            )),
            "0"
        );
        // Still usable, and the same statements with a WHERE clause go through.
        c.execute("DELETE FROM blk_t WHERE id = $1", &[&-1i32])
            .await
            .unwrap();
    }
}

#[test]
fn psql_sees_blocked_message_and_continues() {
    let e = env();
    let (_, out, err) = e.psql(
        &e.gw_conninfo(e.gw),
        &[],
        "GRANT ALL ON SCHEMA public TO PUBLIC;\nSELECT 'still here';\n",
    );
    assert!(
        err.contains("ERROR:  parapet: blocked by parapet.privileges:"),
        "{err}"
    );
    assert!(err.contains("DETAIL:  parapet audit entry "), "{err}");
    assert_eq!(out, "still here");
}

#[tokio::test]
async fn decisions_and_outcomes_are_logged() {
    let e = env();
    let c = e.client(e.gw).await;
    let tag = format!("outcome-probe-{}", std::process::id());
    c.simple_query(&format!("SELECT '{tag}' FROM generate_series(1,3)"))
        .await
        .unwrap();
    let evs = e.events(0);
    let (idx, dec) = evs
        .iter()
        .find(|(_, v)| {
            v["type"] == "decision" && v["sql"].as_str().is_some_and(|s| s.contains(&tag))
        })
        .expect("decision event for the statement");
    assert_eq!(dec["decision"], "allow");
    assert_eq!(dec["application_name"], "gwtest");
    assert_eq!(dec["client_addr"], "127.0.0.1");
    assert!(
        dec["fingerprint"].is_string() && dec["policy_hash"].is_string() && dec["time"].is_string()
    );
    // The outcome is appended without waiting; give it a moment.
    let mut found = None;
    for _ in 0..50 {
        found = e
            .events(*idx)
            .into_iter()
            .find(|(_, v)| v["type"] == "outcome" && v["decision"] == *idx);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, out) = found.expect("outcome event referencing the decision");
    assert_eq!(out["tag"], "SELECT 3");
    assert_eq!(out["rows"], 3);
    assert!(evs
        .iter()
        .any(|(_, v)| v["type"] == "session_start" && v["user"] == "alice"));
    assert!(evs.iter().any(|(_, v)| v["type"] == "gateway_start"));
}

/// Each execution's outcome records the values bound to it: binary values of built-in types
/// (tokio-postgres sends every value in binary) as their text, NULL as null, long values as a
/// prefix with the SHA-256 and length of the whole.
#[tokio::test]
async fn bound_values_are_recorded_in_outcomes() {
    let e = env();
    let c = e.client(e.gw).await;
    let tag = format!("params-probe-{}", std::process::id());
    let sql = format!(
        "SELECT '{tag}', $1::int8, $2::text, $3::bytea, $4::float8, $5::bool, $6::int4, $7::text"
    );
    let long = "y".repeat(3000);
    let row = c
        .query_one(
            sql.as_str(),
            &[
                &-9_000_000_000i64,
                &"it's \"quoted\"",
                &vec![0u8, 1, 255],
                &2.5f64,
                &true,
                &None::<i32>,
                &long,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), -9_000_000_000);
    let mut outcome = None;
    for _ in 0..50 {
        let evs = e.events(0);
        let idx = evs
            .iter()
            .find(|(_, v)| {
                v["type"] == "decision" && v["sql"].as_str().is_some_and(|s| s.contains(&tag))
            })
            .map(|(i, _)| *i);
        outcome = idx.and_then(|idx| {
            evs.into_iter()
                .find(|(_, v)| v["type"] == "outcome" && v["decision"] == idx)
        });
        if outcome.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, out) = outcome.expect("outcome of the execution");
    let long_sha = parapet_gateway::events::sha256_hex(long.as_bytes());
    assert_eq!(
        out["params"],
        serde_json::json!([
            "-9000000000",
            "it's \"quoted\"",
            "\\x0001ff",
            "2.5",
            "t",
            null,
            {"prefix": "y".repeat(1024), "sha256": long_sha, "bytes": 3000}
        ]),
        "{out}"
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_and_logged() {
    let e = env();
    let Err(err) = e.client_pw(e.gw, "not-the-password").await else {
        panic!("a wrong password must be refused");
    };
    assert_eq!(db_error(&err).code().code(), "28P01");
    let (ok, _, stderr) = e.psql(
        &format!(
            "host=127.0.0.1 port={} user=mallory password=x dbname=main sslmode=disable",
            e.gw.port()
        ),
        &["-c", "SELECT 1"],
        "",
    );
    assert!(
        !ok && stderr.contains("password authentication failed for user \"mallory\""),
        "{stderr}"
    );
    let mut seen = false;
    for _ in 0..50 {
        seen = e
            .events(0)
            .iter()
            .any(|(_, v)| v["type"] == "auth_failure" && v["user"] == "mallory");
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "auth_failure event for mallory");
    // The right password still works.
    e.client_pw(e.gw, ALICE_PW).await.unwrap();
}

#[test]
fn tls_offered_and_required() {
    let e = env();
    let ci = format!(
        "host=127.0.0.1 port={} user=alice password={ALICE_PW} dbname=main sslmode=require",
        e.gw.port()
    );
    let (ok, out, err) = e.psql(&ci, &[], "\\conninfo\nSELECT 'over tls';\n");
    assert!(ok, "{err}");
    assert!(
        out.contains("SSL connection") && out.contains("over tls"),
        "{out}"
    );
    let strict = e.gw_tls_only.port();
    let (ok, _, err) = e.psql(
        &format!("host=127.0.0.1 port={strict} user=alice password={ALICE_PW} dbname=main sslmode=disable"),
        &["-c", "SELECT 1"],
        "",
    );
    assert!(!ok && err.contains("requires TLS"), "{err}");
    let (ok, out, err) = e.psql(
        &format!("host=127.0.0.1 port={strict} user=alice password={ALICE_PW} dbname=main sslmode=require"),
        &["-c", "SELECT 'strict ok'"],
        "",
    );
    assert!(ok && out == "strict ok", "{err}");
    // SCRAM-SHA-256-PLUS: libpq insisting on channel binding logs in over TLS...
    let (ok, out, err) = e.psql(
        &format!("host=127.0.0.1 port={strict} user=alice password={ALICE_PW} dbname=main sslmode=require channel_binding=require"),
        &["-c", "SELECT 'bound'"],
        "",
    );
    assert!(ok && out == "bound", "{err}");
    // ...and a wrong password still fails with channel binding.
    let (ok, _, err) = e.psql(
        &format!("host=127.0.0.1 port={strict} user=alice password=wrong dbname=main sslmode=require channel_binding=require"),
        &["-c", "SELECT 1"],
        "",
    );
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
}

#[test]
fn copy_in_and_out() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS copy_t (id int, s text)");
    let data: String = (0..1000).map(|i| format!("{i}\trow {i}\n")).collect();
    let (ok, _, err) = e.psql(
        &e.gw_conninfo(e.gw),
        &["-v", "ON_ERROR_STOP=1", "-c", "COPY copy_t FROM STDIN"],
        &data,
    );
    assert!(ok, "COPY FROM STDIN through the gateway: {err}");
    assert_eq!(
        e.direct("SELECT count(*), sum(id) FROM copy_t"),
        "1000|499500"
    );
    let (ok, out, err) = e.psql(
        &e.gw_conninfo(e.gw),
        &["-c", "COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(format!("{out}\n"), data);
    // COPY to a server file is blocked by the default pack.
    let (ok, _, err) = e.psql(&e.gw_conninfo(e.gw), &["-c", "COPY copy_t TO '/tmp/x'"], "");
    assert!(
        !ok && err.contains("parapet: blocked by parapet.copy-server-file"),
        "{err}"
    );
}

#[tokio::test]
async fn cancel_reaches_the_right_backend() {
    let e = env();
    let c = e.client(e.gw).await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(db_error(&err).code().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn oversized_and_malformed_messages_close_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env();
    let other = e.client(e.gw).await;
    // Over the 1 MiB cap configured for the test gateway.
    let c = e.client(e.gw).await;
    let big = "x".repeat(2 << 20);
    let err = c
        .simple_query(&format!("SELECT '{big}'"))
        .await
        .unwrap_err();
    let msg = format!("{err:?}");
    assert!(
        c.is_closed() || msg.contains("08P01") || msg.contains("protocol"),
        "{msg}"
    );
    // A startup packet with an impossible length.
    let mut s = tokio::net::TcpStream::connect(e.gw).await.unwrap();
    s.write_all(&[0, 0, 0, 2, 0, 0]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("connection closed");
    // The gateway and other sessions carry on.
    assert_eq!(
        other
            .query_one("SELECT 11", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        11
    );
    assert_eq!(
        e.client(e.gw)
            .await
            .query_one("SELECT 12", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        12
    );
}

#[test]
fn unknown_target_is_refused() {
    let e = env();
    let (ok, _, err) = e.psql(
        &format!(
            "host=127.0.0.1 port={} user=alice password={ALICE_PW} dbname=nope sslmode=disable",
            e.gw.port()
        ),
        &["-c", "SELECT 1"],
        "",
    );
    assert!(!ok && err.contains("no target named \"nope\""), "{err}");
}

fn pgbench(
    args: &[&str],
    conninfo_port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> (bool, String) {
    let out = Command::new(tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &conninfo_port.to_string(),
            "-U",
            user,
        ])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("run pgbench");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pgbench_all_modes_through_the_gateway() {
    let e = env();
    // pgbench -i DROPs and TRUNCATEs: blocked through the gateway (and nothing else happens).
    let (ok, out) = pgbench(&["-i", "-s", "1"], e.gw.port(), "alice", ALICE_PW, "main");
    assert!(!ok && out.contains("parapet: blocked by"), "{out}");
    // Create the tables directly.
    let (ok, out) = pgbench(
        &["-i", "-s", "1", "-q"],
        e.pg_port,
        "postgres",
        &e.pg_password,
        "app",
    );
    assert!(ok, "{out}");
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let mut args = vec!["-M", mode, "-c", "4", "-j", "2", "-t", "25", "-n"];
            if select_only {
                args.push("-S");
            }
            let (ok, out) = pgbench(&args, e.gw.port(), "alice", ALICE_PW, "main");
            assert!(ok, "pgbench {args:?} through the gateway: {out}");
            assert!(
                out.contains("number of transactions actually processed: 100/100"),
                "{out}"
            );
            assert!(out.contains("number of failed transactions: 0"), "{out}");
        }
    }
    // TPC-B kept the books balanced, exactly as it does direct.
    let sums = e.direct(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta),0) FROM pgbench_history), \
         (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta),0) FROM pgbench_history), \
         (SELECT count(*) FROM pgbench_history)",
    );
    assert_eq!(sums, "t|t|300", "{sums}");
    let (ok, out) = pgbench(
        &["-M", "prepared", "-c", "4", "-t", "25", "-n"],
        e.pg_port,
        "postgres",
        &e.pg_password,
        "app",
    );
    assert!(ok, "{out}");
    assert_eq!(e.direct("SELECT count(*) FROM pgbench_history"), "400");
}

#[tokio::test]
async fn verifier_made_by_postgresql_authenticates_through_the_gateway_scram() {
    use parapet_gateway::scram::{ServerExchange, Verifier};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let e = env();
    let v = e.direct(
        "SET password_encryption = 'scram-sha-256'; DROP ROLE IF EXISTS scram_probe; \
         CREATE ROLE scram_probe PASSWORD 'pg-made secret'; \
         SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'",
    );
    let v = v.lines().last().expect("verifier");
    let parsed = Verifier::parse(v).expect("PostgreSQL's verifier parses");
    for (password, ok) in [("pg-made secret", true), ("pg-made secreT", false)] {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (ex, first) =
            ServerExchange::start(parsed.clone(), "SCRAM-SHA-256", None, client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let res = ex.finish(client.message());
        assert_eq!(res.is_ok(), ok, "{password}");
        if let Ok(fin) = res {
            client
                .finish(fin.as_bytes())
                .expect("client accepts the server signature");
        }
    }
}

#[test]
fn user_add_prints_a_usable_users_block() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args([
            "user",
            "add",
            "bob",
            "--groups",
            "eng,ops",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"bob's password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let u = &doc["users"][0];
    assert_eq!(u["name"].as_str(), Some("bob"));
    assert_eq!(
        u["groups"],
        toml::Value::Array(vec!["eng".into(), "ops".into()])
    );
    let v = parapet_gateway::Verifier::parse(u["scram"].as_str().unwrap()).unwrap();
    assert_eq!(v.iterations, 4096);
    assert!(!text.contains("bob's password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_review_and_policy_reload_on_file_change() {
    use parapet_gateway::{Gateway, GatewayConfig, TargetConfig, UserConfig, Verifier};
    use parapet_guard::{Guard, PolicySource};
    use std::sync::Arc;
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS mon_t (id int)");
    let dir = e.dir.join("reload");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("team.cedar");
    let v1 = "@id(\"team.watch-inserts\")\n@reason(\"inserts are watched\")\n@mode(\"monitor\")\n\
              forbid (principal, action, resource) when { context.kinds.contains(\"insert\") };\n\
              @id(\"team.create-needs-review\")\n@reason(\"new objects need a DBA\")\n@mode(\"review\")\n\
              forbid (principal, action, resource) when { context.kinds.contains(\"create\") };\n";
    std::fs::write(&policy, v1).unwrap();
    let source = PolicySource {
        files: vec![policy.clone()],
        default_pack: true,
        modes: Default::default(),
    };
    let guard = Arc::new(Guard::load(&source).unwrap());
    let log_dir = dir.join("log");
    let key = dir.join("log.key");
    parapet_log::Log::init(&log_dir, "parapet.test/reload", &key).unwrap();
    let log = parapet_log::Log::open(&log_dir, &key).unwrap();
    let mut cfg = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![TargetConfig {
            name: "main".into(),
            upstream: parapet::config::parse_upstream(&format!(
                "postgres://postgres:{}@127.0.0.1:{}/app",
                e.pg_password, e.pg_port
            ))
            .unwrap(),
            environment: "production".into(),
        }],
        vec![UserConfig {
            name: "alice".into(),
            scram: Verifier::generate(ALICE_PW),
            groups: vec!["eng".into()],
        }],
    );
    cfg.policy = source;
    cfg.policy_poll = Some(Duration::from_millis(100));
    cfg.reload_on_sighup = false;
    let gw = Gateway::bind(cfg, guard, log.clone()).await.unwrap();
    let addr = gw.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gw.run(async {
        let _ = stop_rx.await;
    }));
    let read = |from: u64| -> Vec<serde_json::Value> {
        let r = common::caught_up_reader(&log, &log_dir);
        r.entries(from, r.size())
            .map(|x| serde_json::from_slice(&x.unwrap().1).unwrap())
            .collect()
    };

    let c = e.client(addr).await;
    // monitor: goes through, recorded as "monitor" with the rule that would have blocked.
    c.execute("INSERT INTO mon_t VALUES ($1)", &[&77i32])
        .await
        .unwrap();
    assert_eq!(e.direct("SELECT count(*) FROM mon_t WHERE id = 77"), "1");
    let evs = read(0);
    let m = evs
        .iter()
        .find(|v| v["type"] == "decision" && v["decision"] == "monitor")
        .expect("monitor decision");
    assert_eq!(m["rules"][0]["id"], "team.watch-inserts");
    // review: refused for now, with a reason saying approval is required.
    let err = c
        .batch_execute("CREATE TABLE review_me (id int)")
        .await
        .unwrap_err();
    let db = db_error(&err);
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message()
            .starts_with("parapet: blocked by team.create-needs-review: approval required"),
        "{}",
        db.message()
    );
    assert_eq!(
        e.direct("SELECT count(*) FROM pg_class WHERE relname = 'review_me'"),
        "0"
    );

    // Change the file: inserts are now enforced.
    std::fs::write(
        &policy,
        v1.replace("@mode(\"monitor\")", "@mode(\"enforce\")"),
    )
    .unwrap();
    let mut reloaded = None;
    for _ in 0..100 {
        reloaded = read(0).into_iter().find(|v| v["type"] == "policy_reload");
        if reloaded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reloaded.expect("policy_reload event");
    assert_eq!(r["trigger"], "file_change");
    assert_ne!(r["old_hash"], r["new_hash"]);
    let err = c
        .execute("INSERT INTO mon_t VALUES ($1)", &[&78i32])
        .await
        .unwrap_err();
    assert!(db_error(&err)
        .message()
        .starts_with("parapet: blocked by team.watch-inserts:"));
    drop(c);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    let last = read(0).pop().unwrap();
    assert_eq!(last["type"], "gateway_stop");
}
