#!/usr/bin/env bash
# Persistence benchmark (DESIGN.md §8), all in one run on this machine:
#   1. valkey-benchmark/redis-benchmark: pipelined XADD straight into Valkey (the ceiling),
#   2. the relay, memory backend: single-message POSTs, and bulk POSTs,
#   3. the relay, Valkey backend (valkey.conf: AOF everysec), persisted acks: same two loads.
# Prints messages/s for each and the ratios the targets are stated in.
#
#   tools/bench/persistence.sh [connections=64] [duration=10s] [bulk=100]
# Needs wrk, redis-benchmark or valkey-benchmark (Debian: redis-tools), a valkey-server
# (PULSAR_TEST_VALKEY_SERVER or on PATH), and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}; duration=${2:-10s}; bulk=${3:-100}
secret=bench-secret-bench-secret-bench-secret
relay=target/release/pulsar-relay
[ -x "$relay" ] || cargo build --release
valkey=${PULSAR_TEST_VALKEY_SERVER:-$(command -v valkey-server || command -v redis-server)}
bench=$(command -v valkey-benchmark || command -v redis-benchmark)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

start_valkey() {
  data=$(mktemp -d)
  "$valkey" "$PWD/valkey.conf" --port 16400 --dir "$data" --save "" >/dev/null & pids+=($!)
  # (redis-benchmark retries forever against a closed port, so probe with bash itself)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/16400) 2>/dev/null && return; sleep 0.1; done
  echo "valkey did not start" >&2; exit 1
}
stop_all() { cleanup; pids=(); }
start_relay() {
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=18092 "$@" "$relay" >/dev/null & pids+=($!)
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18092/ready >/dev/null && return; sleep 0.1; done
  echo "relay not ready" >&2; exit 1
}
wrk_rate() { # $1 = messages per request
  TOKEN=$token TOPICS=16 BULK=$1 wrk -t2 -c"$conns" -d"$duration" -s tools/bench/publish.lua http://127.0.0.1:18092/ \
    | tee /dev/stderr | awk -v b="$1" '/Non-2xx/ {bad=1} /Requests\/sec/ {r=$2} END {if (bad) print "ERRORS"; else printf "%.0f", r*b}'
}
token=$(PULSAR_JWT_SECRET_KEY=$secret "$relay" token --sub bench --permissions write --ttl 1h)
payload='{"n":12345,"text":"hello relay"}'

start_valkey
xadd=$("$bench" -p 16400 -n 2000000 -c "$conns" -P 64 -q XADD bench MAXLEN '~' 1000000 '*' p "$payload" t 1795775969418 \
  | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -n1 | awk '{print $1}')
stop_all

start_relay
mem_single=$(wrk_rate 1 2>/dev/null); mem_bulk=$(wrk_rate "$bulk" 2>/dev/null)
stop_all

start_valkey
start_relay PULSAR_STORAGE_BACKEND=valkey PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT=16400
vk_single=$(wrk_rate 1 2>/dev/null); vk_bulk=$(wrk_rate "$bulk" 2>/dev/null)
stop_all

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a"}'; }
echo "pipelined XADD into Valkey ($bench -P 64 -c $conns):      ${xadd%.*} messages/s"
echo "relay, memory, single POST ($conns conns):                 $mem_single messages/s"
echo "relay, memory, bulk of $bulk:                               $mem_bulk messages/s"
echo "relay, valkey everysec, persisted acks, single POST:      $vk_single messages/s  (x$(ratio "$vk_single" "$mem_single") of memory)"
echo "relay, valkey everysec, persisted acks, bulk of $bulk:     $vk_bulk messages/s  (x$(ratio "$vk_bulk" "$mem_bulk") of memory, x$(ratio "$vk_bulk" "$xadd") of pipelined XADD)"
