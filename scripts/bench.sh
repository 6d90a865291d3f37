#!/usr/bin/env bash
# `make bench`: every performance goal measured side by side in one bounded run (under 10
# minutes on 2 cores), written to docs/performance.md: a summary table at the top (machine,
# date, exact commands, and per goal the figure, the goal and met or not), each section's
# details below it. Never part of `make test`.
#
# One throw-away PostgreSQL serves every section; each section is its own script (it can run
# alone), sharing scripts/bench-lib.sh:
#   capture  scripts/bench-capture.sh  connect() hook overhead, connection setup, TCP bulk relay
#   pg       scripts/bench-pg.sh       pgbench -S and TPC-B, 1/8/32 clients, direct, pgbouncer,
#                                      interceptor allow-all, interceptor default policy
#   bulk     scripts/bench-bulk.sh     1M-row SELECT and ~100 MB COPY, with and without masking
#   http     scripts/bench-http.sh     HTTP requests/s (8 keep-alive connections, small JSON) and
#                                      large masked JSON bodies, direct and through the gateway
#   ssh      scripts/bench-ssh.sh      scp of 256 MiB and exec round-trips/s, direct to sshd and
#                                      through the gateway
#   mysql    scripts/bench-mysql.sh    sysbench oltp_read_only, 8 clients, direct to MariaDB and
#                                      through the gateway (default policy)
#   memory   scripts/bench-memory.sh   gateway RSS idle and with 1,000 idle sessions
#   micro    scripts/bench-micro.sh    criterion: policy verdicts, masking engine, journal appends
#
# BENCH_SECTIONS picks sections (default: all, in that order). BENCH_SMOKE=1 (`make
# bench-smoke`) runs everything with tiny counts and debug binaries in about a minute and
# writes to a copy of docs/performance.md ($BENCH_DOC, else one in the work directory that is
# printed and removed). INTERCEPTOR_BIN and LOADGEN override the binaries; each section lists
# its own knobs. Loopback only; every workload is bounded in count and time; the EXIT traps stop
# every process and remove every directory the run started, also on failure.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init run
SECTIONS="${BENCH_SECTIONS:-capture pg bulk http ssh mysql memory micro}"
export BENCH_COMMAND="${BENCH_COMMAND:-$(smoke && echo "BENCH_SMOKE=1 ")scripts/bench.sh}"
STARTED="$(date +%s)"
LOAD_BEFORE="$(cut -d' ' -f1 /proc/loadavg)"
: >"$BENCH_SUMMARY"

case " $SECTIONS " in *" pg "* | *" bulk "* | *" memory "*) pg_ensure ;; esac
FAILED=()
for section in $SECTIONS; do
  say "section $section"
  if ! bash "$BENCH_ROOT/scripts/bench-$section.sh"; then
    say "section $section FAILED"
    FAILED+=("$section")
  fi
done

bench_python "$BENCH_COMMAND" "$STARTED" "$LOAD_BEFORE" "$(cut -d' ' -f1 /proc/loadavg)" "${FAILED[*]}" <<'PY'
import time
cmd, started, load_before, load_after, failed = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
# Every goal, in the order of the issue; a section that failed leaves its rows "failed".
expected = [
    ("pg-select-interceptor", "pgbench -S, 8 clients, interceptor, allow-all vs direct"),
    ("pg-select-policy", "pgbench -S, 8 clients, interceptor, default policy vs direct"),
    ("pg-tpcb-interceptor", "pgbench TPC-B-like, 8 clients, interceptor, allow-all vs direct"),
    ("pg-tpcb-policy", "pgbench TPC-B-like, 8 clients, interceptor, default policy vs direct"),
    ("pg-policy-cost", "pgbench -S, 8 clients, default policy vs allow-all through the interceptor"),
    ("pg-threads", "pgbench -S, 8 clients, allow-all, 2 worker threads vs 1 (issue 22)"),
    ("hook", "connect() overhead of the eBPF hooks, destination not intercepted"),
    ("setup", "connections per second through the interceptor vs direct"),
    ("relay", "bulk relay over TCP vs direct"),
    ("select-plain", "large SELECT through the interceptor (allow-all, no masking) vs direct"),
    ("select-masked", "large SELECT through the interceptor (default policy, masking on) vs direct"),
    ("copy-plain", "COPY TO STDOUT through the interceptor (allow-all, no masking) vs direct"),
    ("copy-masked", "COPY TO STDOUT through the interceptor (default policy, masking on) vs direct"),
    ("http-rps-plain", "HTTP requests/s, 8 keep-alive connections, small JSON, interceptor allow-all vs direct"),
    ("http-rps-policy", "HTTP requests/s, 8 keep-alive connections, small JSON, interceptor default policy vs direct"),
    ("http-json-masked", "large JSON body through the interceptor (default policy, masking on) vs direct"),
    ("http-ndjson-masked", "JSON-lines stream through the interceptor (default policy, masking on) vs direct"),
    ("ssh-scp", "scp (SFTP read) through the gateway vs direct"),
    ("ssh-exec-new", "SSH exec round-trips/s, a new connection each, gateway vs direct"),
    ("ssh-exec-mux", "SSH exec round-trips/s, channels of one connection, gateway vs direct"),
    ("policy-cached", "policy verdict, statement seen before (analysis cached)"),
    ("policy-new", "policy verdict, new ~200-character statement (sqlparser + analysis)"),
    ("masking", "masking engine, every detector on"),
    ("journal", "journal appends"),
    ("journal-durable", "journal appends durable in the segment log (issue 22)"),
    ("rss-idle", "gateway RSS, idle (`interceptor exec`)"),
    ("rss-held", "gateway RSS with idle TCP sessions open"),
    ("rss-per-session", "gateway memory per idle TCP session"),
    ("rss-per-pg-session", "gateway memory per idle PostgreSQL session"),
]
rows, commands = {}, []
for line in open(SUMMARY):
    record = json.loads(line)
    if "command" in record:
        commands.append(record["command"])
    else:
        rows[record["key"]] = record
table = ["| measurement | figure | goal | met |", "|---|---|---|---|"]
counted = [0, 0]
for key, fallback in expected:
    r = rows.get(key) or {"measurement": fallback, "figure": "failed (see the run's output)",
                          "goal": "", "met": False}
    if r["met"] is not None:
        counted[0] += bool(r["met"])
        counted[1] += 1
    table.append(f"| {r['measurement']} | {r['figure']} | {r['goal']} | {met(r['met'])} |")
took = int(time.time()) - started
shared = float(load_before) >= 0.5
ran = f"`{cmd}` (took {took // 60} min {took % 60} s), which ran:" + "".join(f"\n  - {c}" for c in commands)
section = header(
    "Summary: every goal in one run", ran,
    f"Load average (1 min) before / after: {load_before} / {load_after}"
    + (" — other work (a build, another test run) was sharing the machine when the run started"
       if shared else ""),
    f"Goals met: {counted[0]} of {counted[1]}" + (f"; sections that failed: {failed}" if failed else "")
    + ". Details per section below.",
)
write_section("bench-summary", section + table, top=True)
PY

if [ "$BENCH_DOC" = "$BENCH_WORK/performance.md" ]; then
  say "smoke run: the report above went to a copy of docs/performance.md, now removed"
fi
[ "${#FAILED[@]}" -eq 0 ] || { say "failed sections: ${FAILED[*]}"; exit 1; }
