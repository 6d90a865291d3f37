#!/usr/bin/env bash
# PostgreSQL through the gateway vs direct vs pgbouncer, all in one run (part of `make bench`).
#
# pgbench -S (select only) and the default TPC-B-like script, 1 and 8 clients, PGBENCH_SECONDS
# each (default 20), on three paths to one throw-away PostgreSQL on loopback:
#   direct       pgbench -> postgres
#   pgbouncer    pgbench -> pgbouncer (session pooling) -> postgres
#   interceptor  pgbench (under `interceptor exec`) -> gateway (journal on, journal-only policy) -> postgres
#   policy       the same with the shipped default policy (select only: it sends writes to review)
# Writes TPS, ratio to direct, and p50/p99 latency (and what the path adds) to
# docs/performance.md between the pg-bench markers. Loopback only; every run is time-bounded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
export PATH="$HOME/.cargo/bin:$PATH"
SECONDS_EACH="${PGBENCH_SECONDS:-20}"
SCALE="${PGBENCH_SCALE:-5}"
PGBIN=/usr/lib/postgresql/15/bin
BIN="${INTERCEPTOR_BIN:-$ROOT/target/release/interceptor}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q -p interceptor)

WORK="$(mktemp -d /tmp/interceptor-pgbench.XXXXXX)"
chown postgres "$WORK"
cleanup() {
  [ -f "$WORK/bouncer.pid" ] && kill "$(cat "$WORK/bouncer.pid")" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT="$(free_port)"
BOUNCER_PORT="$(free_port)"

echo "bench-pg: starting postgres on 127.0.0.1:$PGPORT" >&2
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" --auth=trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
max_connections = 50
fsync = off
synchronous_commit = off
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE bench" >/dev/null
pgbench -h 127.0.0.1 -p "$PGPORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1

cat >"$WORK/bouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
pidfile = $WORK/bouncer.pid
logfile = $WORK/bouncer.log
CONF
echo '"postgres" ""' >"$WORK/users.txt"
chown postgres "$WORK"/bouncer.ini "$WORK"/users.txt
runuser -u postgres -- pgbouncer -d "$WORK/bouncer.ini"
sleep 0.5

cat >"$WORK/gateway.toml" <<CONF
[journal]
path = "$WORK/journal.db"
[state]
dir = "$WORK/state"
[[target]]
name = "bench"
protocol = "postgres"
intercept = ["127.0.0.2:$PGPORT"]
upstream = "127.0.0.1:$PGPORT"
policy = "$ROOT/policies/examples/journal-only.toml"
CONF
sed -e "s|^policy = .*|policy = \"$ROOT/policies/default.toml\"|" "$WORK/gateway.toml" >"$WORK/policy.toml"

run() { # path script clients
  local path=$1 script=$2 clients=$3 host=127.0.0.1 port=$PGPORT wrap=()
  case $path in
    pgbouncer) port=$BOUNCER_PORT ;;
    interceptor) host=127.0.0.2; wrap=("$BIN" --config "$WORK/gateway.toml" exec --user root --) ;;
    policy) host=127.0.0.2; wrap=("$BIN" --config "$WORK/policy.toml" exec --user root --) ;;
  esac
  local flags=(-n -T "$SECONDS_EACH" -c "$clients" -j "$(( clients < 2 ? clients : 2 ))" -l --log-prefix "$WORK/log-$path-$script-$clients")
  [ "$script" = select ] && flags+=(-S)
  rm -f "$WORK"/log-"$path-$script-$clients"*
  echo "bench-pg: $path $script $clients client(s), ${SECONDS_EACH}s" >&2
  local out
  # A failed run (e.g. statements a policy refuses) is reported as 0 TPS, not a crash.
  out="$(cd "$WORK" && "${wrap[@]}" pgbench -h "$host" -p "$port" -U postgres "${flags[@]}" bench 2>&1)" || true
  local tps
  tps="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)"
  echo "$path $script $clients ${tps:-0}" >>"$WORK/results"
}

for script in select tpcb; do
  for clients in 1 8; do
    for path in direct pgbouncer interceptor; do
      run "$path" "$script" "$clients"
    done
    [ "$script" = select ] && run policy "$script" "$clients"
  done
done

/usr/bin/python3 - "$WORK" "$ROOT/docs/performance.md" "$SECONDS_EACH" "$SCALE" <<'PY'
import glob, os, sys, datetime, platform
work, doc, secs, scale = sys.argv[1:5]
tps = {}
for line in open(os.path.join(work, "results")):
    path, script, clients, value = line.split()
    tps[(path, script, int(clients))] = float(value or 0)
def latencies(path, script, clients):
    vals = []
    for f in glob.glob(os.path.join(work, f"log-{path}-{script}-{clients}*")):
        for row in open(f):
            parts = row.split()
            if len(parts) > 2:
                vals.append(int(parts[2]))  # microseconds
    vals.sort()
    if not vals:
        return (0.0, 0.0)
    pick = lambda q: vals[min(len(vals) - 1, int(q * len(vals)))] / 1000.0
    return (pick(0.50), pick(0.99))
rows = []
goal_ok = True
for script in ("select", "tpcb"):
    for clients in (1, 8):
        d = tps[("direct", script, clients)] or 1.0
        dl = latencies("direct", script, clients)
        for path in ("direct", "pgbouncer", "interceptor"):
            t = tps[(path, script, clients)]
            p50, p99 = latencies(path, script, clients)
            ratio = t / d
            added = f"+{p50 - dl[0]:.3f} / +{p99 - dl[1]:.3f}" if path != "direct" else "-"
            rows.append(f"| {script} | {clients} | {path} | {t:,.0f} | {ratio:.2f}x | {p50:.3f} / {p99:.3f} | {added} |")
        i = tps[("interceptor", script, clients)] / d
        b = tps[("pgbouncer", script, clients)] / d
        met = i >= b and (clients != 8 or i >= 0.75)
        goal_ok &= met
        rows.append(f"| {script} | {clients} | **goal** | | interceptor {i:.2f}x vs pgbouncer {b:.2f}x{', >= 0.75x' if clients == 8 else ''} | | {'met' if met else 'not met'} |")
        if ("policy", script, clients) in tps:
            t = tps[("policy", script, clients)]
            p50, p99 = latencies("policy", script, clients)
            rows.append(f"| {script} | {clients} | interceptor + default policy | {t:,.0f} | {t / d:.2f}x | {p50:.3f} / {p99:.3f} | +{p50 - dl[0]:.3f} / +{p99 - dl[1]:.3f} |")
            within = t >= 0.9 * tps[("interceptor", script, clients)]
            rows.append(f"| {script} | {clients} | **goal (policy)** | | default policy {t / tps[('interceptor', script, clients)]:.2f}x of journal-only, >= 0.90x | | {'met' if within else 'not met'} |")
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
section = [
    "<!-- pg-bench:start (written by scripts/bench-pg.sh) -->",
    "## PostgreSQL (issue 3)",
    "",
    f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    f"- Machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; PostgreSQL 15, fsync off",
    f"- Command: `make bench` (scripts/bench-pg.sh; PGBENCH_SECONDS={secs}, PGBENCH_SCALE={scale}); `pgbench -n -T {secs} -c C -j min(C,2)` with `-S` for select",
    "- interceptor: `interceptor exec` with a postgres target, journal on, `policies/examples/journal-only.toml`; \"+ default policy\": `policies/default.toml`; pgbouncer: session pooling",
    "",
    "| script | clients | path | TPS | ratio to direct | latency p50 / p99 (ms) | added p50 / p99 (ms) |",
    "|---|---|---|---|---|---|---|",
] + rows + ["<!-- pg-bench:end -->"]
text = open(doc).read() if os.path.exists(doc) else "# Performance\n"
start, end = "<!-- pg-bench:start", "<!-- pg-bench:end -->"
if start in text and end in text:
    a = text.index(start); b = text.index(end) + len(end)
    text = text[:a] + "\n".join(section) + text[b:]
else:
    text = text.rstrip() + "\n\n" + "\n".join(section) + "\n"
open(doc, "w").write(text)
print("\n".join(section))
PY
