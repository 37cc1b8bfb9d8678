//! Row limits (`@max_rows` rules) with a real PostgreSQL, a real `parapet serve` and real clients
//! (psql, tokio-postgres with pipelining and portals fetched in parts, pgbench custom scripts):
//! writes within the limit run and commit; writes past it are rolled back and refused with
//! 42501, RETURNING rows never reach the client, the transaction state stays what it would be
//! on any error (a failed block, or nothing committed outside one); reads stop at the limit;
//! what the command tag cannot count (a trigger) is refused. After every blocked statement a
//! direct query checks that nothing changed.

mod common;

use common::{audit_index, env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Child;

const RULES: &str = r#"
@id("team.small-writes")
@reason("writes to lim change at most 5 rows")
@max_rows("5")
forbid (principal, action, resource)
when { context.kinds.containsAny(["update", "delete", "insert", "merge"]) &&
       context.write_names.containsAny(["public.lim", "public.lim_trig"]) };

@id("team.small-reads")
@reason("reads of lim_read return at most 10 rows")
@max_rows("10")
forbid (principal, action, resource)
when { context.kind == "select" && context.read_names.contains("public.lim_read") };
"#;

/// The tests share the tables of one database: one at a time.
static TABLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Site {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Site {
    async fn start(name: &str) -> Site {
        let e = env();
        let dir = e.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Log::init(
            &dir.join("log"),
            &format!("parapet.test/{name}"),
            &dir.join("log.key"),
        )
        .unwrap();
        std::fs::write(dir.join("team.cedar"), RULES).unwrap();
        let port = common::http::free_port();
        let upstream = format!(
            "postgres://postgres:{}@127.0.0.1:{}/app",
            e.pg_password, e.pg_port
        );
        let user =
            parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()]);
        let config = format!(
            "[log]\ndir = \"log\"\nkey = \"log.key\"\n[listen]\npostgres = \"127.0.0.1:{port}\"\n\
             [[targets]]\nname = \"main\"\nupstream = \"{upstream}\"\n{user}\n\
             [policy]\nfiles = [\"team.cedar\"]\ndefault_pack = true\npoll_seconds = 0\n"
        );
        std::fs::write(dir.join("parapet.toml"), config).unwrap();
        let child = common::start_serve(&dir.join("parapet.toml"), port).await;
        Site {
            dir,
            port,
            child: Some(child),
        }
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice password={ALICE_PW} dbname=main sslmode=disable",
            self.port
        )
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
            .await
            .expect("connect through the gateway");
        tokio::spawn(conn);
        c
    }

    fn events(&self) -> Vec<Value> {
        let r = LogReader::open(&self.dir.join("log")).expect("log");
        r.entries(0, r.size())
            .map(|e| serde_json::from_slice(&e.expect("entry").1).expect("JSON"))
            .collect()
    }
}

/// The sum of `v` over `lim` and its row count, read directly: the state a blocked statement
/// must leave unchanged.
fn state(table: &str) -> String {
    env().direct(&format!(
        "SELECT count(*) || '/' || coalesce(sum(v), 0) FROM {table}"
    ))
}

fn reset() {
    env().direct(
        "DROP TABLE IF EXISTS lim, lim_read, lim_trig, lim_note; \
         CREATE TABLE lim (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO lim SELECT g, 0 FROM generate_series(1, 20) g; \
         CREATE TABLE lim_read (id int PRIMARY KEY); \
         INSERT INTO lim_read SELECT g FROM generate_series(1, 20) g; \
         CREATE TABLE lim_note (id int, v int DEFAULT 0); \
         CREATE TABLE lim_trig (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO lim_trig SELECT g, 0 FROM generate_series(1, 3) g; \
         CREATE OR REPLACE FUNCTION lim_note_fn() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO lim_note VALUES (NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER lim_trig_note AFTER UPDATE ON lim_trig FOR EACH ROW EXECUTE FUNCTION lim_note_fn(); \
         GRANT ALL ON lim, lim_read, lim_trig, lim_note TO PUBLIC",
    );
}

fn blocked(e: &tokio_postgres::Error, what: &str) -> u64 {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {e:?}"));
    assert_eq!(db.code().code(), "42501", "{what}: {db:?}");
    audit_index(db.detail().unwrap_or_default())
}

/// The simple protocol (psql and tokio-postgres' simple queries): autocommit, explicit blocks,
/// multi-statement messages, RETURNING, reads, and a write the command tag cannot count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_limits_roll_back_and_refuse() {
    let _tables = TABLES.lock().await;
    reset();
    let site = Site::start("limits-simple").await;
    let c = site.client().await;

    // Within the limit: runs and commits.
    let n = c
        .simple_query("UPDATE lim SET v = v + 1 WHERE id <= 3")
        .await
        .expect("3 rows pass");
    assert!(
        matches!(
            n.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(3))
        ),
        "{n:?}"
    );
    assert_eq!(state("lim"), "20/3");

    // Past it: rolled back, refused, nothing committed, the session idle and usable.
    let e = c
        .simple_query("UPDATE lim SET v = v + 100 WHERE id <= 8")
        .await
        .expect_err("8 rows are past the limit");
    let index = blocked(&e, "autocommit update");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("blocked by team.small-writes: 8 rows affected, limit 5; nothing was changed"),
        "{msg}"
    );
    assert_eq!(state("lim"), "20/3");
    assert!(!c.is_closed());
    c.simple_query("SELECT 1").await.expect("usable after");

    // RETURNING rows never reach the client.
    let e = c
        .simple_query("DELETE FROM lim WHERE id <= 9 RETURNING id")
        .await
        .expect_err("9 rows");
    blocked(&e, "delete returning");
    assert_eq!(state("lim"), "20/3");
    let rows = c
        .simple_query("DELETE FROM lim WHERE id >= 19 RETURNING id")
        .await
        .expect("2 rows pass");
    let returned = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 2);
    assert_eq!(state("lim"), "18/3");
    // RETURNING rows are held only up to 64 MiB: a write within its limit whose rows are larger
    // is refused, and nothing changes.
    let e = c
        .simple_query("UPDATE lim SET v = v + 1 WHERE id <= 5 RETURNING repeat('x', 14000000)")
        .await
        .expect_err("70 MB of rows");
    blocked(&e, "held bytes");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains(
            "blocked by team.small-writes: the rows this limited write returns exceed 64 MiB"
        ),
        "{msg}"
    );
    assert_eq!(state("lim"), "18/3");
    c.simple_query("SELECT 1").await.expect("usable after");

    // INSERT … SELECT and MERGE are counted by their tags too.
    let e = c
        .simple_query("INSERT INTO lim SELECT g, 0 FROM generate_series(101, 106) g")
        .await
        .expect_err("6 rows inserted");
    blocked(&e, "insert select");
    let e = c
        .simple_query(
            "MERGE INTO lim USING generate_series(1, 12) g ON lim.id = g \
             WHEN MATCHED THEN UPDATE SET v = lim.v + 1",
        )
        .await
        .expect_err("12 rows merged");
    blocked(&e, "merge");
    assert_eq!(state("lim"), "18/3");

    // A multi-statement message is one implicit transaction: all of it is undone.
    let e = c
        .simple_query(
            "UPDATE lim SET v = v + 1 WHERE id = 1; UPDATE lim SET v = v + 1000 WHERE id <= 8",
        )
        .await
        .expect_err("second statement past the limit");
    blocked(&e, "multi-statement");
    assert_eq!(state("lim"), "18/3");

    // In the client's block: the block fails as on any error; nothing commits.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE lim SET v = v + 1 WHERE id = 1")
        .await
        .expect("within the limit in a block");
    let e = c
        .simple_query("UPDATE lim SET v = v + 1000 WHERE id <= 10")
        .await
        .expect_err("past the limit in a block");
    blocked(&e, "in a block");
    env().direct("SET lock_timeout = '5s'; UPDATE lim SET v = v WHERE id BETWEEN 2 AND 10");
    let e = c.simple_query("SELECT 1").await.expect_err("block failed");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("25P02"),
        "{e:?}"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(state("lim"), "18/3");
    // And within the limit in a block, it commits with the block.
    let e = c
        .simple_query("BEGIN; UPDATE lim SET v = v + 1 WHERE id <= 2")
        .await
        .expect_err("transaction control beside a limited statement");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("transaction control")),
        "{e:?}"
    );
    c.simple_query("BEGIN").await.unwrap();
    for _ in 0..2 {
        c.simple_query("UPDATE lim SET v = v + 1 WHERE id <= 2")
            .await
            .unwrap();
    }
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(state("lim"), "18/7");

    // Reads stop at the limit with an error; within it they are whole.
    let e = c
        .simple_query("SELECT * FROM lim_read")
        .await
        .expect_err("20 rows to read");
    blocked(&e, "read");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("more than 10 rows returned, limit 10"));
    let rows = c
        .simple_query("SELECT * FROM lim_read WHERE id <= 10")
        .await
        .expect("10 rows");
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        10
    );

    // Past the limit the server is stopped (cancelled), not left to compute the rest: a
    // sequence advanced per row shows how far it got (non-transactional, so it stays).
    env().direct(
        "DROP SEQUENCE IF EXISTS lim_seq; CREATE SEQUENCE lim_seq; GRANT ALL ON lim_seq TO PUBLIC",
    );
    let e = c
        .simple_query("SELECT nextval('lim_seq') FROM lim_read, generate_series(1, 200000) g")
        .await
        .expect_err("4,000,000 rows to read");
    blocked(&e, "long read");
    let reached: i64 = env()
        .direct("SELECT last_value FROM lim_seq")
        .parse()
        .expect("sequence value");
    eprintln!("rows computed before the cancel: {reached}");
    assert!(
        (11..4_000_000).contains(&reached),
        "the read past its limit was not stopped: {reached} rows computed"
    );
    c.simple_query("SELECT 1")
        .await
        .expect("usable after a cancel");

    // A trigger writes rows the tag does not count: refused before it runs.
    let e = c
        .simple_query("UPDATE lim_trig SET v = 1 WHERE id = 1")
        .await
        .expect_err("trigger");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("trigger lim_trig_note")
            && db.message().contains("than the command tag counts"),
        "{}",
        db.message()
    );
    assert_eq!(state("lim_trig"), "3/0");
    assert_eq!(state("lim_note"), "0/0");

    // psql: the same, and its transaction state after.
    let e = env();
    let (ok, _, err) = e.psql(
        &site.conninfo(),
        &["-v", "ON_ERROR_STOP=1"],
        "UPDATE lim SET v = v + 1 WHERE id <= 6;\n",
    );
    assert!(!ok && err.contains("6 rows affected, limit 5"), "{err}");
    assert_eq!(state("lim"), "18/7");
    let (ok, out, err) = e.psql(
        &site.conninfo(),
        &["-v", "ON_ERROR_STOP=1"],
        "UPDATE lim SET v = v + 1 WHERE id <= 5;\nSELECT 'done';\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("done"), "{out}");
    assert_eq!(state("lim"), "18/12");

    // The decision names the limit; the blocked statement's outcome its error.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let events = site.events();
    let decision = &events[index as usize];
    assert_eq!(decision["decision"], "allow", "{decision}");
    assert_eq!(decision["max_rows"], 5, "{decision}");
    assert_eq!(decision["max_rows_rule"], "team.small-writes");
    let outcome = events
        .iter()
        .find(|v| v["type"] == "outcome" && v["decision"] == index)
        .unwrap_or_else(|| panic!("no outcome for {index}"));
    assert_eq!(outcome["sqlstate"], "42501", "{outcome}");
}

/// The extended protocol: prepared statements, pipelined requests, a transaction, RETURNING,
/// and a read fetched in parts from a portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_limits_with_pipelining() {
    let _tables = TABLES.lock().await;
    reset();
    let site = Site::start("limits-extended").await;
    let mut c = site.client().await;
    let upd = c
        .prepare("UPDATE lim SET v = v + 1 WHERE id <= $1")
        .await
        .expect("prepare");
    assert_eq!(c.execute(&upd, &[&3i32]).await.expect("3 rows"), 3);
    assert_eq!(state("lim"), "20/3");
    let e = c.execute(&upd, &[&8i32]).await.expect_err("8 rows");
    blocked(&e, "extended update");
    assert_eq!(state("lim"), "20/3");

    // Pipelined: each request has its own Sync; the blocked one alone fails.
    let (a, b, d) = tokio::join!(
        c.execute(&upd, &[&2i32]),
        c.execute(&upd, &[&9i32]),
        c.query_one("SELECT count(*) FROM lim", &[]),
    );
    assert_eq!(a.expect("first"), 2);
    blocked(&b.expect_err("second"), "pipelined");
    assert_eq!(d.expect("third").get::<_, i64>(0), 20);
    assert_eq!(state("lim"), "20/5");

    // RETURNING rows never reach the client.
    let e = c
        .query("DELETE FROM lim WHERE id <= $1 RETURNING id", &[&7i32])
        .await
        .expect_err("7 rows");
    blocked(&e, "returning");
    assert_eq!(state("lim"), "20/5");
    let e = c
        .query(
            "UPDATE lim SET v = v + 1 WHERE id <= $1 RETURNING repeat('x', 14000000)",
            &[&5i32],
        )
        .await
        .expect_err("70 MB of rows");
    blocked(&e, "held bytes");
    assert_eq!(state("lim"), "20/5");

    // In a transaction: the transaction fails, nothing commits.
    {
        let t = c.transaction().await.unwrap();
        assert_eq!(t.execute(&upd, &[&1i32]).await.unwrap(), 1);
        blocked(
            &t.execute(&upd, &[&6i32]).await.expect_err("6 rows"),
            "transaction",
        );
        // Rolled back to the gateway's savepoint at once: the rows' locks are released (only
        // row 1, updated within the limit before, stays locked until the block ends).
        env().direct("SET lock_timeout = '5s'; UPDATE lim SET v = v WHERE id BETWEEN 2 AND 6");
        let e = t.query("SELECT 1", &[]).await.expect_err("failed block");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25P02"));
        let _ = t.rollback().await;
    }
    assert_eq!(state("lim"), "20/5");
    // Usable after.
    assert_eq!(c.execute(&upd, &[&1i32]).await.unwrap(), 1);
    assert_eq!(state("lim"), "20/6");

    // A read fetched in parts from a portal stops at the limit across fetches.
    {
        let t = c.transaction().await.unwrap();
        let stmt = t
            .prepare("SELECT id FROM lim_read ORDER BY id")
            .await
            .unwrap();
        let portal = t.bind(&stmt, &[]).await.unwrap();
        let first = t.query_portal(&portal, 4).await.expect("rows 1-4");
        assert_eq!(first.len(), 4);
        let second = t.query_portal(&portal, 4).await.expect("rows 5-8");
        assert_eq!(second.len(), 4);
        let e = t
            .query_portal(&portal, 4)
            .await
            .expect_err("rows 9-12 cross the limit");
        blocked(&e, "portal");
        let _ = t.rollback().await;
    }
    let rows = c
        .query("SELECT id FROM lim_read WHERE id <= $1", &[&10i32])
        .await
        .expect("10 rows");
    assert_eq!(rows.len(), 10);
}

/// pgbench custom scripts in both protocols: every transaction of a script past the limit fails
/// and changes nothing; one within it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_scripts_under_a_limit() {
    let _tables = TABLES.lock().await;
    reset();
    let site = Site::start("limits-pgbench").await;
    let dir = site.dir.clone();
    let over = dir.join("over.sql");
    std::fs::write(&over, "UPDATE lim SET v = v + 1 WHERE id <= 7;\n").unwrap();
    let within = dir.join("within.sql");
    std::fs::write(
        &within,
        "\\set id random(1, 20)\nUPDATE lim SET v = v + 1 WHERE id = :id;\n",
    )
    .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let run = |script: &std::path::Path| {
            std::process::Command::new(common::tool("pgbench"))
                .args(["-n", "-c", "2", "-t", "10", "-M", mode, "-f"])
                .arg(script)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &site.port.to_string(),
                    "-U",
                    "alice",
                    "main",
                ])
                .env("PGPASSWORD", ALICE_PW)
                .output()
                .expect("run pgbench")
        };
        let before = state("lim");
        let out = run(&over);
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{mode}: {text}");
        assert!(text.contains("7 rows affected, limit 5"), "{mode}: {text}");
        assert_eq!(state("lim"), before, "{mode}: something changed");
        let out = run(&within);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{mode}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("number of transactions actually processed: 20/20"),
            "{mode}: {text}"
        );
    }
    assert_eq!(state("lim"), "20/60");
}
