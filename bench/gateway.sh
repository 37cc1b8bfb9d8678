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
#   CONSOLE=off bench/gateway.sh         # Parapet without its console (default: console on)
#   CONSOLE_COST=0 bench/gateway.sh      # skip the console-cost table (pgbench -S with the
#                                        # console on and off, and how far its index lags)
#   LIMIT_COST=0 bench/gateway.sh        # skip the row-limit table (TPC-B with every write under
#                                        # a @max_rows rule, and without; LIMIT_CLIENTS="1 8")
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
CONSOLE=${CONSOLE:-on}
CONSOLE_COST=${CONSOLE_COST:-1}
LIMIT_COST=${LIMIT_COST:-1}
LIMIT_CLIENTS=${LIMIT_CLIENTS:-"1 8"}
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
CTOKEN=$("$PARAPET" console token --name bench --role auditor | sed -n 1p)
CSHA=$(printf %s "$CTOKEN" | sha256sum | cut -d' ' -f1)
start_parapet() { # $1 = durability, $2 = console on|off, $3 = instance name, $4 = extra policy file; sets PORT, CPORT
  local name=${3:-$1}
  local d=$WORK/parapet-$name port
  port=$(free_port)
  CPORT=$(free_port)
  mkdir -p "$d"
  "$PARAPET" log init --dir "$d/log" --origin "bench/$name" --key "$d/log.key" >/dev/null
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
  if [ -n "${4:-}" ]; then
    printf 'files = ["%s"]\n' "$4" >> "$d/parapet.toml"
  fi
  if [ "${2:-$CONSOLE}" = on ]; then
    cat >> "$d/parapet.toml" <<TOML
[console]
listen = "127.0.0.1:$CPORT"
[[console.tokens]]
name = "bench"
role = "auditor"
sha256 = "$CSHA"
TOML
  fi
  RUST_LOG=warn "$PARAPET" serve --config "$d/parapet.toml" >"$d/serve.out" 2>"$d/serve.log" &
  PIDS+=($!)
  PPID_LAST=$!
  for _ in $(seq 100); do "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
  PORT=$port
}
start_parapet before_forward "$CONSOLE"; FPORT=$PORT; FPID=$PPID_LAST; FCPORT=$CPORT
start_parapet before_reply "$CONSOLE"; RPORT=$PORT; RPID=$PPID_LAST
if [ "$CONSOLE_COST" = 1 ]; then
  start_parapet before_forward on with-console; WPORT=$PORT; WPID=$PPID_LAST; WCPORT=$CPORT
  start_parapet before_forward off no-console; NPORT=$PORT; NPID=$PPID_LAST
fi
if [ "$LIMIT_COST" = 1 ]; then
  # Every write of TPC-B under a row limit it never reaches (each changes one row).
  cat > "$WORK/limits.cedar" <<'CEDAR'
@id("bench.small-writes")
@reason("a TPC-B write changes one row")
@max_rows("1000")
forbid (principal, action, resource)
when { context.kinds.containsAny(["update", "insert", "delete"]) };
CEDAR
  chmod 644 "$WORK/limits.cedar"
  start_parapet before_forward off limited "$WORK/limits.cedar"; LPORT=$PORT; LPID=$PPID_LAST
  start_parapet before_forward off unlimited; UPORT=$PORT; UNPID=$PPID_LAST
fi
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
  out=$("$PGBENCH" -n -h 127.0.0.1 -p "$port" -U "$user" -M "$m" -c "$c" -j "$j" -T "$DURATION" "${args[@]}" ${EXTRA:-} \
        $( [ "$1" = direct ] && echo bench || echo main ) 2>&1) || { echo "0 0 -"; echo "$out" >&2; return; }
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  local tps lat n
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1)
  n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)
  echo "${tps:-0} ${lat:-0} $(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="${n:-0}" -v p="$pid" \
    'BEGIN{ if (p != "" && n > 0) printf "%.0f", d / t * 1e6 / n; else print "-" }')"
}

printf "%s\n" "console: $CONSOLE; machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'); $(pgbouncer --version | head -1); scale $SCALE; ${DURATION}s per run; proxies reach PostgreSQL by $UPSTREAM; file creation in $WORK: $CREATES_PER_S/s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
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

# The console's cost: pgbench -S, 64 clients, through two identical before_forward gateways, one
# with the console (indexing every entry as it is published) and one without, in turns (ABBA) so
# drift in the machine's speed falls on both. While the console's gateway runs, its index lag is
# sampled every 0.2 s; the index delay (publication to searchable) comes from its histogram.
if [ "$CONSOLE_COST" = 1 ]; then
  metric() { curl -sf -H "Authorization: Bearer $CTOKEN" "http://127.0.0.1:$WCPORT/metrics"; }
  delay_buckets() { metric | sed -n 's/^parapet_index_delay_seconds_bucket{le="\([^"]*\)"} \([0-9]*\)/\1 \2/p'; }
  echo
  echo "console cost: pgbench -S, 64 clients, ${DURATION}s per run, with and without the console (ABBA)"
  printf "%-11s | %10s %10s %10s %10s | %6s | %10s %12s %14s\n" mode "with-1" "without-1" "without-2" "with-2" "ratio" "max lag" "delay p99 ≤" "delay max ≤"
  # One run of pgbench -S on the console's gateway, its lag sampled: "tps maxlag p99 max".
  measured() { # mode
    local b0 b1 lagfile=$WORK/lag-$1 tps p99 pmax
    b0=$(delay_buckets)
    : > "$lagfile"
    ( while :; do metric | sed -n 's/^parapet_index_lag_entries \([0-9]*\)/\1/p' >> "$lagfile"; sleep 0.2; done ) &
    local sampler=$!
    read -r tps _ _ < <(run parapet "$WPORT" alice select "$1" 64 "$WPID")
    # Let the index catch up, so the delay histogram holds every entry of the run.
    for _ in $(seq 600); do
      [ "$(metric | sed -n 's/^parapet_index_lag_entries \([0-9]*\)/\1/p')" = 0 ] && break; sleep 0.2
    done
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null || true
    b1=$(delay_buckets)
    read -r p99 pmax < <(python3 - "$b0" "$b1" <<'PY'
import sys
def parse(t):
    return [(l.split()[0], int(l.split()[1])) for l in t.splitlines() if l.strip()]
a, b = dict(parse(sys.argv[1])), parse(sys.argv[2])
d = [(le, n - a.get(le, 0)) for le, n in b]
total = d[-1][1] if d else 0
p99 = next((le for le, n in d if total and n >= 0.99 * total), "-")
mx = next((le for le, n in d if total and n >= total), "-")
print(p99, mx)
PY
)
    echo "$tps $(sort -n "$lagfile" | tail -1) $p99 $pmax"
  }
  for m in $MODES; do
    read -r w1 lag1 p991 max1 < <(measured $m)
    read -r n1 _ _ < <(run parapet "$NPORT" alice select $m 64 "$NPID")
    read -r n2 _ _ < <(run parapet "$NPORT" alice select $m 64 "$NPID")
    read -r w2 lag2 p992 max2 < <(measured $m)
    printf "%-11s | %10.0f %10.0f %10.0f %10.0f | %6s | %10s %12s %14s\n" $m "$w1" "$n1" "$n2" "$w2" \
      "$(awk -v a="$w1" -v b="$w2" -v c="$n1" -v d="$n2" 'BEGIN{ if (c + d > 0) printf "%.3f", (a + b) / (c + d); else print "-" }')" \
      "$(( lag1 > lag2 ? lag1 : lag2 ))" "${p992}s" "${max2}s"
    # The same at a fixed rate (RATE_SHARE % of the rate without the console): the lag when
    # the machine has CPU to spare for indexing.
    rate=$(awk -v a="$n1" -v b="$n2" -v s="${RATE_SHARE:-50}" 'BEGIN{ printf "%d", (a + b) / 2 * s / 100 }')
    read -r r lagr p99r maxr < <(EXTRA="-R $rate" measured $m)
    printf "%-11s | %10.0f %10s %10s %10s | %6s | %10s %12s %14s\n" "$m -R" "$r" "(-R $rate)" "" "" "" "$lagr" "${p99r}s" "${maxr}s"
  done
fi

# The cost of row limits: TPC-B through two identical before_forward gateways (no console), one
# with every write under a @max_rows rule (simple protocol: a savepoint per write inside the
# script's block; extended: the Execute awaited alone), one without, in turns (ABBA).
if [ "$LIMIT_COST" = 1 ]; then
  echo
  echo "row limits: TPC-B, ${DURATION}s per run, every write under @max_rows (limited) and not (ABBA)"
  printf "%-9s %4s | %10s %10s %10s %10s | %6s | %8s %8s\n" mode cl "limited-1" "plain-1" "plain-2" "limited-2" "ratio" "us/tx L" "us/tx P"
  for m in $MODES; do
    for c in $LIMIT_CLIENTS; do
      read -r l1 _ lu1 < <(run parapet "$LPORT" alice tpcb $m $c "$LPID")
      read -r p1 _ pu1 < <(run parapet "$UPORT" alice tpcb $m $c "$UNPID")
      read -r p2 _ pu2 < <(run parapet "$UPORT" alice tpcb $m $c "$UNPID")
      read -r l2 _ lu2 < <(run parapet "$LPORT" alice tpcb $m $c "$LPID")
      printf "%-9s %4s | %10.0f %10.0f %10.0f %10.0f | %6s | %8s %8s\n" $m $c "$l1" "$p1" "$p2" "$l2" \
        "$(awk -v a="$l1" -v b="$l2" -v c="$p1" -v d="$p2" 'BEGIN{ if (c + d > 0) printf "%.3f", (a + b) / (c + d); else print "-" }')" \
        "$(awk -v a="$lu1" -v b="$lu2" 'BEGIN{ printf "%.0f", (a + b) / 2 }')" "$(awk -v a="$pu1" -v b="$pu2" 'BEGIN{ printf "%.0f", (a + b) / 2 }')"
    done
  done
fi
