#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting, lints, then every test of the workspace.
# Each test binary that needs PostgreSQL starts its own throw-away cluster (initdb in a temp dir, free port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Unit and integration tests (the crates have no doc tests); benches are run by `cargo bench`.
cargo test --workspace --locked --lib --bins --tests 2>&1 | tee "$out"
# One closing line with the totals over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
