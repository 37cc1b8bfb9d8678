//! Development aid (differential check of the analyser): prints one JSON line per statement with
//! everything `analyze` returns. Inputs: `corpus` (tests/data/corpus.tsv), `random` (seeded
//! SQL-ish token soup), or .sql files (split into statements). To check that an analyser change
//! keeps every fact, run it before and after and compare the outputs:
//! `cargo run -p parapet-guard --example dump_facts -- corpus random /usr/share/postgresql/15/*.sql
//! /usr/share/postgresql/15/extension/*.sql > facts.jsonl`.
//! With `DUMP_VARIANTS=1` every statement is followed by a copy with other literal values (digits
//! shifted); with `DUMP_SHAPES=1` too, analyses go through one `Guard` (facts reused by
//! normalised text), and the output must equal the one without `DUMP_SHAPES`.
use std::io::Write;
use std::sync::OnceLock;

fn guard() -> Option<&'static parapet_guard::Guard> {
    static G: OnceLock<Option<parapet_guard::Guard>> = OnceLock::new();
    G.get_or_init(|| {
        std::env::var_os("DUMP_SHAPES")
            .map(|_| parapet_guard::Guard::load(&parapet_guard::PolicySource::default()).unwrap())
    })
    .as_ref()
}

fn dump(out: &mut impl Write, sql: &str) {
    dump_one(out, sql);
    if std::env::var_os("DUMP_VARIANTS").is_some() {
        let v: String = sql
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_digit((d + 3) % 10, 10).unwrap(),
                None => c,
            })
            .collect();
        dump_one(out, &v);
    }
}

fn dump_one(out: &mut impl Write, sql: &str) {
    let a = match guard() {
        Some(g) => (*g.analyze(sql)).clone(),
        None => parapet_guard::analyze(sql),
    };
    let v = serde_json::json!({"sql": sql, "statements": a.statements, "normalized": a.normalized,
        "fingerprint": a.fingerprint, "failure": a.failure});
    writeln!(out, "{v}").unwrap();
}

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for arg in std::env::args().skip(1) {
        if arg == "corpus" {
            for line in include_str!("../tests/data/corpus.tsv").lines() {
                if line.starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                let sql = line.splitn(3, '\t').nth(2).unwrap().replace("\\n", "\n");
                dump(&mut out, &sql);
            }
        } else if arg == "random" {
            let toks = [
                "SELECT",
                "DROP",
                "TABLE",
                "FROM",
                "WHERE",
                "DELETE",
                "UPDATE",
                "SET",
                "DO",
                "$$",
                "'",
                ";",
                "(",
                ")",
                "BEGIN",
                "END",
                "EXECUTE",
                "CREATE FUNCTION f() RETURNS int LANGUAGE",
                "plpgsql AS",
                "sql AS",
                "WITH x AS",
                "COPY",
                "TO",
                "$1",
                "users",
                "1",
                "x",
                "t",
                "INSERT INTO",
                "VALUES",
                "=",
                ",",
                "*",
                "pg_read_file('x')",
                "set_config('role', 'x', false)",
                "EXPLAIN ANALYZE",
                "PREPARE p AS",
                "UNION",
                "JOIN",
                "ON",
                "GRANT",
                "ALL",
                "TO",
                "RETURNING",
                "ONLY",
                "s.t",
                "LIMIT",
                "INTO",
            ];
            let mut seed: u64 = 0x1234_5678;
            let mut next = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize
            };
            for _ in 0..20000 {
                let n = next() % 14;
                let s: Vec<&str> = (0..n).map(|_| toks[next() % toks.len()]).collect();
                dump(&mut out, &s.join(" "));
            }
        } else {
            let text = std::fs::read_to_string(&arg).unwrap();
            // Extension scripts hold a psql meta-command line; drop those.
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with('\\'))
                .map(|l| format!("{l}\n"))
                .collect();
            match pg_query::split_with_parser(&text) {
                Ok(stmts) => {
                    for s in stmts {
                        dump(&mut out, s);
                    }
                }
                Err(_) => dump(&mut out, &text),
            }
        }
    }
}
