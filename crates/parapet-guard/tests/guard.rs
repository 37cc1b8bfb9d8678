//! Engine behaviour: modes, reloads (atomic, bad set refused), no-default-pack fail-closed,
//! concurrency, decision contents.

use parapet_guard::{Guard, GuardError, Mode, PolicySource, RequestContext, Verdict};
use std::io::Write;
use std::sync::Arc;

fn ctx(user: &str, groups: &[&str], env: &str) -> RequestContext {
    RequestContext {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        target: "main".into(),
        environment: env.into(),
        client_addr: Some("10.1.2.3".into()),
        application_name: "psql".into(),
        catalog: None,
    }
}

fn policy_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

const TEAM: &str = r#"
@id("team.no-payments-writes-in-prod")
@reason("payments is written only by the payments service")
@mode("enforce")
forbid (principal, action, resource)
when { resource.environment == "production" && context.write_names.contains("public.payments") }
unless { principal in Parapet::Group::"payments" };

@id("team.watch-pii")
@reason("reads of pii are being watched")
@mode("monitor")
forbid (principal, action, resource)
when { context.schemas.contains("pii") };

@id("team.review-ddl")
@reason("schema changes in production need review")
@mode("review")
forbid (principal, action, resource)
when { resource.environment == "production" && context.kind == "alter" };

@id("team.office-network")
@reason("only from the office network")
forbid (principal, action, resource)
when { context has client_addr && !context.client_addr.isInRange(ip("10.0.0.0/8")) };
"#;

#[test]
fn modes_groups_environment_and_ip() {
    let dir = tempfile::tempdir().unwrap();
    let f = policy_file(&dir, "team.cedar", TEAM);
    let g = Guard::load(&PolicySource {
        files: vec![f],
        default_pack: true,
        modes: Default::default(),
    })
    .unwrap();
    let alice = ctx("alice", &["eng"], "production");
    let d = g.decide("UPDATE payments SET paid = true WHERE id = 1", &alice);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rules[0].id, "team.no-payments-writes-in-prod");
    assert_eq!(d.reason, "payments is written only by the payments service");
    assert_eq!(d.policy_hash, g.policy_hash());
    // Same statement, payments group: allowed. Staging: allowed.
    let pay = ctx("paul", &["payments"], "production");
    assert_eq!(
        g.decide("UPDATE payments SET paid = true WHERE id = 1", &pay)
            .verdict,
        Verdict::Allow
    );
    let staging = ctx("alice", &["eng"], "staging");
    assert_eq!(
        g.decide("UPDATE payments SET paid = true WHERE id = 1", &staging)
            .verdict,
        Verdict::Allow
    );
    // Monitor: let through, rule named.
    let d = g.decide("SELECT * FROM pii.people WHERE id = 1", &alice);
    assert_eq!(d.verdict, Verdict::Monitor);
    assert_eq!(d.rules[0].mode, Mode::Monitor);
    // Review.
    let d = g.decide("ALTER TABLE users ADD COLUMN x int", &alice);
    assert_eq!(d.verdict, Verdict::Review);
    // Strictest over statements and over modes: deny beats review beats monitor.
    let d = g.decide(
        "SELECT * FROM pii.people; ALTER TABLE t ADD COLUMN y int; DROP TABLE t",
        &alice,
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        d.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["parapet.drop"]
    );
    assert_eq!(d.statements.len(), 3);
    // client address outside 10/8.
    let mut outside = alice.clone();
    outside.client_addr = Some("192.168.1.5".into());
    let d = g.decide("SELECT 1", &outside);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rules[0].id, "team.office-network");
}

#[test]
fn decision_carries_normalized_text_fingerprint_and_facts() {
    let g = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .unwrap();
    let d = g.decide(
        "SELECT * FROM users WHERE email = 'a@b.c'",
        &ctx("a", &[], "prod"),
    );
    assert_eq!(
        d.normalized.as_deref(),
        Some("SELECT * FROM users WHERE email = $1")
    );
    assert_eq!(d.fingerprint.as_ref().map(|f| f.len()), Some(16));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["statements"][0]["reads"][0], "public.users");
    assert_eq!(json["statements"][0]["kind"], "select");
}

#[test]
fn fail_closed_without_default_pack() {
    let g = Guard::load(&PolicySource {
        files: vec![],
        default_pack: false,
        modes: Default::default(),
    })
    .unwrap();
    let c = ctx("a", &[], "prod");
    assert_eq!(g.decide("DROP TABLE users", &c).verdict, Verdict::Allow);
    let d = g.decide("DROP TABEL users", &c);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rules[0].id, "parapet.unparseable");
    let d = g.decide("DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'x'; END $$", &c);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rules[0].id, "parapet.dynamic-sql");
}

#[test]
fn reload_is_atomic_and_bad_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = policy_file(&dir, "p.cedar", "@id(\"no-select\")\nforbid(principal, action, resource) when { context.kind == \"select\" };\n");
    let g = Arc::new(
        Guard::load(&PolicySource {
            files: vec![],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap(),
    );
    let c = ctx("a", &[], "prod");
    let h0 = g.policy_hash();
    assert_eq!(g.decide("SELECT 1", &c).verdict, Verdict::Allow);
    let r = g
        .reload(&PolicySource {
            files: vec![f.clone()],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap();
    assert_eq!(r.old_hash, h0);
    assert_ne!(r.new_hash, h0);
    let d = g.decide("SELECT 1", &c);
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "cached decision of the old set was served"
    );
    assert_eq!(d.policy_hash, r.new_hash);
    // A broken set is refused and the one in force stays.
    let bad = policy_file(
        &dir,
        "bad.cedar",
        "@id(\"x\")\nforbid(principal, action, resource) when { context.nope };\n",
    );
    let err = g
        .reload(&PolicySource {
            files: vec![bad],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap_err();
    match err {
        GuardError::Invalid { errors } => {
            assert!(errors[0].file.ends_with("bad.cedar"));
            assert_eq!(errors[0].line, 2, "{errors:?}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(g.policy_hash(), r.new_hash);
    assert_eq!(g.decide("SELECT 1", &c).verdict, Verdict::Deny);
    // Missing file: clear error, old set kept.
    let e = g
        .reload(&PolicySource {
            files: vec![dir.path().join("missing.cedar")],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("missing.cedar"), "{e}");
    assert_eq!(g.policy_hash(), r.new_hash);
}

#[test]
fn annotation_errors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("forbid(principal, action, resource);", "@id"),
        (
            "@id(\"a\") @mode(\"loud\") forbid(principal, action, resource);",
            "@mode",
        ),
        ("@id(\"a\") permit(principal, action, resource);", "permit"),
        (
            "@id(\"parapet.drop\") forbid(principal, action, resource);",
            "already used",
        ),
        (
            "@id(\"a\") forbid(principal, action, resource) when { context.kind == };",
            "",
        ),
    ] {
        let f = policy_file(&dir, "x.cedar", text);
        let e = Guard::load(&PolicySource {
            files: vec![f],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap_err();
        assert!(e.to_string().contains(needle), "{text}: {e}");
        assert!(e.to_string().contains("x.cedar:1:"), "{text}: {e}");
    }
}

#[test]
fn concurrent_decisions_during_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let f = policy_file(&dir, "p.cedar", "@id(\"no-select\")\nforbid(principal, action, resource) when { context.kind == \"select\" };\n");
    let g = Arc::new(
        Guard::load(&PolicySource {
            files: vec![],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap(),
    );
    let with = PolicySource {
        files: vec![f],
        default_pack: true,
        modes: Default::default(),
    };
    let without = PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    };
    let h_without = g.policy_hash();
    let h_with = parapet_guard::policy::compile(&with).unwrap().hash;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let g = g.clone();
            let (hw, hwo) = (h_with.clone(), h_without.clone());
            std::thread::spawn(move || {
                for i in 0..300 {
                    let d = g.decide(&format!("SELECT {}", i % 7 + t), &ctx("a", &[], "prod"));
                    // Every decision is consistent with exactly one whole set.
                    if d.policy_hash == hw {
                        assert_eq!(d.verdict, Verdict::Deny);
                    } else {
                        assert_eq!(d.policy_hash, hwo);
                        assert_eq!(d.verdict, Verdict::Allow);
                    }
                }
            })
        })
        .collect();
    for i in 0..20 {
        g.reload(if i % 2 == 0 { &with } else { &without }).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// A rule on a table outside `public` plus a rule against changing `search_path` (the pairing
/// docs/policies.md recommends): every way of changing it for this or later sessions is caught,
/// including the typed `SET` inside `ALTER DATABASE … SET`.
#[test]
fn search_path_changes_are_facts_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy_file(
        &dir,
        "sp.cedar",
        r#"
@id("team.no-search-path-change")
@reason("rules name schema-qualified tables; unqualified names are judged as public")
forbid (principal, action, resource)
when { context.set_variables.contains("search_path") || context.set_variables.contains("?") };
"#,
    );
    let g = Guard::load(&PolicySource {
        files: vec![p],
        default_pack: true,
        modes: Default::default(),
    })
    .unwrap();
    let c = ctx("alice", &["eng"], "production");
    for sql in [
        "SET search_path TO billing",
        "SET LOCAL search_path = billing, public",
        "SELECT set_config('search_path', 'billing', false)",
        "ALTER DATABASE app SET search_path = billing",
        "ALTER DATABASE app SET search_path FROM CURRENT",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = billing AS 'SELECT 1'",
    ] {
        let d = g.decide(sql, &c);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}: {d:?}");
        assert!(
            d.rules.iter().any(|r| r.id == "team.no-search-path-change"),
            "{sql}: {:?}",
            d.rules
        );
    }
    for sql in [
        "SHOW search_path",
        "ALTER DATABASE app RESET search_path",
        "SELECT 1",
    ] {
        assert_eq!(g.decide(sql, &c).verdict, Verdict::Allow, "{sql}");
    }
}

/// `[policy] modes` runs a rule of the default pack in another mode, changes the policy hash,
/// and refuses an id no rule has.
#[test]
fn modes_override_a_rules_mode() {
    use parapet_guard::{Mode, Verdict};
    let plain = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .unwrap();
    let d = plain.decide("DROP TABLE accounts", &ctx("a", &[], "prod"));
    assert_eq!(d.verdict, Verdict::Deny);
    let reviewed = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: [("parapet.drop".to_string(), Mode::Review)].into(),
    })
    .unwrap();
    let d = reviewed.decide("DROP TABLE accounts", &ctx("a", &[], "prod"));
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.rules[0].id, "parapet.drop");
    assert_eq!(d.rules[0].mode, Mode::Review);
    // Other rules keep their own mode.
    let d = reviewed.decide("TRUNCATE accounts", &ctx("a", &[], "prod"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_ne!(plain.policy_hash(), reviewed.policy_hash());
    let monitored = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: [("parapet.drop".to_string(), Mode::Monitor)].into(),
    })
    .unwrap();
    assert_eq!(
        monitored
            .decide("DROP TABLE accounts", &ctx("a", &[], "prod"))
            .verdict,
        Verdict::Monitor
    );
    let e = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: [("parapet.no-such-rule".to_string(), Mode::Review)].into(),
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("parapet.no-such-rule")
            || format!("{e:?}").contains("parapet.no-such-rule"),
        "{e:?}"
    );
}

/// `@max_rows` is read and checked: a whole number, on an enforced rule only, and not run in
/// another mode by `[policy] modes`.
#[test]
fn max_rows_annotations_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str, modes: Vec<(&str, Mode)>| {
        let f = policy_file(&dir, "limits.cedar", text);
        Guard::load(&PolicySource {
            files: vec![f],
            default_pack: false,
            modes: modes
                .into_iter()
                .map(|(id, m)| (id.to_string(), m))
                .collect(),
        })
    };
    let g = load(
        "@id(\"r\")\n@max_rows(\"25\")\nforbid(principal, action, resource) when { context.kind == \"update\" };\n",
        vec![],
    )
    .unwrap();
    assert_eq!(g.rule("r").unwrap().max_rows, Some(25));
    let d = g.decide("UPDATE t SET a = 1", &ctx("a", &[], "prod"));
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(d.rules.is_empty(), "a limit is not a refusing rule: {d:?}");
    assert_eq!(d.max_rows().map(|l| l.max_rows), Some(25));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["limits"][0]["max_rows"], 25);
    for (text, modes, want) in [
        ("@id(\"r\")\n@max_rows(\"ten\")\nforbid(principal, action, resource);\n", vec![], "not a row count"),
        ("@id(\"r\")\n@max_rows(\"-1\")\nforbid(principal, action, resource);\n", vec![], "not a row count"),
        ("@id(\"r\")\n@mode(\"review\")\n@max_rows(\"5\")\nforbid(principal, action, resource);\n", vec![], "cannot be combined"),
        ("@id(\"r\")\n@mode(\"monitor\")\n@max_rows(\"5\")\nforbid(principal, action, resource);\n", vec![], "cannot be combined"),
        ("@id(\"r\")\n@max_rows(\"5\")\nforbid(principal, action, resource);\n", vec![("r", Mode::Review)], "runs only as"),
    ] {
        let e = load(text, modes).unwrap_err();
        assert!(format!("{e}").contains(want), "{text}: {e}");
    }
}

/// DDL that can make a write reach beyond its table makes the gateway read the catalog again;
/// plain CREATE / ALTER TABLE does not (so pipelined DDL is not held up).
#[test]
fn ddl_that_extends_writes_changes_the_catalog() {
    let g = Guard::load(&PolicySource {
        files: vec![],
        default_pack: false,
        modes: Default::default(),
    })
    .unwrap();
    let changes = |sql: &str| {
        g.decide(sql, &ctx("a", &[], "dev"))
            .statements
            .iter()
            .any(|s| s.may_change_catalog())
    };
    for sql in [
        "CREATE TRIGGER t AFTER UPDATE ON x FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO x DO ALSO INSERT INTO y VALUES (1)",
        "CREATE TABLE c (id int, p int REFERENCES p (id) ON DELETE CASCADE)",
        "CREATE TABLE c (id int, p int, FOREIGN KEY (p) REFERENCES p (id) ON UPDATE SET NULL)",
        "CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (10)",
        "CREATE TABLE kid () INHERITS (parent)",
        "ALTER TABLE c ADD CONSTRAINT fk FOREIGN KEY (p) REFERENCES p (id) ON DELETE SET DEFAULT",
        "ALTER TABLE c ADD COLUMN q int REFERENCES p (id) ON DELETE CASCADE",
        "ALTER TABLE part ATTACH PARTITION part_2 FOR VALUES FROM (10) TO (20)",
        "ALTER TABLE kid INHERIT parent",
    ] {
        assert!(changes(sql), "{sql}");
    }
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "CREATE TABLE c (id int, p int REFERENCES p (id))",
        "ALTER TABLE t ADD COLUMN w int",
        "ALTER TABLE c ADD CONSTRAINT fk FOREIGN KEY (p) REFERENCES p (id) ON DELETE RESTRICT",
    ] {
        assert!(!changes(sql), "{sql}");
    }
}
