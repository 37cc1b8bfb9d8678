//! `parapet policy check | eval | replay` through the real binary, with real files and a real
//! audit log written by `parapet_log`.

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn parapet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parapet");
    {
        let mut sin = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            sin.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait parapet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write policy");
    p.display().to_string()
}

#[test]
fn check_accepts_good_and_reports_file_line_for_bad() {
    let dir = tempfile::tempdir().unwrap();
    let out = parapet(&["policy", "check"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );

    let good = write(
        dir.path(),
        "good.cedar",
        "@id(\"team.no-prod-ddl\")\n@reason(\"no DDL in production\")\n@mode(\"review\")\nforbid (principal, action, resource)\nwhen { resource.environment == \"production\" && context.kinds.contains(\"create\") };\n",
    );
    let out = parapet(&["policy", "check", "--policy", &good], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A typo in an attribute: rejected by the schema, with file:line.
    let bad = write(
        dir.path(),
        "bad.cedar",
        "// team rules\n@id(\"team.typo\")\nforbid (principal, action, resource)\nwhen { context.kinds.contains(\"drop\") && context.writse.isEmpty() };\n",
    );
    let out = parapet(&["policy", "check", "--policy", &bad], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{bad}:4:")), "{err}");
    // A syntax error.
    let syntax = write(
        dir.path(),
        "syntax.cedar",
        "@id(\"a\")\nforbid (principal, action, resource)\nwhen { context.kind == };\n",
    );
    let out = parapet(&["policy", "check", "--policy", &syntax], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("{syntax}:3:")),
        "{}",
        text(&out.stderr)
    );
    // A missing file.
    let out = parapet(
        &["policy", "check", "--policy", "/nonexistent/p.cedar"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/p.cedar"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eval_writes_one_json_line_per_input() {
    let input = [
        json!({"sql": "DROP TABLE users", "user": "alice", "groups": ["eng"], "target": "main", "environment": "production", "client_addr": "10.0.0.1"}),
        json!({"sql": "SELECT 'DROP TABLE users' FROM t WHERE id = 1"}),
        json!({"sql": "SELECT 1; DELETE FROM users"}),
        json!({"sql": "SELEC 1"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    let out = parapet(&["policy", "eval"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["rules"], json!(["parapet.drop"]));
    assert!(lines[0]["reason"].as_str().unwrap().contains("DROP"));
    assert_eq!(lines[0]["statements"][0]["kind"], "drop");
    assert_eq!(lines[1]["decision"], "allow");
    assert_eq!(lines[1]["rules"], json!([]));
    assert_eq!(lines[2]["decision"], "deny");
    assert_eq!(lines[2]["statements"].as_array().unwrap().len(), 2);
    assert_eq!(lines[3]["rules"], json!(["parapet.unparseable"]));

    // --no-default-pack: DROP passes, unparseable still denied.
    let out = parapet(
        &["policy", "eval", "--no-default-pack"],
        Some("{\"sql\": \"DROP TABLE users\"}\n{\"sql\": \"DROPP TABLE users\"}\n"),
    );
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[1]["decision"], "deny");

    // Bad input: a clear error line for it, the others still judged, non-zero exit.
    let out = parapet(
        &["policy", "eval"],
        Some("not json\n{\"user\": \"a\"}\n{\"sql\": \"SELECT 1\"}\n"),
    );
    assert!(!out.status.success());
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["error"].as_str().unwrap().contains("line 1"));
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("missing \"sql\""));
    assert_eq!(lines[2]["decision"], "allow");
}

fn decision_event(sql: Option<&str>, normalized: &str, decision: &str, rules: &[&str]) -> Vec<u8> {
    json!({
        "type": "decision", "time": "2026-11-23T12:00:00.123Z", "session": "s1",
        "user": "alice", "groups": ["eng"], "target": "main", "environment": "production",
        "client_addr": "127.0.0.1", "application_name": "psql", "protocol": "simple",
        "sql": sql, "normalized": normalized, "fingerprint": "00",
        "decision": decision,
        "rules": rules.iter().map(|r| json!({"id": r, "mode": "enforce", "reason": "x"})).collect::<Vec<_>>(),
        "reason": "", "policy_hash": "old",
    })
    .to_string()
    .into_bytes()
}

#[test]
fn replay_reports_newly_blocked_and_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let key = dir.path().join("log.key");
    parapet_log::Log::init(&log, "example.test/parapet-replay", &key).expect("init log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = parapet_log::Log::open(&log, &key).expect("open log");
        let entries = vec![
            json!({"type": "session_start", "session": "s1"})
                .to_string()
                .into_bytes(),
            decision_event(
                Some("SELECT * FROM payments WHERE id = 1"),
                "SELECT * FROM payments WHERE id = $1",
                "allow",
                &[],
            ),
            decision_event(
                Some("SELECT * FROM payments WHERE id = 2"),
                "SELECT * FROM payments WHERE id = $1",
                "allow",
                &[],
            ),
            decision_event(None, "SELECT * FROM users WHERE id = $1", "allow", &[]),
            decision_event(
                Some("DROP TABLE old_stuff"),
                "DROP TABLE old_stuff",
                "deny",
                &["parapet.drop"],
            ),
            json!({"type": "outcome", "session": "s1", "rows": 1})
                .to_string()
                .into_bytes(),
        ];
        for e in entries {
            l.append(e).await.expect("append");
        }
        l.close().await.expect("close");
    });
    let proposed = write(
        dir.path(),
        "proposed.cedar",
        "@id(\"team.no-payments\")\n@reason(\"payments is off limits\")\nforbid (principal, action, resource)\nwhen { context.read_names.contains(\"public.payments\") };\n",
    );
    let logs = log.display().to_string();
    // Proposed set: team rule added, default pack turned off (so DROP becomes allowed).
    let out = parapet(
        &[
            "policy",
            "replay",
            "--log",
            &logs,
            "--policy",
            &proposed,
            "--no-default-pack",
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON report");
    assert_eq!(rep["entries"], 6);
    assert_eq!(rep["decisions"], 4);
    assert_eq!(rep["skipped_other_events"], 2);
    assert_eq!(rep["newly_blocked"], 2);
    assert_eq!(rep["newly_allowed"], 1);
    assert_eq!(rep["unchanged"], 1);
    assert_eq!(rep["newly_blocked_by_rule"]["team.no-payments"]["count"], 2);
    assert_eq!(
        rep["newly_blocked_by_rule"]["team.no-payments"]["examples"][0],
        "SELECT * FROM payments WHERE id = 1"
    );
    assert_eq!(rep["newly_allowed_by_rule"]["parapet.drop"]["count"], 1);

    // Human report.
    let out = parapet(
        &["policy", "replay", "--log", &logs, "--policy", &proposed],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("newly blocked 2"), "{s}");
    assert!(s.contains("team.no-payments: 2"), "{s}");

    // A log directory that does not exist: clear error.
    let out = parapet(&["policy", "replay", "--log", "/nonexistent/log"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/log"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_judges_at_the_time_of_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let key = dir.path().join("log.key");
    parapet_log::Log::init(&log, "example.test/parapet-replay-time", &key).expect("init log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = parapet_log::Log::open(&log, &key).expect("open log");
        // Recorded at 2026-11-23T12:00:00.123Z (decision_event's time).
        l.append(decision_event(Some("SELECT 1"), "SELECT $1", "allow", &[]))
            .await
            .expect("append");
        // The same decision without a time: judged now.
        let mut untimed: Value =
            serde_json::from_slice(&decision_event(Some("SELECT 2"), "SELECT $1", "allow", &[]))
                .unwrap();
        untimed.as_object_mut().unwrap().remove("time");
        l.append(untimed.to_string().into_bytes())
            .await
            .expect("append");
        l.close().await.expect("close");
    });
    // A freeze that covers exactly the minute of the first event.
    let proposed = write(
        dir.path(),
        "freeze.cedar",
        "@id(\"team.freeze\")\n@reason(\"change freeze\")\nforbid (principal, action, resource)\n\
         when { context.time.now == datetime(\"2026-11-23T12:00:00Z\") };\n",
    );
    let out = parapet(
        &[
            "policy",
            "replay",
            "--log",
            &log.display().to_string(),
            "--policy",
            &proposed,
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON report");
    assert_eq!(rep["decisions"], 2);
    assert_eq!(rep["newly_blocked"], 1, "{rep}");
    assert_eq!(
        rep["newly_blocked_by_rule"]["team.freeze"]["examples"][0],
        "SELECT 1"
    );
    assert_eq!(rep["unchanged"], 1);
    assert_eq!(rep["judged_at_current_time"], 1);
}

/// Decisions the pack before issue 17 allowed: replaying them under today's default pack shows
/// which new rule would have blocked each.
#[test]
fn replay_shows_what_the_new_default_rules_block() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let key = dir.path().join("log.key");
    parapet_log::Log::init(&log, "example.test/parapet-replay-pack", &key).expect("init log");
    let allowed_before = [
        ("LOAD '/tmp/evil.so'", "parapet.server-code"),
        (
            "CREATE EXTENSION IF NOT EXISTS plpython3u",
            "parapet.server-code",
        ),
        (
            "SET session_replication_role = replica",
            "parapet.integrity-bypass",
        ),
        (
            "ALTER TABLE accounts DISABLE TRIGGER ALL",
            "parapet.integrity-bypass",
        ),
        (
            "CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'evil.example')",
            "parapet.data-egress",
        ),
        ("ALTER TABLE accounts OWNER TO mallory", "parapet.ownership"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
            "parapet.ownership",
        ),
        ("SELECT pg_promote()", "parapet.cluster-control"),
        (
            "DELETE FROM accounts WHERE true",
            "parapet.delete-without-where",
        ),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = parapet_log::Log::open(&log, &key).expect("open log");
        for (sql, _) in allowed_before {
            l.append(decision_event(Some(sql), sql, "allow", &[]))
                .await
                .expect("append");
        }
        // Harmless look-alikes stay allowed.
        for sql in [
            "CREATE EXTENSION pgcrypto",
            "ALTER TABLE accounts ENABLE TRIGGER ALL",
            "DELETE FROM accounts WHERE id = 7 AND true",
        ] {
            l.append(decision_event(Some(sql), sql, "allow", &[]))
                .await
                .expect("append");
        }
        l.close().await.expect("close");
    });
    let out = parapet(
        &[
            "policy",
            "replay",
            "--log",
            &log.display().to_string(),
            "--json",
            "--examples",
            "5",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON report");
    assert_eq!(rep["decisions"], 12, "{rep}");
    assert_eq!(rep["newly_blocked"], 9, "{rep}");
    assert_eq!(rep["unchanged"], 3, "{rep}");
    for (sql, rule) in allowed_before {
        let examples = rep["newly_blocked_by_rule"][rule]["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("no newly blocked examples for {rule}: {rep}"));
        assert!(
            examples.iter().any(|e| e == sql),
            "{sql:?} is not reported as newly blocked by {rule}: {rep}"
        );
    }
    assert_eq!(
        rep["newly_blocked_by_rule"]["parapet.ownership"]["count"],
        2
    );
}
