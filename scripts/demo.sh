#!/usr/bin/env bash
# The main job, end to end, on embedded defaults plus a throw-away journal:
#   1. a TCP echo server on 127.0.0.2 (outside the capture, like any real upstream);
#   2. `interceptor exec` runs a python client that dials it; the client's connect() is steered
#      into the gateway, journaled, relayed, and getpeername() still shows 127.0.0.2;
#   3. `interceptor sessions list` (table and --json) shows what the journal recorded.
# Needs root (eBPF + cgroups): re-executes itself through sudo otherwise. `make demo` runs it
# after `make build`; INTERCEPTOR_BIN overrides the binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root for eBPF and cgroups; re-running with sudo" >&2
  exec sudo --preserve-env=INTERCEPTOR_BIN -- bash "$ROOT/scripts/demo.sh" "$@"
fi

BIN="${INTERCEPTOR_BIN:-$ROOT/target/release/interceptor}"
PYTHON=/usr/bin/python3
ECHO_HOST=127.0.0.2

heading() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

if [ ! -x "$BIN" ]; then
  echo "demo: $BIN not found; run \`make build\` first" >&2
  exit 1
fi

WORK="$(mktemp -d /tmp/interceptor-demo.XXXXXX)"
ECHO_PID=""
cleanup() {
  if [ -n "$ECHO_PID" ]; then
    kill "$ECHO_PID" 2>/dev/null || true
    wait "$ECHO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. echo server ---------------------------------------------------------------------------
heading "1. echo server on $ECHO_HOST (not captured)"
# Binds an ephemeral port and publishes it through a file (written then renamed: never half-read).
"$PYTHON" -c '
import os, socket, sys, threading
host, port_file = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, 0))
srv.listen(16)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)

def echo(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)

while True:
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
' "$ECHO_HOST" "$WORK/echo.port" &
ECHO_PID=$!

for _ in $(seq 1 50); do
  [ -s "$WORK/echo.port" ] && break
  if ! kill -0 "$ECHO_PID" 2>/dev/null; then
    echo "demo: the echo server exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -s "$WORK/echo.port" ]; then
  echo "demo: the echo server did not start listening within 5 s" >&2
  exit 1
fi
ECHO_PORT="$(cat "$WORK/echo.port")"
echo "listening on $ECHO_HOST:$ECHO_PORT (pid $ECHO_PID)"

# --- 2. config --------------------------------------------------------------------------------
CONFIG="$WORK/config.toml"
cat >"$CONFIG" <<EOF
# Everything else comes from the embedded defaults (capture mode "all" for exec).
[journal]
path = "$WORK/journal.db"
EOF
heading "2. config ($CONFIG)"
cat "$CONFIG"

# --- 3. the captured client -------------------------------------------------------------------
CLIENT='
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=10) as s:
    s.sendall(b"hello through the gate\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print("client: echo        ->", data.decode(errors="replace").rstrip())
    print("client: getpeername ->", s.getpeername())
'
heading "3. interceptor exec -- python3 client -> $ECHO_HOST:$ECHO_PORT"
echo "\$ $BIN --config $CONFIG exec -- $PYTHON -c '<client>' $ECHO_HOST $ECHO_PORT"
status=0
"$BIN" --config "$CONFIG" exec -- "$PYTHON" -c "$CLIENT" "$ECHO_HOST" "$ECHO_PORT" || status=$?
if [ "$status" -ne 0 ]; then
  echo "demo: interceptor exec exited with status $status; the journal below shows what was recorded" >&2
fi

# --- 4. the journal ---------------------------------------------------------------------------
# The first failure decides the exit status; later steps still run so the output is complete.
keep_first_failure() { if [ "$status" -eq 0 ]; then status=$1; fi; }

heading "4. interceptor sessions list"
echo "\$ $BIN --config $CONFIG sessions list"
"$BIN" --config "$CONFIG" sessions list || keep_first_failure $?

heading "5. interceptor sessions list --json"
echo "\$ $BIN --config $CONFIG sessions list --json"
"$BIN" --config "$CONFIG" sessions list --json || keep_first_failure $?

if [ "$status" -eq 0 ]; then
  heading "done: the connection was captured, journaled and relayed"
fi
exit "$status"
