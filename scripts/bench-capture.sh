#!/usr/bin/env bash
# Capture section of `make bench` (scripts/bench.sh runs it; it also runs alone): the capture's
# costs as ratios against the same workload without them, in one run on this machine.
#
#   hook overhead  connect() rate (time inside socket()+connect(), where the hooks run) of a
#                  captured process to a destination that is NOT intercepted vs an uncaptured
#                  process (goal: overhead <= 5%)
#   setup rate     the same connections through the proxy vs direct (issue 2: >= 0.5x)
#   bulk relay     download throughput through the proxy vs direct (goal >= 0.8x)
#
# Loopback only; every workload has a fixed count and loadgen caps each at 60 s.
# ROUNDS (default 7) alternates direct and captured runs and reports medians.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init capture
ROUNDS="${ROUNDS:-$(sized 7 1)}"
SETUPS="${SETUPS:-$(sized 5000 300)}"
BULK_BYTES="${BULK_BYTES:-$(sized 1073741824 67108864)}"

HELLO="127.0.0.2:$(free_port 127.0.0.2)"
SOURCE="127.0.0.2:$(free_port 127.0.0.2)"
bench_spawn "$LOADGEN" serve --addr "$HELLO" --mode hello
bench_spawn "$LOADGEN" serve --addr "$SOURCE" --mode source --bytes "$BULK_BYTES"
wait_listening "$HELLO"
wait_listening "$SOURCE"

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
  local label=$1
  shift
  local out
  out="$("$@" 2>>"$WORK/stderr.log" | tail -n 1)"
  echo "$label $out" >>"$WORK/results"
}

for round in $(seq 1 "$ROUNDS"); do
  say "round $round/$ROUNDS"
  run setup_direct "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run setup_hooked "$BIN" --config "$WORK/hook.toml" exec --user root -- "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run setup_proxy "$BIN" --config "$WORK/relay.toml" exec --user root -- "$LOADGEN" setup --addr "$HELLO" --count "$SETUPS"
  run bulk_direct "$LOADGEN" bulk --addr "$SOURCE" --bytes "$BULK_BYTES"
  run bulk_proxy "$BIN" --config "$WORK/relay.toml" exec --user root -- "$LOADGEN" bulk --addr "$SOURCE" --bytes "$BULK_BYTES"
done

bench_python "$WORK/results" "$ROUNDS" "$SETUPS" "$BULK_BYTES" <<'PY'
results, rounds, setups, bulk = sys.argv[1:5]
by = {}
for line in open(results):
    label, _, payload = line.partition(" ")
    by.setdefault(label, []).append(json.loads(payload))
def med(label, key):
    return median([r[key] for r in by.get(label, [])])
def ratio(a, b):
    return a / b if b else 0.0
hooked, direct = med("setup_hooked", "connects_per_sec"), med("setup_direct", "connects_per_sec")
hook = ratio(hooked, direct)
proxied, plain = med("setup_proxy", "ops_per_sec"), med("setup_direct", "ops_per_sec")
setup = ratio(proxied, plain)
relayed, straight = med("bulk_proxy", "mb_per_sec"), med("bulk_direct", "mb_per_sec")
relay = ratio(relayed, straight)
overhead = 100 * (1 - hook)
rows = [
    ("connect() to a non-intercepted destination, captured vs uncaptured",
     f"{hooked:,.0f} vs {direct:,.0f} connect()/s", f"{hook:.3f}x (overhead {overhead:+.1f}%)",
     "overhead <= 5%", overhead <= 5),
    ("connection setup through the proxy vs direct",
     f"{proxied:,.0f} vs {plain:,.0f} conn/s", f"{setup:.3f}x", ">= 0.5x", setup >= 0.5),
    ("bulk relay (download) through the proxy vs direct",
     f"{relayed:,.0f} vs {straight:,.0f} MB/s", f"{relay:.3f}x", ">= 0.8x", relay >= 0.8),
]
cmd = (f"`scripts/bench-capture.sh` (ROUNDS={rounds} SETUPS={setups} "
       f"BULK_BYTES={bulk}): `loadgen setup|bulk`, direct and under `interceptor exec`")
section = section_header("Capture (issue 2)", cmd,
                 f"Each figure is the median of {rounds} alternating rounds; ratios are captured / direct in the same run.")
section += ["| measurement | figures (median) | ratio | goal | met |", "|---|---|---|---|---|"]
section += [f"| {name} | {figures} | {r} | {target} | {met(ok)} |" for name, figures, r, target, ok in rows]
write_section("capture-bench", section)
goal("hook", "connect() overhead of the eBPF hooks, destination not intercepted",
     f"{overhead:+.1f}% ({hooked:,.0f} vs {direct:,.0f} connect()/s)", "≤ 5%", overhead <= 5)
goal("setup", "connections per second through the interceptor vs direct",
     f"{setup:.2f}× ({proxied:,.0f} vs {plain:,.0f} conn/s)", "≥ 0.5× (issue 2)", setup >= 0.5)
goal("relay", f"bulk relay of {int(bulk) / 2**20:,.0f} MiB over TCP vs direct",
     f"{relay:.2f}× ({relayed:,.0f} vs {straight:,.0f} MB/s)", "≥ 0.8×", relay >= 0.8)
PY
