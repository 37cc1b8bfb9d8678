//! Fleet-wide state (`parapet_gateway::fleet::PgFleetState`) with a real PostgreSQL: two
//! gateways in one process, each with its own log and its own connection to the fleet's
//! PostgreSQL, as two processes would have. Gateway B reads gateway A's log through a verified
//! mirror (`parapet_log::mirror`), lagging as a fleet's gateways do.
//!
//! - A user locked through A: B terminates the user's live session and refuses new logins
//!   (28000, with the reason); unlocked through B, A lets the user in again.
//! - An approval requested and granted on A reaches B through the mirror and is used once on B;
//!   a second use raced on A and B at once runs at most once (one row), the other is refused.
//! - With the fleet's PostgreSQL down, a login is refused (58030: fail closed) and a lock fails.

mod common;

use bytes::BytesMut;
use common::{first_error, query, start_cluster, Client, PW};
use parapet_gateway::approvals::{ApprovalState, Approver, Grant};
use parapet_gateway::fleet::PgFleetState;
use parapet_gateway::{
    FleetOptions, Gateway, GatewayConfig, TargetConfig, UpstreamConfig, UserConfig, Verifier,
};
use parapet_guard::{Guard, PolicySource};
use parapet_log::driver::LocalDir;
use parapet_log::mirror::{Mirror, MirrorHandle};
use parapet_log::note::NoteVerifier;
use parapet_log::Log;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const RULE: &str = "@id(\"team.review-ledger\")\n@reason(\"writes to ledger need an approval\")\n\
    @mode(\"review\")\n@approvers(\"dba\")\n\
    forbid (principal, action, resource) when { context.write_names.contains(\"public.ledger\") };\n";

struct Node {
    addr: SocketAddr,
    control: parapet_gateway::control::Control,
    _mirror: Option<MirrorHandle>,
}

/// A gateway in front of the cluster on `port`, with its own log in `dir`, its fleet state in
/// `fleet_url`, reading the published log at `read_dir` (its own, or a mirror).
async fn gateway(
    port: u16,
    dir: &Path,
    policy: &Path,
    fleet_url: &str,
    mirror_of: Option<(&Path, NoteVerifier)>,
) -> (Node, String) {
    let log_dir = dir.join("log");
    let key = dir.join("log.key");
    let vkey = Log::init(&log_dir, "parapet.test/fleet", &key).expect("log init");
    let log = Log::open(&log_dir, &key).expect("log open");
    let (read_dir, mirror) = match mirror_of {
        None => (log_dir.clone(), None),
        Some((src, vkey)) => {
            let m = dir.join("mirror");
            let h = Mirror::open(LocalDir::new(src), &m, vkey)
                .expect("mirror")
                .start(Duration::from_millis(200))
                .expect("mirror thread");
            let s = h.wait_checked(Duration::from_secs(30));
            assert!(s.alarm.is_none() && s.checked.is_some(), "{s:?}");
            (m, Some(h))
        }
    };
    let guard = Arc::new(
        Guard::load(&PolicySource {
            files: vec![policy.to_path_buf()],
            default_pack: true,
            modes: Default::default(),
        })
        .expect("policies"),
    );
    let target = TargetConfig {
        name: "main".into(),
        upstream: UpstreamConfig {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            tls: Default::default(),
        },
        environment: "production".into(),
    };
    let users = ["alice", "bob"]
        .iter()
        .map(|u| UserConfig {
            name: u.to_string(),
            scram: Verifier::generate(PW),
            groups: vec![if *u == "bob" { "dba" } else { "eng" }.into()],
        })
        .collect();
    let mut cfg = GatewayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), vec![target], users);
    cfg.reload_on_sighup = false;
    cfg.policy_poll = None;
    let state = PgFleetState::connect(fleet_url).await.expect("fleet state");
    let gw = Gateway::bind_with(
        cfg,
        guard,
        log,
        Some(FleetOptions {
            state,
            log_dir: read_dir,
        }),
    )
    .await
    .expect("bind");
    let node = Node {
        addr: gw.local_addr().unwrap(),
        control: gw.control(),
        _mirror: mirror,
    };
    tokio::spawn(gw.run(std::future::pending()));
    (node, vkey)
}

async fn run(c: &mut Client, sql: &str) -> Result<(), (String, String)> {
    let mut out = BytesMut::new();
    query(sql, &mut out);
    c.s.write_all(&out).await.unwrap();
    let msgs = c.until_ready().await;
    match first_error(&msgs) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits (polling, up to a minute) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within a minute");
}

async fn rows(port: u16) -> i64 {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c.query_one("SELECT count(*) FROM ledger", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_single_use_approvals_hold_across_two_gateways() {
    let cluster = start_cluster();
    let port = cluster.port;
    let (admin, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin.batch_execute("CREATE DATABASE fleet").await.unwrap();
    admin
        .batch_execute("CREATE TABLE ledger (n int)")
        .await
        .unwrap();
    let fleet_url = format!("postgres://postgres@127.0.0.1:{port}/fleet");
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("ledger.cedar");
    std::fs::write(&policy, RULE).unwrap();
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let (a, vkey_a) = gateway(port, &tmp.path().join("a"), &policy, &fleet_url, None).await;
    let (b, _) = gateway(
        port,
        &tmp.path().join("b"),
        &policy,
        &fleet_url,
        Some((
            &tmp.path().join("a/log"),
            NoteVerifier::parse(&vkey_a).unwrap(),
        )),
    )
    .await;

    // Locked through A: alice's session on B ends, and B refuses her.
    let mut on_b = Client::connect_to(b.addr, "alice", "main").await;
    run(&mut on_b, "SELECT 1").await.unwrap();
    assert_eq!(
        a.control
            .lock_user("alice", "incident 7", "ops")
            .await
            .unwrap(),
        0
    );
    let mut fatal = None;
    while let Some((tag, body)) = on_b.try_read_msg().await {
        if tag == b'E' {
            fatal = Some(parapet_gateway::protocol::backend::parse_error(&body));
        }
    }
    let fatal = fatal.expect("B's session of alice got an error before it closed");
    assert_eq!(fatal.code, "57P01");
    assert!(
        fatal.message.contains("locked by operator ops: incident 7"),
        "{}",
        fatal.message
    );
    let refused = Client::try_connect(b.addr, "alice", "main")
        .await
        .err()
        .expect("refused");
    assert!(
        refused.starts_with("28000") && refused.contains("incident 7"),
        "{refused}"
    );
    assert_eq!(
        b.control.locked_users(),
        vec![("alice".to_string(), "incident 7".to_string())]
    );
    // Unlocked through B: A lets her in again.
    assert!(b.control.unlock_user("alice", "ops").await.unwrap());
    assert!(!b.control.unlock_user("alice", "ops").await.unwrap());
    let mut on_a = Client::connect_to(a.addr, "alice", "main").await;
    let mut on_b = Client::connect_to(b.addr, "alice", "main").await;

    // An approval requested on A reaches B through the mirror.
    let insert = "INSERT INTO ledger VALUES (1)";
    let (code, msg) = run(&mut on_a, insert).await.unwrap_err();
    assert_eq!(code, "42501", "{msg}");
    let id = a.control.approvals(false)[0].id.clone();
    eventually("B knows the request", || {
        b.control
            .approval(&id)
            .is_some_and(|r| r.state == ApprovalState::Pending)
    })
    .await;
    // Granted on A (as if through A's console); B sees the grant, and alice uses it on B.
    let bob = Approver {
        token: "ops-console".into(),
        user: Some("bob".into()),
    };
    let granted = a
        .control
        .approve(
            &id,
            &bob,
            &Grant {
                reason: "ticket 12".into(),
                ..Grant::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(granted.state, ApprovalState::Granted);
    eventually("B sees the grant", || {
        b.control
            .approval(&id)
            .is_some_and(|r| r.state == ApprovalState::Granted)
    })
    .await;
    run(&mut on_b, insert).await.expect("used once on B");
    assert_eq!(rows(port).await, 1);
    // A still believes it unused (B's use is in B's log, which A does not read): the claim in
    // PostgreSQL refuses it.
    assert_eq!(
        a.control.approval(&id).map(|r| r.state),
        Some(ApprovalState::Granted)
    );
    let (code, _) = run(&mut on_a, insert).await.unwrap_err();
    assert_eq!(code, "42501");
    let (code, _) = run(&mut on_b, insert).await.unwrap_err();
    assert_eq!(code, "42501");
    assert_eq!(rows(port).await, 1);

    // A second approval, granted on A, used on A and B at the same moment: it runs once.
    let second = "INSERT INTO ledger VALUES (2)";
    let (code, _) = run(&mut on_a, second).await.unwrap_err();
    assert_eq!(code, "42501");
    let id2 = a
        .control
        .approvals(false)
        .into_iter()
        .find(|r| r.sql.as_deref() == Some(second))
        .expect("second request")
        .id;
    a.control
        .approve(
            &id2,
            &bob,
            &Grant {
                reason: "ticket 13".into(),
                ..Grant::default()
            },
        )
        .await
        .unwrap();
    eventually("B sees the second grant", || {
        b.control
            .approval(&id2)
            .is_some_and(|r| r.state == ApprovalState::Granted)
    })
    .await;
    let (ra, rb) = tokio::join!(run(&mut on_a, second), run(&mut on_b, second));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one of the raced uses runs: A {ra:?}, B {rb:?}"
    );
    assert_eq!(rows(port).await, 2);

    // A request can be decided once fleet-wide: B's approver cannot deny what A granted, even
    // while B's view lags (the decision claim refuses it).
    let e = b
        .control
        .deny(&id2, &bob, "too late")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not pending") || e.contains("someone else"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fleets_postgresql_logins_are_refused_and_locks_fail() {
    let cluster = start_cluster();
    let fleet = start_cluster();
    let fleet_url = format!("postgres://postgres@127.0.0.1:{}/postgres", fleet.port);
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("ledger.cedar");
    std::fs::write(&policy, RULE).unwrap();
    let (g, _) = gateway(cluster.port, tmp.path(), &policy, &fleet_url, None).await;
    let mut c = Client::connect_to(g.addr, "alice", "main").await;
    run(&mut c, "SELECT 1").await.unwrap();
    // An immediate shutdown: the postmaster ends its backends (our connections) and exits.
    let root = unsafe { libc::geteuid() } == 0;
    let st = common::command(&common::bindir().join("pg_ctl"), root)
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(fleet.dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctl stop");
    let refused = Client::try_connect(g.addr, "alice", "main")
        .await
        .err()
        .expect("refused while the fleet's PostgreSQL is down");
    assert!(
        refused.starts_with("58030")
            && refused.contains("cannot check whether user alice is locked"),
        "{refused}"
    );
    let e = g
        .control
        .lock_user("alice", "x", "ops")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not in force"), "{e}");
}
