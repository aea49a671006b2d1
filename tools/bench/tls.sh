#!/usr/bin/env bash
# What TLS on the listener costs (issue #13 item 2): the relay's CPU per single-message
# publish and its memory per idle WebSocket connection, plain HTTP/WS next to HTTPS/WSS,
# the same binary and flags, servers started fresh for each run. With BASE=path/to/relay a
# third column runs that binary in plain HTTP (e.g. a build without TLS support, to check
# that plain connections did not get slower). Prints markdown tables on stdout, progress on
# stderr; each run's loadgen output and JSON stay in the directory it names.
#
#   tools/bench/tls.sh [duration=10s]
#   RATES="10000 20000"   publish rates, msg/s (open loop, 10 topics, 1 shard); "closed" runs
#                         a closed loop instead (each connection sends its next request when
#                         the answer came: no batching, so the least sensitive to a busy machine)
#   CONNECTIONS=64        publishing connections
#   COUNT=5000            idle WebSocket connections for the memory figure
#   ROUNDS=2              each rate's runs are repeated, alternating the servers
#
# Needs openssl, jq and curl, and a release build (built when missing; RELAY and LOADGEN
# name other binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10s}
rates=${RATES:-10000 20000}
count=${COUNT:-5000}
connections=${CONNECTIONS:-64}
rounds=${ROUNDS:-2}
base=${BASE:-}
port=18094
. tools/bench/lib.sh
bench_needs openssl jq curl
bench_setup tls

# The certificate the TLS runs serve: P-256, signed by a CA of the run's own.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
(cd "$out" &&
  openssl req -x509 "${ec[@]}" -days 1 -subj "/CN=bench CA" -keyout ca.key -out ca.crt &&
  openssl req -new "${ec[@]}" -subj /CN=127.0.0.1 -keyout relay.key -out relay.csr &&
  echo "subjectAltName=IP:127.0.0.1" >relay.ext &&
  openssl x509 -req -days 1 -in relay.csr -CA ca.crt -CAkey ca.key -set_serial 1 \
    -extfile relay.ext -out relay.crt) >/dev/null 2>&1

# Starts a relay ("plain", "tls" or "base") with 1 shard; sets $server, $url, $tls_flags.
start() {
  local bin=$relay
  local env=(PULSAR_JWT_SECRET_KEY="$secret" PULSAR_SERVER_HTTP_PORT=$port PULSAR_SERVER_SHARDS=1)
  tls_flags=()
  url=http://127.0.0.1:$port
  case $1 in
    tls)
      env+=(PULSAR_SERVER_TLS_CERT_FILE="$out/relay.crt" PULSAR_SERVER_TLS_KEY_FILE="$out/relay.key")
      url=https://127.0.0.1:$port
      tls_flags=(--tls-ca "$out/ca.crt") ;;
    base) bin=$base ;;
  esac
  env "${env[@]}" "$bin" >>"$out/relay.log" 2>&1 & server=$!
  for _ in $(seq 100); do curl -sf --cacert "$out/ca.crt" "$url/ready" >/dev/null && break; sleep 0.05; done
}

measure() {
  local name=$1 status=0
  shift
  "$loadgen" "$@" --url "$url" "${tls_flags[@]}" --secret "$secret" --server-pid "$server" \
    --duration "$duration" --json "$out/$name.json" >"$out/$name.txt" 2>&1 || status=$?
  [ "$status" = 0 ] || echo "  $name: loadgen exit $status (see $out/$name.txt)" >&2
}

us() { jq -r '.server_cpu_us * 10 | round / 10' "$1" 2>/dev/null || echo "?"; }
cores() { jq -r '.cpu.server_cores' "$1" 2>/dev/null || echo "?"; }
p99() { jq -r '.latency_ms.p99 * 100 | round / 100' "$1" 2>/dev/null || echo "?"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

kinds="plain tls"
[ -n "$base" ] && kinds="base plain tls"
echo "runs in $out; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
header="| msg/s | round |"
for k in $kinds; do header+=" $k: µs/msg (cores; p99 ms) |"; done
echo "$header tls / plain |"
echo "|---|---|$(for _ in $kinds; do printf -- '---|'; done)---|"
for rate in $rates; do
  for round in $(seq "$rounds"); do
    row="| $rate | $round |"
    for k in $kinds; do
      echo "== $k, publish at $rate msg/s, round $round" >&2
      start "$k"
      pace=(--rate "$rate")
      [ "$rate" = closed ] && pace=()
      measure "publish-$rate-$k-$round" publish --connections "$connections" --topics 10 "${pace[@]}"
      stop
      f="$out/publish-$rate-$k-$round.json"
      row+=" $(us "$f") ($(cores "$f"); $(p99 "$f")) |"
    done
    echo "$row $(ratio "$(us "$out/publish-$rate-tls-$round.json")" "$(us "$out/publish-$rate-plain-$round.json")") |"
  done
done

echo
echo "| $count idle WebSocket connections | RSS before | RSS after | per connection | handshake p50 / p99 ms |"
echo "|---|---|---|---|---|"
for k in $kinds; do
  echo "== $k, $count idle connections" >&2
  start "$k"
  measure "connections-$k" connections --count "$count"
  stop
  f="$out/connections-$k.json"
  jq -r --arg k "$k" '"| \($k) | \(.server_rss_before_kib / 1024 * 10 | round / 10) MiB | \(.server_rss_after_kib / 1024 * 10 | round / 10) MiB | \(.server_rss_per_connection_bytes / 1024 * 10 | round / 10) KiB | \(.latency_ms.p50 * 100 | round / 100) / \(.latency_ms.p99 * 100 | round / 100) |"' "$f" 2>/dev/null \
    || echo "| $k | see $out/connections-$k.txt | | | |"
done
echo
echo "relay $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${base:+, base $base}; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
