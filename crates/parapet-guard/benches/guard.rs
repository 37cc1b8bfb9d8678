//! Guardrail benchmark (`cargo bench -p parapet-guard --bench guard`): per-call latency of
//! decisions for typical OLTP statements with the default pack plus 100 extra rules, cold (first
//! sight of a statement text) and warm (repeated text), and of the pg_query building blocks.
//! Prints a table (calls/s, p50, p99); a harness-free bench because criterion reports means and
//! confidence intervals, not the percentiles the targets are stated in.
//!
//! "decide cold" gives every call a new literal, so the text-keyed caches miss but the facts of
//! the statement's shape (normalised text) are reused; "new shape each call" makes every text a
//! shape never seen before (a unique comment), the full cost of parse + walk + fingerprint.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

struct Row {
    name: String,
    samples: Vec<Duration>,
}

fn measure(name: &str, iters: usize, mut f: impl FnMut(usize)) -> Row {
    for i in 0..iters.min(200) {
        f(i); // warm up code paths (not caches: callers vary inputs as needed)
    }
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        f(i + 1_000_000);
        samples.push(t.elapsed());
    }
    Row {
        name: name.to_string(),
        samples,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let setup = support::Setup::new();
    let (guard, ctx) = (&setup.guard, &setup.ctx);
    let texts = support::text;

    // A statement shape never seen before: the same texts with a unique comment, which
    // `normalize` keeps, so nothing learnt from an earlier text can be reused.
    let new_shape = support::new_shape;
    assert_ne!(
        pg_query::normalize(&new_shape(1)).ok(),
        pg_query::normalize(&new_shape(9)).ok(),
        "bench premise: the comment makes every text a new shape"
    );

    let mut rows = Vec::new();
    rows.push(measure("decide cold (new text each call)", 4_000, |i| {
        black_box(guard.decide(&texts(i), ctx));
    }));
    rows.push(measure(
        "decide cold, new shape each call (nothing reusable)",
        4_000,
        |i| {
            black_box(guard.decide(&new_shape(i), ctx));
        },
    ));
    let warm_texts: Vec<String> = (0..support::OLTP.len()).map(texts).collect();
    for t in &warm_texts {
        guard.decide(t, ctx);
    }
    rows.push(measure("decide warm (repeated text)", 200_000, |i| {
        black_box(guard.decide(&warm_texts[i % warm_texts.len()], ctx));
    }));
    // Analysis cached, new context each call (decision cache misses): Cedar evaluation cost.
    rows.push(measure("decide, analysis cached, new user", 4_000, |i| {
        let mut c = ctx.clone();
        c.user = format!("user{i}");
        black_box(guard.decide(&warm_texts[i % warm_texts.len()], &c));
    }));
    rows.push(measure("analyze only (cold)", 4_000, |i| {
        black_box(parapet_guard::analyze(&texts(i)));
    }));
    rows.push(measure("pg_query::parse", 4_000, |i| {
        black_box(pg_query::parse(&texts(i)).ok());
    }));
    rows.push(measure(
        "pg_query::parse + serde_json::to_value of the tree",
        4_000,
        |i| {
            let parsed = pg_query::parse(&texts(i)).ok();
            black_box(parsed.map(|p| {
                p.protobuf
                    .stmts
                    .iter()
                    .map(|s| serde_json::to_value(&s.stmt).ok())
                    .collect::<Vec<_>>()
            }));
        },
    ));
    rows.push(measure("pg_query::fingerprint", 4_000, |i| {
        black_box(pg_query::fingerprint(&texts(i)).ok());
    }));
    rows.push(measure("pg_query::normalize", 4_000, |i| {
        black_box(pg_query::normalize(&texts(i)).ok());
    }));
    rows.push(measure("pg_query::split_with_parser", 4_000, |i| {
        black_box(pg_query::split_with_parser(&texts(i)).ok().map(|v| v.len()));
    }));
    let plpgsql = "CREATE FUNCTION f(i int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN UPDATE t SET seen = now() WHERE id = i; END $$";
    rows.push(measure("pg_query::parse_plpgsql", 2_000, |_| {
        black_box(pg_query::parse_plpgsql(plpgsql).ok());
    }));

    println!(
        "\nparapet-guard: default pack + 100 extra rules ({} rules), {} OLTP statement shapes\n",
        guard.rules().len(),
        support::OLTP.len()
    );
    println!("| case | calls | calls/s (1 thread) | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    for mut r in rows {
        r.samples.sort();
        let total: Duration = r.samples.iter().sum();
        let per_s = r.samples.len() as f64 / total.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.2} µs | {:.2} µs |",
            r.name,
            r.samples.len(),
            per_s,
            pct(&r.samples, 0.50).as_secs_f64() * 1e6,
            pct(&r.samples, 0.99).as_secs_f64() * 1e6
        );
    }
}
