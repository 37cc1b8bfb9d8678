//! Approvals of `review` rules with a real PostgreSQL, a real `parapet serve` (with its console)
//! and real clients (tokio-postgres, psql, pgbench, `parapet approvals`): refuse at once, approve,
//! send again; used once; bound to text, user and target; self-approval and non-approvers
//! refused; deny; expiry; maintenance windows (and `pgbench -i` through one); holding the
//! statement with a NOTICE until approved or denied; the audit events; and approvals that
//! survive a `kill -9` of the gateway; the extended protocol as the simple one.

mod common;

use common::http::{free_port, get, post};
use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

const BOB_PW: &str = "bob-Pw-17";
const CAROL_PW: &str = "carol-Pw-99";

/// A `parapet serve` with its console, three users (alice and carol in `eng`, bob in `dba`),
/// two targets on the same database, and tokens for bob, alice and carol (operators) and an
/// auditor.
struct Site {
    dir: PathBuf,
    port: u16,
    console: SocketAddr,
    child: Option<Child>,
    tokens: std::collections::HashMap<&'static str, String>,
    vkey: String,
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
    /// `policy`: Cedar rules (the default pack stays on unless `default_pack` is false);
    /// `review`: the `[review]` section's body.
    async fn start(name: &str, policy: &str, default_pack: bool, review: &str) -> Site {
        let e = env();
        let dir = e.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let vkey = Log::init(
            &dir.join("log"),
            &format!("parapet.test/{name}"),
            &dir.join("log.key"),
        )
        .unwrap();
        std::fs::write(dir.join("team.cedar"), policy).unwrap();
        let port = free_port();
        let console_port = free_port();
        let mut tokens = std::collections::HashMap::new();
        let mut blocks = String::new();
        for (who, role, user) in [
            ("bob", "operator", Some("bob")),
            ("alice", "operator", Some("alice")),
            ("carol", "operator", Some("carol")),
            ("anonymous-op", "operator", None),
            ("audit", "auditor", Some("bob")),
        ] {
            let t = parapet::console::auth::generate();
            let role = if role == "operator" {
                parapet::config::ConsoleRole::Operator
            } else {
                parapet::config::ConsoleRole::Auditor
            };
            blocks.push_str(&parapet::cli::console::token_block(
                &format!("{who}-token"),
                role,
                &parapet::console::auth::digest(&t),
                user,
            ));
            tokens.insert(who, t);
        }
        let upstream = format!(
            "postgres://postgres:{}@127.0.0.1:{}/app",
            e.pg_password, e.pg_port
        );
        let users: String = [
            ("alice", ALICE_PW, "eng"),
            ("bob", BOB_PW, "dba"),
            ("carol", CAROL_PW, "eng"),
        ]
        .iter()
        .map(|(u, pw, g)| {
            parapet::cli::user::snippet(u, &Verifier::generate(pw), &[g.to_string()]) + "\n"
        })
        .collect();
        let config = format!(
            "[log]\ndir = \"log\"\nkey = \"log.key\"\n[listen]\npostgres = \"127.0.0.1:{port}\"\n\
             [[targets]]\nname = \"main\"\nupstream = \"{upstream}\"\n\
             [[targets]]\nname = \"other\"\nupstream = \"{upstream}\"\n\
             {users}\n[policy]\nfiles = [\"team.cedar\"]\ndefault_pack = {default_pack}\npoll_seconds = 0\n\
             [review]\n{review}\n\
             [console]\nlisten = \"127.0.0.1:{console_port}\"\n{blocks}"
        );
        std::fs::write(dir.join("parapet.toml"), config).unwrap();
        let mut site = Site {
            dir,
            port,
            console: ([127, 0, 0, 1], console_port).into(),
            child: None,
            tokens,
            vkey,
        };
        site.launch().await;
        site
    }

    async fn launch(&mut self) {
        self.child = Some(common::start_serve(&self.dir.join("parapet.toml"), self.port).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.console).is_err() {
            assert!(Instant::now() < deadline, "the console did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, then start again on the same config and log.
    async fn crash_and_restart(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("kill -9");
        c.wait().unwrap();
        self.launch().await;
    }

    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    fn conninfo(&self, user: &str, target: &str) -> String {
        let pw = match user {
            "alice" => ALICE_PW,
            "bob" => BOB_PW,
            _ => CAROL_PW,
        };
        format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname={target} sslmode=disable",
            self.port
        )
    }

    async fn client(&self, user: &str, target: &str) -> tokio_postgres::Client {
        let (c, conn) =
            tokio_postgres::connect(&self.conninfo(user, target), tokio_postgres::NoTls)
                .await
                .expect("connect through the gateway");
        tokio::spawn(conn);
        c
    }

    fn approve(&self, who: &str, id: &str, body: &str) -> common::http::Response {
        post(
            self.console,
            &format!("/api/approvals/{id}/approve"),
            self.token(who),
            body,
        )
    }

    fn deny(&self, who: &str, id: &str, reason: &str) -> common::http::Response {
        post(
            self.console,
            &format!("/api/approvals/{id}/deny"),
            self.token(who),
            &serde_json::json!({ "reason": reason }).to_string(),
        )
    }

    fn list(&self) -> Vec<Value> {
        let r = get(self.console, "/api/approvals", Some(self.token("audit")));
        assert_eq!(r.status, 200);
        r.json()["approvals"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every published log entry.
    fn events(&self) -> Vec<Value> {
        let r = LogReader::open(&self.dir.join("log")).expect("log");
        r.entries(0, r.size())
            .map(|e| serde_json::from_slice(&e.expect("entry").1).expect("JSON"))
            .collect()
    }

    /// Waits (up to 10 s) until the published log holds an event passing `f`.
    async fn wait_event(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.events().into_iter().find(|v| f(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in the log: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `parapet approvals ARGS --url … --token …` (the real CLI).
    fn cli(&self, who: &str, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
            .arg("approvals")
            .args(args)
            .args(["--url", &format!("http://{}", self.console)])
            .env("PARAPET_TOKEN", self.token(who))
            .output()
            .expect("run parapet approvals");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A review rule on writes to `table`, approved by `dba`.
fn review_rule(table: &str) -> String {
    format!(
        "@id(\"team.review-{table}\")\n@reason(\"writes to {table} need an approval\")\n@mode(\"review\")\n@approvers(\"dba\")\n\
         forbid (principal, action, resource) when {{ context.write_names.contains(\"public.{table}\") }};\n"
    )
}

/// The approval request id of a refusal (DETAIL `approval request <id>`), after checking it.
fn refused_for_approval(err: &tokio_postgres::Error) -> String {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err:?}"));
    assert_eq!(db.code().code(), "42501", "{}", db.message());
    assert!(
        db.message().contains("approval required"),
        "{}",
        db.message()
    );
    let detail = db.detail().expect("a DETAIL");
    detail
        .strip_prefix("approval request ")
        .unwrap_or_else(|| panic!("DETAIL {detail:?}"))
        .to_string()
}

fn count(table: &str) -> String {
    env().direct(&format!("SELECT count(*) FROM {table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_approve_send_again_once_bound_deny_and_the_record() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_a (id int)");
    let site = Site::start("approvals-basic", &review_rule("ledger_a"), true, "").await;
    let alice = site.client("alice", "main").await;

    // Refused at once, with the request's id; the requester's reason from SET parapet.reason.
    alice
        .batch_execute("SET parapet.reason = 'ticket OPS-7: backfill'")
        .await
        .expect("SET parapet.reason is allowed");
    let stmt = "INSERT INTO ledger_a VALUES (1)";
    let id = refused_for_approval(&alice.batch_execute(stmt).await.unwrap_err());
    assert_eq!(count("ledger_a"), "0");
    // Sent again while pending: the same request.
    let again = refused_for_approval(&alice.batch_execute(stmt).await.unwrap_err());
    assert_eq!(again, id);
    let listed = site.list();
    let req = listed
        .iter()
        .find(|a| a["id"] == id.as_str())
        .expect("listed");
    assert_eq!(req["state"], "pending");
    assert_eq!(req["requester"], "alice");
    assert_eq!(req["target"], "main");
    assert_eq!(req["sql"], stmt);
    assert_eq!(req["reason"], "ticket OPS-7: backfill");
    assert_eq!(req["rules"][0]["id"], "team.review-ledger_a");
    assert_eq!(req["rules"][0]["approvers"][0], "dba");

    // Who may not decide: the requester (403), a non-approver (403), a token without a user
    // (403), an auditor (403); a decision without a reason (400); an unknown id (404).
    let body = r#"{"reason":"looks fine"}"#;
    let r = site.approve("alice", &id, body);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("own request"));
    assert_eq!(site.approve("carol", &id, body).status, 403);
    assert_eq!(site.approve("anonymous-op", &id, body).status, 403);
    assert_eq!(site.approve("audit", &id, body).status, 403);
    assert_eq!(site.approve("bob", &id, r#"{"reason":"  "}"#).status, 400);
    assert_eq!(site.approve("bob", "0000000000000000", body).status, 404);

    // Approved by bob (with the real CLI): the same statement, sent again, runs once.
    let (ok, out, err) = site.cli("bob", &["list"]);
    assert!(ok && out.contains(&id), "{out}{err}");
    let (ok, out, err) = site.cli("bob", &["approve", &id, "--reason", "checked OPS-7"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("granted"), "{out}");
    assert_eq!(site.approve("bob", &id, body).status, 409, "decided once");
    // Bound to the text, the user and the target: none of these is let through.
    let other_text = alice
        .batch_execute("INSERT INTO ledger_a VALUES (2)")
        .await
        .unwrap_err();
    let other_id = refused_for_approval(&other_text);
    assert_ne!(other_id, id);
    let carol = site.client("carol", "main").await;
    refused_for_approval(&carol.batch_execute(stmt).await.unwrap_err());
    let alice_other = site.client("alice", "other").await;
    refused_for_approval(&alice_other.batch_execute(stmt).await.unwrap_err());
    assert_eq!(count("ledger_a"), "0");
    // The approved one runs, once.
    alice
        .batch_execute(stmt)
        .await
        .expect("approved statement runs");
    assert_eq!(count("ledger_a"), "1");
    let next = refused_for_approval(&alice.batch_execute(stmt).await.unwrap_err());
    assert_ne!(next, id, "an approval is used once");
    assert_eq!(count("ledger_a"), "1");

    // Denied: the statement stays refused (a new request when sent again), and psql shows it.
    let r = site.deny("bob", &other_id, "no backfill of id 2");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["state"], "denied");
    let (ok, _, stderr) = e.psql(
        &site.conninfo("alice", "main"),
        &[
            "-c",
            "/* parapet:reason=retry after denial */ INSERT INTO ledger_a VALUES (2)",
        ],
        "",
    );
    assert!(!ok);
    assert!(stderr.contains("approval required"), "{stderr}");
    assert!(stderr.contains("DETAIL:  approval request "), "{stderr}");
    assert_eq!(count("ledger_a"), "1");
    let psql_req = site
        .list()
        .into_iter()
        .find(|a| a["reason"] == "retry after denial")
        .expect("the psql request, with its comment reason");
    assert_eq!(psql_req["state"], "pending");

    // The record: every step is an event, and decisions name the approval.
    let req_ev = site
        .wait_event("approval_request", |v| {
            v["type"] == "approval_request" && v["approval"] == id.as_str()
        })
        .await;
    assert_eq!(req_ev["user"], "alice");
    assert_eq!(req_ev["reason"], "ticket OPS-7: backfill");
    assert_eq!(
        req_ev["sql_sha256"],
        parapet_gateway::events::sha256_hex(stmt.as_bytes())
    );
    let review_dec = &site.events()[req_ev["decision"].as_u64().unwrap() as usize];
    assert_eq!(review_dec["decision"], "review");
    assert_eq!(review_dec["approval"]["id"], id.as_str());
    assert_eq!(review_dec["approval"]["use"], "request");
    let granted = site
        .wait_event("approval_granted", |v| v["type"] == "approval_granted")
        .await;
    assert_eq!(
        (granted["by"].as_str(), granted["approver"].as_str()),
        (Some("bob-token"), Some("bob"))
    );
    assert_eq!(granted["reason"], "checked OPS-7");
    site.wait_event("approval_used", |v| {
        v["type"] == "approval_used" && v["approval"] == id.as_str() && v["window"] == false
    })
    .await;
    site.wait_event("the allow decision under the approval", |v| {
        v["type"] == "decision"
            && v["decision"] == "allow"
            && v["approval"]["id"] == id.as_str()
            && v["approval"]["use"] == "once"
    })
    .await;
    let denied = site
        .wait_event("approval_denied", |v| v["type"] == "approval_denied")
        .await;
    assert_eq!(denied["approval"], other_id.as_str());
    assert_eq!(denied["reason"], "no backfill of id 2");

    // `parapet policy replay` reads all of it and reports the approvals.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["policy", "replay", "--log"])
        .arg(site.dir.join("log"))
        .args(["--policy"])
        .arg(site.dir.join("team.cedar"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["unreadable_entries"], 0, "{rep}");
    assert_eq!(rep["newly_allowed"], 0, "{rep}");
    assert_eq!(rep["newly_blocked"], 0, "{rep}");
    assert_eq!(rep["approved_decisions"], 1, "{rep}");
    assert!(
        rep["approval_events"]["approval_request"].as_u64() >= Some(5),
        "{rep}"
    );
    assert_eq!(rep["approval_events"]["approval_granted"], 1, "{rep}");
    assert_eq!(rep["approval_events"]["approval_denied"], 1, "{rep}");
    assert_eq!(rep["approval_events"]["approval_used"], 1, "{rep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_windows_expire_and_windows_let_several_statements_through() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_w (id int)");
    let site = Site::start(
        "approvals-expiry",
        &review_rule("ledger_w"),
        true,
        "ttl = 2\nmax_window = 4\n",
    )
    .await;
    let alice = site.client("alice", "main").await;

    // A request not decided within ttl expires: recorded, and no longer approvable.
    let id = refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_w VALUES (1)")
            .await
            .unwrap_err(),
    );
    site.wait_event("approval_expired", |v| {
        v["type"] == "approval_expired" && v["approval"] == id.as_str()
    })
    .await;
    assert_eq!(site.approve("bob", &id, r#"{"reason":"late"}"#).status, 409);

    // A granted approval not used within ttl expires too.
    let id = refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_w VALUES (2)")
            .await
            .unwrap_err(),
    );
    assert_eq!(site.approve("bob", &id, r#"{"reason":"ok"}"#).status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_w VALUES (2)")
            .await
            .unwrap_err(),
    );
    assert_ne!(again, id);
    site.wait_event("the approval's expiry", |v| {
        v["type"] == "approval_expired" && v["approval"] == id.as_str() && v["state"] == "granted"
    })
    .await;

    // A window: longer than max_window is refused; within it, several different statements of
    // alice on main run, each logged as allowed under the window; then it expires.
    let r = site.approve(
        "bob",
        &again,
        r#"{"reason":"maintenance","window_seconds":60}"#,
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = site.approve(
        "bob",
        &again,
        r#"{"reason":"maintenance","window_seconds":3}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["state"], "window");
    for i in 10..15 {
        alice
            .batch_execute(&format!("INSERT INTO ledger_w VALUES ({i})"))
            .await
            .expect("within the window");
    }
    // Not for another user, nor another target.
    let carol = site.client("carol", "main").await;
    refused_for_approval(
        &carol
            .batch_execute("INSERT INTO ledger_w VALUES (99)")
            .await
            .unwrap_err(),
    );
    let alice_other = site.client("alice", "other").await;
    refused_for_approval(
        &alice_other
            .batch_execute("INSERT INTO ledger_w VALUES (98)")
            .await
            .unwrap_err(),
    );
    assert_eq!(count("ledger_w"), "5");
    let under_window = site
        .events()
        .iter()
        .filter(|v| {
            v["type"] == "decision"
                && v["decision"] == "allow"
                && v["approval"]["id"] == again.as_str()
                && v["approval"]["use"] == "window"
        })
        .count();
    assert_eq!(under_window, 5);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_w VALUES (20)")
            .await
            .unwrap_err(),
    );
    assert_eq!(count("ledger_w"), "5");
    site.wait_event("the window's expiry", |v| {
        v["type"] == "approval_expired" && v["approval"] == again.as_str() && v["state"] == "window"
    })
    .await;
}

/// A client connection whose NOTICEs are collected.
async fn client_with_notices(
    site: &Site,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use futures_util::StreamExt;
    let (c, mut conn) =
        tokio_postgres::connect(&site.conninfo("alice", "main"), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    (c, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_holds_the_statement_until_approved_or_denied() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_h (id int)");
    let site = Site::start(
        "approvals-wait",
        &review_rule("ledger_h"),
        true,
        "wait = 30\n",
    )
    .await;
    let (alice, mut notices) = client_with_notices(&site).await;

    // Held with a NOTICE; approved from another task; then it runs.
    let held = tokio::spawn(async move {
        let r = alice.batch_execute("INSERT INTO ledger_h VALUES (1)").await;
        (alice, r)
    });
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a NOTICE within 10 s")
        .expect("notice");
    let id = notice
        .strip_prefix("waiting for approval ")
        .unwrap_or_else(|| panic!("{notice}"))
        .to_string();
    assert_eq!(count("ledger_h"), "0");
    let site_console = (site.console, site.token("bob").to_string());
    let approver = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        post(
            site_console.0,
            &format!("/api/approvals/{id}/approve"),
            &site_console.1,
            r#"{"reason":"go ahead"}"#,
        )
    });
    assert_eq!(approver.await.unwrap().status, 200);
    let (alice, r) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released")
        .unwrap();
    r.expect("the held statement runs once approved");
    assert_eq!(count("ledger_h"), "1");

    // Held, then denied: refused, saying who denied it and why.
    let held =
        tokio::spawn(async move { alice.batch_execute("INSERT INTO ledger_h VALUES (2)").await });
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a NOTICE")
        .expect("notice");
    let id = notice
        .trim_start_matches("waiting for approval ")
        .to_string();
    assert_eq!(site.deny("bob", &id, "not today").status, 200);
    let err = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released")
        .unwrap()
        .unwrap_err();
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("denied by bob: not today"),
        "{}",
        db.message()
    );
    assert_eq!(db.detail(), Some(format!("approval request {id}").as_str()));
    assert_eq!(count("ledger_h"), "1");

    // psql: the NOTICE on stderr while held, approved through the CLI, then it runs.
    let conninfo = site.conninfo("alice", "main");
    let psql = tokio::task::spawn_blocking(move || {
        env().psql(&conninfo, &["-c", "INSERT INTO ledger_h VALUES (3)"], "")
    });
    let pending = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = site.list().into_iter().find(|a| a["state"] == "pending") {
                break a["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "psql's request never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ok, out, err) = site.cli("bob", &["approve", &pending, "--reason", "fine"]);
    assert!(ok, "{out}{err}");
    let (ok, _, stderr) = psql.await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("NOTICE:  waiting for approval {pending}")),
        "{stderr}"
    );
    assert_eq!(count("ledger_h"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_a_kill_9() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_r (id int)");
    let mut site = Site::start("approvals-restart", &review_rule("ledger_r"), true, "").await;
    let alice = site.client("alice", "main").await;
    let granted = refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_r VALUES (1)")
            .await
            .unwrap_err(),
    );
    let pending = refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_r VALUES (2)")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        site.approve("bob", &granted, r#"{"reason":"ok"}"#).status,
        200
    );
    site.crash_and_restart().await;

    // Both are still known; the granted one works once, the pending one can be approved.
    let ids: Vec<(String, String)> = site
        .list()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().into(),
                a["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        ids.contains(&(granted.clone(), "granted".into())),
        "{ids:?}"
    );
    assert!(
        ids.contains(&(pending.clone(), "pending".into())),
        "{ids:?}"
    );
    let alice = site.client("alice", "main").await;
    alice
        .batch_execute("INSERT INTO ledger_r VALUES (1)")
        .await
        .expect("approved before the crash, used after it");
    assert_eq!(
        site.approve("bob", &pending, r#"{"reason":"ok too"}"#)
            .status,
        200
    );
    alice
        .batch_execute("INSERT INTO ledger_r VALUES (2)")
        .await
        .expect("approved after the restart");
    assert_eq!(count("ledger_r"), "2");
    // Used is used, across a restart too.
    site.crash_and_restart().await;
    let alice = site.client("alice", "main").await;
    refused_for_approval(
        &alice
            .batch_execute("INSERT INTO ledger_r VALUES (1)")
            .await
            .unwrap_err(),
    );
    assert_eq!(count("ledger_r"), "2");
    common::assert_verifies(&site.dir.join("log"), &site.vkey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_runs_in_a_maintenance_window() {
    let e = env();
    // The default pack as it is, with its DROP and TRUNCATE rules run in review mode
    // (`[policy] modes`), approved by the `[review] approvers`.
    let site = Site::start(
        "approvals-pgbench",
        "",
        true,
        "max_window = 600\napprovers = [\"dba\"]\n\
         [policy.modes]\n\"parapet.drop\" = \"review\"\n\"parapet.truncate\" = \"review\"\n",
    )
    .await;
    let pgbench = |site: &Site| {
        std::process::Command::new(common::tool("pgbench"))
            .args(["-i", "-s", "1", "-h", "127.0.0.1", "-p"])
            .arg(site.port.to_string())
            .args(["-U", "alice", "main"])
            .env("PGPASSWORD", ALICE_PW)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("run pgbench")
    };
    // Without a window: refused at its first DROP, with a request.
    let out = pgbench(&site);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("parapet.drop"), "{stderr}");
    let req = site
        .list()
        .into_iter()
        .find(|a| a["rules"][0]["id"] == "parapet.drop")
        .expect("the DROP's request");
    let id = req["id"].as_str().unwrap();
    // bob grants a window for DROP and TRUNCATE (with the CLI).
    let (ok, out_text, err) = site.cli(
        "bob",
        &[
            "approve",
            id,
            "--reason",
            "pgbench set-up, CHG-42",
            "--window",
            "300",
            "--rule",
            "parapet.drop",
            "--rule",
            "parapet.truncate",
        ],
    );
    assert!(ok, "{out_text}{err}");
    let out = pgbench(&site);
    assert!(
        out.status.success(),
        "pgbench -i in the window: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e.direct("SELECT count(*) FROM pgbench_accounts"), "100000");
    let evs = site.events();
    let rules_under_window: std::collections::BTreeSet<String> = evs
        .iter()
        .filter(|v| v["type"] == "decision" && v["approval"]["use"] == "window")
        .flat_map(|v| v["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        rules_under_window,
        ["parapet.drop", "parapet.truncate"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    // Other rules of the pack still hold inside the window.
    let alice = site.client("alice", "main").await;
    let err = alice
        .batch_execute("DELETE FROM pgbench_history")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .is_some_and(|d| d.message().contains("parapet.delete-without-where")));
    e.direct("DROP TABLE pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_page_approves_in_chromium() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_u (id int)");
    let browser = common::browser::Browser::start();
    let site = Site::start("approvals-ui", &review_rule("ledger_u"), true, "").await;
    let alice = site.client("alice", "main").await;
    alice
        .batch_execute("SET parapet.reason = 'UI check'")
        .await
        .unwrap();
    let stmt = "INSERT INTO ledger_u VALUES (1)";
    let id = refused_for_approval(&alice.batch_execute(stmt).await.unwrap_err());

    // bob logs in with his token and approves on the Approvals page, with a reason.
    browser.go(&format!("http://{}/", site.console));
    browser.wait(
        "the token form",
        "return document.querySelector('#token') !== null",
    );
    browser.js(&format!(
        "document.querySelector('#token').value = {}; document.querySelector('#vkey').value = {}; document.querySelector('#save').click(); return true;",
        serde_json::json!(site.token("bob")),
        serde_json::json!(site.vkey)
    ));
    browser.go(&format!("http://{}/#/approvals", site.console));
    browser.wait(
        "the pending request",
        &format!("location.hash = '#/approvals'; window.dispatchEvent(new HashChangeEvent('hashchange')); const r = document.querySelector('tr[data-approval=\"{id}\"]'); return r && r.innerText.includes('UI check') && r.innerText.includes('pending')"),
    );
    browser.screenshot("approvals");
    // Without a reason: refused in the page.
    browser.js(&format!(
        "document.querySelector('button.approve[data-id=\"{id}\"]').click(); return true;"
    ));
    browser.wait(
        "the reason demand",
        "return document.querySelector('#approval-result').innerText.includes('reason is required')",
    );
    browser.js(&format!(
        "document.querySelector('input.reason[data-id=\"{id}\"]').value = 'approved in the UI'; document.querySelector('button.approve[data-id=\"{id}\"]').click(); return true;"
    ));
    browser.wait(
        "the approval",
        &format!(
            "return document.querySelector('#approval-result').innerText.includes('approved {id}')"
        ),
    );
    alice.batch_execute(stmt).await.expect("approved in the UI");
    assert_eq!(count("ledger_u"), "1");
    let granted = site
        .wait_event("approval_granted", |v| v["type"] == "approval_granted")
        .await;
    assert_eq!(granted["reason"], "approved in the UI");
    assert_eq!(granted["approver"], "bob");
}

/// The extended protocol (tokio-postgres `execute` with parameters: Parse, Bind, Execute, Sync)
/// is held for approval as the simple one is: refused with the request's id, then run once after
/// the approval, with the client's session still usable throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_are_approved_too() {
    let e = env();
    e.direct("CREATE TABLE IF NOT EXISTS ledger_x (id int)");
    let site = Site::start("approvals-extended", &review_rule("ledger_x"), true, "").await;
    let alice = site.client("alice", "main").await;
    let stmt = "INSERT INTO ledger_x VALUES ($1)";
    let id = refused_for_approval(&alice.execute(stmt, &[&7i32]).await.unwrap_err());
    assert_eq!(count("ledger_x"), "0");
    // The session goes on after the refusal.
    let one: i32 = alice
        .query_one("SELECT 1", &[])
        .await
        .expect("the session is usable")
        .get(0);
    assert_eq!(one, 1);
    let req = site
        .list()
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .expect("listed");
    assert_eq!(req["sql"], stmt);
    let r = site.approve("bob", &id, r#"{"reason":"checked"}"#);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let n = alice
        .execute(stmt, &[&7i32])
        .await
        .expect("the approved statement runs");
    assert_eq!(n, 1);
    assert_eq!(count("ledger_x"), "1");
    // Used once: sent again, it is refused with a new request.
    let next = refused_for_approval(&alice.execute(stmt, &[&8i32]).await.unwrap_err());
    assert_ne!(next, id);
    assert_eq!(count("ledger_x"), "1");
    let used = site
        .wait_event("approval_used", |v| {
            v["type"] == "approval_used" && v["approval"] == id.as_str()
        })
        .await;
    assert_eq!(used["user"], "alice");
}
