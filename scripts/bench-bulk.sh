#!/usr/bin/env bash
# Bulk-transfer section of `make bench` (scripts/bench.sh runs it; it also runs alone): a
# BULK_ROWS-row (default 1,000,000) table of personal data, read two ways,
#   SELECT  `psql -A -t -c 'SELECT * FROM people'`
#   COPY    `psql -c 'COPY people TO STDOUT'` (about 100 MB of text at 1,000,000 rows)
# on three paths: direct; through the gateway with the allow-all policy (journal on, no
# masking); through the gateway with the shipped default policy (column rules, personal-data
# and secret detectors: masking on). Each path runs BULK_RUNS times (default 3), the paths
# alternating; the client times its own query (exec's start-up is not counted) and the medians
# go to $BENCH_DOC between the mask-bench markers, the ratios to the summary.
# Loopback only; bounded by the row count and a timeout per run.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init bulk
RUNS="${BULK_RUNS:-$(sized 3 1)}"
ROWS="${BULK_ROWS:-$(sized 1000000 20000)}"

pg_ensure
say "creating a $ROWS-row table"
# A customers-like table: every row has an email, a quarter a valid card number, all some
# free text, an address and a number.
psql_bench -qc "DROP TABLE IF EXISTS people" >/dev/null 2>&1
psql_bench -qc "
  CREATE TABLE people AS
  SELECT i AS id, 'Customer ' || i AS name, 'user' || i || '@example.com' AS email,
         CASE WHEN i % 4 = 0 THEN '4111 1111 1111 1111' ELSE 'n/a' END AS card,
         md5(i::text) AS note, (i % 300 + 1) || ' Main Street' AS address,
         (i * 7) % 1000 AS score
  FROM generate_series(1, $ROWS) i" >/dev/null
psql_bench -qc "VACUUM ANALYZE people" >/dev/null

gateway_config "$BENCH_ROOT/policies/examples/journal-only.toml" >"$WORK/plain.toml"
gateway_config "$BENCH_ROOT/policies/default.toml" >"$WORK/masked.toml"

# host port select|copy: prints "lines=… bytes=… ns=…" for what the client received.
cat >"$WORK/client.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
sql="SELECT * FROM people"
[ "$3" = copy ] && sql="COPY people TO STDOUT"
start=$(date +%s%N)
read -r lines bytes < <(psql -X -A -t -h "$1" -p "$2" -U postgres -d bench -c "$sql" | wc -lc)
end=$(date +%s%N)
echo "lines=$lines bytes=$bytes ns=$((end - start))"
SH
chmod +x "$WORK/client.sh"

run() { # path query
  local path=$1 query=$2 host=127.0.0.1 wrap=(timeout 300)
  case $path in
    plain) host=127.0.0.2 wrap=(in_gateway "$WORK/plain.toml") ;;
    masked) host=127.0.0.2 wrap=(in_gateway "$WORK/masked.toml") ;;
  esac
  local out
  out="$("${wrap[@]}" "$WORK/client.sh" "$host" "$BENCH_PGPORT" "$query" 2>>"$WORK/stderr.log" | tail -n1)" || true
  echo "$path $query $out" >>"$WORK/results"
}
for query in select copy; do
  for i in $(seq "$RUNS"); do
    for path in direct plain masked; do
      say "$query, $path, run $i/$RUNS"
      run "$path" "$query"
    done
  done
done
# What the agent received with masking on (one sample row), for the record.
in_gateway "$WORK/masked.toml" psql -X -A -t -h 127.0.0.2 -p "$BENCH_PGPORT" -U postgres -d bench \
  -c "SELECT * FROM people WHERE id = 4" >"$WORK/sample" 2>/dev/null || true

bench_python "$WORK" "$ROWS" "$RUNS" <<'PY'
work, rows, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = {}
for line in open(os.path.join(work, "results")):
    m = re.match(r"(\w+) (\w+) lines=(\d+) bytes=(\d+) ns=(\d+)", line.strip())
    if m and int(m.group(3)) >= rows:  # a failed run is left out (and shows as "failed")
        got.setdefault((m.group(1), m.group(2)), []).append((int(m.group(4)), int(m.group(5)) / 1e9))
def figures(path, query):
    runs_ = got.get((path, query))
    if not runs_:
        return None
    secs = median([s for _, s in runs_])
    return secs, median([b for b, _ in runs_]) / 1e6
labels = [("direct", "direct"), ("plain", "interceptor, allow-all (journal, no masking)"),
          ("masked", "interceptor, default policy (masking on)")]
queries = {"select": f"`SELECT * FROM people` ({rows:,} rows)", "copy": "`COPY people TO STDOUT`"}
table = ["| query | path | median time (s) | MB received | MB/s | rows/s | ratio to direct |",
         "|---|---|---|---|---|---|---|"]
ratios = {}
for query, qlabel in queries.items():
    direct = figures("direct", query)
    for path, label in labels:
        f = figures(path, query)
        if f is None:
            table.append(f"| {qlabel} | {label} | failed | | | | |")
            continue
        secs, mb = f
        ratio = direct[0] / secs if direct else 0.0
        ratios[(path, query)] = (ratio, mb / secs)
        table.append(f"| {qlabel} | {label} | {secs:.2f} | {mb:,.1f} | {mb / secs:,.0f} | "
                     f"{rows / secs:,.0f} | {ratio:.2f}× |")
sample = read_stripped(os.path.join(work, "sample"))
copy_mb = (figures("direct", "copy") or (0, 0))[1]
cmd = (f"`scripts/bench-bulk.sh` (BULK_ROWS={rows} BULK_RUNS={runs}): "
       "`psql -X -A -t -c 'SELECT * FROM people'` and `psql -X -c 'COPY people TO STDOUT'`, client-timed, "
       "direct and under `interceptor exec`")
section = section_header("Bulk transfer: large SELECT and COPY, with and without masking", cmd,
                 f"Median of {runs} runs per path (paths alternate). Table `people`: id, name, email, a valid "
                 "card number in a quarter of the rows, md5 text, address, score.",
                 "Ratio to direct = direct time / path time for the same rows.")
section += table + ["", "Row 4 as the agent received it, with masking on: `" + sample + "`"]
write_section("mask-bench", section)
what = {"select": f"{rows:,}-row SELECT", "copy": f"{copy_mb:,.0f} MB COPY TO STDOUT"}
how = {"plain": "allow-all, no masking", "masked": "default policy, masking on"}
targets = {("select", "plain"): ("≥ 0.8×", 0.8), ("select", "masked"): ("≥ 0.6× (issue 6)", 0.6),
           ("copy", "plain"): ("≥ 0.8×", 0.8), ("copy", "masked"): ("none (reported)", None)}
for (query, path), (target, threshold) in targets.items():
    r = ratios.get((path, query))
    ok = None if threshold is None else bool(r) and r[0] >= threshold
    goal(f"{query}-{path}", f"{what[query]} through the interceptor ({how[path]}) vs direct",
         f"{r[0]:.2f}× ({r[1]:,.0f} MB/s)" if r else "failed", target, ok)
PY
