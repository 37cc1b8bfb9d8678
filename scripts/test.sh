#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting, lints, then every test of the workspace.
# Each test binary that needs PostgreSQL starts its own throw-away cluster (initdb in a temp dir, free port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
