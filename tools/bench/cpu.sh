#!/usr/bin/env bash
# Server CPU per message (issue #18): the CPU time a server spends per single-message
# publish, read from /proc/PID/stat by pulsar-loadgen (--server-pid) over the measured
# phase, for nginx (1 worker, fixed 201 with a small JSON body: tools/bench/nginx-201.conf)
# and the relay with 1 and 2 shards, at fixed offered rates; then the relay's CPU per
# fan-out delivery. Prints markdown tables (for benches/BENCHMARKS.md) on stdout, progress on
# stderr; each run's loadgen output and JSON stay in the directory it names.
#
#   tools/bench/cpu.sh [duration=10s]
#   RATES="10000 30000 50000"   publish rates, msg/s (open loop, 64 connections, 10 topics)
#   FANOUT="100:200 1000:20"    fan-out runs, subscribers:msg/s, all on one topic
#   WARMUP=2s
#   RELAY_ENV="A=1 B=2"         extra environment for the relay (e.g. PULSAR_SERVER_CORES=dedicated)
#
# For each rate the three servers run one after the other, each freshly started, so slow
# drift in the machine's background load hits them alike; compare within one run.
# Needs nginx and jq (Debian packages) and a release build (built when missing; RELAY and
# LOADGEN name other binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10s}
warmup=${WARMUP:-2s}
rates=${RATES:-10000 30000 50000}
fanout=${FANOUT:-100:200 1000:20}
nginx_port=18092
relay_port=18093
. tools/bench/lib.sh
bench_needs nginx jq curl
bench_setup cpu

# Starts a server ("nginx", or "relay N" for N shards); sets $server (the process to stop)
# and $pid (the process whose CPU counts), $url.
start() {
  if [ "$1" = nginx ]; then
    rm -rf /tmp/pulsar-bench-nginx-cpu-body
    nginx -e stderr -c "$PWD/tools/bench/nginx-201.conf" 2>>"$out/nginx.log" & server=$!
    url=http://127.0.0.1:$nginx_port
    for _ in $(seq 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/")" = 201 ] && break
      sleep 0.05
    done
    # The one worker answers; the master only watches it.
    pid=$(cat "/proc/$server/task/$server/children")
    pid=${pid%% *}
  else
    # shellcheck disable=SC2086
    env ${RELAY_ENV:-} PULSAR_JWT_SECRET_KEY="$secret" PULSAR_SERVER_HTTP_PORT=$relay_port \
      PULSAR_SERVER_SHARDS="$2" "$relay" >>"$out/relay.log" 2>&1 & server=$!
    pid=$server
    url=http://127.0.0.1:$relay_port
    for _ in $(seq 100); do curl -sf "$url/ready" >/dev/null && break; sleep 0.05; done
  fi
}

# Runs pulsar-loadgen against the started server; $1 names the run's files, the rest are
# the scenario and its flags. Prints the exit status (3: the run had errors).
measure() {
  local name=$1 status=0
  shift
  "$loadgen" "$@" --url "$url" --secret "$secret" --server-pid "$pid" \
    --duration "$duration" --warmup "$warmup" --json "$out/$name.json" \
    >"$out/$name.txt" 2>&1 || status=$?
  echo "$status"
}

# A table cell: server µs per counted item (headline, or row $3), the server's cores and
# the headline p99 (a server near saturation batches more, and its µs per message drop).
cell() {
  local json=$1 status=$2 row=${3:-}
  [ -s "$json" ] || { echo "failed (exit $status)"; return; }
  jq -r --arg status "$status" --arg row "$row" '
    (if $row == "" then . else .rows[$row] end) as $r
    | (if $r.server_cpu_us == null then "n/a" else ($r.server_cpu_us * 10 | round / 10 | tostring) end)
      + " (" + (.cpu.server_cores | tostring) + "; p99 "
      + (.latency_ms.p99 * 10 | round / 10 | tostring) + " ms)"
      + (if $status != "0" then " ⚠ exit \($status), \(.errors) errors" else "" end)' "$json"
}

us() { jq -r '.server_cpu_us // empty' "$1" 2>/dev/null; }

# CPU used by neither the loadgen nor the server: the noise in the run.
others() {
  # Clamped at 0: the machine and the processes are read a moment apart.
  jq -r '(.cpu.machine_cores // 0) - .cpu.loadgen_cores - (.cpu.server_cores // 0)
         | if . < 0 then 0 else . * 100 | round / 100 end' "$1" 2>/dev/null || echo "?"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)"
echo "runs in $out; load average before: $load_before" >&2

publish_rows=()
max_others=0
note_others() {
  local o
  o=$(others "$1")
  echo "  $(basename "$1" .json): server $(us "$1") µs, other processes $o cores" >&2
  max_others=$(awk -v a="$max_others" -v b="$o" 'BEGIN { print (b + 0 > a + 0) ? b : a }')
}
for rate in $rates; do
  cells=()
  values=()
  noise=()
  for s in nginx "relay 1" "relay 2"; do
    name="publish-$rate-${s// /-}"
    echo "== $s, publish at $rate msg/s" >&2
    start $s
    status=$(measure "$name" publish --connections 64 --topics 10 --rate "$rate")
    stop
    cells+=("$(cell "$out/$name.json" "$status")")
    values+=("$(us "$out/$name.json")")
    noise+=("$(others "$out/$name.json")")
    note_others "$out/$name.json"
  done
  publish_rows+=("| $rate | ${cells[0]} | ${cells[1]} | ${cells[2]} | $(ratio "${values[1]}" "${values[0]}") | $(ratio "${values[2]}" "${values[0]}") | ${noise[0]} / ${noise[1]} / ${noise[2]} |")
done

fanout_rows=()
for f in $fanout; do
  subscribers=${f%%:*}
  rate=${f##*:}
  cells=()
  noise=()
  for shards in 1 2; do
    name="fanout-$subscribers-$rate-$shards"
    echo "== relay $shards, fan-out to $subscribers subscribers at $rate msg/s" >&2
    start relay "$shards"
    status=$(measure "$name" fanout --subscribers "$subscribers" --topics 1 --rate "$rate")
    stop
    cells+=("$(cell "$out/$name.json" "$status") / $(cell "$out/$name.json" "$status" publish | cut -d' ' -f1)")
    noise+=("$(others "$out/$name.json")")
    note_others "$out/$name.json"
  done
  fanout_rows+=("| $subscribers subscribers, $rate msg/s | $((subscribers * rate)) | ${cells[0]} | ${cells[1]} | ${noise[0]} / ${noise[1]} |")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cat <<EOF
Server CPU per message, \`tools/bench/cpu.sh $duration\` at $commit${RELAY_ENV:+ with $RELAY_ENV}, $(date -u +%Y-%m-%d) on $machine.
Load average before $load_before, after $load_after; other processes used up to $max_others cores during a run.

Single-message publish: \`pulsar-loadgen publish --connections 64 --topics 10 --rate R\`
(open loop, 100-byte payloads, $duration after a $warmup warm-up), server CPU (user + system,
/proc/PID/stat) over the measured phase per message acknowledged, in µs; in brackets the
server's cores busy and the publish p99 (open loop, from the intended send time). Last column: cores used by neither the server nor the loadgen during
each of the three runs (other processes, interrupts): the noise.

| msg/s | nginx, 1 worker, fixed 201 | relay, 1 shard | relay, 2 shards | 1 shard / nginx | 2 shards / nginx | others, cores |
|---|---|---|---|---|---|---|
$(printf '%s\n' "${publish_rows[@]}")

Fan-out: \`pulsar-loadgen fanout --subscribers S --topics 1 --rate R\` (WebSocket
subscribers on one topic), relay CPU per delivery in µs (cores busy; delivery p99) / per
published message in µs, both over all the relay's CPU in the measured phase.

| load | deliveries/s | relay, 1 shard | relay, 2 shards | others, cores |
|---|---|---|---|---|
$(printf '%s\n' "${fanout_rows[@]}")
EOF
