//! Table-driven corpus: every statement in `data/corpus.tsv` is judged with the default pack and
//! must get the expected decision (and, when given, the expected rule among the decision's rules).

use parapet_guard::{Guard, PolicySource, RequestContext, Verdict};

fn verdict(s: &str) -> Verdict {
    match s {
        "allow" => Verdict::Allow,
        "deny" => Verdict::Deny,
        "review" => Verdict::Review,
        "monitor" => Verdict::Monitor,
        other => panic!("bad expected decision {other:?} in corpus"),
    }
}

#[test]
fn corpus_decisions() {
    let guard = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack loads");
    let ctx = RequestContext {
        user: "alice".into(),
        groups: vec!["eng".into()],
        target: "main".into(),
        environment: "production".into(),
        client_addr: Some("10.0.0.1".into()),
        application_name: "psql".into(),
        catalog: None,
    };
    let data = include_str!("data/corpus.tsv");
    let mut failures = Vec::new();
    let mut cases = 0;
    for (n, line) in data.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let expected = verdict(cols.next().unwrap_or(""));
        let rule = cols.next().unwrap_or("-");
        let sql = cols.next().unwrap_or("").replace("\\n", "\n");
        cases += 1;
        let d = guard.decide(&sql, &ctx);
        let rule_ok = rule == "-" || d.rules.iter().any(|r| r.id == rule);
        if d.verdict != expected || !rule_ok {
            failures.push(format!(
                "line {}: {sql:?}\n    expected {expected:?} {rule}, got {:?} {:?} ({})",
                n + 1,
                d.verdict,
                d.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                d.reason
            ));
        }
        if expected == Verdict::Deny {
            assert!(
                !d.reason.is_empty(),
                "line {}: deny without a reason",
                n + 1
            );
        }
    }
    assert!(cases >= 150, "corpus has only {cases} statements");
    assert!(
        failures.is_empty(),
        "{} of {cases} corpus statements judged wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
