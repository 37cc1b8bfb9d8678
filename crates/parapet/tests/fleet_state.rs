//! Two real `parapet serve` processes sharing one fleet log (`[log] backend = "postgres"`, a
//! PostgreSQL sequencer of its own and a real Garage bucket), each with its verified mirror and
//! the fleet's state in PostgreSQL: a user locked through gateway A's console is refused on B and
//! B's live session of that user ends; an approval requested and granted on A is used once on B,
//! and a second use raced on A and B is refused on both.

mod common;
#[path = "../../parapet-log/tests/common/garage.rs"]
mod garage;
#[path = "../../parapet-log/tests/common/postgres.rs"]
mod postgres;

use common::http::{free_port, get, post};
use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BOB_PW: &str = "bob-Pw-42";

async fn alice(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("alice")
        .password(ALICE_PW)
        .dbname("main")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_locks_and_single_use_approvals() {
    let e = env();
    e.direct("CREATE TABLE fleet_state_ledger (n int)");
    let seq = postgres::Postgres::start();
    seq.psql("postgres", "CREATE DATABASE fleet");
    let g = garage::Garage::start("parapet-fleet-state");
    // One test in this binary: nothing else reads the environment meanwhile.
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("team.cedar"),
        "@id(\"team.review-ledger\")\n@reason(\"writes to the ledger need an approval\")\n\
         @mode(\"review\")\n@approvers(\"dba\")\n\
         forbid (principal, action, resource) when { context.write_names.contains(\"public.fleet_state_ledger\") };\n",
    )
    .unwrap();
    let token = parapet::console::auth::generate();
    let block = parapet::cli::console::token_block(
        "bob-token",
        parapet::config::ConsoleRole::Operator,
        &parapet::console::auth::digest(&token),
        Some("bob"),
    );
    let users: String = [("alice", ALICE_PW, "eng"), ("bob", BOB_PW, "dba")]
        .iter()
        .map(|(u, pw, grp)| {
            parapet::cli::user::snippet(u, &Verifier::generate(pw), &[grp.to_string()]) + "\n"
        })
        .collect();
    let upstream = format!(
        "postgres://postgres:{}@127.0.0.1:{}/app",
        e.pg_password, e.pg_port
    );
    let mut nodes = Vec::new();
    for n in 0..2 {
        let (port, console) = (free_port(), free_port());
        let config = format!(
            "[log]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nbucket = \"{}\"\n\
             endpoint = \"{}\"\nregion = \"{}\"\ndir = \"local{n}\"\nkey = \"fleet.key\"\norigin = \"parapet.test/fleet-state\"\n\
             [listen]\npostgres = \"127.0.0.1:{port}\"\n\
             [[targets]]\nname = \"main\"\nupstream = \"{upstream}\"\n{users}\n\
             [policy]\nfiles = [\"team.cedar\"]\ndefault_pack = true\npoll_seconds = 0\n\
             [console]\nlisten = \"127.0.0.1:{console}\"\n{block}",
            seq.url("fleet"),
            g.bucket,
            g.endpoint,
            g.region
        );
        let path = dir.join(format!("gw{n}.toml"));
        std::fs::write(&path, config).unwrap();
        nodes.push((path, port, SocketAddr::from(([127, 0, 0, 1], console))));
    }
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["log", "init", "--config"])
        .arg(&nodes[0].0)
        .arg("--key")
        .arg(dir.join("fleet.key"))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut children = Vec::new();
    for (path, port, _) in &nodes {
        children.push(common::start_serve(path, *port).await);
    }
    let kill = scopeguard(children);
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_until("both consoles", || {
        (std::net::TcpStream::connect(a.2).is_ok() && std::net::TcpStream::connect(b.2).is_ok())
            .then_some(())
    });

    // Locked through A's console: B's live session of alice ends, and B refuses her.
    let on_b = alice(b.1).await.unwrap();
    on_b.simple_query("SELECT 1").await.unwrap();
    let r = post(
        a.2,
        "/api/users/alice/lock",
        &token,
        "{\"reason\":\"incident 9\"}",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(60);
    while on_b.simple_query("SELECT 1").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "B's session of alice did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Err(refused) = alice(b.1).await else {
        panic!("alice was let in on B while locked")
    };
    let db = refused.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("incident 9"), "{}", db.message());
    let r = post(
        b.2,
        "/api/users/alice/unlock",
        &token,
        "{\"reason\":\"over\"}",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Requested on A, granted through A's console, used once on B.
    let on_a = alice(a.1).await.unwrap();
    let on_b = alice(b.1).await.unwrap();
    let insert = "INSERT INTO fleet_state_ledger VALUES (1)";
    let err = on_a.simple_query(insert).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    let id = wait_until("the request on A", || {
        get(a.2, "/api/approvals", Some(&token)).json()["approvals"][0]["id"]
            .as_str()
            .map(str::to_string)
    });
    wait_until("B knows the request", || {
        (get(b.2, &format!("/api/approvals/{id}"), Some(&token)).status == 200).then_some(())
    });
    let r = post(
        a.2,
        &format!("/api/approvals/{id}/approve"),
        &token,
        "{\"reason\":\"ticket 21\"}",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    wait_until("B sees the grant", || {
        (get(b.2, &format!("/api/approvals/{id}"), Some(&token)).json()["state"] == "granted")
            .then_some(())
    });
    on_b.simple_query(insert).await.expect("used once on B");
    let (ra, rb) = tokio::join!(on_a.simple_query(insert), on_b.simple_query(insert));
    assert!(ra.is_err() && rb.is_err(), "used twice: A {ra:?}, B {rb:?}");
    assert_eq!(e.direct("SELECT count(*) FROM fleet_state_ledger"), "1");
    drop(kill);
}

/// Kills the `parapet serve` children when dropped (also on a failed assertion).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn scopeguard(children: Vec<std::process::Child>) -> Children {
    Children(children)
}
