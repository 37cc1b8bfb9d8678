//! Instruction count of a never-seen-shape decision (the bench's "decide cold, new shape each
//! call" row), for before/after comparisons that machine noise cannot blur. Runs the same setup
//! as `guard.rs`, 200 warm-up decisions, then N decisions of never-seen shapes (N = first
//! numeric argument, default 2000) and prints the wall time per call. Under callgrind, run it
//! with N and with 0; the difference of the two instruction totals over N is the cost of one
//! decision:
//!
//! ```text
//! B=$(ls -t $CARGO_TARGET_DIR/release/deps/cold_instructions-* | grep -v '\.d$' | head -1)
//! for n in 0 2000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n $B $n; done
//! # Ir per decision = (total Ir of cg.2000 - total Ir of cg.0) / 2000
//! ```
//!
//! (`benches/callgrind.sh` does exactly this.)

mod support;

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    let setup = support::Setup::new();
    for i in 0..200 {
        black_box(setup.guard.decide(&support::new_shape(i), &setup.ctx));
    }
    let t = Instant::now();
    for i in 0..n {
        black_box(
            setup
                .guard
                .decide(&support::new_shape(1_000_000 + i), &setup.ctx),
        );
    }
    if n > 0 {
        println!(
            "{n} never-seen-shape decisions: {:.2} µs per call (mean)",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
}
