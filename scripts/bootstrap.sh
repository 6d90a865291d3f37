#!/usr/bin/env bash
# Idempotent machine set-up for building and testing interceptor on Debian.
# Safe to run again: every step checks before it installs. CI and `make demo`/`make test` call it.
# Works from any cwd: everything is resolved from this script's own location.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '\033[1mbootstrap:\033[0m %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System packages: the eBPF linker's LLVM, and the real peers the tests talk to.
# libclang-dev and protobuf-compiler build pg_query (PostgreSQL's own parser: bindgen + prost).
# systemd-container and debootstrap boot a real systemd for tests/tests/systemd.rs (installed
# together with systemd, so the versions match).
# `make deb` and tests/tests/package.rs: dpkg-dev (dpkg-shlibdeps for the package's Depends:),
# systemd (systemd-analyze verify of the packaged unit), groff-base (renders the man page).
# openssh-server: tests/tests/trust.rs runs its own sshd on a 127.0.0.x port. Only the binary
# is wanted: when this script installs the package, it stops and disables the ssh.service
# Debian starts with it, so bootstrapping never leaves a new SSH server listening.
# nginx-light: `make bench` measures it as a plain reverse proxy, the HTTP section's reference
# second hop (as pgbouncer is PostgreSQL's); its nginx.service is stopped and disabled likewise.
# mariadb-server: tests/tests/mysql.rs runs its own mariadbd (private datadir, 127.0.0.1, a free
# port); likewise the mariadb.service Debian starts with the package is stopped and disabled.
# sysbench: `make bench` runs its oltp_read_only against that MariaDB, direct and through the gateway.
APT_PACKAGES=(llvm-22-dev libpolly-22-dev libzstd-dev libclang-dev protobuf-compiler postgresql pgbouncer python3-venv iproute2 procps openssl util-linux tmux rsyslog sqlite3 dpkg-dev systemd systemd-container debootstrap groff-base openssh-server nginx-light mariadb-server sysbench)
# The units Debian starts with those packages (only their binaries are wanted).
declare -A STARTED_UNITS=([openssh-server]="ssh.service ssh.socket" [nginx-light]="nginx.service" [mariadb-server]="mariadb.service")
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    for p in "${missing[@]}"; do
      units="${STARTED_UNITS[$p]:-}"
      # shellcheck disable=SC2086 # one word per unit
      [ -z "$units" ] || $SUDO systemctl disable --now $units >/dev/null 2>&1 || true
    done
  fi
fi

if ! command -v rustup >/dev/null 2>&1 || ! command -v cargo >/dev/null 2>&1; then
  log "rustup and cargo are required (looked in \$HOME/.cargo/bin and PATH); install rustup first"
  exit 1
fi

# Nightly with rust-src: aya-build compiles the eBPF crate with -Z build-std.
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal -c rust-src
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker built against the system LLVM 22.
if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo install bpf-linker (llvm-22), about 2 minutes"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --no-default-features --features llvm-22
fi

# cargo-deb for `make deb`: pinned to a version that builds on the installed stable (1.95).
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\b"; then
  log "cargo install cargo-deb $CARGO_DEB_VERSION, about 2 minutes"
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

# cargo-fuzz for `make fuzz` (and the short fuzzing pass of `make test`): pinned like cargo-deb;
# it builds on stable, the fuzz targets themselves build on the nightly above.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\b"; then
  log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION, about 1 minute"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# Python clients for the integration tests, in a project-local venv so the system stays clean.
# The venv is built on the Debian interpreter (/usr/bin/python3), never on a per-user one such as
# pyenv under /root: tests run clients as unprivileged users, who must be able to execute it.
SYSTEM_PYTHON=/usr/bin/python3
VENV="${INTERCEPTOR_VENV:-$ROOT/.venv}"
venv_usable() {
  [ -x "$VENV/bin/python" ] \
    && grep -qx "home = $(dirname "$SYSTEM_PYTHON")" "$VENV/pyvenv.cfg" 2>/dev/null \
    && "$VENV/bin/python" -c 'import sys; sys.exit(0)' 2>/dev/null
}
if ! venv_usable; then
  log "creating python venv at $VENV with $SYSTEM_PYTHON"
  "$SYSTEM_PYTHON" -m venv --clear "$VENV"
fi
if ! "$VENV/bin/python" -c 'import psycopg, asyncpg, sqlalchemy, paramiko, asyncssh, requests, httpx, h2, websockets, pymysql, mysql.connector' 2>/dev/null; then
  log "pip install test clients"
  "$VENV/bin/python" -m pip install -q 'psycopg[binary]' asyncpg sqlalchemy paramiko asyncssh requests 'httpx[http2]' 'websockets>=12,<16' PyMySQL mysql-connector-python
fi
# The official Kubernetes client, for tests/tests/kubernetes.rs.
if ! "$VENV/bin/python" -c 'import kubernetes' 2>/dev/null; then
  log "pip install kubernetes (the official Python client)"
  "$VENV/bin/python" -m pip install -q 'kubernetes>=29'
fi
# The demo's agent (demo/agent.py): pinned, because ReplayChatCompletionClient's behaviour is
# what the demo and its test script against.
AUTOGEN_VERSION=0.7.5
if ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if all(m.version(p) == '$AUTOGEN_VERSION' for p in ('autogen-agentchat', 'autogen-ext')) else 1)
" 2>/dev/null; then
  log "pip install autogen-agentchat and autogen-ext $AUTOGEN_VERSION"
  "$VENV/bin/python" -m pip install -q "autogen-agentchat==$AUTOGEN_VERSION" "autogen-ext==$AUTOGEN_VERSION"
fi
# The MCP tests and demo step: a tool server and client from the official SDK (below 2: its
# FastMCP and streamable HTTP client are what they script against; autogen-ext's McpWorkbench
# uses the same package).
if ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if int(m.version('mcp').split('.')[0]) < 2 else 1)
" 2>/dev/null; then
  log "pip install mcp<2"
  "$VENV/bin/python" -m pip install -q 'mcp<2'
fi
log "ok"
