#!/usr/bin/env bash
# Gateway benchmark (not a test): pgbench -S and TPC-B, 1/8/64 clients, -M simple and -M prepared,
# against PostgreSQL direct, PgBouncer (session pooling) and Parapet (default pack, durable audit,
# before_forward and before_reply). Prints TPS, average latency, ratios and audit entries written,
# and for each proxy the CPU time it used per transaction (µs/tx, user + system, all threads): on a
# shared machine TPS moves with the neighbours' load, the proxy's own cost per transaction much less.
#
#   bench/gateway.sh                     # 10 s per run (48 runs)
#   DURATION=5 CLIENTS="1 64" bench/gateway.sh
#   TESTS=select MODES=prepared CLIENTS=64 bench/gateway.sh   # one row: -S, -M prepared, 64 clients
#   UPSTREAM=unix bench/gateway.sh       # PgBouncer and Parapet reach PostgreSQL by Unix socket
#   BENCH_DIR=/var/tmp bench/gateway.sh  # where clusters and audit logs live (default /tmp)
#
# Needs: postgresql (initdb, postgres, pgbench), pgbouncer; builds parapet in release mode unless
# PARAPET=/path/to/parapet is given. Everything runs in a temp dir that is removed at exit.
set -euo pipefail
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 8 64"}
MODES=${MODES:-"simple prepared"}
TESTS=${TESTS:-"select tpcb"}
# How both proxies reach PostgreSQL: tcp (127.0.0.1) or unix (its Unix-domain socket, as a proxy
# running on the database host would). pgbench always connects over TCP.
UPSTREAM=${UPSTREAM:-tcp}
SCALE=${SCALE:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null || { echo "$1 not found; install it with: apt-get install $2" >&2; exit 1; }; }
BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BINDIR/initdb" ] || { echo "PostgreSQL server not found; install it with: apt-get install postgresql postgresql-contrib" >&2; exit 1; }
need pgbouncer pgbouncer
PGBENCH=$BINDIR/pgbench
if [ -z "${PARAPET:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p parapet)
  PARAPET=${CARGO_TARGET_DIR:-$ROOT/target}/release/parapet
fi

# BENCH_DIR: where the clusters and audit logs live (default /tmp). Creating a file costs from
# ~20 us to over 1 ms depending on the directory's inode group on some ext4 file systems; the
# header shows the rate measured here.
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/parapet-bench-XXXXXX")
chmod 711 "$WORK"
mkdir "$WORK/create-probe"
CREATE_T0=$(date +%s%N)
for i in $(seq 300); do : > "$WORK/create-probe/$i"; done
CREATES_PER_S=$(( 300 * 1000000000 / ( $(date +%s%N) - CREATE_T0 ) ))
rm -rf "$WORK/create-probe"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # The postmaster's own pid (PGPID may be runuser's, which does not pass signals on).
  local pm
  pm=$(head -1 "$WORK/data/postmaster.pid" 2>/dev/null || true)
  if [ -n "$pm" ] && kill -INT "$pm" 2>/dev/null; then sleep 2; fi
  [ -z "${PGPID:-}" ] || kill -INT "$PGPID" 2>/dev/null || true
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
  -c max_connections=300 -c shared_buffers=256MB </dev/null >"$WORK/pg.log" 2>&1 &
PGPID=$!
for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.2; done
export PGPASSWORD=$PGPW PGSSLMODE=disable
"$BINDIR/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE bench" postgres
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1

case $UPSTREAM in
  tcp) UPHOST=127.0.0.1; UPURLHOST=127.0.0.1 ;;
  unix) UPHOST=$WORK; UPURLHOST=${WORK//\//%2F} ;; # libpq's form: a percent-encoded directory
  *) echo "UPSTREAM must be tcp or unix" >&2; exit 1 ;;
esac

# PgBouncer, session pooling, SCRAM for clients.
BPORT=$(free_port)
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
main = host=$UPHOST port=$PGPORT dbname=bench user=postgres password=$PGPW
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
echo "\"alice\" \"$PGPW\"" > "$WORK/userlist.txt"
chmod 644 "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
"${AS[@]}" pgbouncer "$WORK/pgbouncer.ini" </dev/null >/dev/null 2>&1 &
PIDS+=($!)

# Parapet: one log per durability mode.
VERIFIER=$(printf '%s\n' "$PGPW" | "$PARAPET" user add alice --groups eng --password-stdin | sed -n 's/^scram = //p')
start_parapet() { # $1 = durability; sets PORT
  local d=$WORK/parapet-$1 port
  port=$(free_port)
  mkdir -p "$d"
  "$PARAPET" log init --dir "$d/log" --origin "bench/$1" --key "$d/log.key" >/dev/null
  cat > "$d/parapet.toml" <<TOML
[log]
dir = "log"
key = "log.key"
durability = "$1"
[listen]
postgres = "127.0.0.1:$port"
[[targets]]
name = "main"
upstream = "postgres://postgres:$PGPW@$UPURLHOST:$PGPORT/bench"
environment = "production"
[[users]]
name = "alice"
scram = $VERIFIER
groups = ["eng"]
[policy]
default_pack = true
TOML
  RUST_LOG=warn "$PARAPET" serve --config "$d/parapet.toml" >"$d/serve.out" 2>"$d/serve.log" &
  PIDS+=($!)
  PPID_LAST=$!
  for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
  PORT=$port
}
start_parapet before_forward; FPORT=$PORT; FPID=$PPID_LAST
start_parapet before_reply; RPORT=$PORT; RPID=$PPID_LAST
BPID=$(cat "$WORK/pgbouncer.pid" 2>/dev/null || echo)
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The checkpoint is published within 50 ms of an acknowledgement (docs/log.md, "Publication").
log_size() { sleep 0.1; sed -n 2p "$WORK/parapet-$1/log/checkpoint" 2>/dev/null || echo 0; }

run() { # target port user test mode clients [pid] -> "tps lat cpu_us_per_tx"
  local port=$2 user=$3 t=$4 m=$5 c=$6 pid=${7:-} args=()
  [ "$t" = select ] && args+=(-S)
  local j=$(( c < 2 ? 1 : 2 ))
  local out c0=0 c1=0
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
  out=$("$PGBENCH" -n -h 127.0.0.1 -p "$port" -U "$user" -M "$m" -c "$c" -j "$j" -T "$DURATION" "${args[@]}" \
        $( [ "$1" = direct ] && echo bench || echo main ) 2>&1) || { echo "0 0 -"; echo "$out" >&2; return; }
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  local tps lat n
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1)
  n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)
  echo "${tps:-0} ${lat:-0} $(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="${n:-0}" -v p="$pid" \
    'BEGIN{ if (p != "" && n > 0) printf "%.0f", d / t * 1e6 / n; else print "-" }')"
}

printf "%s\n" "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'); $(pgbouncer --version | head -1); scale $SCALE; ${DURATION}s per run; proxies reach PostgreSQL by $UPSTREAM; file creation in $WORK: $CREATES_PER_S/s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-7s %-8s %4s | %10s %7s | %10s %7s %5s | %10s %7s %5s %8s | %10s %7s %5s %8s | %6s %6s %6s %6s\n" \
  test mode cl "direct" "ms" "pgbouncer" "ms" "us/tx" "pp-fwd" "ms" "us/tx" "entries" "pp-reply" "ms" "us/tx" "entries" "fwd/d" "fwd/b" "rep/d" "rep/b"
for t in $TESTS; do
  for m in $MODES; do
    for c in $CLIENTS; do
      read -r dt dl _ < <(run direct "$PGPORT" postgres $t $m $c)
      read -r bt bl bu < <(run bouncer "$BPORT" alice $t $m $c "$BPID")
      f0=$(log_size before_forward); read -r ft fl fu < <(run parapet "$FPORT" alice $t $m $c "$FPID"); f1=$(log_size before_forward)
      r0=$(log_size before_reply); read -r rt rl ru < <(run parapet "$RPORT" alice $t $m $c "$RPID"); r1=$(log_size before_reply)
      ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'; }
      printf "%-7s %-8s %4s | %10.0f %7.2f | %10.0f %7.2f %5s | %10.0f %7.2f %5s %8d | %10.0f %7.2f %5s %8d | %6s %6s %6s %6s\n" \
        $t $m $c "$dt" "$dl" "$bt" "$bl" "$bu" "$ft" "$fl" "$fu" $((f1 - f0)) "$rt" "$rl" "$ru" $((r1 - r0)) \
        "$(ratio "$ft" "$dt")" "$(ratio "$ft" "$bt")" "$(ratio "$rt" "$dt")" "$(ratio "$rt" "$bt")"
    done
  done
done
