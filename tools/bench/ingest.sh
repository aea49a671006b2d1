#!/usr/bin/env bash
# Ingest benchmark (DESIGN.md §8): single-message POST over keep-alive connections against
# the relay (memory backend) and against nginx returning a fixed 204, same wrk settings,
# one after the other on the same machine. Prints both rates and their ratio.
#
#   tools/bench/ingest.sh [connections=64] [duration=10s] [topics=1]
# Needs: wrk, nginx (Debian packages), a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}; duration=${2:-10s}; topics=${3:-1}
relay_port=18091
secret=bench-secret-bench-secret-bench-secret
relay=target/release/pulsar-relay
[ -x "$relay" ] || cargo build --release
rm -rf /tmp/pulsar-bench-nginx-body
nginx -c "$PWD/tools/bench/nginx.conf" & nginx_pid=$!
PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=$relay_port "$relay" >/dev/null & relay_pid=$!
trap 'kill $nginx_pid $relay_pid 2>/dev/null; wait 2>/dev/null' EXIT
sleep 1
token=$(PULSAR_JWT_SECRET_KEY=$secret "$relay" token --sub bench --permissions write --ttl 1h)
threads=2
rate() { grep "Requests/sec" | awk '{print $2}'; }
echo "== nginx fixed 204: $conns connections, $threads wrk threads, $duration"
nginx_out=$(TOKEN=$token TOPICS=$topics wrk -t$threads -c"$conns" -d"$duration" --latency -s tools/bench/publish.lua http://127.0.0.1:18090/)
echo "$nginx_out"
echo "== pulsar-relay POST /api/v1/messages ($topics topics)"
relay_out=$(TOKEN=$token TOPICS=$topics wrk -t$threads -c"$conns" -d"$duration" --latency -s tools/bench/publish.lua "http://127.0.0.1:$relay_port/")
echo "$relay_out"
if echo "$relay_out" | grep -q "Non-2xx"; then echo "relay returned errors" >&2; exit 1; fi
n=$(echo "$nginx_out" | rate); r=$(echo "$relay_out" | rate)
echo "== ratio relay/nginx: $(awk -v r="$r" -v n="$n" 'BEGIN{printf "%.2f", r/n}') (relay $r req/s, nginx $n req/s)"
