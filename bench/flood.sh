#!/usr/bin/env bash
# Connection-flood benchmark (not a test): pgbench -S through the gateway, alone and then while
# 2,000 idle connections are held open and a flood of half-open startups (a length word, then
# nothing) is kept up, all from this machine. The gateway runs on its defaults but for the
# listen address: max_connections 1000, max_connections_per_user 100, auth_timeout_seconds 10.
# Prints the TPS of both runs, their ratio (target: >= 0.5), and what the flood achieved
# (connections opened, refused with 53300, closed by the login timeout).
#
#   bench/flood.sh                        # 15 s per run, 8 clients
#   DURATION=30 CLIENTS=16 bench/flood.sh
#
# Needs: postgresql (initdb, postgres, pgbench), python3; builds parapet in release mode unless
# PARAPET=/path/to/parapet is given. Everything runs in a temp dir that is removed at exit.
set -euo pipefail
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-8}
IDLE=${IDLE:-2000}
HALF_OPEN_RATE=${HALF_OPEN_RATE:-500} # new half-open startups per second
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BINDIR/initdb" ] || { echo "PostgreSQL server not found; install it with: apt-get install postgresql postgresql-contrib" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found; install it with: apt-get install python3" >&2; exit 1; }
if [ -z "${PARAPET:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p parapet)
  PARAPET=${CARGO_TARGET_DIR:-$ROOT/target}/release/parapet
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/parapet-flood-XXXXXX)
chmod 711 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  local pm
  pm=$(head -1 "$WORK/data/postmaster.pid" 2>/dev/null || true)
  if [ -n "$pm" ] && kill -INT "$pm" 2>/dev/null; then sleep 2; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); chown postgres: "$WORK"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGPW=benchpw
PGPORT=$(free_port)
echo "$PGPW" > "$WORK/pw"; chmod 644 "$WORK/pw"
"${AS[@]}" "$BINDIR/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 --pwfile="$WORK/pw" >/dev/null
"${AS[@]}" "$BINDIR/postgres" -D "$WORK/data" -p "$PGPORT" -k "$WORK" -c listen_addresses=127.0.0.1 \
  -c max_connections=200 -c shared_buffers=256MB </dev/null >"$WORK/pg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.2; done
export PGPASSWORD=$PGPW PGSSLMODE=disable
"$BINDIR/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE bench" postgres
"$BINDIR/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1

GWPORT=$(free_port)
VERIFIER=$(printf '%s\n' "$PGPW" | "$PARAPET" user add alice --groups eng --password-stdin | sed -n 's/^scram = //p')
"$PARAPET" log init --dir "$WORK/log" --origin bench/flood --key "$WORK/log.key" >/dev/null
cat > "$WORK/parapet.toml" <<TOML
[log]
dir = "log"
key = "log.key"
[listen]
postgres = "127.0.0.1:$GWPORT"
[[targets]]
name = "main"
upstream = "postgres://postgres:$PGPW@127.0.0.1:$PGPORT/bench?sslmode=disable"
[[users]]
name = "alice"
scram = $VERIFIER
groups = ["eng"]
TOML
RUST_LOG=error "$PARAPET" serve --config "$WORK/parapet.toml" >"$WORK/serve.out" 2>"$WORK/serve.log" &
GWPID=$!
PIDS+=($GWPID)
for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$GWPORT" && break; sleep 0.1; done

# The flood: IDLE connections that send nothing (reopened when the gateway closes them), plus
# HALF_OPEN_RATE new connections a second that send a startup packet's length word and stall.
# Bounded in time: it stops by itself after the given seconds.
cat > "$WORK/flood.py" <<'PY'
import asyncio, sys, time
port, idle, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stats = {"opened": 0, "refused_53300": 0, "closed_by_gateway": 0, "connect_errors": 0}
end = time.monotonic() + seconds
async def one(payload):
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.2)
            continue
        stats["opened"] += 1
        if payload:
            w.write(payload)
        try:
            data = await asyncio.wait_for(r.read(4096), timeout=max(0.01, end - time.monotonic()))
            if b"53300" in data:
                stats["refused_53300"] += 1
            else:
                stats["closed_by_gateway"] += 1
        except (asyncio.TimeoutError, OSError):
            pass
        w.close()
        if not payload:
            await asyncio.sleep(1.0)
        else:
            return
async def half_open():
    tasks = []
    while time.monotonic() < end:
        tasks.append(asyncio.ensure_future(one(b"\x00\x00\x00\x30")))
        await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*tasks, return_exceptions=True)
async def main():
    await asyncio.gather(*[one(b"") for _ in range(idle)], half_open())
asyncio.run(main())
print(" ".join(f"{k}={v}" for k, v in stats.items()))
PY

tps() { # pgbench's TPS over the run, excluding connection time
  "$BINDIR/pgbench" -n -S -M prepared -c "$CLIENTS" -j 2 -T "$DURATION" -h 127.0.0.1 -p "$GWPORT" -U alice main 2>/dev/null \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1
}
echo "# bench/flood.sh: pgbench -S -M prepared, $CLIENTS clients, ${DURATION}s per run, through parapet (defaults)"
echo "# flood: $IDLE idle connections + $HALF_OPEN_RATE half-open startups/s; $(nproc) CPUs; $(date -u +%FT%TZ)"
BASE=$(tps)
# pgbench connects first; the flood starts a second later and outlasts the run.
( sleep 1; python3 "$WORK/flood.py" "$GWPORT" "$IDLE" "$HALF_OPEN_RATE" "$((DURATION + 2))" > "$WORK/flood.out" ) &
FLOODPID=$!
FLOODED=$(tps)
wait "$FLOODPID" || true
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$GWPID/status" 2>/dev/null || echo "?")
printf '| run | TPS |\n| --- | --- |\n| alone | %s |\n| under the flood | %s |\n' "$BASE" "$FLOODED"
python3 -c "import sys; b, f = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'ratio flooded/alone: {f / b:.2f} (target >= 0.50)' if b else 'no baseline TPS')" "$BASE" "$FLOODED"
echo "flood: $(cat "$WORK/flood.out")"
echo "gateway peak RSS: ${RSS} kB"
kill -0 "$GWPID" 2>/dev/null && echo "gateway: still running" || { echo "gateway: DIED"; exit 1; }
