#!/usr/bin/env bash
# Micro-benchmark section of `make bench` (scripts/bench.sh runs it; it also runs alone): the
# criterion benches of bench/benches with short settings (CRITERION_ARGS, default
# `--warm-up-time 1 --measurement-time 2`), read back from criterion's own estimates
# ($CRITERION_HOME/<id>/new/estimates.json: the slope, else the mean, per iteration):
#   policy   verdict for a statement seen before (cached) and for a new one (parsed)
#   masking  every content detector over a stream of column values, MB/s (and one 100 MB pass)
#   journal  appends with group commit, 64 concurrent writers, events/s (and record latency)
# Under BENCH_SMOKE=1 they are compiled in the dev profile and run for a fraction of a second
# with small inputs (INTERCEPTOR_BENCH_QUICK=1): the point is that they still build and run.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init micro
PROFILE=()
if smoke; then
  PROFILE=(--profile dev)
  export INTERCEPTOR_BENCH_QUICK=1
fi
CRITERION_ARGS="${CRITERION_ARGS:-$(sized "--warm-up-time 1 --measurement-time 2" "--warm-up-time 0.1 --measurement-time 0.2 --sample-size 10")}"
export CRITERION_HOME="$WORK/criterion"

BENCHES=(--bench policy --bench masking --bench journal)
say "cargo bench -p interceptor-bench ${PROFILE[*]} ${BENCHES[*]} -- $CRITERION_ARGS"
# shellcheck disable=SC2086 # CRITERION_ARGS is a list of words
(cd "$BENCH_ROOT" && cargo bench -q -p interceptor-bench "${PROFILE[@]}" "${BENCHES[@]}" -- $CRITERION_ARGS --noplot) \
  2>&1 | tee "$WORK/bench.log" >&2

bench_python "$WORK" "${PROFILE[*]} ${BENCHES[*]} -- $CRITERION_ARGS" <<'PY'
work, args = sys.argv[1], sys.argv[2].strip()
found = {}
for path in glob.glob(os.path.join(work, "criterion", "**", "new", "benchmark.json"), recursive=True):
    bench = json.load(open(path))
    est = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
    per_iter = (est.get("slope") or est["mean"])["point_estimate"] / 1e9  # seconds
    found[bench["full_id"]] = (per_iter, bench.get("throughput") or {})
def secs(bid):
    return found[bid][0] if bid in found else None
def rate(bid, unit):
    if bid not in found or not found[bid][0]:
        return None
    return found[bid][1].get(unit, 0) / found[bid][0]
cached, new = secs("verdict/cached"), secs("verdict/new-200-char-statement")
same_shape = secs("verdict/new-literals-same-shape")
scan = rate("masking/find/all-detectors/16MB", "Bytes")
single = rate("journal/append/single", "Elements")
batch, chained = rate("journal/append/batch-8", "Elements"), rate("journal/append/command+result", "Elements")
# The write path alone (every call returned, each event durable in the segment log), which
# the journal bench prints beside criterion's figure (that one waits for the index too).
durable = None
for line in open(os.path.join(work, "bench.log")):
    m = re.match(r"journal/append/single: .* ([0-9.]+) events/s durable", line.strip())
    if m:
        durable = float(m.group(1))
def num(value, fmt, scale=1.0):
    return "failed" if value is None else format(value * scale, fmt)
rows = [
    ("policy-cached", "policy verdict, statement seen before (analysis cached)", "verdict/cached",
     num(cached, ".2f", 1e6) + " µs", "≤ 2 µs", cached is not None and cached * 1e6 <= 2),
    ("policy-new", "policy verdict, new ~200-character statement (sqlparser + analysis)",
     "verdict/new-200-char-statement", num(new, ".1f", 1e6) + " µs", "≤ 50 µs (issue 4)",
     new is not None and new * 1e6 <= 50),
    ("masking", "masking engine, every detector on, column values of 5–200 bytes",
     "masking/find/all-detectors/16MB", num(scan, ",.0f", 1e-6) + " MB/s", "≥ 300 MB/s",
     scan is not None and scan / 1e6 >= 300),
    ("journal", "journal appends, one event per call, 64 writers, group commit, sync=normal",
     "journal/append/single", num(single, ",.0f") + " events/s", "≥ 50k events/s",
     single is not None and single >= 50_000),
    ("journal-durable", "journal appends durable in the segment log, one event per call, 64 writers, "
     "sync=normal (index not waited for)", "journal/append/single (printed)",
     num(durable, ",.0f") + " events/s", "≥ 500k events/s (issue 22)",
     durable is not None and durable >= 500_000),
]
cmd = f"`scripts/bench-micro.sh`: `cargo bench -p interceptor-bench {args} --noplot`"
section = section_header("Micro-benchmarks (criterion)", cmd,
                 "Figures: criterion's estimate per iteration (slope, else mean) from its estimates.json; "
                 "MB = 10^6 bytes.")
section += ["| measurement | criterion id | figure | goal | met |", "|---|---|---|---|---|"]
section += [f"| {name} | `{bid}` | {figure} | {target} | {met(ok)} |" for _, name, bid, figure, target, ok in rows]
section += [f"| policy verdict, same statement with new literals (fingerprint cache) | "
            f"`verdict/new-literals-same-shape` | {num(same_shape, '.1f', 1e6)} µs | | |",
            f"| journal appends, batches of 8 | `journal/append/batch-8` | {num(batch, ',.0f')} events/s | | |",
            f"| journal, statement + its result (two chained events) | `journal/append/command+result` | "
            f"{num(chained, ',.0f')} events/s | | |"]
printed = [l.strip() for l in open(os.path.join(work, "bench.log"))
           if re.match(r"(masking/find/.*/100MB|journal/(latency|append)/[^ ]+:)", l.strip())]
if printed:
    section += ["", "What the benches print themselves (wall clock and CPU time):", "", "```", *printed, "```"]
write_section("micro-bench", section)
for key, name, bid, figure, target, ok in rows:
    goal(key, name, figure, target, ok)
PY
