# shellcheck shell=bash
# Sourced by every scripts/bench*.sh: what the sections of `make bench` share.
#
# - Root (eBPF, cgroups, initdb as the postgres user): re-executes the calling script with sudo.
# - Binaries: $INTERCEPTOR_BIN and $LOADGEN when set; else target/release (built first), or
#   target/debug under BENCH_SMOKE=1 (in $CARGO_TARGET_DIR when set).
# - One work directory per `make bench` ($BENCH_WORK, which the orchestrator exports to its
#   sections, each working in a subdirectory), or one per section run alone, made in
#   ${BENCH_TMP:-/tmp} (which the postgres user must be able to enter); removed on exit.
# - One throw-away PostgreSQL 15 on 127.0.0.1 (trust, fsync off, database `bench`), started by
#   whoever needs it first ($BENCH_PGPORT is then exported) and stopped by the process that
#   started it. pgbouncer (session pooling) and gateway configurations for it.
# - Reports: each section rewrites its own block of $BENCH_DOC (docs/performance.md, or a copy
#   under BENCH_SMOKE=1) between `<!-- NAME:begin … -->` and `<!-- NAME:end -->`, and appends
#   its goal rows to $BENCH_SUMMARY, from which scripts/bench.sh writes the summary table.
# - BENCH_SMOKE=1: tiny counts and durations everywhere (`sized FULL SMOKE` picks a default).
# Loopback only: every address is in 127.0.0.0/8. Every process started here is stopped by the
# EXIT trap, also on failure.

set -euo pipefail
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
export PATH="$HOME/.cargo/bin:$PATH"
export BENCH_SMOKE="${BENCH_SMOKE:-0}"
PGBIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# Plaintext on every path. The gateway offers TLS on the agent's leg and libpq's default
# (`prefer`) takes it, while the throw-away server and pgbouncer have no certificate: comparing
# an encrypted path with plaintext ones would charge TLS to the gateway (about 10% of its CPU
# per pgbench transaction in profiles).
export PGSSLMODE=disable
BENCH_PIDS=()
BENCH_OWNS_WORK=0

smoke() { [ "$BENCH_SMOKE" = 1 ]; }
sized() { if smoke; then echo "$2"; else echo "$1"; fi; }
say() { echo "bench ${BENCH_SECTION:-}: $*" >&2; }

# The binaries under test: given ones as they are, else this checkout's, freshly built.
bench_binaries() {
  local profile=release flags=(--release) target="${CARGO_TARGET_DIR:-$BENCH_ROOT/target}"
  if smoke; then profile=debug flags=(); fi
  if [ -z "${INTERCEPTOR_BIN:-}" ]; then
    (cd "$BENCH_ROOT" && cargo build "${flags[@]}" -q -p interceptor)
    INTERCEPTOR_BIN="$target/$profile/interceptor"
  fi
  if [ -z "${LOADGEN:-}" ]; then
    (cd "$BENCH_ROOT" && cargo build "${flags[@]}" -q -p interceptor-bench --bin loadgen)
    LOADGEN="$target/$profile/loadgen"
  fi
  export INTERCEPTOR_BIN LOADGEN
  BIN="$INTERCEPTOR_BIN"
  [ -x "$BIN" ] && [ -x "$LOADGEN" ] || { say "missing $BIN or $LOADGEN"; exit 1; }
}

# bench_init SECTION: binaries, work directory ($WORK), report paths, clean-up trap.
bench_init() {
  BENCH_SECTION=$1
  trap bench_cleanup EXIT
  # A signal ends the script through exit, so the EXIT trap still cleans up.
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP
  bench_binaries
  if [ -z "${BENCH_WORK:-}" ] || [ ! -d "$BENCH_WORK" ]; then
    BENCH_WORK="$(mktemp -d "${BENCH_TMP:-/tmp}/interceptor-bench.XXXXXX")"
    BENCH_OWNS_WORK=1
    chmod 755 "$BENCH_WORK"
  fi
  export BENCH_WORK BENCH_SUMMARY="$BENCH_WORK/summary.jsonl"
  WORK="$BENCH_WORK/$BENCH_SECTION"
  mkdir -p "$WORK"
  if [ -z "${BENCH_DOC:-}" ]; then
    BENCH_DOC="$BENCH_ROOT/docs/performance.md"
    if smoke; then BENCH_DOC="$BENCH_WORK/performance.md"; fi
  fi
  [ -f "$BENCH_DOC" ] || cp "$BENCH_ROOT/docs/performance.md" "$BENCH_DOC"
  export BENCH_DOC
}

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${BENCH_BOUNCER:-}" ] && [ -f "$BENCH_BOUNCER/bouncer.pid" ]; then
    kill "$(cat "$BENCH_BOUNCER/bouncer.pid")" 2>/dev/null || true
  fi
  if [ "${BENCH_PG_OWNER:-}" = "$$" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$BENCH_WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ "$BENCH_OWNS_WORK" = 1 ]; then rm -rf "$BENCH_WORK"; fi
}

# bench_spawn CMD…: runs CMD in the background until the script ends.
bench_spawn() {
  "$@" >/dev/null 2>>"$WORK/spawned.log" &
  BENCH_PIDS+=("$!")
}

# bench_forget PID: a process the script has waited for is no longer the trap's to stop.
bench_forget() {
  local pid kept=()
  for pid in "${BENCH_PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  BENCH_PIDS=("${kept[@]}")
}

free_port() { # host
  /usr/bin/python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

wait_listening() { # host:port, within 10 s
  local i
  for i in $(seq 100); do
    # grep without -q reads everything: an early exit would fail ss (and pipefail) with SIGPIPE.
    ss -Hltn "( sport = :${1##*:} )" | grep -F "$1" >/dev/null && return 0
    sleep 0.1
  done
  say "nothing listens on $1"
  return 1
}

# One PostgreSQL for the whole run: trust auth, fsync off, room for every section's clients.
pg_ensure() {
  [ -n "${BENCH_PGPORT:-}" ] && return 0
  local dir="$BENCH_WORK/pg"
  mkdir -p "$dir"
  chown postgres "$dir"
  BENCH_PGPORT="$(free_port 127.0.0.1)"
  say "starting PostgreSQL on 127.0.0.1:$BENCH_PGPORT"
  runuser -u postgres -- "$PGBIN/initdb" -D "$dir/data" --auth=trust -U postgres >/dev/null
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $BENCH_PGPORT
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
CONF
  BENCH_PG_OWNER=$$
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w start >/dev/null
  export BENCH_PGPORT
  psql_bench -d postgres -qc "CREATE DATABASE bench" >/dev/null
  # The gateway logs in with credentials the client never sees; trust ignores the password.
  echo -n "unused: trust auth" >"$dir/password"
  chmod 600 "$dir/password"
}

psql_bench() { psql -X -h 127.0.0.1 -p "$BENCH_PGPORT" -U postgres -d bench "$@"; }

# pgbouncer in session mode in front of the database `bench`: bouncer_start POOL_SIZE.
bouncer_start() {
  BENCH_BOUNCER="$WORK/bouncer"
  BOUNCER_PORT="$(free_port 127.0.0.1)"
  mkdir -p "$BENCH_BOUNCER"
  cat >"$BENCH_BOUNCER/bouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$BENCH_PGPORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $BENCH_BOUNCER/users.txt
pool_mode = session
max_client_conn = $(($1 + 20))
default_pool_size = $1
pidfile = $BENCH_BOUNCER/bouncer.pid
logfile = $BENCH_BOUNCER/bouncer.log
CONF
  echo '"postgres" ""' >"$BENCH_BOUNCER/users.txt"
  chown -R postgres "$BENCH_BOUNCER"
  runuser -u postgres -- pgbouncer -d "$BENCH_BOUNCER/bouncer.ini"
  wait_listening "127.0.0.1:$BOUNCER_PORT"
}

# The start of every gateway configuration: journal and state in $WORK.
gateway_common_config() {
  cat <<CONF
[journal]
path = "$WORK/journal.db"
[state]
dir = "$WORK/state"
CONF
}

# gateway_config POLICY: an `interceptor` configuration (on stdout) whose target `bench` sends
# 127.0.0.2:PGPORT to the PostgreSQL above, judged by POLICY, journal and state in $WORK.
gateway_config() {
  gateway_common_config
  cat <<CONF
[[target]]
name = "bench"
protocol = "postgres"
intercept = ["127.0.0.2:$BENCH_PGPORT"]
upstream = "127.0.0.1:$BENCH_PGPORT"
policy = "$1"
[target.credentials]
user = "postgres"
password_file = "$BENCH_WORK/pg/password"
CONF
}

# in_gateway CONFIG CMD…: CMD under `interceptor exec` (which forwards signals to it), with a
# fresh journal each time, stopped after $BENCH_TIMEOUT seconds (default 300).
in_gateway() {
  local config=$1
  shift
  rm -rf "$WORK"/journal.db*
  timeout "${BENCH_TIMEOUT:-300}" "$BIN" --config "$config" exec --user root -- "$@"
}

# The shipped default policy, except that writes are allowed instead of held for a human
# (nobody approves thousands of TPC-B writes a second); masking and every deny rule unchanged.
writes_allowed_policy() {
  local file="$WORK/default-writes-allowed.toml"
  # The SQL rule `writes-need-review` turned to allow: its `decision` is the line after its name.
  sed -e '/^name = "writes-need-review"$/{n;s/^decision = "review"$/decision = "allow"/}' \
    "$BENCH_ROOT/policies/default.toml" >"$file"
  if ! grep -A1 '^name = "writes-need-review"$' "$file" | grep -q '^decision = "allow"$'; then
    say "policies/default.toml has no \`writes-need-review\` rule with its decision next: update writes_allowed_policy"
    return 1
  fi
  echo "$file"
}

# bench_python ARGS… <<'PY' … PY: Python with the report helpers below.
bench_python() { /usr/bin/python3 -c "$BENCH_PY"$'\n'"$(cat)" "$@"; }

BENCH_PY='
import datetime, glob, json, os, platform, re, statistics, sys

DOC = os.environ["BENCH_DOC"]
SUMMARY = os.environ.get("BENCH_SUMMARY")
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}, kernel {platform.release()}"

def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

def header(title, command, *notes):
    """A section heading with date, machine and the exact command(s)."""
    smoke = " (**smoke run**: tiny counts, debug binaries; figures mean nothing)" if SMOKE else ""
    return [f"## {title}", "", f"- Date: {now()}{smoke}", f"- Machine: {machine()}",
            f"- Command: {command}", *[f"- {n}" for n in notes], ""]

def write_section(name, lines, top=False):
    """Replaces the block between the markers NAME:begin and NAME:end in DOC; a missing block is
    added at the end, or before the first second-level heading with top=True."""
    block = "\n".join([f"<!-- {name}:begin (written by make bench) -->", *lines, f"<!-- {name}:end -->"])
    text = open(DOC).read()
    marked = re.compile(r"<!-- %s:(?:begin|start)[^>]*-->.*?<!-- %s:end -->" % (name, name), re.S)
    if marked.search(text):
        text = marked.sub(lambda _: block, text, count=1)
    elif top and "\n## " in text:
        at = text.index("\n## ") + 1
        text = text[:at] + block + "\n\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    open(DOC, "w").write(text)
    print(block)

def goal(key, measurement, figure, target, met):
    """One row of the summary: met is True/False, or None when there is no goal (reported)."""
    if SUMMARY:
        with open(SUMMARY, "a") as f:
            f.write(json.dumps({"key": key, "measurement": measurement, "figure": figure,
                                "goal": target, "met": met}) + "\n")

def section_header(title, command, *notes):
    """header() for a section: its command, after the one that ran it, also goes to the summary."""
    if SUMMARY:
        with open(SUMMARY, "a") as f:
            f.write(json.dumps({"command": command}) + "\n")
    via = os.environ.get("BENCH_COMMAND")
    return header(title, f"`{via}` → {command}" if via else command, *notes)

def met(ok):
    return "—" if ok is None else ("met" if ok else "**not met**")

def median(values):
    return statistics.median(values) if values else 0.0

def read_stripped(path):
    """The text of a file, stripped, or an empty string when it cannot be read."""
    try:
        return open(path).read().strip()
    except OSError:
        return ""
'
