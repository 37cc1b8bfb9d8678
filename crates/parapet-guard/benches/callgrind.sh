#!/bin/sh
# Instructions per never-seen-shape decision (see cold_instructions.rs), immune to machine noise.
# Usage: CARGO_TARGET_DIR=... crates/parapet-guard/benches/callgrind.sh [N]
set -eu
n=${1:-2000}
cargo bench -p parapet-guard --bench cold_instructions --no-run >/dev/null 2>&1
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/cold_instructions-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
total() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" "$bin" "$1" >/dev/null 2>&1
    grep '^summary:' "$out/cg.$1" | awk '{print $2}'
}
base=$(total 0)
full=$(total "$n")
echo "instructions per never-seen-shape decision: $(( (full - base) / n )) (N=$n; profile: $out/cg.$n)"
