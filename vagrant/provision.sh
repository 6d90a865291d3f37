#!/usr/bin/env bash
# Provisioning for the Debian 12 (bookworm) development VM: vagrant/Vagrantfile runs it as root.
# Idempotent: every step checks before it installs, so `vagrant provision` (or running this script
# again inside the VM with `sudo bash /work/interceptor/vagrant/provision.sh`) is always safe.
#
#   1. base packages (C toolchain for rusqlite's bundled SQLite, curl, make, ...);
#   2. LLVM 22: Debian 12 ships it through bookworm-security; if this box's apt sources do not
#      offer it, the apt.llvm.org repository for bookworm is added;
#   3. rustup for root (stable, then nightly --profile minimal with rust-src) if missing;
#   4. checks that cgroup v2 (the unified hierarchy, Debian 12's default) is mounted;
#   5. scripts/bootstrap.sh (apt peers, bpf-linker, Python venv), then `make build`;
#   6. `interceptor install` (the systemd service) when the binary has that subcommand;
#   7. `make demo`.
# Only loopback is used at run time; the VM needs no private network.
set -euo pipefail

log() { printf '\033[1mprovision:\033[0m %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  die "run as root (the Vagrantfile does; inside the VM: sudo bash $0)"
fi

# The repository: INTERCEPTOR_REPO (the Vagrantfile sets it), else the checkout this script sits
# in, else the synced folder's default location. Vagrant uploads the script to a temporary path,
# so its own location is only a hint.
SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${INTERCEPTOR_REPO:-}" ]; then
  REPO="$INTERCEPTOR_REPO"
elif [ -f "$SELF_DIR/../scripts/bootstrap.sh" ]; then
  REPO="$(cd "$SELF_DIR/.." && pwd)"
else
  REPO=/work/interceptor
fi
[ -f "$REPO/scripts/bootstrap.sh" ] || die "$REPO/scripts/bootstrap.sh not found: is the repository synced?"

# Vagrant's privileged shell may keep the vagrant user's HOME; rustup, cargo and the Makefile
# must all agree on root's.
HOME="$(getent passwd root | cut -d: -f6)"
export HOME
export PATH="$HOME/.cargo/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
has_candidate() {
  local c
  c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  [ -n "$c" ] && [ "$c" != "(none)" ]
}
apt_install() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# --- 1. base packages ---------------------------------------------------------------------------
apt_install build-essential pkg-config make git curl ca-certificates gnupg rsync

# --- 2. LLVM 22 ---------------------------------------------------------------------------------
# bootstrap.sh installs llvm-22-dev and libpolly-22-dev with plain apt-get. Debian 12 carries
# LLVM 22 in bookworm-security; a box whose sources lack it gets apt.llvm.org instead.
LLVM_LIST=/etc/apt/sources.list.d/llvm-22.list
LLVM_KEY=/usr/share/keyrings/apt.llvm.org.gpg
if ! installed llvm-22-dev || ! installed libpolly-22-dev; then
  apt_update
  if ! has_candidate llvm-22-dev || ! has_candidate libpolly-22-dev; then
    if [ ! -f "$LLVM_LIST" ]; then
      log "llvm-22 is not in this box's apt sources: adding apt.llvm.org (llvm-toolchain-bookworm-22)"
      curl -fsSL https://apt.llvm.org/llvm-snapshot.gpg.key | gpg --dearmor --yes -o "$LLVM_KEY"
      echo "deb [signed-by=$LLVM_KEY] https://apt.llvm.org/bookworm/ llvm-toolchain-bookworm-22 main" >"$LLVM_LIST"
    fi
    apt-get update -qq
    has_candidate llvm-22-dev || die "llvm-22-dev is still not installable; check $LLVM_LIST"
  fi
  apt_install llvm-22-dev libpolly-22-dev
fi

# --- 3. rustup ----------------------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  log "installing rustup (stable, minimal profile) for root"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable
fi
if ! rustup toolchain list | grep -q '^stable'; then
  rustup toolchain install stable --profile minimal
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly (minimal profile) with rust-src"
  rustup toolchain install nightly --profile minimal -c rust-src
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain nightly
fi

# --- 4. cgroup v2 -------------------------------------------------------------------------------
# The capture attaches eBPF programs to cgroup v2. Debian 12 boots with the unified hierarchy;
# a box changed to the legacy one needs systemd.unified_cgroup_hierarchy=1 and a reboot.
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)" != "cgroup2fs" ]; then
  die "cgroup v2 is not mounted at /sys/fs/cgroup: add systemd.unified_cgroup_hierarchy=1 to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, then vagrant reload --provision"
fi
if [ ! -e /sys/kernel/btf/vmlinux ]; then
  log "warning: /sys/kernel/btf/vmlinux is missing; the capture needs a kernel with BTF"
fi

# --- 5. bootstrap and build ---------------------------------------------------------------------
cd "$REPO"
log "scripts/bootstrap.sh"
scripts/bootstrap.sh
log "make build"
make build

# --- 6. the service -----------------------------------------------------------------------------
BIN="$REPO/target/release/interceptor"
if "$BIN" install --help >/dev/null 2>&1; then
  log "interceptor install"
  "$BIN" install
else
  log "note: this build has no \`interceptor install\` subcommand; the service was not installed"
fi

# --- 7. the demo --------------------------------------------------------------------------------
log "make demo"
make demo

log "done. Run the demo again with:"
log "  vagrant ssh -c 'cd /work/interceptor && sudo make demo'"
log "and the whole test suite with:"
log "  vagrant ssh -c 'cd /work/interceptor && sudo make test'"
