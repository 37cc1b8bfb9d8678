//! Facts reused across texts that differ only in literal values (`Guard::analyze` remembers the
//! facts of plain DML by normalised text) must be exactly the facts a full analysis finds.

use parapet_guard::analyze::{analyze_with_shapes, Shapes};
use parapet_guard::{analyze, Analysis, Guard, PolicySource, RequestContext, Verdict};

fn guard() -> Guard {
    Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack loads")
}

fn assert_same(sql: &str, got: &Analysis, want: &Analysis) {
    assert_eq!(got.statements, want.statements, "facts differ for {sql:?}");
    assert_eq!(
        got.normalized, want.normalized,
        "normalized differs for {sql:?}"
    );
    assert_eq!(
        got.fingerprint, want.fingerprint,
        "fingerprint differs for {sql:?}"
    );
    assert_eq!(got.failure, want.failure, "failure differs for {sql:?}");
}

/// The same text with other literal values: digits shifted, letters inside single quotes shifted.
fn variant(sql: &str, shift: u8) -> String {
    let mut quoted = false;
    sql.chars()
        .map(|c| {
            if c == '\'' {
                quoted = !quoted;
                c
            } else if c.is_ascii_digit() {
                (b'0' + (c as u8 - b'0' + shift) % 10) as char
            } else if quoted && c.is_ascii_lowercase() {
                (b'a' + (c as u8 - b'a' + shift) % 26) as char
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn corpus_variants_get_the_facts_of_a_full_analysis() {
    let g = guard();
    let mut reused = 0;
    for line in include_str!("data/corpus.tsv").lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let sql = line
            .splitn(3, '\t')
            .nth(2)
            .unwrap_or("")
            .replace("\\n", "\n");
        for shift in 0..4 {
            let text = variant(&sql, shift);
            let want = analyze(&text);
            assert_same(&text, &g.analyze(&text), &want);
            if shift > 0 && text != sql && want.failure.is_none() {
                reused += 1;
            }
        }
    }
    assert!(
        reused > 100,
        "too few literal variants exercised ({reused})"
    );
}

#[test]
fn literal_variants_of_plain_dml_are_reused_and_exact() {
    let g = guard();
    let cases = [
        "SELECT id, name FROM users WHERE id = 1",
        "UPDATE accounts SET balance = balance - 100 WHERE id = 7",
        "DELETE FROM s.sessions WHERE id = 3 AND note = 'x'",
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        "INSERT INTO orders (user_id, total) VALUES (1, 9.99)",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "UPDATE pgbench_tellers SET tbalance = tbalance + 17 WHERE tid = 4 ;\n",
        "SELECT * FROM XMLTABLE('/r' PASSING '<r><a>1</a></r>' COLUMNS a int PATH 'a' DEFAULT 'x')",
    ];
    let shapes = Shapes::new(1 << 20);
    for sql in cases {
        let first = g.analyze(sql);
        assert_same(sql, &first, &analyze(sql));
        let before = shapes.len();
        assert_same(sql, &analyze_with_shapes(sql, &shapes), &analyze(sql));
        let remembered = shapes.len();
        assert!(remembered > before, "{sql:?} is remembered by its shape");
        let other = variant(sql, 5);
        assert_ne!(other, sql);
        let again = g.analyze(&other);
        assert_same(&other, &again, &analyze(&other));
        assert_same(
            &other,
            &analyze_with_shapes(&other, &shapes),
            &analyze(&other),
        );
        assert_eq!(
            shapes.len(),
            remembered,
            "{other:?} reuses the shape of {sql:?}"
        );
        assert_eq!(again.normalized, first.normalized, "{sql:?} is one shape");
        assert_eq!(
            again.statements[0].text,
            other.trim().trim_end_matches(';').trim_end()
        );
    }
}

/// A shape found by its lexical key (no parse at all) gives what a full analysis finds, and a
/// key is only remembered where it rebuilds the normalised text exactly.
#[test]
fn lexical_keys_find_shapes_only_where_they_are_exact() {
    let cases = [
        // (first text, a text with the same lexical key, found without a parse)
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            true,
        ),
        (
            "UPDATE t SET a = 'x', b = 2.5e3 WHERE \"Id\" = 7",
            "UPDATE t SET a = 'it''s', b = 0.1 WHERE \"Id\" = 99999999999999999999",
            true,
        ),
        // Comments are part of the shape (sqlcommenter-style tags).
        (
            "SELECT * FROM t WHERE a = 1 /*app='shop',route='/a'*/",
            "SELECT * FROM t WHERE a = 22 /*app='shop',route='/a'*/",
            true,
        ),
        (
            "-- report 7\nUPDATE t SET a = 'x' WHERE b = 1",
            "-- report 7\nUPDATE t SET a = 'yy' WHERE b = 3",
            true,
        ),
        // One constant made of two strings: normalised as one `$1`.
        ("SELECT 'a'\n'b' FROM t", "SELECT 'c'\n'd' FROM t", false),
        // Not every literal is a constant normalize replaces: never found lexically.
        (
            "SELECT CAST(a AS float(53)) FROM t",
            "SELECT CAST(a AS float(24)) FROM t",
            false,
        ),
        (
            "SELECT * FROM t WHERE a = -5",
            "SELECT * FROM t WHERE a = -6",
            false,
        ),
        (
            "SELECT a::numeric(10, 2) FROM t",
            "SELECT a::numeric(3, 1) FROM t",
            false,
        ),
    ];
    for (first, second, lexical) in cases {
        let shapes = Shapes::new(1 << 20);
        assert_same(first, &analyze_with_shapes(first, &shapes), &analyze(first));
        let (got, hit) = parapet_guard::analyze::analyze_shaped(
            second,
            &shapes,
            parapet_guard::analyze::limits::DEFAULT_MAX_STATEMENT_SIZE,
        );
        assert_same(second, &got, &analyze(second));
        assert_eq!(hit, lexical, "{second:?} found by its lexical key");
        assert_eq!(
            parapet_guard::analyze::lexical::key(first),
            parapet_guard::analyze::lexical::key(second),
            "test premise: {first:?} and {second:?} have one lexical key"
        );
    }
}

#[test]
fn parameters_are_not_confused_with_literals() {
    // "SELECT 5" and "SELECT $1" both normalise to "SELECT $1".
    let g = guard();
    let a = g.analyze("SELECT 5");
    assert!(!a.statements[0].has_parameters);
    let b = g.analyze("SELECT $1");
    assert_eq!(b.normalized, a.normalized);
    assert!(b.statements[0].has_parameters);
    assert_same("SELECT $1", &b, &analyze("SELECT $1"));
}

#[test]
fn literal_dependent_facts_are_never_reused() {
    let g = guard();
    let ctx = RequestContext {
        user: "alice".into(),
        groups: vec!["eng".into()],
        target: "main".into(),
        environment: "production".into(),
        client_addr: Some("10.0.0.1".into()),
        application_name: "psql".into(),
        catalog: None,
    };
    let pairs = [
        // set_config's first argument names the setting.
        (
            "SELECT set_config('search_path', 'app', false)",
            "SELECT set_config('role', 'postgres', false)",
        ),
        // SQL function bodies and DO blocks are string constants.
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DROP TABLE users'",
        ),
        (
            "DO 'BEGIN PERFORM 1; END'",
            "DO 'BEGIN DROP TABLE users; END'",
        ),
        // A filter folded from literals: the same lexical key, opposite facts.
        ("DELETE FROM t WHERE 1 = 2", "DELETE FROM t WHERE 1 = 1"),
        (
            "UPDATE t SET a = 5 WHERE 'x' = 'y'",
            "UPDATE t SET a = 5 WHERE 'x' = 'x'",
        ),
        (
            "DELETE FROM t WHERE a = 3 OR 1 > 2",
            "DELETE FROM t WHERE a = 3 OR 2 > 1",
        ),
        (
            "MERGE INTO t USING u ON 1 = 2 WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING u ON 1 = 1 WHEN MATCHED THEN DELETE",
        ),
        // SQL given to a built-in as text is a nested statement.
        (
            "SELECT query_to_xml('SELECT 1', true, false, '')",
            "SELECT query_to_xml('DROP TABLE users', true, false, '')",
        ),
    ];
    let shapes = Shapes::new(1 << 20);
    for (harmless, harmful) in pairs {
        analyze_with_shapes(harmless, &shapes);
        assert!(
            shapes.is_empty(),
            "{harmless:?} must not be remembered by shape"
        );
        assert_eq!(
            pg_query::normalize(harmless).ok(),
            pg_query::normalize(harmful).ok(),
            "test premise: {harmless:?} and {harmful:?} normalise alike"
        );
        assert_eq!(
            g.decide(harmless, &ctx).verdict,
            Verdict::Allow,
            "{harmless}"
        );
        assert_eq!(g.decide(harmful, &ctx).verdict, Verdict::Deny, "{harmful}");
        assert_same(harmful, &g.analyze(harmful), &analyze(harmful));
    }
}

mod random {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn shared() -> &'static Guard {
        static G: OnceLock<Guard> = OnceLock::new();
        G.get_or_init(guard)
    }

    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<i32>().prop_map(|n| format!("- {n}")),
            (0.0f64..1e9).prop_map(|f| f.to_string()),
            (0u32..1000, -30i32..30).prop_map(|(m, e)| format!("{m}.5e{e}")),
            (0u8..60).prop_map(|n| n.to_string()),
            "[a-z ;'\\-/*]{0,12}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
            "[a-z]{0,8}".prop_map(|s| format!("E'\\\\{s}'")),
            "[a-z]{0,8}".prop_map(|s| format!("U&'{s}'")),
            Just("NULL".to_string()),
            Just("true".to_string()),
            Just("'1 day'::interval".to_string()),
        ]
    }

    fn statement() -> impl Strategy<Value = String> {
        let shapes = prop_oneof![
            Just("SELECT * FROM t WHERE a = {0} AND b = {1}"),
            Just("UPDATE s.t SET a = {0} WHERE b = {1}"),
            Just("UPDATE t SET a = {0}"),
            Just("DELETE FROM t WHERE a IN ({0}, {1})"),
            Just("INSERT INTO t (a, b) VALUES ({0}, {1}) RETURNING *"),
            Just("SELECT set_config({0}, {1}, false)"),
            Just("SELECT pg_read_file({0}) FROM t LIMIT {1}"),
            Just("WITH d AS (DELETE FROM t WHERE a = {0} RETURNING *) SELECT {1} FROM d"),
            Just("SELECT {0} UNION SELECT {1}"),
            Just("DELETE FROM t WHERE {0} = {1}"),
            Just("UPDATE t SET a = 1 WHERE {0} >= {1} OR a = 2"),
            Just("DELETE FROM t WHERE NOT {0} IS DISTINCT FROM {1}"),
            Just("SELECT query_to_xml({0}, true, false, {1})"),
            Just("SELECT * FROM t WHERE a = {0}; DELETE FROM t WHERE b = {1}"),
            Just("SELECT {0} -- {1}"),
            Just("SELECT {0} -- {1};"),
            Just("SELECT * FROM t WHERE a = {0};"),
            Just("UPDATE t SET a = {0} WHERE b = {1} ;  "),
            Just("DELETE FROM t WHERE a = {0}; -- {1}"),
            Just("SELECT {0} /* ; */ ;"),
            Just("MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN UPDATE SET b = {0} WHEN NOT MATCHED THEN INSERT VALUES ({1})"),
            // Literals in places where the parser keeps them or reads them otherwise.
            Just("SELECT CAST(a AS float({0})) FROM t WHERE b = {1}"),
            Just("SELECT a::numeric({0}, 2), x[{1}] FROM t ORDER BY 1"),
            Just("SELECT \"a b\" FROM \"T\" WHERE \"c\" = {0} LIMIT {1}"),
            Just("SELECT {0}\n{1} FROM t"),
            Just("SELECT * FROM t WHERE a = -{0} OFFSET {1}"),
            Just("SELECT interval {0}, {1}::text FROM t"),
            Just("SELECT * FROM t WHERE a = {0} /*app='x',n={1}*/"),
            Just("/* {0} */ DELETE FROM t WHERE a = {1}"),
            Just("SELECT {0} /* /* */ {1} */ FROM t"),
        ];
        (shapes, literal(), literal()).prop_map(|(s, a, b)| s.replace("{0}", &a).replace("{1}", &b))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Whatever texts came before, `Guard::analyze` returns what a full analysis finds.
        #[test]
        fn reused_shapes_match_full_analysis(sql in statement()) {
            let got = shared().analyze(&sql);
            let want = analyze(&sql);
            prop_assert_eq!(&got.statements, &want.statements);
            prop_assert_eq!(&got.normalized, &want.normalized);
            prop_assert_eq!(&got.fingerprint, &want.fingerprint);
            prop_assert_eq!(&got.failure, &want.failure);
        }
    }
}
