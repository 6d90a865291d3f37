#!/usr/bin/env bash
# PostgreSQL section of `make bench` (scripts/bench.sh runs it; it also runs alone).
#
# pgbench -S (select only) and the default TPC-B-like script, PGBENCH_CLIENTS clients (default
# 1, 8 and 32), PGBENCH_SECONDS each (default 10), on four paths to the run's PostgreSQL:
#   direct       pgbench -> postgres
#   pgbouncer    pgbench -> pgbouncer (session pooling) -> postgres
#   interceptor  pgbench (under `interceptor exec`) -> gateway (journal on, allow-all policy
#                policies/examples/journal-only.toml) -> postgres
#   policy       the same with the shipped default policy (journal and masking on); for TPC-B a
#                copy of it whose SQL rule `writes-need-review` (writes wait for a human) allows
#   threads2     interceptor, allow-all, on two worker threads (`[proxy] worker_threads = 2`)
#                instead of the default one: pgbench -S at 8 clients only, reported against the
#                allow-all path of the same run (issue 22: the runtime layout, by measurement)
# Writes TPS, ratio to direct and p50/p99 latency (and what each path adds) to $BENCH_DOC
# between the pg-bench markers, and the 8-client goals to the summary. Loopback only; every
# run is time-bounded.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init pg
SECONDS_EACH="${PGBENCH_SECONDS:-$(sized 10 1)}"
SCALE="${PGBENCH_SCALE:-$(sized 5 1)}"
CLIENTS="${PGBENCH_CLIENTS:-$(sized "1 8 32" 8)}"
MAX_CLIENTS="$(printf '%s\n' $CLIENTS | sort -n | tail -n 1)"

pg_ensure
say "pgbench -i -s $SCALE"
pgbench -h 127.0.0.1 -p "$BENCH_PGPORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1
bouncer_start "$MAX_CLIENTS"

gateway_config "$BENCH_ROOT/policies/examples/journal-only.toml" >"$WORK/allow.toml"
{ cat "$WORK/allow.toml"; printf '[proxy]\nworker_threads = 2\n'; } >"$WORK/allow-threads2.toml"
gateway_config "$BENCH_ROOT/policies/default.toml" >"$WORK/policy-select.toml"
gateway_config "$(writes_allowed_policy)" >"$WORK/policy-tpcb.toml"

run() { # path script clients
  local path=$1 script=$2 clients=$3 host=127.0.0.1 port=$BENCH_PGPORT
  local limit=$((SECONDS_EACH + 60))
  local wrap=(timeout "$limit")
  case $path in
    pgbouncer) port=$BOUNCER_PORT ;;
    interceptor) host=127.0.0.2 wrap=(in_gateway "$WORK/allow.toml") ;;
    threads2) host=127.0.0.2 wrap=(in_gateway "$WORK/allow-threads2.toml") ;;
    policy) host=127.0.0.2 wrap=(in_gateway "$WORK/policy-$script.toml") ;;
  esac
  local log="$WORK/log-$path-$script-$clients"
  local flags=(-n -T "$SECONDS_EACH" -c "$clients" -j "$((clients < 2 ? clients : 2))" -l --log-prefix "$log")
  [ "$script" = select ] && flags+=(-S)
  rm -f "$log".*
  say "$path $script $clients client(s), ${SECONDS_EACH}s"
  local out
  # A failed run (e.g. statements a policy refuses) is reported as 0 TPS, not a crash.
  out="$(cd "$WORK" && BENCH_TIMEOUT=$limit "${wrap[@]}" \
    pgbench -h "$host" -p "$port" -U postgres "${flags[@]}" bench 2>&1)" || true
  local tps
  tps="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)"
  [ -n "$tps" ] || echo "$out" | tail -n 5 >&2
  echo "$path $script $clients ${tps:-0}" >>"$WORK/results"
}

for script in select tpcb; do
  for clients in $CLIENTS; do
    for path in direct pgbouncer interceptor policy; do
      run "$path" "$script" "$clients"
    done
    if [ "$script" = select ] && [ "$clients" = 8 ]; then
      run threads2 "$script" "$clients"
    fi
  done
done

bench_python "$WORK" "$SECONDS_EACH" "$SCALE" "$CLIENTS" <<'PY'
work, secs, scale, clients = sys.argv[1], sys.argv[2], sys.argv[3], [int(c) for c in sys.argv[4].split()]
tps = {}
for line in open(os.path.join(work, "results")):
    path, script, n, value = line.split()
    tps[(path, script, int(n))] = float(value or 0)
def latencies(path, script, n):
    vals = []
    for f in glob.glob(os.path.join(work, f"log-{path}-{script}-{n}.*")):
        for row in open(f):
            parts = row.split()
            if len(parts) > 2:
                vals.append(int(parts[2]))  # microseconds
    vals.sort()
    if not vals:
        return (0.0, 0.0)
    pick = lambda q: vals[min(len(vals) - 1, int(q * len(vals)))] / 1000.0
    return (pick(0.50), pick(0.99))
names = {"select": "pgbench -S", "tpcb": "pgbench TPC-B-like"}
paths = [("direct", "direct"), ("pgbouncer", "pgbouncer"), ("interceptor", "interceptor, allow-all"),
         ("policy", "interceptor, default policy")]
rows = []
for script in ("select", "tpcb"):
    for n in clients:
        d = tps.get(("direct", script, n)) or 1.0
        dl = latencies("direct", script, n)
        for path, label in paths:
            t = tps.get((path, script, n), 0.0)
            p50, p99 = latencies(path, script, n)
            added = f"+{p50 - dl[0]:.3f} / +{p99 - dl[1]:.3f}" if path != "direct" else "-"
            rows.append(f"| {script} | {n} | {label} | {t:,.0f} | {t / d:.2f}x | {p50:.3f} / {p99:.3f} | {added} |")
        b = tps.get(("pgbouncer", script, n), 0.0) / d
        for path, label in paths[2:]:
            r = tps.get((path, script, n), 0.0) / d
            ok = r >= b and (n != 8 or r >= 0.75)
            rows.append(f"| {script} | {n} | **goal**, {label} | | {r:.2f}x vs pgbouncer {b:.2f}x"
                        f"{', >= 0.75x' if n == 8 else ''} | | {met(ok)} |")
            if n == 8:
                goal(f"pg-{script}-{path}", f"{names[script]}, 8 clients, {label} vs direct",
                     f"{r:.2f}× ({tps.get((path, script, n), 0.0):,.0f} TPS; pgbouncer {b:.2f}×; "
                     f"p50/p99 {latencies(path, script, n)[0]:.2f}/{latencies(path, script, n)[1]:.2f} ms)",
                     "≥ pgbouncer's ratio and ≥ 0.75×", ok)
        if script == "select" and n == 8 and ("threads2", script, n) in tps:
            t = tps[("threads2", script, n)]
            p50, p99 = latencies("threads2", script, n)
            one = tps.get(("interceptor", script, n)) or 1.0
            rows.append(f"| {script} | {n} | interceptor, allow-all, 2 worker threads | {t:,.0f} | "
                        f"{t / d:.2f}x ({t / one:.2f}x of 1 thread) | {p50:.3f} / {p99:.3f} | "
                        f"+{p50 - dl[0]:.3f} / +{p99 - dl[1]:.3f} |")
            goal("pg-threads", "pgbench -S, 8 clients, allow-all, 2 worker threads vs 1 (issue 22)",
                 f"{t / one:.2f}× ({t:,.0f} against {one:,.0f} TPS)", "none (reported)", None)
        if script == "select" and n == 8:
            allow = tps.get(("interceptor", script, n)) or 1.0
            within = tps.get(("policy", script, n), 0.0) / allow
            goal("pg-policy-cost", "pgbench -S, 8 clients, default policy vs allow-all through the interceptor",
                 f"{within:.2f}×", "≥ 0.90× (issue 4)", within >= 0.9)
cmd = (f"`scripts/bench-pg.sh` (PGBENCH_SECONDS={secs} PGBENCH_SCALE={scale} "
       f"PGBENCH_CLIENTS=\"{' '.join(map(str, clients))}\"): `pgbench -n -T {secs} -c C -j min(C,2) -l [-S] bench`")
section = section_header(
    "PostgreSQL (issues 3 and 9)", cmd,
    "PostgreSQL 15 on 127.0.0.1, fsync and synchronous_commit off; pgbouncer in session mode",
    "interceptor, allow-all: `interceptor exec` with a postgres target, journal on, `policies/examples/journal-only.toml`",
    "interceptor, default policy: `policies/default.toml` (journal and masking on); for TPC-B a copy in which "
    "the SQL rule `writes-need-review` (writes wait for a human) reads `decision = \"allow\"`",
    "interceptor, allow-all, 2 worker threads: the allow-all gateway with `[proxy] worker_threads = 2` "
    "(pgbench -S, 8 clients only)",
    "Goal: the interceptor's ratio to direct at least pgbouncer's, and at 8 clients at least 0.75x",
)
section += ["| script | clients | path | TPS | ratio to direct | latency p50 / p99 (ms) | added p50 / p99 (ms) |",
            "|---|---|---|---|---|---|---|"] + rows
write_section("pg-bench", section)
PY
