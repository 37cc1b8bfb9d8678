//! `parapet quickstart`, the real process: it prints how to connect, the gateway answers as
//! printed, and the upstream role is least-privileged (not a superuser; owns its database; may
//! create databases). Ctrl-C (SIGINT) stops everything.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed if the test ends without stopping it (a failed assert).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_guards_a_database_as_a_role_that_is_not_a_superuser() {
    let port = free_port();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_parapet"))
            .args(["quickstart", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run parapet quickstart"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // The lines up to "Press Ctrl-C", read on a thread (a failed start must not hang the test).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("Press Ctrl-C");
            if tx.send(line).is_err() || done {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("Press Ctrl-C") => break,
            Ok(l) => lines.push(l),
            Err(e) => {
                let _ = child.0.kill();
                panic!("quickstart did not come up ({e}); it printed: {lines:#?} (PostgreSQL server binaries are needed: apt-get install postgresql)");
            }
        }
    }
    let password = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .and_then(|r| r.split_whitespace().next())
        .expect("a password line")
        .to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("upstream:") && l.contains("parapet_app")),
        "{lines:#?}"
    );
    let conn = format!(
        "host=127.0.0.1 port={port} user=alice password={password} dbname=main application_name=quickstart-test"
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as printed: {e}; printed {lines:#?}"));
    tokio::spawn(connection);
    let row = c
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolcreatedb, d.datdba = r.oid \
             FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .expect("who am I");
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
            row.get::<_, bool>(3)
        ),
        ("parapet_app".to_string(), false, true, true),
        "the upstream role: name, superuser, createdb, owns the database"
    );
    // It can do the ordinary work: tables in its database, and new databases.
    c.batch_execute("CREATE TABLE qs (id int); INSERT INTO qs VALUES (1), (2)")
        .await
        .expect("tables in its own database");
    let n: i64 = c
        .query_one("SELECT count(*) FROM qs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
    c.batch_execute("CREATE DATABASE qs_scratch")
        .await
        .expect("CREATEDB");
    // What only a superuser may do, the server itself refuses, guardrails aside (the guard
    // lets reading a catalog through).
    let err = c
        .batch_execute("SELECT rolpassword FROM pg_authid")
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501", "{err}");
    assert!(db.message().contains("permission denied"), "{err}");
    drop(c);
    // SAFETY: kill(2) on the child started here.
    let r = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "quickstart exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quickstart did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
