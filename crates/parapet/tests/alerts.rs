//! Alerts (`[[alerts]]`) from a real `parapet serve` process to real HTTP receivers started
//! here: a receiver that refuses connections, then answers 500, then comes up gets every
//! matching event, in order, none skipped, each signed (HMAC-SHA256, recomputed here), while
//! another alert's receiver is served meanwhile; filters by decision, rule and event type; the
//! Slack format; the metrics; and a gateway killed with `kill -9` in the middle of a backlog
//! resends from its cursor after the restart, so every matching event arrives at least once.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::{env, http::free_port, ALICE_PW};
use hmac::{Hmac, Mac};
use parapet_gateway::Verifier;
use parapet_log::{Log, LogReader};
use serde_json::Value;
use sha2::Sha256;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request a receiver accepted (answered 200).
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Inner {
    /// Requests to answer 500 before accepting again.
    fail_next: usize,
    /// Requests answered 500.
    failed: usize,
    /// Time taken before accepting each request.
    delay: Duration,
    accepted: Vec<Got>,
}

/// A webhook receiver on 127.0.0.1: a real HTTP server (axum), recording what it accepts.
#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<Inner>>,
}

async fn hook(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let delay = {
        let mut g = r.inner.lock().expect("lock");
        if g.fail_next > 0 {
            g.fail_next -= 1;
            g.failed += 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        g.delay
    };
    // A slow receiver: the request counts as received once it is answered.
    tokio::time::sleep(delay).await;
    r.inner.lock().expect("lock").accepted.push(Got {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    StatusCode::OK
}

impl Receiver {
    /// Starts serving on `port` (until the test ends).
    async fn serve(&self, port: u16) {
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }

    fn accepted(&self, path: &str) -> Vec<Got> {
        let g = self.inner.lock().expect("lock");
        g.accepted
            .iter()
            .filter(|a| a.path == path)
            .cloned()
            .collect()
    }

    fn set(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().expect("lock"));
    }

    fn failed(&self) -> usize {
        self.inner.lock().expect("lock").failed
    }

    /// The log indices (`X-Parapet-Index`) accepted on `path`, in the order they arrived.
    fn indices(&self, path: &str) -> Vec<u64> {
        self.accepted(path)
            .iter()
            .map(|g| {
                g.header("x-parapet-index")
                    .and_then(|i| i.parse().ok())
                    .expect("an X-Parapet-Index header")
            })
            .collect()
    }

    /// Waits (up to `secs`) until every index of `want` was accepted on `path`.
    async fn wait_for(&self, path: &str, want: &BTreeSet<u64>, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got: BTreeSet<u64> = self.indices(path).into_iter().collect();
            if want.is_subset(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: within {secs} s, {} of {} alerts arrived; missing {:?}",
                want.intersection(&got).count(),
                want.len(),
                want.difference(&got).take(20).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The log's entries with their indices, once every entry the gateway acknowledged is
/// published (its size stopped growing for a moment).
fn log_events(log_dir: &Path) -> Vec<(u64, Value)> {
    let mut size = LogReader::open(log_dir).expect("log").size();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = LogReader::open(log_dir).expect("log").size();
        if now == size {
            break;
        }
        size = now;
    }
    let r = LogReader::open(log_dir).expect("log");
    r.entries(0, r.size())
        .map(|e| {
            let (i, b) = e.expect("entry");
            (i, serde_json::from_slice(&b).expect("JSON entry"))
        })
        .collect()
}

fn indices_where(events: &[(u64, Value)], f: impl Fn(&Value) -> bool) -> BTreeSet<u64> {
    events
        .iter()
        .filter(|(_, e)| f(e))
        .map(|(i, _)| *i)
        .collect()
}

fn refused(e: &Value) -> bool {
    e["type"] == "decision" && (e["decision"] == "deny" || e["decision"] == "review")
}

fn drops(e: &Value) -> bool {
    e["type"] == "decision"
        && e["decision"] == "deny"
        && e["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["id"] == "parapet.drop"))
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A gateway directory: a fresh log, a policy sending CREATE to review, and `parapet.toml`
/// with `extra` appended.
fn setup(name: &str, extra: &str) -> (PathBuf, u16) {
    let e = env();
    let dir = e.dir.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    Log::init(
        &dir.join("log"),
        &format!("parapet.test/{name}"),
        &dir.join("log.key"),
    )
    .expect("log init");
    std::fs::write(
        dir.join("review.cedar"),
        "@id(\"team.create-needs-review\")\n@reason(\"new objects need a DBA\")\n@mode(\"review\")\n\
         forbid (principal, action, resource)\nwhen { context.kinds.contains(\"create\") };\n",
    )
    .expect("policy");
    let port = free_port();
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\n[listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\n\
         {}\n[policy]\nfiles = [\"review.cedar\"]\ndefault_pack = true\n{extra}",
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()])
    );
    std::fs::write(dir.join("parapet.toml"), config).expect("config");
    (dir, port)
}

/// Kills the gateway if the test fails before it is stopped.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `sqls` through the gateway on `port` as alice, each on its own; returns how many were
/// refused.
async fn run_statements(port: u16, sqls: &[String]) -> usize {
    let c = env().client(([127, 0, 0, 1], port).into()).await;
    let mut refused = 0;
    for sql in sqls {
        if c.simple_query(sql).await.is_err() {
            refused += 1;
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_every_alert_in_order_signed_and_filtered() {
    let (pager_port, chat_port) = (free_port(), free_port());
    let console_port = free_port();
    let token = "pt_alerts-test-token";
    let extra = format!(
        "\n[[alerts]]\nname = \"pager\"\nurl = \"http://127.0.0.1:{pager_port}/hook\"\nsecret = \"s3cret\"\n\
         \n[[alerts]]\nname = \"chat\"\nurl = \"http://127.0.0.1:{chat_port}/slack\"\nformat = \"slack\"\n\
         filter = {{ decisions = [\"deny\"], rules = [\"parapet.drop\"] }}\n\
         \n[[alerts]]\nname = \"starts\"\nurl = \"http://127.0.0.1:{chat_port}/types\"\n\
         filter = {{ decisions = [\"gateway_start\"] }}\n\
         \n[console]\nlisten = \"127.0.0.1:{console_port}\"\n\
         [[console.tokens]]\nname = \"t\"\nrole = \"auditor\"\nsha256 = \"{}\"\n",
        parapet::console::auth::digest(token)
    );
    let (dir, port) = setup("alerts-down", &extra);
    // The chat receiver is up; the pager's refuses connections (nothing listens on its port).
    let chat = Receiver::default();
    chat.serve(chat_port).await;
    let pager = Receiver::default();
    let gw = Gateway(common::start_serve(&dir.join("parapet.toml"), port).await);

    let mut sqls = Vec::new();
    for i in 0..6 {
        sqls.push(format!("DROP TABLE IF EXISTS alerts_gone_{i}"));
        sqls.push("DELETE FROM pg_am_nothing".to_string());
        sqls.push(format!("CREATE TABLE alerts_new_{i} (id int)"));
        sqls.push("SELECT 1".to_string());
    }
    assert_eq!(run_statements(port, &sqls).await, 18);
    let events = log_events(&dir.join("log"));
    let want_pager = indices_where(&events, refused);
    let want_chat = indices_where(&events, drops);
    let want_starts = indices_where(&events, |e| e["type"] == "gateway_start");
    assert_eq!(
        (want_pager.len(), want_chat.len(), want_starts.len()),
        (18, 6, 1)
    );

    // The other alerts are not held back by the pager's receiver being down.
    chat.wait_for("/slack", &want_chat, 30).await;
    chat.wait_for("/types", &want_starts, 30).await;
    assert!(pager.accepted("/hook").is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The pager's receiver comes up: every refusal arrives, in log order, once.
    pager.serve(pager_port).await;
    pager.wait_for("/hook", &want_pager, 60).await;
    assert_eq!(
        pager.indices("/hook"),
        want_pager.iter().copied().collect::<Vec<_>>()
    );

    // It fails for a while (500s): what follows arrives, in order, none skipped.
    pager.set(|g| g.fail_next = 3);
    let more: Vec<String> = (0..4)
        .map(|i| format!("DROP TABLE IF EXISTS alerts_later_{i}"))
        .collect();
    assert_eq!(run_statements(port, &more).await, 4);
    let events = log_events(&dir.join("log"));
    let want_pager = indices_where(&events, refused);
    assert_eq!(want_pager.len(), 22);
    let want_chat = indices_where(&events, drops);
    assert_eq!(want_chat.len(), 10);
    pager.wait_for("/hook", &want_pager, 60).await;
    chat.wait_for("/slack", &want_chat, 30).await;
    assert_eq!(pager.failed(), 3, "the receiver answered 500 three times");
    assert_eq!(
        pager.indices("/hook"),
        want_pager.iter().copied().collect::<Vec<_>>(),
        "every alert once, in log order"
    );

    // JSON format: {"index","event"}, the event as logged; each request signed.
    let logged: std::collections::HashMap<u64, Value> = events.into_iter().collect();
    for got in pager.accepted("/hook") {
        let v = got.json();
        let index = v["index"].as_u64().expect("index");
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
        assert_eq!(v["event"], logged[&index]);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(
            got.header("x-parapet-index"),
            Some(index.to_string().as_str())
        );
        assert_eq!(got.header("x-parapet-alert"), Some("pager"));
        let sig = got.header("x-parapet-signature").expect("signed");
        assert_eq!(sig, format!("sha256={}", hmac_hex(b"s3cret", &got.body)));
        assert_ne!(sig, format!("sha256={}", hmac_hex(b"other", &got.body)));
    }

    // Slack format: one readable line; no secret, no signature.
    let slack = chat.accepted("/slack");
    assert_eq!(slack.len(), 10, "each drop once");
    for (got, index) in slack.iter().zip(&want_chat) {
        let v = got.json();
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        let text = v["text"].as_str().expect("text");
        assert!(
            text.starts_with("parapet: *DENY* parapet.drop — user alice, target main, from 127.0.0.1: `DROP TABLE IF EXISTS alerts_")
                && text.ends_with(&format!("` (log entry {index})")),
            "{text}"
        );
        assert!(got.header("x-parapet-signature").is_none());
    }
    let start = chat.accepted("/types");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].json()["event"]["type"], "gateway_start");

    // Metrics (counted once the gateway has the receiver's answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let m = common::http::get(
            ([127, 0, 0, 1], console_port).into(),
            "/metrics",
            Some(token),
        );
        let text = String::from_utf8_lossy(&m.body).into_owned();
        if text.contains("parapet_alerts_delivered_total{alert=\"pager\"} 22")
            && text.contains("parapet_alerts_delivered_total{alert=\"chat\"} 10")
            && text.contains("parapet_alerts_delivered_total{alert=\"starts\"} 1")
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("parapet_alerts_failed_total{alert=\"pager\"} "))
        .and_then(|n| n.parse().ok())
        .expect("failed count");
    assert!(failed >= 4, "refused connections and 500s count: {failed}");
    assert!(
        text.contains("parapet_alerts_lag{alert=\"starts\"} "),
        "{text}"
    );
    // The cursor moves past each alert once it is delivered.
    let last = *want_pager.last().expect("some");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cursor: Value = serde_json::from_slice(
            &std::fs::read(dir.join("alerts/pager.cursor")).expect("the pager's cursor"),
        )
        .expect("cursor JSON");
        assert_eq!(cursor["origin"], "parapet.test/alerts-down");
        let next = cursor["next"].as_u64().expect("next");
        if next > last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cursor stays at {next}, delivered up to {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_backlog_then_restart_delivers_every_alert_at_least_once() {
    let hook_port = free_port();
    let extra = format!(
        "\n[[alerts]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nsecret_env = \"PARAPET_TEST_ALERT_SECRET\"\n"
    );
    let (dir, port) = setup("alerts-crash", &extra);
    std::env::set_var("PARAPET_TEST_ALERT_SECRET", "from-the-environment");
    let mut gw = Gateway(common::start_serve(&dir.join("parapet.toml"), port).await);

    // A backlog while the receiver is down.
    let sqls: Vec<String> = (0..40)
        .map(|i| format!("DROP TABLE IF EXISTS backlog_{i}"))
        .collect();
    assert_eq!(run_statements(port, &sqls).await, 40);
    let want = indices_where(&log_events(&dir.join("log")), refused);
    assert_eq!(want.len(), 40);

    // A slow receiver comes up; the gateway dies (kill -9) part-way through the backlog.
    let hook = Receiver::default();
    hook.set(|g| g.delay = Duration::from_millis(150));
    hook.serve(hook_port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.indices("/hook").len() < 5 {
        assert!(Instant::now() < deadline, "no alert arrived within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.0.kill().expect("kill -9");
    gw.0.wait().expect("wait");
    // A request the receiver was still answering is counted (or not) within its delay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hook.indices("/hook");
    assert!(
        before.len() < want.len(),
        "the kill came in the middle of the backlog ({} of {} sent)",
        before.len(),
        want.len()
    );
    let cursor: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!(
            "alerts/{}.cursor",
            parapet::alerts::default_name(&format!("http://127.0.0.1:{hook_port}/hook"))
        )))
        .expect("the cursor file"),
    )
    .expect("cursor JSON");
    let at = cursor["next"].as_u64().expect("next");

    // Restarted, it resends from its cursor: every refusal arrives at least once, and what
    // is logged after the restart too.
    hook.set(|g| g.delay = Duration::ZERO);
    let gw = Gateway(common::start_serve(&dir.join("parapet.toml"), port).await);
    let after: Vec<String> = (0..3)
        .map(|i| format!("DROP TABLE IF EXISTS after_restart_{i}"))
        .collect();
    assert_eq!(run_statements(port, &after).await, 3);
    let want = indices_where(&log_events(&dir.join("log")), refused);
    assert_eq!(want.len(), 43);
    hook.wait_for("/hook", &want, 60).await;

    let got = hook.indices("/hook");
    let (first, second) = got.split_at(before.len());
    assert_eq!(first, before.as_slice());
    assert!(
        first.windows(2).all(|w| w[0] < w[1]) && second.windows(2).all(|w| w[0] < w[1]),
        "in order on each side of the restart: {got:?}"
    );
    // The restart resent from the cursor: nothing after it was skipped, and at most the one
    // delivery whose cursor the kill beat was sent twice.
    assert!(second[0] >= at, "{got:?} (cursor {at})");
    let all: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(all, want, "every refusal, none missing");
    assert!(
        got.len() - all.len() <= 1,
        "at most one alert was sent twice: {got:?}"
    );
    for g in hook.accepted("/hook") {
        assert_eq!(
            g.header("x-parapet-signature").map(str::to_string),
            Some(format!(
                "sha256={}",
                hmac_hex(b"from-the-environment", &g.body)
            ))
        );
    }
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_that_each_receiver_is_reachable_and_sends_nothing() {
    let (up_port, down_port) = (free_port(), free_port());
    let extra = format!(
        "\n[[alerts]]\nname = \"up\"\nurl = \"http://127.0.0.1:{up_port}/hook\"\n\
         \n[[alerts]]\nname = \"down\"\nurl = \"http://127.0.0.1:{down_port}/secret-path\"\n"
    );
    let (dir, _) = setup("alerts-doctor", &extra);
    let up = Receiver::default();
    up.serve(up_port).await;
    let config = dir.join("parapet.toml");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
            .args(["doctor", "--config"])
            .arg(&config)
            .output()
            .expect("run parapet doctor")
    })
    .await
    .expect("doctor");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "✓ alert \"up\": receiver http://127.0.0.1:{up_port} reachable"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "✗ alert \"down\": cannot connect to http://127.0.0.1:{down_port}"
        )),
        "{report}"
    );
    assert!(!report.contains("secret-path"), "{report}");
    assert!(!out.status.success());
    assert!(up.accepted("/hook").is_empty(), "doctor sent nothing");
}
