#!/usr/bin/env bash
# HTTP section of `make bench` (scripts/bench.sh runs it; it also runs alone), issue 18's goals:
#   requests/s   `loadgen http-load`: HTTP_REQUESTS GETs of a small JSON record (~170 bytes)
#                over 8 keep-alive connections (goal: >= 0.75x of direct)
#   large bodies the same client, one connection, fetching a large body HTTP_LARGE_REQUESTS
#                times: a JSON array of HTTP_JSON_BYTES (application/json: the gateway buffers
#                it whole to mask it, up to its 8 MiB limit) and JSON lines of HTTP_NDJSON_BYTES
#                (application/x-ndjson: masked line by line as it streams) (goal: >= 0.6x)
# Upstream: `loadgen http-serve` on 127.0.0.3 (hyper, bodies from memory; every record has an
# email, every fourth a card number). Paths: direct; `interceptor exec` with an http target
# (127.0.0.4 -> 127.0.0.3, journal on, a credential header injected as in production) under
# the allow-all policy (no masking) and under the shipped default policy (GET allowed, its
# [[mask]] detectors on). A reference second hop, as pgbouncer is for PostgreSQL: nginx as a
# plain reverse proxy (127.0.0.5 -> 127.0.0.3, upstream keep-alive, the same header injected, no
# journal, no policy, no masking), so the ratios also read against what any proxy costs on the
# same 2 cores. HTTP_ROUNDS rounds (default 3) alternate the paths; medians, client-
# timed, go to $BENCH_DOC between the http-bench markers, the ratios to the summary.
# Loopback only; every load has a fixed count and a time bound (HTTP_SECONDS, loadgen caps 60).
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init http
ROUNDS="${HTTP_ROUNDS:-$(sized 3 1)}"
REQUESTS="${HTTP_REQUESTS:-$(sized 30000 300)}"
JSON_BYTES="${HTTP_JSON_BYTES:-$(sized 7000000 1000000)}"
NDJSON_BYTES="${HTTP_NDJSON_BYTES:-$(sized 40000000 1000000)}"
LARGE_REQUESTS="${HTTP_LARGE_REQUESTS:-$(sized 10 2)}"
SECONDS_CAP="${HTTP_SECONDS:-$(sized 30 15)}"

PORT="$(free_port 127.0.0.3)"
UPSTREAM="127.0.0.3:$PORT"
DIALED="127.0.0.4:$PORT"
bench_spawn "$LOADGEN" http-serve --addr "$UPSTREAM" --json-bytes "$JSON_BYTES" --ndjson-bytes "$NDJSON_BYTES"
wait_listening "$UPSTREAM"

# nginx: two workers (one per core, as `auto` gives here), streaming (no buffering to disk),
# every temporary path and log in $WORK; `-e` keeps it from opening the packaged error log.
NGINX_ADDR="127.0.0.5:$PORT"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream api { server $UPSTREAM; keepalive 32; keepalive_requests 100000000; }
  server {
    listen $NGINX_ADDR;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-token";
      proxy_buffering off;
    }
  }
}
CONF
if command -v nginx >/dev/null 2>&1; then
  bench_spawn nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
  wait_listening "$NGINX_ADDR"
else
  say "nginx is not installed (scripts/bootstrap.sh installs it): its rows are left out"
fi

echo "Bearer bench-token" >"$WORK/token"
chmod 600 "$WORK/token"
http_config() { # policy
  gateway_common_config
  cat <<CONF
[[target]]
name = "api"
protocol = "http"
intercept = ["$DIALED"]
upstream = "$UPSTREAM"
policy = "$1"
[target.credentials]
header = "Authorization"
value_file = "$WORK/token"
CONF
}
http_config "$BENCH_ROOT/policies/examples/journal-only.toml" >"$WORK/plain.toml"
http_config "$BENCH_ROOT/policies/default.toml" >"$WORK/policy.toml"

run() { # path workload, then loadgen http-load arguments
  local path=$1 workload=$2 addr="$DIALED" wrap=(in_gateway "$WORK/$1.toml")
  shift 2
  [ "$path" = direct ] && addr="$UPSTREAM" wrap=(timeout 120)
  if [ "$path" = nginx ]; then
    command -v nginx >/dev/null 2>&1 || return 0
    addr="$NGINX_ADDR" wrap=(timeout 120)
  fi
  local out
  out="$("${wrap[@]}" "$LOADGEN" http-load --addr "$addr" --seconds "$SECONDS_CAP" "$@" \
    2>>"$WORK/stderr.log" | tail -n1)" || true
  echo "$path $workload $out" >>"$WORK/results"
}
for i in $(seq "$ROUNDS"); do
  for path in direct nginx plain policy; do
    say "round $i/$ROUNDS, $path"
    run "$path" small --path /small --connections 8 --requests "$REQUESTS"
    run "$path" json --path /large.json --connections 1 --requests "$LARGE_REQUESTS"
    run "$path" ndjson --path /large.ndjson --connections 1 --requests "$LARGE_REQUESTS"
  done
done
# The small record as the agent received it under the default policy, for the record.
in_gateway "$WORK/policy.toml" curl -sS --max-time 10 "http://$DIALED/small" >"$WORK/sample" 2>/dev/null || true

bench_python "$WORK" "$ROUNDS" "$REQUESTS" "$JSON_BYTES" "$NDJSON_BYTES" "$LARGE_REQUESTS" "$SECONDS_CAP" <<'PY'
work, rounds, requests, json_bytes, ndjson_bytes, large, cap = sys.argv[1:8]
expect = {"small": int(requests), "json": int(large), "ndjson": int(large)}
got = {}
for line in open(os.path.join(work, "results")):
    path, workload, *rest = line.split(" ", 2) + [""]
    try:
        r = json.loads(rest[0])
    except ValueError:
        continue  # a failed run is left out (and shows as "failed")
    if r.get("ops", 0) > 0:
        got.setdefault((path, workload), []).append(r)
def fig(path, workload, key):
    runs = got.get((path, workload))
    return median([r[key] for r in runs]) if runs else None
labels = [("direct", "direct"), ("nginx", "nginx reverse proxy (no journal, no policy, no masking)"),
          ("plain", "interceptor, allow-all (journal, no masking)"),
          ("policy", "interceptor, default policy (GET allowed, masking on)")]
small = ["| path | requests/s | ratio to direct | ratio to nginx | latency p50 / p99 (ms) | requests done |",
         "|---|---|---|---|---|---|"]
rps = {}
for path, label in labels:
    v = fig(path, "small", "ops_per_sec")
    if v is None:
        small.append(f"| {label} | failed | | | | |")
        continue
    d = fig("direct", "small", "ops_per_sec")
    n = fig("nginx", "small", "ops_per_sec")
    rps[path] = (v / d if d else 0.0, v, v / n if n else None)
    done = int(fig(path, "small", "ops"))
    to_nginx = f"{rps[path][2]:.2f}×" if rps[path][2] is not None else "n/a"
    small.append(f"| {label} | {v:,.0f} | {rps[path][0]:.2f}× | {to_nginx} | "
                 f"{fig(path, 'small', 'p50_ms'):.3f} / "
                 f"{fig(path, 'small', 'p99_ms'):.3f} | {done:,} of {int(requests):,} |")
big = ["| body | path | MB/s | ratio to direct | MB per run |", "|---|---|---|---|---|"]
mbps = {}
bodies = {"json": f"JSON array, {int(json_bytes) / 1e6:,.1f} MB (`application/json`)",
          "ndjson": f"JSON lines, {int(ndjson_bytes) / 1e6:,.1f} MB (`application/x-ndjson`)"}
for workload, body in bodies.items():
    for path, label in labels:
        v = fig(path, workload, "mb_per_sec")
        if v is None:
            big.append(f"| {body} | {label} | failed | | |")
            continue
        d = fig("direct", workload, "mb_per_sec")
        mbps[(path, workload)] = (v / d if d else 0.0, v)
        big.append(f"| {body} | {label} | {v:,.0f} | {mbps[(path, workload)][0]:.2f}× | "
                   f"{fig(path, workload, 'bytes') / 1e6:,.1f} |")
sample = read_stripped(os.path.join(work, "sample"))
cmd = (f"`scripts/bench-http.sh` (HTTP_ROUNDS={rounds} HTTP_REQUESTS={requests} "
       f"HTTP_JSON_BYTES={json_bytes} HTTP_NDJSON_BYTES={ndjson_bytes} HTTP_LARGE_REQUESTS={large} "
       f"HTTP_SECONDS={cap}): `loadgen http-serve` on 127.0.0.3, `loadgen http-load --connections 8 "
       f"--requests {requests} --path /small` and `--connections 1 --requests {large} --path "
       "/large.json|/large.ndjson`, client-timed, direct, through nginx and under `interceptor exec`")
section = section_header(
    "HTTP (issue 18)", cmd,
    f"Median of {rounds} rounds (paths alternate). Upstream: hyper, bodies from memory; each "
    "record has an email, every fourth a valid card number.",
    "Gateway: `interceptor exec`, an `http` target (127.0.0.4 → 127.0.0.3), journal on (one "
    "`http_request` event committed before each request is forwarded, its result after), an "
    "`Authorization` header injected from a file; allow-all = `policies/examples/journal-only.toml`, "
    "default policy = `policies/default.toml` (GET allowed; its `[[mask]]` detectors mask "
    "response bodies).",
    "nginx: a plain reverse proxy on 127.0.0.5 (two workers, upstream keep-alive, the same "
    "`Authorization` header set, no buffering, no log), the cost of any second hop on these "
    "2 cores, as pgbouncer is for PostgreSQL.",
    "Goals (issue 18): requests/s, 8 keep-alive connections, small JSON, ≥ 0.75× direct; a large "
    "masked JSON body ≥ 0.6× direct.")
section += ["### Requests per second, 8 keep-alive connections, small JSON", "", *small, "",
            "### Large bodies, one connection", "", *big, "",
            "The small record as the agent received it, default policy: `" + sample + "`"]
write_section("http-bench", section)
for path, how in [("plain", "allow-all"), ("policy", "default policy")]:
    r = rps.get(path)
    goal(f"http-rps-{path}",
         f"HTTP requests/s, 8 keep-alive connections, small JSON, interceptor {how} vs direct",
         (f"{r[0]:.2f}× ({r[1]:,.0f} requests/s" + (f"; {r[2]:.2f}× of nginx)" if r[2] else ")"))
         if r else "failed", "≥ 0.75× (issue 18)",
         bool(r) and r[0] >= 0.75)
for workload, what in [("json", f"{int(json_bytes) / 1e6:,.0f} MB JSON body"),
                       ("ndjson", f"{int(ndjson_bytes) / 1e6:,.0f} MB JSON-lines stream")]:
    r = mbps.get(("policy", workload))
    goal(f"http-{workload}-masked",
         f"{what} through the interceptor (default policy, masking on) vs direct",
         f"{r[0]:.2f}× ({r[1]:,.0f} MB/s)" if r else "failed", "≥ 0.6× (issue 18)",
         bool(r) and r[0] >= 0.6)
PY
