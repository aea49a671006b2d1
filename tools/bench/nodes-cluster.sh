#!/usr/bin/env bash
# Cluster mode on a 3-primary + 3-replica Valkey Cluster (issue #16), the last part of
# tools/bench/nodes.sh (also run alone): what sharded pub/sub and the script called by its
# digest cost Valkey per message.
#   5a. Valkey alone: the relay's publish script (read from src/store/announce.rs) run by
#       redis-benchmark on the primary of its topic's slot, with the topic's channel
#       subscribed by 3 connections (3 relay nodes): classic PUBLISH with the 3 subscribers
#       on the 3 primaries (a Cluster forwards a PUBLISH to every node over its bus), or
#       SPUBLISH with the 3 subscribers on the topic's primary (SSUBSCRIBE); each called by
#       EVAL (text per call) or EVALSHA (digest). The four variants alternate, ROUNDS times.
#   5b. Three release-build relays (1 shard each) in cluster mode on the cluster (sharded
#       pub/sub, EVALSHA), publish -> receive at 1,000 msg/s, 10 subscribers spread over the
#       three nodes, publishes on node 1 (pulsar-loadgen e2e).
# CPU: utime + stime of all six Valkey processes (or the relays) from /proc/<pid>/stat over
# the run, per script call (EVAL/EVALSHA calls from INFO commandstats on every primary).
#
#   tools/bench/nodes-cluster.sh [duration=10s] [calls per variant=100000] [rounds=3]
# Needs what tools/bench/nodes.sh needs (valkey-server, redis-cli, redis-benchmark, jq).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
duration=${1:-10s}; calls=${2:-100000}; rounds=${3:-3}
. tools/provision.sh
valkey=$(find_valkey)
relay=target/release/pulsar-relay
loadgen=target/release/pulsar-loadgen
[ -x "$relay" ] && [ -x "$loadgen" ] || cargo build --release
secret=bench-secret-bench-secret-bench-secret
base=16540
vports=($base $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)))
ports=(18131 18132 18133)
url() { echo "http://127.0.0.1:${ports[$1 - 1]}"; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)
cpu_s() { sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$tck" '{printf "%.4f", ($12 + $13) / t}'; }
sum_cpu() { local s=0 p; for p in "$@"; do s=$(echo "$s + $(cpu_s "$p")" | bc -l); done; echo "$s"; }

vpids=()
for p in "${vports[@]}"; do
  mkdir -p "$work/v$p"
  "$valkey" --port "$p" --bind 127.0.0.1 --dir "$work/v$p" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 --appendonly no --save "" \
    --repl-diskless-sync-delay 0 >"$work/v$p.log" 2>&1 &
  pids+=($!); vpids+=($!)
done
for p in "${vports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${vports[@]}") --cluster-replicas 1 \
  --cluster-yes >"$work/create.log" 2>&1
for p in "${vports[@]}"; do
  for _ in $(seq 200); do
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.05
  done
done
primaries=($(redis-cli -p "$base" cluster nodes | awk '/master/ { split($2, a, "[:@]"); print a[2] }' | sort -n))
echo "valkey: $("$valkey" --version | head -n1); cluster: primaries ${primaries[*]}, 6 nodes"

# The primary serving a key's slot.
owner_of() {
  local slot; slot=$(redis-cli -p "$base" cluster keyslot "$1")
  redis-cli -p "$base" cluster nodes | awk -v s="$slot" '/master/ {
    split($2, a, "[:@]"); for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n > 1 ? r[2] : r[1]);
    if (s >= lo && s <= hi) print a[2] } }'
}
# Script calls (EVAL + EVALSHA) on every primary so far.
script_calls() {
  local p s=0
  for p in "${primaries[@]}"; do
    s=$((s + $(redis-cli -p "$p" info commandstats | tr -d '\r' \
      | sed -n 's/^cmdstat_eval\(sha\)\{0,1\}:calls=\([0-9]*\),.*/\2/p' | awk '{ s += $1 } END { print s + 0 }')))
  done
  echo "$s"
}

# The relay's publish script, with `publish` as its announcing command.
script_text() {
  python3 - "$1" <<'EOF'
import re, sys
src = open("src/store/announce.rs").read()
block = src[src.index("macro_rules! publish_script"):]
block = block[block.index("concat!(") + len("concat!("):block.index("\n        )\n    };")]
pieces = []
for literal, macro in re.findall(r'"((?:[^"\\]|\\.)*)"|(\$publish)', block, re.S):
    if macro:
        pieces.append(sys.argv[1])
    else:
        text = re.sub(r"\\\n\s*", "", literal)
        pieces.append(text.replace("\\\\", "\\"))
sys.stdout.write("".join(pieces))
EOF
}

echo
echo "== 5a. Valkey alone: the publish script on the topic's primary, 3 subscribers, $calls calls per variant, $rounds rounds =="
key=bench
owner=$(owner_of "pulsar:{$key}:n")
owner_pid=
for i in "${!vports[@]}"; do [ "${vports[$i]}" = "$owner" ] && owner_pid=${vpids[$i]}; done
# What the six nodes spend doing nothing (cluster bus, cron), per second, to subtract.
i0=$(sum_cpu "${vpids[@]}"); t0=$(date +%s.%N); sleep 5
idle=$(echo "($(sum_cpu "${vpids[@]}") - $i0) / ($(date +%s.%N) - $t0)" | bc -l)
printf 'idle: the six nodes use %.1f ms of CPU per second; subtracted below\n' "$(echo "$idle * 1000" | bc -l)"
payload='{"n":12345,"text":"hello relay, a message of about one hundred bytes for the benchmark!!"}'
args=(3 "pulsar:{$key}:s" "pulsar:{$key}:l" "pulsar:{$key}:t" "pulsar:{$key}:n" 1000 0 1700000000000 "$payload" "" "")
declare -A total_us owner_us
for round in $(seq "$rounds"); do
  for variant in "EVAL PUBLISH" "EVALSHA PUBLISH" "EVAL SPUBLISH" "EVALSHA SPUBLISH"; do
    by=${variant% *}; publish=${variant#* }
    text=$(script_text "$publish")
    subs=()
    if [ "$publish" = PUBLISH ]; then
      for p in "${primaries[@]}"; do redis-cli -p "$p" subscribe "pulsar:{$key}:n" >/dev/null & subs+=($!); done
    else
      for _ in 1 2 3; do redis-cli -p "$owner" ssubscribe "pulsar:{$key}:n" >/dev/null & subs+=($!); done
    fi
    sleep 0.3
    if [ "$by" = EVAL ]; then call=(EVAL "$text"); else
      call=(EVALSHA "$(redis-cli -p "$owner" script load "$text")"); fi
    c0=$(script_calls); v0=$(sum_cpu "${vpids[@]}"); o0=$(cpu_s "$owner_pid"); t0=$(date +%s.%N)
    redis-benchmark -p "$owner" -c 4 -n "$calls" -q "${call[@]}" "${args[@]}" >/dev/null
    c1=$(script_calls); v1=$(sum_cpu "${vpids[@]}"); o1=$(cpu_s "$owner_pid"); t1=$(date +%s.%N)
    kill "${subs[@]}"; wait "${subs[@]}" 2>/dev/null || true
    n=$((c1 - c0))
    us=$(echo "($v1 - $v0 - $idle * ($t1 - $t0)) * 1000000 / $n" | bc -l)
    own=$(echo "($o1 - $o0 - $idle / 6 * ($t1 - $t0)) * 1000000 / $n" | bc -l)
    total_us[$variant]=$(echo "${total_us[$variant]:-0} + $us" | bc -l)
    owner_us[$variant]=$(echo "${owner_us[$variant]:-0} + $own" | bc -l)
    printf 'round %d  %-17s calls %7d  valkey %6.1f us/call (topic primary %5.1f, other 5 nodes %5.1f)\n' \
      "$round" "$variant" "$n" "$us" "$own" "$(echo "$us - $own" | bc -l)"
  done
done
for variant in "EVAL PUBLISH" "EVALSHA PUBLISH" "EVAL SPUBLISH" "EVALSHA SPUBLISH"; do
  printf 'mean   %-17s valkey %6.1f us/call (topic primary %5.1f)\n' "$variant" \
    "$(echo "${total_us[$variant]} / $rounds" | bc -l)" "$(echo "${owner_us[$variant]} / $rounds" | bc -l)"
done

echo
echo "== 5b. three relays on the cluster (sharded pub/sub, EVALSHA): e2e 10 subscribers on nodes 1-3, 1000 msg/s, $duration =="
others=$(printf '127.0.0.1:%s,' "${vports[@]:1}"); others=${others%,}
relay_pids=()
for n in 1 2 3; do
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=${ports[$n - 1]} PULSAR_SERVER_SHARDS=1 \
    PULSAR_STORAGE_BACKEND=valkey PULSAR_VALKEY_MODE=cluster PULSAR_VALKEY_HOST=127.0.0.1 \
    PULSAR_VALKEY_PORT=$base PULSAR_VALKEY_NODES=$others PULSAR_CLUSTER_ENABLED=true \
    "$relay" >"$work/node$n.log" 2>&1 &
  pids+=($!); relay_pids+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 300); do curl -sf "$(url "$n")/ready" >/dev/null && break; sleep 0.05; done
done
c0=$(script_calls); v0=$(sum_cpu "${vpids[@]}"); r0=$(sum_cpu "${relay_pids[@]}"); t0=$(date +%s.%N)
"$loadgen" --secret "$secret" --duration "$duration" e2e --subscribers 10 --rate 1000 \
  --url "$(url 1)" --url "$(url 2)" --url "$(url 3)" --publish-url "$(url 1)" \
  --json "$work/e2e.json" >"$work/e2e.out" 2>&1 || cat "$work/e2e.out"
c1=$(script_calls); v1=$(sum_cpu "${vpids[@]}"); r1=$(sum_cpu "${relay_pids[@]}"); t1=$(date +%s.%N)
m=$((c1 - c0))
printf 'messages %d  valkey (6 nodes, idle subtracted) %.1f us/msg  relays %.1f us/msg  ' "$m" \
  "$(echo "($v1 - $v0 - $idle * ($t1 - $t0)) * 1000000 / $m" | bc -l)" "$(echo "($r1 - $r0) * 1000000 / $m" | bc -l)"
jq -r '"p50 \(.latency_ms.p50) ms  p99 \(.latency_ms.p99) ms  lost \(.lost)"' "$work/e2e.json"
sha=$(echo -n "$(script_text SPUBLISH)" | sha1sum | cut -d' ' -f1)
# The relays' script is the one 5a measured (same text, same digest): SCRIPT EXISTS is 1 on
# the primary their topics are on (and on 5a's), and its EVAL calls are the NOSCRIPT fallback.
for p in "${primaries[@]}"; do
  echo "primary $p: SCRIPT EXISTS (5a's SPUBLISH script) $(redis-cli -p "$p" script exists "$sha" | xargs)," \
    "$(redis-cli -p "$p" info commandstats | tr -d '\r' | grep -o '^cmdstat_eval[a-z]*:calls=[0-9]*' | xargs), keys $(redis-cli -p "$p" dbsize)"
done
