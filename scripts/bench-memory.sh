#!/usr/bin/env bash
# Memory section of `make bench` (scripts/bench.sh runs it; it also runs alone): the resident
# memory (VmRSS) of the `interceptor exec` process, which hosts the gateway, while its command
# (`loadgen hold`) first does nothing (idle), then holds MEMORY_SESSIONS (default 1,000) idle
# sessions open through it:
#   tcp       plain TCP sessions to a `loadgen serve --mode echo` on 127.0.0.2 (one byte echoed
#             through each, so every session is relayed end to end), journal on
#   postgres  MEMORY_PG_SESSIONS (default 100) PostgreSQL sessions, logged in and idle, through
#             the postgres target (allow-all policy, credentials injected)
# RSS is read after start-up, idle after a first round of sessions came and went, with half
# the sessions open and with all of them. Start-up frees tens of MB (loading the eBPF programs)
# that the allocator keeps until later activity lets it go, so the per-session cost is the slope
# between half and all: (RSS all - RSS half) / (sessions - half). No goal: reported.
# Bounded: `hold` gives up after 120 s, and every wait below has a limit.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init memory
SESSIONS="${MEMORY_SESSIONS:-$(sized 1000 100)}"
PG_SESSIONS="${MEMORY_PG_SESSIONS:-$(sized 100 10)}"

ECHO="127.0.0.2:$(free_port 127.0.0.2)"
bench_spawn "$LOADGEN" serve --addr "$ECHO" --mode echo
wait_listening "$ECHO"
# One run holds every session: above the default per-run and per-uid limits ([limits]).
LIMITS="[limits]
max_sessions_per_uid = $((SESSIONS + PG_SESSIONS + 100))
max_sessions_per_run = $((SESSIONS + PG_SESSIONS + 100))"
cat >"$WORK/relay.toml" <<CFG
[journal]
path = "$WORK/journal.db"
[state]
dir = "$WORK/state"
$LIMITS
CFG
pg_ensure
{
  gateway_config "$BENCH_ROOT/policies/examples/journal-only.toml"
  echo "$LIMITS"
} >"$WORK/postgres.toml"

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

wait_state() { # output file, state, seconds
  local i
  for i in $(seq $(($3 * 10))); do
    grep -qF "\"state\":\"$2\"" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  say "no \"$2\" from loadgen hold in $3 s: $(cat "$1" "$1.err" 2>/dev/null)"
  return 1
}

rss_at() { # control dir, exec's pid, state, seconds: the RSS at that state, then hold goes on
  wait_state "$1/out" "$3" "$4" || return 1
  sleep 1
  rss_kb "$2"
  [ "$3" = held ] || touch "$1/$3"
}

measure() { # label config sessions hold-args…
  local label=$1 config=$2 count=$3
  shift 3
  local dir="$WORK/$label"
  mkdir -p "$dir"
  rm -rf "$WORK"/journal.db*
  say "$label: idle, then $((count / 2)), then $count sessions"
  "$BIN" --config "$config" exec --user root -- "$LOADGEN" hold --count "$count" \
    --warmup $((count / 10)) --pause-at $((count / 2)) --control-dir "$dir" --timeout 120 "$@" \
    >"$dir/out" 2>"$dir/out.err" &
  local pid=$!
  BENCH_PIDS+=("$pid")
  local startup idle half held
  startup="$(rss_at "$dir" "$pid" ready 60)"
  idle="$(rss_at "$dir" "$pid" warm 60)"
  half="$(rss_at "$dir" "$pid" paused 120)"
  held="$(rss_at "$dir" "$pid" held 120)"
  local fds
  fds="$(ls "/proc/$pid/fd" | wc -l)"
  touch "$dir/held"
  wait "$pid" || say "$label: interceptor exec exited with $?"
  bench_forget "$pid"
  printf '{"label": "%s", "sessions": %d, "half": %d, "startup_kb": %d, "idle_kb": %d, "half_kb": %d, "held_kb": %d, "fds": %d}\n' \
    "$label" "$count" $((count / 2)) "$startup" "$idle" "$half" "$held" "$fds" >>"$WORK/results"
}

measure tcp "$WORK/relay.toml" "$SESSIONS" --addr "$ECHO"
measure postgres "$WORK/postgres.toml" "$PG_SESSIONS" --addr "127.0.0.2:$BENCH_PGPORT" \
  --pg-user postgres --pg-database bench

bench_python "$WORK" <<'PY'
work = sys.argv[1]
res = {r["label"]: r for r in map(json.loads, open(os.path.join(work, "results")))}
labels = {"tcp": "plain TCP sessions (echo server on 127.0.0.2), journal on",
          "postgres": "PostgreSQL sessions, logged in and idle (postgres target, allow-all policy)"}
def per_session(r):
    return (r["held_kb"] - r["half_kb"]) / (r["sessions"] - r["half"])
table = ["| sessions | what | RSS after start-up (MiB) | RSS idle (MiB) | RSS, half open (MiB) | "
         "RSS, all open (MiB) | per session (KiB) | open files, all open |", "|---|---|---|---|---|---|---|---|"]
for key, r in res.items():
    table.append(f"| {r['sessions']:,} | {labels[key]} | {r['startup_kb'] / 1024:.1f} | {r['idle_kb'] / 1024:.1f} | "
                 f"{r['half_kb'] / 1024:.1f} | {r['held_kb'] / 1024:.1f} | {per_session(r):.1f} | {r['fds']:,} |")
cmd = ("`scripts/bench-memory.sh`: VmRSS of `interceptor exec -- loadgen hold --count N "
       "--warmup N/10 --pause-at N/2 …` at each stage")
section = section_header("Memory of the gateway", cmd,
                 "The `interceptor exec` process hosts the gateway; VmRSS read from /proc/PID/status a "
                 "second after each stage of `loadgen hold`: started; idle again after N/10 sessions "
                 "were opened together and closed; N/2 open; N open.",
                 "Per session = (RSS all open - RSS half open) / (N - N/2). Start-up frees tens of MB "
                 "(loading the eBPF programs) that the allocator keeps until later activity lets it go, so "
                 "RSS after start-up can exceed RSS with every session open.",
                 "RSS is user-space memory only: socket and pipe buffers are kernel memory (open files "
                 "shows how many descriptors the gateway holds with every session open).")
write_section("memory-bench", section + table)
tcp, pg = res.get("tcp"), res.get("postgres")
if tcp:
    goal("rss-idle", "gateway RSS, idle (`interceptor exec`)", f"{tcp['idle_kb'] / 1024:.1f} MiB",
         "none (reported)", None)
    goal("rss-held", f"gateway RSS with {tcp['sessions']:,} idle TCP sessions open",
         f"{tcp['held_kb'] / 1024:.1f} MiB", "none (reported)", None)
    goal("rss-per-session", "gateway memory per idle TCP session (slope from N/2 to N open)",
         f"{per_session(tcp):.1f} KiB", "none (reported)", None)
if pg:
    goal("rss-per-pg-session", f"gateway memory per idle PostgreSQL session ({pg['sessions']:,} open, slope)",
         f"{per_session(pg):.1f} KiB", "≤ 64 KiB (issue 22)", per_session(pg) <= 64)
PY
