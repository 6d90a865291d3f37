#!/usr/bin/env bash
# A/B of two gateway builds on one PostgreSQL, for a change's cost (not part of `make bench`).
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY
#
# For ROUNDS rounds (default 3), alternating the two binaries: pgbench -S (AB_SELECT_TX
# transactions per client, default 4000) and TPC-B-like (AB_TPCB_TX, default 2000), 8 clients,
# under `interceptor exec` with the journal-only policy. Prints the CPU (user + system) of the
# whole `exec` (gateway and pgbench) per transaction in µs: on a shared 2-core host it is far
# steadier than TPS. Loopback only; every run is bounded by a transaction count and a timeout.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD=$1 NEW=$2
export INTERCEPTOR_BIN=$NEW
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init ab
pg_ensure
pgbench -h 127.0.0.1 -p "$BENCH_PGPORT" -U postgres -i -q -s 5 bench >/dev/null 2>&1
gateway_config "$BENCH_ROOT/policies/examples/journal-only.toml" >"$WORK/allow.toml"
echo "round binary script cpu_us_per_tx"
for round in $(seq "${ROUNDS:-3}"); do
  for which in old new; do
    bin=$OLD; [ "$which" = new ] && bin=$NEW
    for script in select tpcb; do
      flags=(-t "${AB_TPCB_TX:-2000}")
      [ "$script" = select ] && flags=(-S -t "${AB_SELECT_TX:-4000}")
      rm -rf "$WORK"/journal.db*
      /usr/bin/time -o "$WORK/time" -f "%U %S" timeout 300 "$bin" --config "$WORK/allow.toml" \
        exec --user root -- pgbench -h 127.0.0.2 -p "$BENCH_PGPORT" -U postgres -n \
        "${flags[@]}" -c 8 -j 2 bench >/dev/null 2>&1 || true
      awk -v r="$round" -v w="$which" -v s="$script" -v n="${flags[-1]}" \
        '{ printf "%s %s %s %.1f\n", r, w, s, ($1 + $2) / (n * 8) * 1e6 }' "$WORK/time"
    done
  done
done
