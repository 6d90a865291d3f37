#!/usr/bin/env bash
# `make bench`: the capture's costs as ratios against the same workload without them, measured
# in one run on this machine, written to docs/performance.md.
#
#   hook overhead  connect() rate (time inside socket()+connect(), where the hooks run) of a
#                  captured process to a destination that is NOT intercepted vs an uncaptured
#                  process (goal: overhead <= 5%)
#   setup rate     the same connections through the proxy vs direct (goal >= 0.5x)
#   bulk relay     download throughput through the proxy vs direct (goal >= 0.8x)
#
# Loopback only; every workload has a fixed count and loadgen caps each at 60 s.
# ROUNDS (default 5) alternates direct and captured runs and reports medians.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi
export PATH="$HOME/.cargo/bin:$PATH"
ROUNDS="${ROUNDS:-7}"
SETUPS="${SETUPS:-5000}"
BULK_BYTES="${BULK_BYTES:-1073741824}"

cd "$ROOT"
cargo build --release -q -p interceptor -p interceptor-bench
BIN="$ROOT/target/release/interceptor"
LOADGEN="$ROOT/target/release/loadgen"

WORK="$(mktemp -d /tmp/interceptor-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.2",0)); print(s.getsockname()[1])'; }
HELLO="127.0.0.2:$(free_port)"
SOURCE="127.0.0.2:$(free_port)"
"$LOADGEN" serve --addr "$HELLO" --mode hello >/dev/null & PIDS+=($!)
"$LOADGEN" serve --addr "$SOURCE" --mode source --bytes "$BULK_BYTES" >/dev/null & PIDS+=($!)
sleep 0.5

cat >"$WORK/relay.toml" <<CFG
[journal]
path = "$WORK/journal.db"
CFG
# Listed mode with a list that does not contain the destination: connect4 runs, looks up the
# map, and lets the connection go direct. That is the cost every uncaptured destination pays.
cat >"$WORK/hook.toml" <<CFG
[journal]
path = "$WORK/journal.db"
[capture]
mode = "listed"
intercept = ["127.0.0.9:9"]
CFG

run() { # label, then the command; appends "label value" to results
  local label=$1; shift
  local out
  out="$("$@" 2>>"$WORK/stderr.log" | tail -n 1)"
  echo "$label $out" >>"$WORK/results"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "bench: round $round/$ROUNDS" >&2
  run setup_direct     "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run setup_hooked     "$BIN" --config "$WORK/hook.toml" exec --user root -- "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run setup_proxy      "$BIN" --config "$WORK/relay.toml" exec --user root -- "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run bulk_direct      "$LOADGEN" bulk --addr "$SOURCE" --bytes "$BULK_BYTES"
  run bulk_proxy       "$BIN" --config "$WORK/relay.toml" exec --user root -- "$LOADGEN" bulk --addr "$SOURCE" --bytes "$BULK_BYTES"
done

/usr/bin/python3 - "$WORK/results" "$ROOT/docs/performance.md" "$ROUNDS" "$SETUPS" "$BULK_BYTES" <<'PY'
import json, os, platform, statistics, sys, datetime
results, doc, rounds, setups, bulk = sys.argv[1:6]
by = {}
for line in open(results):
    label, _, payload = line.partition(" ")
    by.setdefault(label, []).append(json.loads(payload))
def med(label, key):
    return statistics.median(r[key] for r in by[label])
hook = med("setup_hooked", "connects_per_sec") / med("setup_direct", "connects_per_sec")
setup = med("setup_proxy", "ops_per_sec") / med("setup_direct", "ops_per_sec")
bulk_r = med("bulk_proxy", "mb_per_sec") / med("bulk_direct", "mb_per_sec")
rows = [
    ("connect() to a non-intercepted destination, captured vs uncaptured",
     f"{med('setup_hooked','connects_per_sec'):,.0f} vs {med('setup_direct','connects_per_sec'):,.0f} connect()/s",
     f"{hook:.3f}x (overhead {100*(1-hook):+.1f}%)", "overhead <= 5%", (1 - hook) <= 0.05),
    ("connection setup through the proxy vs direct",
     f"{med('setup_proxy','ops_per_sec'):,.0f} vs {med('setup_direct','ops_per_sec'):,.0f} conn/s",
     f"{setup:.3f}x", ">= 0.5x", setup >= 0.5),
    ("bulk relay (download) through the proxy vs direct",
     f"{med('bulk_proxy','mb_per_sec'):,.0f} vs {med('bulk_direct','mb_per_sec'):,.0f} MB/s",
     f"{bulk_r:.3f}x", ">= 0.8x", bulk_r >= 0.8),
]
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
section = [
    "<!-- capture-bench:start (written by scripts/bench.sh) -->",
    "## Capture (issue 2)",
    "",
    f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    f"- Machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}",
    f"- Command: `make bench` (scripts/bench.sh; ROUNDS={rounds} SETUPS={setups} BULK_BYTES={bulk})",
    f"- Each figure is the median of {rounds} alternating rounds; ratios are captured / direct in the same run.",
    "",
    "| measurement | figures (median) | ratio | goal | met |",
    "|---|---|---|---|---|",
]
for name, figures, ratio, goal, met in rows:
    section.append(f"| {name} | {figures} | {ratio} | {goal} | {'yes' if met else 'no'} |")
section.append("<!-- capture-bench:end -->")
text = open(doc).read() if os.path.exists(doc) else "# Performance\n"
start, end = "<!-- capture-bench:start", "<!-- capture-bench:end -->"
if start in text and end in text:
    a = text.index(start); b = text.index(end) + len(end)
    text = text[:a] + "\n".join(section) + text[b:]
else:
    text = text.rstrip() + "\n\n" + "\n".join(section) + "\n"
open(doc, "w").write(text)
print("\n".join(section))
PY
