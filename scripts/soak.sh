#!/usr/bin/env bash
# `make soak`: the gateway under a fixed load for a fixed time, watched for growth and loss.
#
# pgbench -S at SOAK_RATE transactions per second (default 200, 8 clients) for SOAK_SECONDS
# (default 600) under `interceptor exec`, through the postgres target (journal-only policy,
# credentials injected). Every SOAK_SAMPLE seconds (default 10) the exec process's (the
# gateway's) RSS and open file descriptors are sampled. At the end every transaction pgbench
# counts must be a statement in the journal: zero lost events. Writes its block of
# docs/performance.md. Bounded: a fixed rate and duration, and a deadline of the duration plus
# two minutes; loopback only. Not part of `make test` or `make bench`.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init soak
SECONDS_TOTAL="${SOAK_SECONDS:-$(sized 600 20)}"
RATE="${SOAK_RATE:-200}"
SAMPLE="${SOAK_SAMPLE:-$(sized 10 2)}"

pg_ensure
pgbench -h 127.0.0.1 -p "$BENCH_PGPORT" -U postgres -i -q -s 5 bench >/dev/null 2>&1
gateway_config "$BENCH_ROOT/policies/examples/journal-only.toml" >"$WORK/soak.toml"
rm -rf "$WORK"/journal.db*

say "pgbench -S at $RATE tx/s for $SECONDS_TOTAL s through the gateway"
"$BIN" --config "$WORK/soak.toml" exec --user root -- \
  pgbench -h 127.0.0.2 -p "$BENCH_PGPORT" -U postgres -n -S -R "$RATE" -T "$SECONDS_TOTAL" \
  -c 8 -j 2 bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" &
gateway=$!
BENCH_PIDS+=("$gateway")
start=$(date +%s)
echo "seconds rss_kb fds" >"$WORK/samples"
# Sampled directly (a `timeout` wrapper would be what $! names); the deadline is kept here.
deadline=$((start + SECONDS_TOTAL + 120))
while kill -0 "$gateway" 2>/dev/null; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    say "still running after $((SECONDS_TOTAL + 120)) s: stopped"
    kill "$gateway"
  fi
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gateway/status" 2>/dev/null || true)
  fds=$(ls "/proc/$gateway/fd" 2>/dev/null | wc -l)
  [ -n "$rss" ] && echo "$(($(date +%s) - start)) $rss $fds" >>"$WORK/samples"
  sleep "$SAMPLE"
done
wait "$gateway" || say "interceptor exec exited with $?"
bench_forget "$gateway"

processed=$(awk '/number of transactions actually processed/ { split($NF, a, "/"); print a[1] }' "$WORK/pgbench.out")
journaled=$(sqlite3 "$WORK/journal.db" \
  "SELECT count(*) FROM events WHERE statement LIKE 'SELECT abalance FROM pgbench_accounts%'")
say "pgbench processed ${processed:-?}, journal has ${journaled:-?}"

PROCESSED="${processed:-0}" JOURNALED="${journaled:-0}" SECONDS_TOTAL="$SECONDS_TOTAL" \
  RATE="$RATE" SAMPLES="$WORK/samples" bench_python <<'PY'
rows = [l.split() for l in open(os.environ["SAMPLES"]).read().splitlines()[1:]]
rows = [(int(s), int(r) / 1024, int(f)) for s, r, f in rows]
processed, journaled = int(os.environ["PROCESSED"]), int(os.environ["JOURNALED"])
first, last = (rows[0], rows[-1]) if rows else ((0, 0, 0), (0, 0, 0))
# Growth is judged after the first minute (start-up and the first sessions settle first).
settled = [r for r in rows if r[0] >= 60] or rows
peak_rss = max((r[1] for r in rows), default=0)
lines = section_header(
    "Soak: fixed load, RSS and descriptors over time, lost events",
    f"`make soak` (SOAK_SECONDS={os.environ['SECONDS_TOTAL']} SOAK_RATE={os.environ['RATE']})",
    "pgbench -S, 8 clients, rate-limited, through `interceptor exec` (journal-only policy)",
) + [
    "| Measure | Value |",
    "|---|---|",
    f"| Transactions pgbench processed | {processed} |",
    f"| Statements in the journal | {journaled} |",
    f"| Lost events | {processed - journaled} |",
    f"| RSS first sample / after the first minute (min–max) / last | {first[1]:.1f} MiB / "
    f"{min(r[1] for r in settled):.1f}–{max(r[1] for r in settled):.1f} MiB / {last[1]:.1f} MiB |",
    f"| Peak RSS | {peak_rss:.1f} MiB |",
    f"| Open descriptors first / max / last | {first[2]} / {max((r[2] for r in rows), default=0)} / {last[2]} |",
    f"| Samples | {len(rows)} (every few seconds) |",
    "",
]
write_section("soak", lines)
goal("soak", "lost events in a soak", f"{processed - journaled}", "0", processed == journaled and processed > 0)
if processed != journaled or processed == 0:
    sys.exit(1)
PY
