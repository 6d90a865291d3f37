#!/usr/bin/env bash
# What the Debian package holds beyond files of the source tree, generated from a built binary:
# shell completions and the man page (both from its clap definitions: `interceptor completions`,
# `interceptor man`), and the unit with ExecStart= on the package's /usr/bin/interceptor
# (interceptor/packaging/interceptor.service names `install`'s /usr/local/bin/interceptor; the
# rest of the text is the same file). `make deb` runs it before cargo-deb.
#
# Usage: scripts/deb-assets.sh BINARY OUT_DIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:?usage: deb-assets.sh BINARY OUT_DIR}"
OUT="${2:?usage: deb-assets.sh BINARY OUT_DIR}"
if [ ! -x "$BIN" ]; then
  echo "deb-assets: no binary at $BIN (make build first)" >&2
  exit 1
fi

mkdir -p "$OUT"
"$BIN" completions bash >"$OUT/interceptor.bash"
"$BIN" completions zsh >"$OUT/_interceptor"
"$BIN" completions fish >"$OUT/interceptor.fish"
# interceptor(8) and a page per subcommand, which its SUBCOMMANDS section names. Debian ships
# man pages compressed; -n keeps the archive byte-identical between builds.
rm -rf "$OUT/man"
"$BIN" man --dir "$OUT/man"
gzip -9n "$OUT"/man/*.8

UNIT="$ROOT/interceptor/packaging/interceptor.service"
sed 's|/usr/local/bin/interceptor|/usr/bin/interceptor|g' "$UNIT" >"$OUT/interceptor.service"
if ! grep -q '^ExecStart=/usr/bin/interceptor ' "$OUT/interceptor.service"; then
  echo "deb-assets: $UNIT has no ExecStart=/usr/local/bin/interceptor to point at /usr/bin" >&2
  exit 1
fi
