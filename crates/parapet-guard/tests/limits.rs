//! Depth and size caps of the analysis: statements PostgreSQL 15 runs with its default
//! `max_stack_depth` are judged normally on any thread (even one with a small stack), deeper or
//! larger ones are refused with `parapet.too-large` or the parser's own error, and nothing
//! crashes the process.

use parapet_guard::{Decision, Guard, PolicySource, RequestContext, Verdict};

fn guard() -> Guard {
    Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack loads")
}

fn ctx() -> RequestContext {
    RequestContext {
        user: "alice".into(),
        ..RequestContext::default()
    }
}

/// Decides on a thread with a 256 KiB stack: deep statements must grow their own.
fn decide_small_stack(g: &Guard, sql: &str) -> Decision {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn_scoped(s, || g.decide(sql, &ctx()))
            .expect("spawn")
            .join()
            .expect("decide did not panic")
    })
}

fn rule_ids(d: &Decision) -> Vec<&str> {
    d.rules.iter().map(|r| r.id.as_str()).collect()
}

fn nest(n: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// At the deepest PostgreSQL 15 runs (measured: 4,080 `+` terms, 2,104 subqueries, 1,992 CASE,
/// 4,080 calls and `->`, 7,680 NOTs, 7,264 UNIONs, 3,000 nested IFs), the guard judges normally.
#[test]
fn what_postgresql_runs_is_judged_normally() {
    let g = guard();
    let cases = [
        format!("SELECT {}", vec!["1"; 4_080].join("+")),
        format!("SELECT {}", vec!["'a'"; 4_080].join("||")),
        format!("SELECT {}", nest(2_104, "(SELECT ", "1", ")")),
        format!(
            "SELECT {}",
            nest(1_992, "CASE WHEN true THEN ", "1", " END")
        ),
        format!("SELECT {}", nest(4_080, "abs(", "1", ")")),
        format!("SELECT '{{}}'::jsonb{}", "->'a'".repeat(4_080)),
        format!("SELECT {}true", "NOT ".repeat(7_680)),
        vec!["SELECT 1"; 7_264].join(" UNION ALL "),
        format!("SELECT {}", nest(9_000, "(", "1", ")")),
        format!("SELECT {}", nest(1_000, "ARRAY[", "1", "]")),
    ];
    for sql in &cases {
        let d = decide_small_stack(&g, sql);
        assert_eq!(d.verdict, Verdict::Allow, "{:.60}…: {:?}", sql, d.rules);
        assert!(d.fingerprint.is_some() && d.normalized.is_some());
    }
    // 3,000 nested IFs in a DO block: analysed (the default pack may judge DO itself, but the
    // analyser does not give up on it).
    let sql = format!(
        "DO $$ BEGIN {} END $$",
        nest(3_000, "IF true THEN ", "PERFORM 1;", " END IF;")
    );
    let d = decide_small_stack(&g, &sql);
    for id in rule_ids(&d) {
        assert!(
            !matches!(
                id,
                "parapet.unanalysable" | "parapet.too-large" | "parapet.unparseable"
            ),
            "{id}: {}",
            d.reason
        );
    }
}

/// Far deeper than PostgreSQL runs: refused with a clear reason, never a crash.
#[test]
fn deeper_than_postgresql_is_refused_not_a_crash() {
    let g = guard();
    for sql in [
        format!("SELECT {}", vec!["1"; 20_000].join("+")),
        format!("SELECT {}", vec!["1"; 100_000].join("+")),
        format!("SELECT {}", vec!["'a'"; 30_000].join("||")),
        format!("SELECT {}", nest(50_000, "abs(", "1", ")")),
        format!("SELECT {}", nest(20_000, "(", "1", ")")),
        format!("SELECT {}", nest(20_000, "(SELECT ", "1", ")")),
    ] {
        let d = decide_small_stack(&g, &sql);
        assert_eq!(d.verdict, Verdict::Deny, "{:.60}…", sql);
        let ids = rule_ids(&d);
        assert!(
            ids == ["parapet.too-large"] || ids == ["parapet.unparseable"],
            "{:.60}…: {ids:?} {}",
            sql,
            d.reason
        );
    }
}

/// Size caps: `max_statement_size`, tokens, and the depth bound checked before parsing.
#[test]
fn size_caps_refuse_with_too_large() {
    let g = guard();
    let long = format!("SELECT '{}'", "x".repeat(4096));
    assert_eq!(g.decide(&long, &ctx()).verdict, Verdict::Allow);
    g.set_max_statement_size(1024);
    let d = g.decide(&format!("SELECT '{}'", "y".repeat(4096)), &ctx());
    assert_eq!(rule_ids(&d), ["parapet.too-large"]);
    assert!(d.reason.contains("max_statement_size"), "{}", d.reason);
    g.set_max_statement_size(parapet_guard::DEFAULT_MAX_STATEMENT_SIZE);
    // More than 4,000,000 tokens.
    let many = format!("SELECT 1 IN ({})", vec!["1"; 2_100_000].join(","));
    let d = g.decide(&many, &ctx());
    assert_eq!(rule_ids(&d), ["parapet.too-large"], "{}", d.reason);
    assert!(d.reason.contains("tokens"), "{}", d.reason);
    // A run of more than 250,000 tokens without a comma.
    let run = format!("SELECT {}", vec!["1"; 150_000].join("+"));
    let d = g.decide(&run, &ctx());
    assert_eq!(rule_ids(&d), ["parapet.too-large"], "{}", d.reason);
    // Wide but shallow texts are fine: a large IN list and many statements.
    let wide = format!("SELECT 1 WHERE 1 IN ({})", vec!["1"; 200_000].join(","));
    assert_eq!(g.decide(&wide, &ctx()).verdict, Verdict::Allow);
    let statements = "SELECT 1;".repeat(20_000);
    assert_eq!(g.decide(&statements, &ctx()).verdict, Verdict::Allow);
}

/// SQL nested in text (function bodies) is bounded again when parsed.
#[test]
fn deep_function_bodies_are_bounded_too() {
    let g = guard();
    let body = format!("SELECT {}", vec!["1"; 3_000].join("+"));
    let sql = format!("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b${body}$b$");
    let d = decide_small_stack(&g, &sql);
    assert!(
        !rule_ids(&d).contains(&"parapet.unanalysable"),
        "{}",
        d.reason
    );
    let body = format!("SELECT {}", vec!["1"; 100_000].join("+"));
    let sql = format!("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b${body}$b$");
    let d = decide_small_stack(&g, &sql);
    assert_eq!(d.verdict, Verdict::Deny);
}
