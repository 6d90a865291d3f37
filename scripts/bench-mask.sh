#!/usr/bin/env bash
# Masking end to end (part of `make bench`): a 1,000,000-row SELECT of personal data, direct vs
# through the gateway without masking (journal-only policy) vs with the shipped default policy
# (column rules, personal-data and secret detectors on). Each path runs MASK_BENCH_RUNS times
# (default 3); the median wall time of the client's query is reported, with the ratio to direct
# (rows per second relative to direct), in docs/performance.md between the mask-bench markers.
# Loopback only; bounded by the row count and a timeout per run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
export PATH="$HOME/.cargo/bin:$PATH"
RUNS="${MASK_BENCH_RUNS:-3}"
ROWS="${MASK_BENCH_ROWS:-1000000}"
PGBIN=/usr/lib/postgresql/15/bin
BIN="${INTERCEPTOR_BIN:-$ROOT/target/release/interceptor}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q -p interceptor)

WORK="$(mktemp -d /tmp/interceptor-maskbench.XXXXXX)"
chown postgres "$WORK"
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PGPORT="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
echo "bench-mask: starting postgres on 127.0.0.1:$PGPORT" >&2
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" --auth=trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
fsync = off
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE bench" >/dev/null
# A customers-like table: every row has an email, a quarter a valid card number, all some
# free text and a number.
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench -qc "
  CREATE TABLE people AS
  SELECT i AS id, 'Customer ' || i AS name, 'user' || i || '@example.com' AS email,
         CASE WHEN i % 4 = 0 THEN '4111 1111 1111 1111' ELSE 'n/a' END AS card,
         md5(i::text) AS note, (i * 7) % 1000 AS score
  FROM generate_series(1, $ROWS) i" >/dev/null

echo -n "unused: trust auth" >"$WORK/password"
chmod 600 "$WORK/password"
gateway_config() { # policy file
  cat <<CONF
[journal]
path = "$WORK/journal.db"
[state]
dir = "$WORK/state"
[[target]]
name = "bench"
protocol = "postgres"
intercept = ["127.0.0.2:$PGPORT"]
upstream = "127.0.0.1:$PGPORT"
policy = "$1"
[target.credentials]
user = "postgres"
password_file = "$WORK/password"
CONF
}
gateway_config "$ROOT/policies/examples/journal-only.toml" >"$WORK/plain.toml"
gateway_config "$ROOT/policies/default.toml" >"$WORK/masked.toml"

# The client times its own query, so exec's start-up is not counted.
cat >"$WORK/client.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
start=$(date +%s%N)
rows=$(psql -X -A -t -h "$1" -p "$2" -U postgres -d bench -c "SELECT * FROM people" | wc -l)
end=$(date +%s%N)
echo "rows=$rows ns=$((end - start))"
SH
chmod +x "$WORK/client.sh"

run() { # path
  local path=$1 host=127.0.0.1 wrap=()
  case $path in
    plain) host=127.0.0.2; wrap=("$BIN" --config "$WORK/plain.toml" exec --user root --) ;;
    masked) host=127.0.0.2; wrap=("$BIN" --config "$WORK/masked.toml" exec --user root --) ;;
  esac
  for i in $(seq "$RUNS"); do
    echo "bench-mask: $path run $i" >&2
    local out
    out="$(timeout 300 "${wrap[@]}" "$WORK/client.sh" "$host" "$PGPORT" 2>/dev/null | tail -n1)" || true
    echo "$path $out" >>"$WORK/results"
  done
  # What the agent received, masked or not (one sample row), for the record.
  "${wrap[@]}" psql -X -A -t -h "$host" -p "$PGPORT" -U postgres -d bench \
    -c "SELECT * FROM people WHERE id = 4" 2>/dev/null >"$WORK/sample-$path" || true
}
for path in direct plain masked; do run "$path"; done

/usr/bin/python3 - "$WORK" "$ROOT/docs/performance.md" "$ROWS" "$RUNS" <<'PY'
import os, re, sys, statistics, datetime, platform
work, doc, rows, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
times = {}
for line in open(os.path.join(work, "results")):
    m = re.match(r"(\w+) rows=(\d+) ns=(\d+)", line.strip())
    if m and int(m.group(2)) == rows:
        times.setdefault(m.group(1), []).append(int(m.group(3)) / 1e9)
med = {k: statistics.median(v) for k, v in times.items()}
def sample(path):
    try:
        return open(os.path.join(work, "sample-" + path)).read().strip()
    except OSError:
        return ""
lines = [
    "<!-- mask-bench:begin -->",
    f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
    f"`make bench` (`scripts/bench-mask.sh`, {runs} runs per path, median). "
    f"`psql -A -t -c 'SELECT * FROM people'` of {rows:,} rows (id, name, email, card for a "
    "quarter of the rows, md5 text, score), client-timed.",
    "",
    "| Path | Median time (s) | Rows/s | Ratio to direct | Goal |",
    "|---|---|---|---|---|",
]
d = med.get("direct")
for path, label in [("direct", "direct"), ("plain", "interceptor, journal-only (no masking)"),
                    ("masked", "interceptor, default policy (masking on)")]:
    t = med.get(path)
    if t is None:
        lines.append(f"| {label} | failed | | | |")
        continue
    ratio = d / t if d else 0
    goal = ""
    if path == "masked":
        goal = "≥ 0.6× " + ("(met)" if ratio >= 0.6 else "(not met)")
    lines.append(f"| {label} | {t:.2f} | {rows / t:,.0f} | {ratio:.2f}× | {goal} |")
lines += ["", "Row 4 as the agent received it, with masking on: `" + sample("masked") + "`",
          "<!-- mask-bench:end -->"]
text = open(doc).read()
block = "\n".join(lines)
if "<!-- mask-bench:begin -->" in text:
    text = re.sub(r"<!-- mask-bench:begin -->.*?<!-- mask-bench:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## Masking end to end\n\n" + block + "\n"
open(doc, "w").write(text)
print(block)
PY
