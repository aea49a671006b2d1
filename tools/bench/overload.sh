#!/usr/bin/env bash
# The overload curve (issue #14 item 4): what the relay does when producers offer more than
# it can take. For each storage setup, a closed-loop run finds the sustainable publish rate
# (what 64 connections get acknowledged when each waits for its answer), then open-loop runs
# offer MULTIPLES of it, each on a freshly started relay (and an emptied Valkey): accepted
# and refused messages per second (refusals by status and code), latency of what was
# accepted (from the intended send time, so time queued anywhere counts), the relay's peak
# RSS (VmHWM) and the highest Valkey backlog and cross-shard backlog seen in /metrics.
# Prints a markdown table (for benches/BENCHMARKS.md) on stdout, progress on stderr; each
# run's loadgen output and JSON stay in the directory it names.
#
#   tools/bench/overload.sh [duration=10s]
#   MULTIPLES="0.5 1 1.5 2 3"   offered rate, as multiples of the sustainable one
#   SETUPS="memory valkey valkey-memory-acks"
#   CONNECTIONS=64  TOPICS=10  WARMUP=2s
#   RELAY_ENV="PULSAR_STORAGE_MAX_PENDING_WRITES=1000"   extra relay settings, all runs
#   SUSTAINABLE=18000           skip the closed-loop runs and take this as the sustainable
#                               rate of every setup (so two builds get the same offers)
#   RELAY=path/to/pulsar-relay  another build (say, the one before a change) to measure
#
# Needs jq and curl, a release build (built when missing) and a valkey-server
# (tools/provision.sh finds or installs one).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/provision.sh
duration=${1:-10s}
warmup=${WARMUP:-2s}
multiples=${MULTIPLES:-0.5 1 1.5 2 3}
setups=${SETUPS:-memory valkey valkey-memory-acks}
connections=${CONNECTIONS:-64}
topics=${TOPICS:-10}
relay=${RELAY:-target/release/pulsar-relay}
loadgen=target/release/pulsar-loadgen
for tool in jq curl; do
  command -v "$tool" >/dev/null || { echo "overload.sh needs $tool (apt-get install -y $tool)" >&2; exit 1; }
done
[ -x "$relay" ] && [ -x "$loadgen" ] || cargo build --release
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
secret=$(head -c 32 /dev/urandom | base64)
out=$(mktemp -d /tmp/pulsar-bench-overload.XXXXXX)
relay_pid="" valkey_pid="" sampler=""
stop_relay() {
  [ -n "$sampler" ] && { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
  [ -n "$relay_pid" ] && { kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; }
  sampler="" relay_pid=""
}
stop_all() {
  stop_relay
  [ -n "$valkey_pid" ] && { kill "$valkey_pid" 2>/dev/null || true; wait "$valkey_pid" 2>/dev/null || true; }
  rm -rf "$out/valkey"
}
trap stop_all EXIT

valkey_port=$(free_port)
relay_port=$(free_port)
url=http://127.0.0.1:$relay_port
valkey_cmd() { # one inline command over bash's /dev/tcp; prints the first reply line
  local reply=
  exec 3<>"/dev/tcp/127.0.0.1/$valkey_port"
  printf '%s\r\n' "$1" >&3
  read -r -t 5 reply <&3 || true
  exec 3<&-
  echo "$reply"
}
if [[ " $setups " == *" valkey"* ]]; then
  mkdir -p "$out/valkey"
  "$(find_valkey)" ./valkey.conf --port "$valkey_port" --dir "$out/valkey" --daemonize no \
    >"$out/valkey.log" 2>&1 & valkey_pid=$!
  for _ in $(seq 100); do [[ $(valkey_cmd PING 2>/dev/null) == +PONG* ]] && break; sleep 0.1; done
fi

# Starts a fresh relay for setup $1 and a sampler of its /metrics (highest backlogs) into
# $2.metrics.
start_relay() {
  local setup=$1 name=$2 backend=memory ack=
  case $setup in
    memory) ;;
    valkey) backend=valkey ack=persisted ;;
    valkey-memory-acks) backend=valkey ack=memory ;;
    *) echo "unknown setup $setup" >&2; exit 2 ;;
  esac
  [ "$backend" = valkey ] && valkey_cmd FLUSHALL >/dev/null
  # shellcheck disable=SC2086 # RELAY_ENV is a list of assignments
  env PULSAR_JWT_SECRET_KEY="$secret" PULSAR_SERVER_HTTP_PORT="$relay_port" \
    PULSAR_STORAGE_BACKEND=$backend PULSAR_STORAGE_ACK=$ack \
    PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT="$valkey_port" ${RELAY_ENV:-} \
    "$relay" >>"$out/relay.log" 2>&1 & relay_pid=$!
  for _ in $(seq 200); do curl -sf "$url/ready" >/dev/null && break; sleep 0.05; done
  (
    valkey_max=0 mesh_max=0
    while kill -0 "$relay_pid" 2>/dev/null; do
      read -r v m < <(curl -s --max-time 1 "$url/metrics" | awk '
        /^pulsar_valkey_backlog[{ ]/ { v += $NF } /^pulsar_mesh_backlog[{ ]/ { m += $NF }
        END { printf "%d %d\n", v, m }') || true
      [ "${v:-0}" -gt "$valkey_max" ] && valkey_max=$v
      [ "${m:-0}" -gt "$mesh_max" ] && mesh_max=$m
      echo "$valkey_max $mesh_max" >"$out/$name.metrics"
      sleep 0.25
    done
  ) & sampler=$!
}

# Runs pulsar-loadgen publish against the started relay; $1 names the run's files, the rest
# are extra flags. Prints the exit status (3: the run had errors, refusals included).
measure() {
  local name=$1 status=0
  shift
  "$loadgen" publish --connections "$connections" --topics "$topics" "$@" --url "$url" \
    --secret "$secret" --server-pid "$relay_pid" --duration "$duration" --warmup "$warmup" \
    --json "$out/$name.json" >"$out/$name.txt" 2>&1 || status=$?
  grep VmHWM "/proc/$relay_pid/status" | awk '{ print $2 }' >"$out/$name.hwm" || true
  echo "$status"
}

row() { # setup, multiple, name: one table row
  local json=$out/$3.json
  [ -s "$json" ] || { echo "| $1 | $2 | failed: $(tail -n 1 "$out/$3.txt") |"; return; }
  local hwm backlogs
  hwm=$(awk '{ printf "%.0f", $1 / 1024 }' "$out/$3.hwm")
  backlogs=$(cat "$out/$3.metrics" 2>/dev/null || echo "? ?")
  jq -r --arg setup "$1" --arg mult "$2" --arg hwm "$hwm" --arg backlogs "$backlogs" '
    def r: . * 10 | round / 10;
    (.duration_s) as $s
    | "| \($setup) | \($mult) | \(.target_rate // "closed loop" | if type == "number" then round else . end) | \(.rate | round)"
      + " | \(.errors / $s | round) | \(.refusals | to_entries | map("\(.key) \(.value)") | join(", ") | if . == "" then "-" else . end)"
      + " | \(.latency_ms.p50 | r) | \(.latency_ms.p99 | r) | \(.latency_ms.max | r) | \($hwm)"
      + " | \($backlogs | split(" ") | join(" / ")) | \(.cpu.server_cores) |"' "$json"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)"
echo "runs in $out; load average before: $load_before" >&2
rows=()
for setup in $setups; do
  if [ -n "${SUSTAINABLE:-}" ]; then
    sustainable=$SUSTAINABLE
  else
    echo "== $setup: closed loop" >&2
    start_relay "$setup" "$setup-closed"
    measure "$setup-closed" >/dev/null
    stop_relay
    rows+=("$(row "$setup" closed "$setup-closed")")
    sustainable=$(jq -r '.rate | round' "$out/$setup-closed.json")
  fi
  for m in $multiples; do
    rate=$(awk -v s="$sustainable" -v m="$m" 'BEGIN { printf "%d", s * m }')
    echo "== $setup: ${m}x = $rate msg/s" >&2
    start_relay "$setup" "$setup-$m"
    measure "$setup-$m" --rate "$rate" >/dev/null
    stop_relay
    rows+=("$(row "$setup" "${m}x" "$setup-$m")")
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cat <<EOF
Overload curve, \`tools/bench/overload.sh $duration\`${RELAY_ENV:+ with RELAY_ENV="$RELAY_ENV"}${SUSTAINABLE:+ with SUSTAINABLE=$SUSTAINABLE}${RELAY:+ with RELAY=$RELAY} at $commit, $(date -u +%Y-%m-%d) on $machine.
Load average before $load_before, after $load_after.

\`pulsar-loadgen publish --connections $connections --topics $topics\` (100-byte payloads,
single-message POSTs, $duration after a $warmup warm-up): first closed loop (the sustainable
rate), then open loop at multiples of it, each on a fresh relay. Latency in ms from the
intended send time, of accepted messages only; refusals per code over the measured phase
("no answer": sent, not answered before the run's drain ended); RSS is the relay's peak
(VmHWM, MiB); backlogs are the highest \`pulsar_valkey_backlog\` / \`pulsar_mesh_backlog\`
(summed over shards) seen in /metrics every 250 ms.

| setup | offered | offered msg/s | accepted msg/s | refused msg/s | refusals | p50 | p99 | max | peak RSS | backlog valkey / mesh | relay cores |
|---|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOF
