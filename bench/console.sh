#!/usr/bin/env bash
# Console benchmark (not a test): the search index at scale. Writes EVENTS synthetic audit events
# (a gateway's mix: sessions, decisions over 40 users, 30 tables and the default pack's rules,
# outcomes) into a fresh log with `parapet log append`, builds the console's index from it with
# `parapet index rebuild`, then runs `parapet serve` with the console and times searches through
# the HTTP API: filtered (user, decision, rule, table, session) and full text (a rare word, a
# common one, a phrase, a prefix). Prints a table: indexing rate, index size, p50/p90 per query.
#
#   bench/console.sh                  # 10,000,000 events
#   EVENTS=1000000 bench/console.sh
#   BENCH_DIR=/var/tmp bench/console.sh
#   KEEP=1 bench/console.sh           # keep the log and index for further study
#
# Needs: curl, python3; builds parapet in release mode unless PARAPET=/path/to/parapet is given.
set -euo pipefail
EVENTS=${EVENTS:-10000000}
RUNS=${RUNS:-21}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null || { echo "$1 not found; install it with: apt-get install $2" >&2; exit 1; }; }
need curl curl
need python3 python3
if [ -z "${PARAPET:-}" ]; then
  (cd "$ROOT" && cargo build --release -q --locked --bin parapet)
  PARAPET=${CARGO_TARGET_DIR:-$ROOT/target}/release/parapet
fi
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/parapet-console-bench-XXXXXX")
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

"$PARAPET" log init --dir "$WORK/log" --origin bench.parapet/console --key "$WORK/log.key" >/dev/null
TOKEN_OUT=$("$PARAPET" console token --name bench --role auditor)
TOKEN=${TOKEN_OUT%%$'\n'*}
SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/parapet.toml" <<EOF
[log]
dir = "log"
key = "log.key"

[listen]
postgres = "127.0.0.1:$PGPORT"

[[targets]]
name = "main"
upstream = "postgres://nobody:x@127.0.0.1:1/none"

[policy]
default_pack = true

[console]
listen = "127.0.0.1:$PORT"

[[console.tokens]]
name = "bench"
role = "auditor"
sha256 = "$SHA"
EOF

# A gateway's mix: per session a start, ~10 decisions (1 in 20 denied) each with its outcome, an end.
gen() {
python3 - "$EVENTS" <<'PY'
import json, random, sys
n = int(sys.argv[1]); random.seed(7)
users = [f"user{i:02d}" for i in range(40)]
tables = [f"public.t{i:02d}" for i in range(30)]
words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
deny = [("parapet.delete-without-where", "DELETE without a WHERE clause is blocked: it removes every row. Add a WHERE clause."),
        ("parapet.drop", "DROP is blocked: it destroys objects and their data. Use a migration reviewed by a DBA."),
        ("parapet.server-file-functions", "Server file functions are blocked.")]
out = sys.stdout; written = 0; idx = 0; s = 0
def emit(e):
    global written, idx
    out.write(json.dumps(e, separators=(",", ":"))); out.write("\n"); written += 1; idx += 1
while written < n:
    s += 1; sid = f"{s:016x}"; user = random.choice(users)
    t0 = f"2026-12-{1 + s % 28:02d}T{(s // 60) % 24:02d}:{s % 60:02d}:00.000000Z"
    emit({"type":"session_start","time":t0,"session":sid,"user":user,"groups":["eng"],"target":"main","environment":"production","client_addr":"10.0.0.%d" % (s % 250),"client_port":5000,"application_name":"app","tls":False})
    for k in range(10):
        if written >= n: break
        t = random.choice(tables); w = random.choice(words)
        if random.random() < 0.05:
            rule, reason = random.choice(deny)
            sql = f"DELETE FROM {t}" if rule == "parapet.delete-without-where" else f"DROP TABLE {t}"
            emit({"type":"decision","time":t0,"session":sid,"user":user,"groups":["eng"],"target":"main","environment":"production","client_addr":"10.0.0.1","application_name":"app","protocol":"simple","sql":sql,"normalized":sql,"fingerprint":"ab","decision":"deny","rules":[{"id":rule,"mode":"enforce","reason":reason}],"reason":reason,"policy_hash":"p"})
        else:
            sql = f"SELECT id, note FROM {t} WHERE id = {random.randrange(10**6)} AND note = '{w} {random.choice(words)}'"
            d = idx
            emit({"type":"decision","time":t0,"session":sid,"user":user,"groups":["eng"],"target":"main","environment":"production","client_addr":"10.0.0.1","application_name":"app","protocol":"simple","sql":sql,"normalized":f"SELECT id, note FROM {t} WHERE id = $1 AND note = $2","fingerprint":"cd","decision":"allow","rules":[],"reason":"","policy_hash":"p"})
            if written < n:
                emit({"type":"outcome","time":t0,"session":sid,"decision":d,"tag":"SELECT 1","rows":1,"sqlstate":None,"duration_us":120})
    if written < n:
        emit({"type":"session_end","time":t0,"session":sid,"duration_ms":1000})
PY
}

printf 'writing %d events to the log … ' "$EVENTS" >&2
start=$(date +%s.%N)
gen | "$PARAPET" log append --dir "$WORK/log" --key "$WORK/log.key" >/dev/null
append_s=$(python3 -c "import time; print(round(time.time() - $start, 1))")
echo "${append_s} s" >&2
printf 'indexing … ' >&2
# Wall time, CPU time (user, system) and bytes written to storage by the build: the last two are
# what indexing costs a gateway beside it, and hold whatever else runs on the machine.
read -r index_s cpu_user cpu_sys written < <(python3 - "$PARAPET" "$WORK/parapet.toml" <<'PY'
import resource, subprocess, sys, time
start = time.time()
subprocess.run([sys.argv[1], "index", "rebuild", "--config", sys.argv[2]], check=True, stdout=subprocess.DEVNULL)
wall = time.time() - start
r = resource.getrusage(resource.RUSAGE_CHILDREN)
# A reaped child's I/O is added to its parent's.
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(round(wall, 1), round(r.ru_utime, 1), round(r.ru_stime, 1), io["write_bytes"])
PY
)
echo "${index_s} s" >&2
log_mb=$(du -sm "$WORK/log" | cut -f1)
index_mb=$(du -sm "$WORK/console-index" | cut -f1)

"$PARAPET" --log-format json serve --config "$WORK/parapet.toml" 2>"$WORK/serve.err" &
SERVE_PID=$!
# `parapet serve` reads the whole log before it listens (about 3 s per million entries).
up=
for _ in $(seq 1200); do
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/health" && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || { echo "the console did not answer within 120 s; see $WORK/serve.err (KEEP=1 keeps it)" >&2; exit 1; }

# p50 and p90 (ms) of RUNS requests of a query, and how many events its first page holds.
timeq() {
  local q=$1 times=() n
  n=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/events?$q" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))')
  for _ in $(seq "$RUNS"); do
    times+=("$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/events?$q")")
  done
  printf '%s\n' "${times[@]}" | python3 -c '
import sys; t = sorted(float(x) * 1000 for x in sys.stdin); k = len(t)
print("| `%s` | %s | %.1f | %.1f |" % (sys.argv[1], sys.argv[2], t[k // 2], t[int(k * 0.9)]))' "$q" "$n"
}

echo
echo "events: $EVENTS · append: ${append_s} s · index build: ${index_s} s ($(python3 -c "print(round($EVENTS / max($index_s, 0.1)))") events/s) · log: ${log_mb} MB · index: ${index_mb} MB"
python3 -c "
n, u, s, w = $EVENTS, $cpu_user, $cpu_sys, $written
print(f'index build CPU: {u} s user + {s} s system = {(u + s) / n * 1e6:.1f} µs/event · written: {w / 1e6:.0f} MB = {w / n:.0f} bytes/event')"
echo
echo "| query (limit 50, newest first) | events on page | p50 ms | p90 ms |"
echo "| --- | ---: | ---: | ---: |"
timeq "limit=50"
timeq "user=user07&limit=50"
timeq "decision=deny&limit=50"
timeq "rule=parapet.drop&limit=50"
timeq "table=t13&limit=50"
timeq "user=user07&decision=deny&table=t13&limit=50"
timeq "session=0000000000000abc&limit=50"
timeq "type=decision&since=2026-12-10T00:00:00Z&until=2026-12-11T00:00:00Z&limit=50"
timeq "q=kilo&limit=50"
timeq "q=%22kilo%20lima%22&limit=50"
timeq "q=fox*&limit=50"
timeq "q=kilo&user=user07&decision=allow&limit=50"
timeq "q=nonexistentword&limit=50"
timeq "q=kilo&session=0000000000000abc&limit=50"
timeq "q=drop&user=user07&limit=50"
timeq "q=drop&decision=allow&limit=50"
