#!/usr/bin/env bash
# Replicated vs persisted acks (README "Persistence"), in one run on this machine: a Valkey
# primary and one replica (both valkey.conf: AOF everysec; the replica by --replicaof), then
# the relay on the primary with `storage.ack` persisted and replicated, alternating, each
# for `rounds` rounds of pulsar-loadgen single-message and bulk ingest. Prints one line per
# run (messages/s, p50 and p99 ms, server CPU µs per message) and the replicated ÷
# persisted ratios per round.
#
#   tools/bench/replicated.sh [rounds=3] [duration=10s] [bulk=100]
# Needs a valkey-server (PULSAR_TEST_VALKEY_SERVER or on PATH) and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; duration=${2:-10s}; bulk=${3:-100}
relay=target/release/pulsar-relay
loadgen=target/release/pulsar-loadgen
[ -x "$relay" ] && [ -x "$loadgen" ] || cargo build --release
valkey=${PULSAR_TEST_VALKEY_SERVER:-$(command -v valkey-server || command -v redis-server)}
read -r primary replica http < <(python3 -c "import socket
s = [socket.socket() for _ in range(3)]
[x.bind(('127.0.0.1', 0)) for x in s]
print(*[x.getsockname()[1] for x in s])")
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/primary" "$work/replica"
"$valkey" "$PWD/valkey.conf" --port "$primary" --dir "$work/primary" \
  --repl-diskless-sync-delay 0 >"$work/primary.log" 2>&1 & pids+=($!)
"$valkey" "$PWD/valkey.conf" --port "$replica" --dir "$work/replica" \
  --replicaof 127.0.0.1 "$primary" >"$work/replica.log" 2>&1 & pids+=($!)
online() { # the primary lists its replica as online
  local info
  info=$( (exec 3<>"/dev/tcp/127.0.0.1/$primary" && printf 'INFO replication\r\n' >&3 \
    && timeout 0.3 cat <&3) 2>/dev/null || true)
  grep -q 'slave0:.*state=online' <<<"$info"
}
for _ in $(seq 100); do online && break; sleep 0.2; done
online || { echo "the replica did not come online" >&2; cat "$work/replica.log" >&2; exit 1; }

secret=$(head -c 32 /dev/urandom | base64)
summary() { # $1 = loadgen output: "rate p50 p99 server-µs"
  awk '/^publish / {print $3, $5, $7, $10}' "$1"
}
declare -A result
for round in $(seq "$rounds"); do
  for ack in persisted replicated; do
    PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=$http PULSAR_STORAGE_BACKEND=valkey \
      PULSAR_STORAGE_ACK=$ack PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT=$primary \
      "$relay" >"$work/relay.log" 2>&1 & pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/ready" >/dev/null && break; sleep 0.1; done
    load="$loadgen --url http://127.0.0.1:$http --secret $secret --server-pid $pid --duration $duration"
    $load publish --connections 64 --topics 16 >"$work/single.txt"
    $load publish --connections 16 --topics 16 --bulk "$bulk" >"$work/bulk.txt"
    result[$round,$ack,single]=$(summary "$work/single.txt")
    result[$round,$ack,bulk]=$(summary "$work/bulk.txt")
    curl -s "http://127.0.0.1:$http/metrics" | grep -E '^pulsar_valkey_(errors|replica_timeouts)_total' \
      | sed "s/^/round $round $ack: /"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    for load in single bulk; do
      echo "round $round $ack $load: msgs/s p50 p99 server-µs = ${result[$round,$ack,$load]}"
    done
  done
  for load in single bulk; do
    read -r p _ _ pcpu <<<"${result[$round,persisted,$load]}"
    read -r r _ _ rcpu <<<"${result[$round,replicated,$load]}"
    awk -v l="$load" -v n="$round" -v p="$p" -v r="$r" -v pc="$pcpu" -v rc="$rcpu" \
      'BEGIN {printf "round %s %s: replicated/persisted msgs/s %.2f, server µs per message %.2f\n", n, l, r/p, rc/pc}'
  done
done
