//! What the guard benches share: the OLTP statements, the 100 extra rules, the request context
//! and the text generators (a new literal per call, or a never-seen shape per call).

use parapet_guard::{Guard, PolicySource, RequestContext};
use std::path::PathBuf;

/// Typical OLTP statements; `{n}` is replaced by a number.
pub const OLTP: &[&str] = &[
    "SELECT id, name, email FROM users WHERE id = {n}",
    "SELECT * FROM orders WHERE user_id = {n} ORDER BY created_at DESC LIMIT 20",
    "UPDATE accounts SET balance = balance - 100 WHERE id = {n}",
    "INSERT INTO orders (user_id, total, created_at) VALUES ({n}, 9.99, now())",
    "DELETE FROM sessions WHERE id = {n}",
    "SELECT o.id, u.name FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = {n}",
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {n}",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
];

/// `n` generated rules of every prefilter shape (a mix of enforce and monitor).
pub fn extra_rules(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let body = match i % 4 {
            0 => format!("context.write_names.contains(\"public.table_{i}\")"),
            1 => format!("principal in Parapet::Group::\"contractors_{i}\" && context.kind == \"delete\""),
            2 => format!("resource.environment == \"env_{i}\" && context.kinds.contains(\"alter\")"),
            _ => format!("context.function_names.contains(\"fn_{i}\") || context.application_name == \"app_{i}\""),
        };
        s.push_str(&format!(
            "@id(\"bench.rule-{i}\")\n@reason(\"bench rule {i}\")\n@mode(\"{}\")\nforbid (principal, action, resource) when {{ {body} }};\n",
            if i % 3 == 0 { "monitor" } else { "enforce" }
        ));
    }
    s
}

/// The bench setup: the default pack plus 100 extra rules (written to a temporary directory,
/// removed on drop), a guard loaded with them, and a request context.
pub struct Setup {
    dir: PathBuf,
    pub guard: Guard,
    pub ctx: RequestContext,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = std::env::temp_dir().join(format!("parapet-guard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let extra = dir.join("extra.cedar");
        std::fs::write(&extra, extra_rules(100)).expect("write rules");
        let source = PolicySource {
            files: vec![extra],
            default_pack: true,
            modes: Default::default(),
        };
        let guard = Guard::load(&source).expect("guard loads");
        let ctx = RequestContext {
            user: "alice".into(),
            groups: vec!["eng".into()],
            target: "main".into(),
            environment: "production".into(),
            client_addr: Some("10.0.0.1".into()),
            application_name: "app".into(),
            catalog: None,
        };
        Setup { dir, guard, ctx }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Call `i`'s text: one of the OLTP statements with a new literal.
pub fn text(i: usize) -> String {
    OLTP[i % OLTP.len()].replace("{n}", &i.to_string())
}

/// Call `i`'s text as a statement shape never seen before: the same texts with a unique comment,
/// which `normalize` keeps, so nothing learnt from an earlier text can be reused.
pub fn new_shape(i: usize) -> String {
    format!("{} /* {i} */", text(i))
}
