#!/usr/bin/env bash
# Runs every fuzz target of interceptor/fuzz/ for a bounded time: `make fuzz` (and, shorter,
# `make test`). docs/architecture.md, "Fuzzing", describes the targets.
#
#   FUZZ_SECONDS   time per target (libFuzzer -max_total_time), default 60
#   FUZZ_TARGETS   space-separated targets, default every interceptor/fuzz/fuzz_targets/*.rs
#   FUZZ_RSS_MB    memory limit per target (-rss_limit_mb), default 2048
#   FUZZ_MAX_LEN   largest input tried (-max_len), default 65536
#   FUZZ_TIMEOUT   seconds one input may take (-timeout) before it counts as a hang, default 60
#
# Everything it writes is under target/fuzz/: the build, the working corpora (seeded from the
# committed interceptor/fuzz/corpus/<target>/ and regressions/<target>/, which it only reads),
# each target's log, and the inputs that crashed. Any crash, hang or out-of-memory fails the
# run, with where the input is and how to replay and keep it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/interceptor/fuzz"
OUT="$ROOT/target/fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
log() { printf '\033[1mfuzz:\033[0m %s\n' "$*" >&2; }

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  targets=()
  for f in "$FUZZ"/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# Without ASan (-s none): the targets are safe Rust, and libpg_query's C code is not
# instrumented by it anyway; debug assertions and overflow checks stay on (cargo-fuzz default).
started=$(date +%s)
log "building ${#targets[@]} targets (nightly, cargo-fuzz; log: $OUT/logs/build.log)"
mkdir -p "$OUT/logs"
# `cargo fuzz build` takes one target or none (all of them).
one=()
[ -n "${FUZZ_TARGETS:-}" ] && [ "${#targets[@]}" -eq 1 ] && one=("${targets[0]}")
build() { (cd "$FUZZ" && cargo +nightly fuzz build -s none --target-dir "$OUT" "${one[@]}"); }
# What a failed build says: rustc's own error and panic lines (the tail of the log is only the
# command line cargo echoes), and the machine's room, since a compiler that runs out of disk or
# memory fails with the same exit status as one that crashes.
explain_build() {
  grep -n -E '^error|panicked|internal compiler error|No space left|memory allocation|Killed|SIG[A-Z]+' \
    "$1" | grep -v '^[0-9]*:warning' | head -n 40 >&2 || true
  df -h "$OUT" "${TMPDIR:-/tmp}" >&2 || true
  free -m >&2 || true
}
if ! build >"$OUT/logs/build.log" 2>&1; then
  explain_build "$OUT/logs/build.log"
  # CI's one failure here (stop 25) was rustc exiting 101 on sqlparser in a build that succeeds
  # from scratch on the same kind of machine; one retry, one job at a time, tells a passing
  # blip from a real break, and a real break still fails the run with both logs kept.
  log "build failed; retrying once, one job at a time (first log: $OUT/logs/build-1.log)"
  mv "$OUT/logs/build.log" "$OUT/logs/build-1.log"
  if ! CARGO_BUILD_JOBS=1 build >"$OUT/logs/build.log" 2>&1; then
    explain_build "$OUT/logs/build.log"
    log "build failed twice"
    exit 1
  fi
fi
bin="$OUT/x86_64-unknown-linux-gnu/release"
log "built in $(($(date +%s) - started)) s; running each target for ${SECONDS_EACH} s"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t" "$OUT/logs"
  seeds=("$FUZZ/corpus/$t")
  [ -d "$FUZZ/regressions/$t" ] && seeds+=("$FUZZ/regressions/$t")
  status=0
  "$bin/$t" "$OUT/corpus/$t" "${seeds[@]}" \
    -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -max_len="${FUZZ_MAX_LEN:-65536}" \
    -timeout="${FUZZ_TIMEOUT:-60}" \
    -artifact_prefix="$OUT/artifacts/$t/" \
    -print_final_stats=1 >"$OUT/logs/$t.log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/logs/$t.log")
  if [ "$status" -eq 0 ]; then
    log "$t: ok, ${runs:-?} inputs in ${SECONDS_EACH} s"
    continue
  fi
  failed+=("$t")
  log "$t: FAILED (exit $status) after ${runs:-?} inputs; the end of $OUT/logs/$t.log:"
  # Progress lines left out, and the input's dumps cut short (it is in the artifact).
  grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse|RELOAD)' "$OUT/logs/$t.log" | tail -n 40 |
    cut -c 1-300 >&2
  for input in $(grep -o "Test unit written to [^ ]*" "$OUT/logs/$t.log" | awk '{print $5}'); do
    log "$t: the input is $input"
    log "  replay:  $bin/$t $input"
    log "  keep it: cp $input $FUZZ/regressions/$t/<what-it-broke> (cargo test replays it)"
  done
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all ${#targets[@]} targets passed in $(($(date +%s) - started)) s"
