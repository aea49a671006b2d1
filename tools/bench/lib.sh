# Sourced by the single-server bench scripts (cpu.sh, syscalls.sh, tls.sh): the start-up
# every one of them needs, in one place. Expects the current directory to be the repository
# root and $0 to be the calling script.

# Exits with what to install when any of the commands named is missing.
bench_needs() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null ||
      { echo "$(basename "$0") needs $tool (apt-get install -y $tool)" >&2; exit 1; }
  done
}

# The release binaries the run uses ($RELAY and $LOADGEN override them), built when missing;
# a fresh JWT secret; a directory for the run's files, named by $1.
bench_setup() {
  relay=${RELAY:-target/release/pulsar-relay}
  loadgen=${LOADGEN:-target/release/pulsar-loadgen}
  [ -x "$relay" ] && [ -x "$loadgen" ] || cargo build --release
  secret=$(head -c 32 /dev/urandom | base64)
  out=$(mktemp -d "/tmp/pulsar-bench-$1.XXXXXX")
  server=""
  trap stop EXIT
}

# Stops the server the script started last ($server), if any.
stop() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
