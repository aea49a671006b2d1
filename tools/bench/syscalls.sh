#!/usr/bin/env bash
# Kernel work per message (issue #18): system calls, context switches and the
# inter-processor interrupts the relay sends, counted by `perf stat` on the relay's threads
# during an open-loop `pulsar-loadgen publish` run, divided by the messages acknowledged.
#
# Counts, unlike CPU time, hardly move with what else the machine is doing, so this is the
# measure to compare builds on a shared host; tools/bench/cpu.sh gives the time.
#
#   tools/bench/syscalls.sh [duration=10s]
#   RATES="10000 30000"   publish rates, msg/s (64 connections, 10 topics)
#   SHARDS="1 2"          relay shard counts
#   RELAY_ENV="A=1 B=2"   extra environment for the relay (e.g. to compare a setting)
#
# Needs perf (Debian package linux-perf) with tracepoints readable (root), jq and curl, and
# a release build (built when missing). Prints a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10s}
secs=${duration%s}
rates=${RATES:-10000 30000}
shards_list=${SHARDS:-1 2}
port=18094
. tools/bench/lib.sh
bench_needs perf jq curl
bench_setup syscalls

# The counted events, and their column names.
events=(raw_syscalls:sys_enter syscalls:sys_enter_io_uring_enter syscalls:sys_enter_membarrier
  syscalls:sys_enter_sendto syscalls:sys_enter_recvfrom syscalls:sys_enter_write
  syscalls:sys_enter_read syscalls:sys_enter_mprotect syscalls:sys_enter_madvise
  context-switches ipi:ipi_send_cpu ipi:ipi_send_cpumask)
names=(syscalls io_uring_enter membarrier sendto recvfrom write read mprotect madvise
  "context switches" "IPIs sent (cpu)" "IPIs sent (mask)")

echo "runs in $out; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
header="| shards | msg/s | acked |"
rule="|---|---|---|"
for n in "${names[@]}"; do header+=" $n |"; rule+="---|"; done
rows=()
for shards in $shards_list; do
  for rate in $rates; do
    name="publish-$rate-$shards"
    # shellcheck disable=SC2086
    env ${RELAY_ENV:-} PULSAR_JWT_SECRET_KEY="$secret" PULSAR_SERVER_HTTP_PORT=$port \
      PULSAR_SERVER_SHARDS="$shards" "$relay" >>"$out/relay.log" 2>&1 & server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.05; done
    "$loadgen" publish --connections 64 --topics 10 --rate "$rate" \
      --url "http://127.0.0.1:$port" --secret "$secret" --server-pid "$server" \
      --duration "$duration" --warmup 2s --json "$out/$name.json" >"$out/$name.txt" 2>&1 &
    lg=$!
    # perf counts over the measured phase only (the loadgen's warm-up is 2 s).
    sleep 2
    ev=$(IFS=,; echo "${events[*]}")
    perf stat -x, -e "$ev" -p "$server" -o "$out/$name.perf" -- sleep "$secs" || true
    wait "$lg" || true
    stop
    acked=$(jq -r '.count' "$out/$name.json")
    row="| $shards | $rate | $acked |"
    for e in "${events[@]}"; do
      c=$(awk -F, -v e="$e" '$3 == e { print $1 }' "$out/$name.perf")
      row+=" $(awk -v c="${c:-0}" -v a="$acked" 'BEGIN { if (a > 0 && c ~ /^[0-9.]+$/) printf "%.2f", c / a; else printf "n/a" }') |"
    done
    rows+=("$row")
    echo "== $shards shard(s), $rate msg/s: ${row}" >&2
  done
done
cat <<EOF
Kernel work per message acknowledged, \`tools/bench/syscalls.sh $duration\`${RELAY_ENV:+ with \`$RELAY_ENV\`},
$(date -u +%Y-%m-%d), $(nproc) cores, load average after $(cut -d' ' -f1-3 /proc/loadavg).

$header
$rule
$(printf '%s\n' "${rows[@]}")
EOF
