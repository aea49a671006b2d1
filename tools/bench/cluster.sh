#!/usr/bin/env bash
# Valkey Cluster vs standalone ingest (issue #12 item 7), all in one run on this machine:
#   1. the relay on one standalone Valkey,
#   2. the relay on a 3-primary Valkey Cluster (no replicas),
#   3. the relay on a 3-primary + 3-replica Valkey Cluster,
# every node started with valkey.conf (AOF everysec), persisted acks, and for each the same
# two loads: single-message POSTs and bulk POSTs (wrk, 16 topics spread over the slots).
# Prints messages/s and the ratios to standalone.
#
#   tools/bench/cluster.sh [connections=64] [duration=10s] [bulk=100]
# Needs wrk, redis-cli (Debian: redis-tools, for `--cluster create`), a valkey-server
# (PULSAR_TEST_VALKEY_SERVER or on PATH), and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}; duration=${2:-10s}; bulk=${3:-100}
secret=bench-secret-bench-secret-bench-secret
relay=target/release/pulsar-relay
[ -x "$relay" ] || cargo build --release
valkey=${PULSAR_TEST_VALKEY_SERVER:-$(command -v valkey-server || command -v redis-server)}
pids=()
dirs=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  rm -rf "${dirs[@]}"
}
trap cleanup EXIT
stop_all() { cleanup; pids=(); dirs=(); }

wait_port() {
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listens on port $1" >&2; exit 1
}
start_valkey() { # $1 = port, then extra arguments
  local port=$1; shift
  local data; data=$(mktemp -d); dirs+=("$data")
  "$valkey" "$PWD/valkey.conf" --port "$port" --dir "$data" --save "" "$@" >/dev/null & pids+=($!)
  wait_port "$port"
}
start_cluster() { # $1 = replicas per primary (0 or 1)
  local ports=(16410 16411 16412) addrs=()
  [ "$1" = 1 ] && ports+=(16413 16414 16415)
  for p in "${ports[@]}"; do
    start_valkey "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 --repl-diskless-sync-delay 0
    addrs+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$1" --cluster-yes >/dev/null
  for _ in $(seq 100); do
    ok=1
    for p in "${ports[@]}"; do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && return
    sleep 0.1
  done
  echo "the cluster did not reach cluster_state:ok" >&2; exit 1
}
start_relay() {
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=18092 PULSAR_STORAGE_BACKEND=valkey \
    PULSAR_VALKEY_HOST=127.0.0.1 "$@" "$relay" >/dev/null & pids+=($!)
  for _ in $(seq 150); do curl -sf http://127.0.0.1:18092/ready >/dev/null && return; sleep 0.1; done
  echo "relay not ready" >&2; exit 1
}
wrk_rate() { # $1 = messages per request
  TOKEN=$token TOPICS=16 BULK=$1 wrk -t2 -c"$conns" -d"$duration" -s tools/bench/publish.lua http://127.0.0.1:18092/ \
    | tee /dev/stderr | awk -v b="$1" '/Non-2xx/ {bad=1} /Requests\/sec/ {r=$2} END {if (bad) print "ERRORS"; else printf "%.0f", r*b}'
}
token=$(PULSAR_JWT_SECRET_KEY=$secret "$relay" token --sub bench --permissions write --ttl 1h)

start_valkey 16400
start_relay PULSAR_VALKEY_PORT=16400
sa_single=$(wrk_rate 1 2>/dev/null); sa_bulk=$(wrk_rate "$bulk" 2>/dev/null)
stop_all

start_cluster 0
start_relay PULSAR_VALKEY_MODE=cluster PULSAR_VALKEY_PORT=16410 PULSAR_VALKEY_NODES=127.0.0.1:16411,127.0.0.1:16412
c3_single=$(wrk_rate 1 2>/dev/null); c3_bulk=$(wrk_rate "$bulk" 2>/dev/null)
stop_all

start_cluster 1
start_relay PULSAR_VALKEY_MODE=cluster PULSAR_VALKEY_PORT=16410 PULSAR_VALKEY_NODES=127.0.0.1:16411,127.0.0.1:16412
c6_single=$(wrk_rate 1 2>/dev/null); c6_bulk=$(wrk_rate "$bulk" 2>/dev/null)
stop_all

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a"}'; }
echo "relay on standalone Valkey, single POST ($conns conns):   $sa_single messages/s"
echo "relay on standalone Valkey, bulk of $bulk:                 $sa_bulk messages/s"
echo "relay on 3-primary cluster, single POST:                $c3_single messages/s  (x$(ratio "$c3_single" "$sa_single") of standalone)"
echo "relay on 3-primary cluster, bulk of $bulk:               $c3_bulk messages/s  (x$(ratio "$c3_bulk" "$sa_bulk") of standalone)"
echo "relay on 3+3 cluster (replicas), single POST:           $c6_single messages/s  (x$(ratio "$c6_single" "$sa_single") of standalone)"
echo "relay on 3+3 cluster (replicas), bulk of $bulk:          $c6_bulk messages/s  (x$(ratio "$c6_bulk" "$sa_bulk") of standalone)"
