#!/usr/bin/env bash
# MySQL/MariaDB section of `make bench` (scripts/bench.sh runs it; it also runs alone), issue
# 21's goal: sysbench oltp_read_only at MYSQL_THREADS clients (default 8) through the gateway
# with the shipped default policy, against the same MariaDB direct (goal >= 0.75x).
#   direct    sysbench -> mariadbd (127.0.0.1)
#   relay     sysbench under `interceptor exec` -> 127.0.0.3 -> the same gateway's plain `tcp`
#             target (bytes relayed, nothing parsed, judged or journaled after the connect) ->
#             mariadbd: what one more hop on loopback costs on this machine, the reference
#             for the gateway's own work
#   gateway   sysbench under `interceptor exec` -> 127.0.0.2 -> gateway (journal on, the shipped
#             default policy: reads allowed, every statement judged and journaled, result
#             rows through the detectors) -> mariadbd, logging in as `app` with the password
#             from the target's credentials (sysbench sends a throw-away one)
# Upstream: the run's own mariadbd (Debian's MariaDB 10.11, private datadir, no option files).
# sysbench's defaults otherwise: server-side prepared statements (COM_STMT_PREPARE/EXECUTE,
# mirrored by the gateway), each transaction BEGIN, 14 SELECTs, COMMIT.
# MYSQL_ROUNDS rounds (default 3) alternate the paths; medians go to $BENCH_DOC between the
# mysql-bench markers, the ratio to the summary. Loopback only; each run is bounded by
# MYSQL_SECONDS of load and a `timeout`.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init mysql
ROUNDS="${MYSQL_ROUNDS:-$(sized 3 1)}"
THREADS="${MYSQL_THREADS:-8}"
SECONDS_EACH="${MYSQL_SECONDS:-$(sized 10 2)}"
TABLES="${MYSQL_TABLES:-$(sized 4 1)}"
TABLE_SIZE="${MYSQL_TABLE_SIZE:-$(sized 10000 100)}"
command -v sysbench >/dev/null || { say "sysbench missing: run scripts/bootstrap.sh"; exit 1; }

PORT="$(free_port 127.0.0.1)"
DATA="$WORK/data"
mkdir -p "$WORK/files"
mariadb-install-db --no-defaults --datadir="$DATA" --user=root \
  --auth-root-authentication-method=socket --skip-test-db >"$WORK/install.log" 2>&1
bench_spawn /usr/sbin/mariadbd --no-defaults --datadir="$DATA" --socket="$WORK/mysqld.sock" \
  --port="$PORT" --bind-address=127.0.0.1 --user=root --pid-file="$WORK/mysqld.pid" \
  --log-error="$WORK/error.log" --skip-log-bin --innodb-buffer-pool-size=128M \
  --max-connections=200 --secure-file-priv="$WORK/files"
wait_listening "127.0.0.1:$PORT"
root_sql() { mariadb --no-defaults --socket="$WORK/mysqld.sock" -u root -e "$1"; }
PASSWORD="bench-$RANDOM$RANDOM"
root_sql "CREATE DATABASE sbtest; CREATE USER 'app'@'%' IDENTIFIED VIA mysql_native_password \
  USING PASSWORD('$PASSWORD'); GRANT ALL ON sbtest.* TO 'app'@'%';"
echo -n "$PASSWORD" >"$WORK/password"
chmod 600 "$WORK/password"

common=(oltp_read_only --db-driver=mysql --mysql-user=app --mysql-db=sbtest
  --tables="$TABLES" --table-size="$TABLE_SIZE")
say "sysbench prepare ($TABLES tables of $TABLE_SIZE rows)"
sysbench "${common[@]}" --mysql-host=127.0.0.1 --mysql-port="$PORT" \
  --mysql-password="$PASSWORD" prepare >"$WORK/prepare.log" 2>&1

cat >"$WORK/gateway.toml" <<CONF
$(gateway_common_config)
[[target]]
name = "sbtest"
protocol = "mysql"
intercept = ["127.0.0.2:$PORT"]
upstream = "127.0.0.1:$PORT"
policy = "$BENCH_ROOT/policies/default.toml"
[target.credentials]
user = "app"
password_file = "$WORK/password"

[[target]]
name = "sbtest-relay"
protocol = "tcp"
intercept = ["127.0.0.3:$PORT"]
upstream = "127.0.0.1:$PORT"
policy = "$BENCH_ROOT/policies/default.toml"
CONF

run() { # path
  local limit=$((SECONDS_EACH + 60)) out
  local flags=(--threads="$THREADS" --time="$SECONDS_EACH" --events=0 --percentile=99 run)
  if [ "$1" = direct ]; then
    out="$(timeout "$limit" sysbench "${common[@]}" --mysql-host=127.0.0.1 --mysql-port="$PORT" \
      --mysql-password="$PASSWORD" "${flags[@]}" 2>&1)" || true
  elif [ "$1" = relay ]; then
    out="$(BENCH_TIMEOUT=$limit in_gateway "$WORK/gateway.toml" sysbench "${common[@]}" \
      --mysql-host=127.0.0.3 --mysql-port="$PORT" --mysql-password="$PASSWORD" \
      "${flags[@]}" 2>&1)" || true
  else
    out="$(BENCH_TIMEOUT=$limit in_gateway "$WORK/gateway.toml" sysbench "${common[@]}" \
      --mysql-host=127.0.0.2 --mysql-port="$PORT" --mysql-password=not-the-password \
      "${flags[@]}" 2>&1)" || true
  fi
  local tps p99 errors
  tps="$(echo "$out" | sed -n 's/^ *transactions: *[0-9]* *(\([0-9.]*\) per sec.*/\1/p' | head -n1)"
  p99="$(echo "$out" | sed -n 's/^ *99th percentile: *\([0-9.]*\).*/\1/p' | head -n1)"
  errors="$(echo "$out" | sed -n 's/^ *ignored errors: *\([0-9]*\).*/\1/p' | head -n1)"
  [ -n "$tps" ] || { say "$1 failed:"; echo "$out" | tail -n 8 >&2; }
  echo "$1 ${tps:-0} ${p99:-0} ${errors:-0}" >>"$WORK/results"
}
for i in $(seq "$ROUNDS"); do
  for path in direct relay gateway; do
    say "round $i/$ROUNDS, $path, $THREADS threads, ${SECONDS_EACH}s"
    run "$path"
  done
done

bench_python "$WORK" "$ROUNDS" "$THREADS" "$SECONDS_EACH" "$TABLES" "$TABLE_SIZE" <<'PY'
work, rounds, threads, seconds, tables, size = sys.argv[1:7]
runs = {}
for line in open(os.path.join(work, "results")):
    path, tps, p99, errors = line.split()
    if float(tps) > 0:
        runs.setdefault(path, []).append((float(tps), float(p99), int(errors)))
def fig(path, k):
    rs = runs.get(path)
    return median([r[k] for r in rs]) if rs else None
rows = ["| path | transactions/s | ratio to direct | latency p99 (ms) | runs |", "|---|---|---|---|---|"]
tps = {}
for path, label in [("direct", "direct to MariaDB"),
                    ("relay", "through the gateway's plain `tcp` relay (nothing parsed)"),
                    ("gateway", "through the gateway (default policy, journal on)")]:
    t = fig(path, 0)
    if t is None:
        rows.append(f"| {label} | failed | | | 0 of {rounds} |")
        continue
    tps[path] = t
    ratio = f"{t / tps['direct']:.2f}×" if "direct" in tps else ""
    rows.append(f"| {label} | {t:,.0f} | {ratio} | {fig(path, 1):.2f} | {len(runs[path])} of {rounds} |")
cmd = (f"`scripts/bench-mysql.sh` (MYSQL_ROUNDS={rounds} MYSQL_THREADS={threads} "
       f"MYSQL_SECONDS={seconds} MYSQL_TABLES={tables} MYSQL_TABLE_SIZE={size}): `sysbench "
       f"oltp_read_only --threads={threads} --time={seconds}` against the run's mariadbd, "
       "direct on 127.0.0.1 and under `interceptor exec` through 127.0.0.2")
section = section_header(
    "MySQL (issue 21)", cmd,
    f"Median of {rounds} rounds (paths alternate). MariaDB 10.11 (Debian), sysbench 1.0 "
    f"(Debian), {tables} table(s) of {size} rows; server-side prepared statements, each "
    "transaction BEGIN, 14 SELECTs, COMMIT.",
    "Gateway: `interceptor exec`, a `mysql` target (127.0.0.2 → 127.0.0.1), journal on (each "
    "statement committed before the server sees it), the shipped default policy (reads allowed, "
    "result rows through the detectors), the gateway logging in as `app` with its own password. "
    "Relay: the same gateway's `tcp` target, the cost of one more loopback hop alone.",
    "Goal (issue 21): ≥ 0.75× of direct at 8 clients.")
write_section("mysql-bench", section + rows)
ok = "direct" in tps and "gateway" in tps
ratio = tps["gateway"] / tps["direct"] if ok else 0
goal("mysql-oltp-read-only", f"sysbench oltp_read_only, {threads} clients, gateway vs direct",
     f"{ratio:.2f}× ({tps['gateway']:,.0f} tps)" if ok else "failed", "≥ 0.75× (issue 21)",
     ok and ratio >= 0.75)
PY
