#!/usr/bin/env bash
# Fleet benchmark (not a test): pgbench through gateways that share one fleet log
# (`[log] backend = "postgres"`: sequenced in PostgreSQL, published to a real single-node Garage).
# Runs, one after the other, the same total number of clients: PostgreSQL directly (the
# baseline); one gateway on a local directory log; one fleet gateway; three fleet gateways at once
# (the clients split between them). Prints TPS, and the fleet log's durable entries per second
# (PostgreSQL's sequence counter) and published ones (the integrator's committed size) per run.
# The log alone, with in-process appenders, is `cargo bench -p parapet-log --bench fleet`.
#
#   bench/fleet.sh
#   DURATION=20 CLIENTS=48 MODE=simple bench/fleet.sh
#
# Needs: postgresql (initdb, postgres, pgbench, psql), garage (scripts/setup.sh --tests builds it
# into ~/.cargo/bin), python3; builds parapet in release mode unless PARAPET=/path/to/parapet.
set -euo pipefail
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-48}
MODE=${MODE:-prepared}
TEST=${TEST:-select}
SCALE=${SCALE:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BINDIR/initdb" ] || { echo "PostgreSQL server not found; install it with: apt-get install postgresql postgresql-contrib" >&2; exit 1; }
GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
[ -x "$GARAGE" ] || { echo "garage not found; build it with: scripts/setup.sh --tests (cargo install garage)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found; install it with: apt-get install python3" >&2; exit 1; }
PGBENCH=$BINDIR/pgbench
if [ -z "${PARAPET:-}" ]; then
  (cd "$ROOT" && cargo build --release -q --locked --bin parapet)
  PARAPET=${CARGO_TARGET_DIR:-$ROOT/target}/release/parapet
fi

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/parapet-fleet-bench-XXXXXX")
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

# PostgreSQL: the upstream database `bench` and the fleet log's database `parapet_log`.
PGPW=benchpw
PGPORT=$(free_port)
echo "$PGPW" > "$WORK/pw"; chmod 644 "$WORK/pw"
"${AS[@]}" "$BINDIR/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 --pwfile="$WORK/pw" >/dev/null
"${AS[@]}" "$BINDIR/postgres" -D "$WORK/data" -p "$PGPORT" -k "$WORK" -c listen_addresses=127.0.0.1 \
  -c max_connections=300 -c shared_buffers=256MB </dev/null >"$WORK/pg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.2; done
export PGPASSWORD=$PGPW PGSSLMODE=disable
PSQL=("$BINDIR/psql" -qAt -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -c "CREATE DATABASE bench" postgres
"${PSQL[@]}" -c "CREATE DATABASE parapet_log" postgres
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1

# Garage: one node, a bucket and a key (as crates/parapet-log/tests/common/garage.rs does).
G=$WORK/garage
mkdir -p "$G"
S3PORT=$(free_port); RPCPORT=$(free_port); WEBPORT=$(free_port); ADMINPORT=$(free_port)
cat > "$G/garage.toml" <<TOML
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPCPORT"
rpc_public_addr = "127.0.0.1:$RPCPORT"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3PORT"
root_domain = ".s3.garage.localhost"
[s3_web]
bind_addr = "127.0.0.1:$WEBPORT"
root_domain = ".web.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$ADMINPORT"
TOML
RUST_LOG=garage=warn "$GARAGE" -c "$G/garage.toml" server </dev/null >"$G/garage.log" 2>&1 &
PIDS+=($!)
disown $! # its exit at clean-up is not news
gcli() { # retries while the node starts
  local out
  for _ in $(seq 150); do
    if out=$(RUST_LOG=garage=warn "$GARAGE" -c "$G/garage.toml" "$@" 2>&1); then printf '%s\n' "$out"; return 0; fi
    sleep 0.2
  done
  echo "garage $* kept failing: $out" >&2; return 1
}
NODE=$(gcli node id -q | cut -d@ -f1)
gcli layout assign -z dc1 -c 1G "$NODE" >/dev/null
gcli layout apply --version 1 >/dev/null
gcli bucket create fleet-bench >/dev/null
KEYOUT=$(gcli key create fleet-bench-key)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
AWS_ACCESS_KEY_ID=$(printf '%s\n' "$KEYOUT" | sed -n 's/^ *Key ID: *//p')
AWS_SECRET_ACCESS_KEY=$(printf '%s\n' "$KEYOUT" | sed -n 's/^ *Secret key: *//p')
gcli bucket allow --read --write --owner fleet-bench --key fleet-bench-key >/dev/null

VERIFIER=$(printf '%s\n' "$PGPW" | "$PARAPET" user add alice --groups eng --password-stdin | sed -n 's/^scram = //p')
"$PARAPET" log init --dir "$WORK/dirlog/log" --origin bench/dir --key "$WORK/dirlog/log.key" >/dev/null
LOGURL="postgres://postgres:$PGPW@127.0.0.1:$PGPORT/parapet_log"

config() { # $1 = gateway dir, $2 = port, $3 = dir|fleet
  local log
  if [ "$3" = fleet ]; then
    log="backend = \"postgres\"
postgres_url = \"$LOGURL\"
bucket = \"fleet-bench\"
endpoint = \"http://127.0.0.1:$S3PORT\"
origin = \"bench/fleet\"
key = \"$WORK/fleet.key\"
dir = \"mirror\""
  else
    log="dir = \"log\"
key = \"log.key\""
  fi
  cat > "$1/parapet.toml" <<TOML
[log]
$log
[listen]
postgres = "127.0.0.1:$2"
[[targets]]
name = "main"
upstream = "postgres://postgres:$PGPW@127.0.0.1:$PGPORT/bench"
environment = "production"
[[users]]
name = "alice"
scram = $VERIFIER
groups = ["eng"]
[policy]
default_pack = true
TOML
}
mkdir -p "$WORK/init"
config "$WORK/init" "$(free_port)" fleet
"$PARAPET" log init --config "$WORK/init/parapet.toml" --key "$WORK/fleet.key" >/dev/null

start() { # $1 = name, $2 = dir|fleet; sets PORT
  local d=$WORK/$1
  PORT=$(free_port)
  mkdir -p "$d"
  config "$d" "$PORT" "$2"
  RUST_LOG=warn "$PARAPET" serve --config "$d/parapet.toml" >"$d/serve.out" 2>"$d/serve.log" &
  PIDS+=($!)
  for _ in $(seq 300); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.1; done
  "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { echo "gateway $1 did not start:" >&2; cat "$d/serve.log" >&2; exit 1; }
}
start dirlog dir; DIRPORT=$PORT
start fleet-a fleet; APORT=$PORT
start fleet-b fleet; BPORT=$PORT
start fleet-c fleet; CPORT=$PORT

case $TEST in select) SEL=(-S) ;; tpcb) SEL=() ;; *) echo "TEST must be select or tpcb" >&2; exit 1 ;; esac
bench() { # $1 = port, $2 = clients, $3 $4 = user and database (default alice, main); prints TPS
  PGPASSWORD=$PGPW "$PGBENCH" -n "${SEL[@]}" -M "$MODE" -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" -T "$DURATION" \
    -h 127.0.0.1 -p "$1" -U "${3:-alice}" "${4:-main}" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | cut -d. -f1
}
counters() { # sequenced and published sizes of the fleet log
  "${PSQL[@]}" -F' ' -c "SELECT (SELECT next FROM parapet_fleet_sequence), (SELECT size FROM parapet_fleet_state)" parapet_log
}

printf 'fleet benchmark: pgbench %s -M %s, %s clients in all, %ss per run, load average %s\n' \
  "$TEST" "$MODE" "$CLIENTS" "$DURATION" "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-22s | %8s | %14s %14s\n' run tps "sequenced/s" "published/s"
row() { printf '%-22s | %8s | %14s %14s\n' "$@"; }
row "direct PostgreSQL" "$(bench "$PGPORT" "$CLIENTS" postgres bench)" - -
row "dir log, 1 gateway" "$(bench "$DIRPORT" "$CLIENTS")" - -
for run in 1 3; do
  read -r s0 p0 < <(counters)
  t0=$(date +%s%N)
  if [ "$run" = 1 ]; then
    tps=$(bench "$APORT" "$CLIENTS")
  else
    per=$(( CLIENTS / 3 ))
    bench "$APORT" "$per" > "$WORK/a.tps" &
    b1=$!
    bench "$BPORT" "$per" > "$WORK/b.tps" &
    b2=$!
    bench "$CPORT" "$per" > "$WORK/c.tps" &
    b3=$!
    wait "$b1" "$b2" "$b3"
    tps=$(( $(cat "$WORK/a.tps") + $(cat "$WORK/b.tps") + $(cat "$WORK/c.tps") ))
  fi
  sleep 1 # the integrator publishes what is sequenced within a second
  read -r s1 p1 < <(counters)
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  row "fleet, $run gateway(s)" "$tps" "$(( (s1 - s0) * 1000 / ms ))" "$(( (p1 - p0) * 1000 / ms ))"
done
echo "(sequenced/s and published/s: the fleet log's entries (decisions and session events) over the"
echo " run, the second after it and pgbench's start, from PostgreSQL's counter and committed tree size.)"
