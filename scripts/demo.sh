#!/usr/bin/env bash
# `make demo`: the product's story end to end, on this machine, in about a minute.
#
#   1. a throw-away PostgreSQL on 127.0.0.1, seeded with a customers database (demo/seed.sql);
#   2. a real AutoGen AssistantAgent (demo/agent.py) runs under `interceptor exec` as an
#      unprivileged user. It dials 127.0.0.2 (a pretend remote host) with no password and knows
#      nothing about the interceptor. The shipped default policy applies:
#        - its SELECT is allowed, and emails and card numbers are masked in what it receives;
#        - its UPDATE is held: an operator (root here, a different uid) sees it with
#          `interceptor approvals list` and approves it, as from a second terminal;
#        - its DROP TABLE is denied;
#   3. what the agent saw, the database afterwards, and `interceptor sessions show`;
#   4. MCP: an AutoGen agent with McpWorkbench (demo/mcp_agent.py) uses a tool server built with
#      the official MCP SDK (demo/mcp_server.py) over streamable HTTP, through an `http` target:
#      its read-only tool runs and the record reaches it masked; its destructive tool is held,
#      and the operator denies it, so it never runs.
#
# Needs root (eBPF, cgroups, starting PostgreSQL as `postgres`); re-runs itself through sudo.
# Everything lives in one temporary directory, removed on exit with the server and the agent.
# Overrides: INTERCEPTOR_BIN (the binary), DEMO_AGENT_USER (who the agent runs as).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root for eBPF and cgroups; re-running with sudo" >&2
  exec sudo --preserve-env=INTERCEPTOR_BIN,DEMO_AGENT_USER -- bash "$ROOT/scripts/demo.sh" "$@"
fi

BIN="${INTERCEPTOR_BIN:-$ROOT/target/release/interceptor}"
PYTHON="${INTERCEPTOR_VENV:-$ROOT/.venv}/bin/python"
AGENT="$ROOT/demo/agent.py"
MCP_AGENT="$ROOT/demo/mcp_agent.py"
MCP_SERVER="$ROOT/demo/mcp_server.py"
MCP_DIALED=127.0.0.6 # what the MCP agent dials; the tool server listens on 127.0.0.5
DB_HOST=127.0.0.2 # what the agent dials: not where the server listens (127.0.0.1)
# The agent must not run as root: root is the approver here, and nobody approves their own request.
AGENT_USER="${DEMO_AGENT_USER:-${SUDO_USER:-nobody}}"
[ "$AGENT_USER" = root ] && AGENT_USER=nobody

heading() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN not found; run \`make build\` first"
"$PYTHON" -c 'import autogen_agentchat, autogen_ext, psycopg, mcp' 2>/dev/null \
  || die "the venv at $(dirname "$(dirname "$PYTHON")") lacks autogen, psycopg or mcp; run scripts/bootstrap.sh"
runuser -u "$AGENT_USER" -- test -x "$PYTHON" -a -r "$AGENT" -a -r "$MCP_AGENT" \
  || die "user $AGENT_USER cannot run $PYTHON $AGENT (a parent directory is not traversable?); set DEMO_AGENT_USER"

PG_BIN=/usr/lib/postgresql/15/bin
[ -x "$PG_BIN/initdb" ] || PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries not found; run scripts/bootstrap.sh"

WORK="$(mktemp -d /tmp/interceptor-demo.XXXXXX)"
chmod 755 "$WORK"
AGENT_PID=""
MCP_PID=""
PG_STARTED=""
cleanup() {
  for pid in "$AGENT_PID" "$MCP_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$PG_STARTED" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. PostgreSQL --------------------------------------------------------------------------
heading "1. PostgreSQL on 127.0.0.1, seeded with customers (demo/seed.sql)"
PORT="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/pg"
chown postgres: "$WORK/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" --auth-local=trust --auth-host=scram-sha-256 \
  --username=postgres --encoding=UTF8 --no-locale --no-sync >"$WORK/pg/initdb.log" 2>&1 \
  || { cat "$WORK/pg/initdb.log" >&2; die "initdb failed"; }
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -w -t 60 -l "$WORK/pg/postgres.log" \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $WORK/pg" start >/dev/null \
  || { cat "$WORK/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1
psql_as() { runuser -u postgres -- "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$PORT" "$@"; }

# The application's role has a real password. Only the interceptor holds it (a 0600 file).
mkdir -m 700 "$WORK/secrets"
/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$WORK/secrets/crm_app"
chmod 600 "$WORK/secrets/crm_app"
# psql interpolates :'pw' only in scripts, not in -c; the password never reaches a command line.
psql_as -U postgres -d postgres -v pw="$(cat "$WORK/secrets/crm_app")" -f - <<'SQL'
CREATE ROLE crm_app LOGIN PASSWORD :'pw';
CREATE DATABASE crm OWNER crm_app;
SQL
psql_as -U crm_app -d crm -f "$ROOT/demo/seed.sql"
echo "listening on 127.0.0.1:$PORT; role crm_app owns database crm (password known only to the interceptor)"
psql_as -U crm_app -d crm -c "SELECT * FROM customers ORDER BY id"

MCP_PORT="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.5", 0)); print(s.getsockname()[1])')"
: >"$WORK/mcp-runs.jsonl"
setsid "$PYTHON" "$MCP_SERVER" 127.0.0.5 "$MCP_PORT" "$WORK/mcp-runs.jsonl" >"$WORK/mcp-server.log" 2>&1 &
MCP_PID=$!
echo "MCP tool server (official SDK) on 127.0.0.5:$MCP_PORT: get_customer (readOnlyHint), delete_customer (destructiveHint)"

# --- 2. config ------------------------------------------------------------------------------
CONFIG="$WORK/config.toml"
cat >"$CONFIG" <<CONF
# The agent dials $DB_HOST:$PORT. The gateway relays to the real server with crm_app's
# password; the policy is the shipped default (reads allowed and masked, writes held for
# review, DDL denied).
[journal]
path = "$WORK/journal.db"

[state]
dir = "$WORK/state"

[approvals]
socket = "$WORK/run/control.sock"

[[target]]
name = "crm"
protocol = "postgres"
intercept = ["$DB_HOST:$PORT"]
upstream = "127.0.0.1:$PORT"

[target.credentials]
user = "crm_app"
password_file = "$WORK/secrets/crm_app"

# The MCP tool server: each JSON-RPC call is judged (read-only tools allowed, others reviewed).
[[target]]
name = "crm-tools"
protocol = "http"
intercept = ["$MCP_DIALED:$MCP_PORT"]
upstream = "127.0.0.5:$MCP_PORT"
CONF
heading "2. interceptor config ($CONFIG)"
cat "$CONFIG"

# --- 3. the agent ---------------------------------------------------------------------------
DSN="host=$DB_HOST port=$PORT dbname=crm user=agent sslmode=disable"
heading "3. a real AutoGen agent under interceptor exec, as user $AGENT_USER"
show "interceptor exec --user $AGENT_USER -- python demo/agent.py --dsn '$DSN'"
# Its own process group, so cleanup can stop the whole run. The transcript (stderr) shows live;
# the JSON report (stdout) is summarised at the end.
setsid "$BIN" --config "$CONFIG" exec --user "$AGENT_USER" -- \
  "$PYTHON" "$AGENT" --dsn "$DSN" --json >"$WORK/report.json" 2> >(sed -u 's/^/    /' >&2) &
AGENT_PID=$!

# --- 4. the operator ------------------------------------------------------------------------
# Waits for a held command, as an operator watching `approvals list` in a second terminal.
wait_pending() {
  pending=""
  for _ in $(seq 1 600); do
    pending="$("$BIN" --config "$CONFIG" approvals list --json 2>/dev/null \
      | /usr/bin/python3 -c 'import json, sys; l = json.load(sys.stdin); print(l[0]["id"] if l else "")' 2>/dev/null || true)"
    [ -n "$pending" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$pending" ] || die "no approval request appeared (the agent exited or 60 s passed)"
}
# Waits (60 s at most) for the agent's run to end; its status in `status`.
wait_agent() {
  for _ in $(seq 1 600); do
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$AGENT_PID" 2>/dev/null; then
    die "the agent did not finish within 60 s of the decision"
  fi
  wait "$AGENT_PID" || status=$?
  AGENT_PID=""
  [ "$status" -eq 0 ] || echo "demo: interceptor exec exited with status $status" >&2
}
wait_pending
sleep 0.5 # let the agent's transcript catch up before the operator's section
heading "4. meanwhile, an operator (root, not the agent's uid) reviews the held UPDATE"
show "interceptor approvals list"
"$BIN" --config "$CONFIG" approvals list
show "interceptor approvals approve $pending --reason 'tier change requested by support'"
"$BIN" --config "$CONFIG" approvals approve "$pending" --reason "tier change requested by support"

status=0
wait_agent

# --- 5. outcomes ----------------------------------------------------------------------------
heading "5. the three outcomes, from what the agent received"
/usr/bin/python3 - "$WORK/report.json" <<'PY' || status=1
import json, sys
calls = json.load(open(sys.argv[1]))["calls"]
select, update, drop = (calls + [None] * 3)[:3]
checks = {
    "SELECT allowed, emails and card numbers masked":
        select is not None and not select["result"].startswith("ERROR")
        and "ada.lovelace@example.com" not in select["result"]
        and "4111111111111111" not in select["result"],
    "UPDATE held, then approved by the operator": update is not None and update["result"].startswith("UPDATE 1\nNOTICE: interceptor: statement held for approval"),
    "DROP TABLE denied": drop is not None and drop["result"].startswith("ERROR 42501"),
}
for name, ok in checks.items():
    print(("  ok    " if ok else "  FAIL  ") + name)
sys.exit(0 if all(checks.values()) else 1)
PY

heading "6. the database afterwards (read directly, as its owner)"
psql_as -U crm_app -d crm -c "SELECT id, name, tier FROM customers ORDER BY id"

heading "7. the journal"
show "interceptor sessions list"
"$BIN" --config "$CONFIG" sessions list || status=1
session="$("$BIN" --config "$CONFIG" sessions list --target crm --json \
  | /usr/bin/python3 -c 'import json, sys; l = json.load(sys.stdin); print(l[-1]["id"] if l else "")')"
if [ -n "$session" ]; then
  show "interceptor sessions show $session"
  "$BIN" --config "$CONFIG" sessions show "$session" || status=1
else
  echo "demo: the journal has no session for target crm" >&2
  status=1
fi
# --- 8. MCP -----------------------------------------------------------------------------------
MCP_URL="http://$MCP_DIALED:$MCP_PORT/mcp"
heading "8. an AutoGen agent with McpWorkbench and an MCP tool server, as user $AGENT_USER"
show "interceptor exec --user $AGENT_USER -- python demo/mcp_agent.py $MCP_URL"
setsid "$BIN" --config "$CONFIG" exec --user "$AGENT_USER" -- \
  "$PYTHON" "$MCP_AGENT" "$MCP_URL" --json >"$WORK/mcp-report.json" 2> >(sed -u 's/^/    /' >&2) &
AGENT_PID=$!
wait_pending
sleep 0.5
heading "9. the operator reviews the held delete_customer and denies it"
show "interceptor approvals list"
"$BIN" --config "$CONFIG" approvals list
show "interceptor approvals deny $pending --reason 'customers are not deleted by agents'"
"$BIN" --config "$CONFIG" approvals deny "$pending" --reason "customers are not deleted by agents"
wait_agent
/usr/bin/python3 - "$WORK/mcp-report.json" "$WORK/mcp-runs.jsonl" <<'PY' || status=1
import json, sys
calls = json.load(open(sys.argv[1]))["calls"]
read, delete = (calls + [None] * 2)[:2]
runs = open(sys.argv[2]).read().splitlines()
checks = {
    "get_customer (read-only) ran, email and card number masked":
        read is not None and not read["is_error"] and "Ada Lovelace" in read["result"]
        and "ada.lovelace@example.com" not in read["result"]
        and "4111 1111 1111 1111" not in read["result"],
    "delete_customer held, denied: an error result for the agent":
        delete is not None and delete["is_error"] and "not deleted by agents" in delete["result"],
    "delete_customer never ran on the server": runs == [],
}
for name, ok in checks.items():
    print(("  ok    " if ok else "  FAIL  ") + name)
sys.exit(0 if all(checks.values()) else 1)
PY
session="$("$BIN" --config "$CONFIG" sessions list --target crm-tools --json \
  | /usr/bin/python3 -c 'import json, sys; l = json.load(sys.stdin); print(l[-1]["id"] if l else "")')"
if [ -n "$session" ]; then
  show "interceptor sessions show $session"
  "$BIN" --config "$CONFIG" sessions show "$session" || status=1
fi

show "interceptor journal verify"
"$BIN" --config "$CONFIG" journal verify || status=1

if [ "$status" -eq 0 ]; then
  heading "done: masked read, approved write, denied DROP, masked tool result, denied tool call, all journaled (cleaning up)"
fi
exit "$status"
