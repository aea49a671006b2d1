#!/usr/bin/env bash
# Ingest benchmark (DESIGN.md §8). Runs the same wrk load (keep-alive connections, one
# message or BULK messages per POST) against nginx returning a fixed 204 and against the
# relay, one after the other on this machine, and prints the rates and their ratio.
#
#   tools/bench/ingest.sh [connections=64] [duration=10s] [topics=1]
#   BACKEND=valkey tools/bench/ingest.sh ...   relay with Valkey (valkey.conf: AOF everysec),
#                                             a valkey-server started on port 16400
#   BULK=100 tools/bench/ingest.sh ...         bulk publishes of 100 messages
#   ACK=memory BACKEND=valkey ...              acknowledge before Valkey confirms
# Needs wrk and nginx (Debian packages), and valkey-server for BACKEND=valkey
# (PULSAR_TEST_VALKEY_SERVER, or on PATH).
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}; duration=${2:-10s}; topics=${3:-1}
backend=${BACKEND:-memory}; bulk=${BULK:-1}
relay_port=18091
secret=bench-secret-bench-secret-bench-secret
relay=target/release/pulsar-relay
[ -x "$relay" ] || cargo build --release
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
rm -rf /tmp/pulsar-bench-nginx-body
nginx -c "$PWD/tools/bench/nginx.conf" & pids+=($!)
env_args=(PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=$relay_port)
if [ "$backend" = valkey ]; then
  valkey=${PULSAR_TEST_VALKEY_SERVER:-$(command -v valkey-server || command -v redis-server)}
  data=$(mktemp -d)
  "$valkey" "$PWD/valkey.conf" --port 16400 --dir "$data" --save "" >/dev/null & pids+=($!)
  sleep 0.5
  env_args+=(PULSAR_STORAGE_BACKEND=valkey PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT=16400)
  [ -n "${ACK:-}" ] && env_args+=(PULSAR_STORAGE_ACK=$ACK)
fi
env "${env_args[@]}" "$relay" >/dev/null & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$relay_port/ready" >/dev/null && break; sleep 0.1; done
token=$(PULSAR_JWT_SECRET_KEY=$secret "$relay" token --sub bench --permissions write --ttl 1h)
threads=2
rate() { grep "Requests/sec" | awk '{print $2}'; }
run() { TOKEN=$token TOPICS=$topics BULK=$bulk wrk -t$threads -c"$conns" -d"$duration" --latency -s tools/bench/publish.lua "$1"; }
echo "== nginx fixed 204: $conns connections, $threads wrk threads, $duration"
nginx_out=$(run http://127.0.0.1:18090/)
echo "$nginx_out"
echo "== pulsar-relay ($backend backend, $topics topics, $bulk messages per request)"
relay_out=$(run "http://127.0.0.1:$relay_port/")
echo "$relay_out"
if echo "$relay_out" | grep -q "Non-2xx"; then echo "relay returned errors" >&2; exit 1; fi
n=$(echo "$nginx_out" | rate); r=$(echo "$relay_out" | rate)
echo "== relay $r req/s = $(awk -v r="$r" -v b="$bulk" 'BEGIN{printf "%.0f", r*b}') messages/s; nginx $n req/s; ratio relay/nginx (requests): $(awk -v r="$r" -v n="$n" 'BEGIN{printf "%.2f", r/n}')"
