//! Property tests over random SQL-ish input: the analyser never panics, and never allows what it
//! could not parse.

use parapet_guard::{Guard, PolicySource, RequestContext, Verdict};
use proptest::prelude::*;
use std::sync::OnceLock;

fn guard() -> &'static Guard {
    static G: OnceLock<Guard> = OnceLock::new();
    G.get_or_init(|| {
        Guard::load(&PolicySource {
            files: vec![],
            default_pack: false,
            modes: Default::default(),
        })
        .unwrap()
    })
}

fn sqlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("SELECT".to_string()),
        Just("DROP".to_string()),
        Just("TABLE".to_string()),
        Just("FROM".to_string()),
        Just("WHERE".to_string()),
        Just("DELETE".to_string()),
        Just("UPDATE".to_string()),
        Just("SET".to_string()),
        Just("DO".to_string()),
        Just("$$".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just(";".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("--".to_string()),
        Just("\n".to_string()),
        Just("BEGIN".to_string()),
        Just("END".to_string()),
        Just("EXECUTE".to_string()),
        Just("CREATE FUNCTION f() RETURNS int LANGUAGE".to_string()),
        Just("plpgsql AS".to_string()),
        Just("U&\"".to_string()),
        Just("\\".to_string()),
        Just("WITH x AS".to_string()),
        Just("COPY".to_string()),
        Just("TO".to_string()),
        Just("$1".to_string()),
        Just("users".to_string()),
        Just("1".to_string()),
        "[a-z_]{1,8}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..24).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_never_allows_unparseable(sql in sqlish()) {
        let d = guard().decide(&sql, &RequestContext::default());
        let parses = pg_query::parse(&sql).is_ok();
        if !parses {
            prop_assert_eq!(d.verdict, Verdict::Deny);
            prop_assert!(d.rules.iter().any(|r| r.id == "parapet.unparseable"));
        }
        // Anything not analysed is denied, never allowed.
        if d.statements.iter().any(|s| !s.problems.is_empty()) {
            prop_assert_eq!(d.verdict, Verdict::Deny);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(sql in ".{0,200}") {
        let d = guard().decide(&sql, &RequestContext::default());
        if pg_query::parse(&sql).is_err() {
            prop_assert_eq!(d.verdict, Verdict::Deny);
        }
    }
}
