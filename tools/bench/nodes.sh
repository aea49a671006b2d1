#!/usr/bin/env bash
# Several relay nodes over one Valkey (issue #16, item 8), all in one run on this machine:
# one Valkey (valkey.conf) and four release-build relays with one shard each: nodes 1-3 in
# cluster mode, node 4 the same relay on the same Valkey without cluster mode. Measures
#   1. publish -> receive latency (pulsar-loadgen e2e, --subscribers 10 at --rate 1000):
#      node 4 alone (no cluster mode), node 1 alone (cluster mode), cross-node (publish on
#      node 1, subscribers on node 2) and subscribers spread over nodes 1-3;
#   2. deliveries/s (fanout): every subscriber on node 1, or spread over nodes 1-3;
#   3. per-topic channels: each of nodes 1-3 holds subscriptions to N topics (1, 1000,
#      10000; tools/bench/topic_holder.py), so Valkey has N channels with 3 subscribers
#      each; then publishes at 1000 msg/s over those N topics, and the time each node takes
#      to be back (pulsar_cluster_resumes_total) after CLIENT KILL TYPE pubsub;
#   4. Valkey alone: PUBLISH (redis-benchmark, 100-byte messages) to C channels (1, 64, 1000,
#      10000) that S connections (3; and 1 and 30 at C = 1000) subscribe to all of: what a
#      per-topic channel and a partition channel cost in Valkey, and each subscribed node;
#   5. on a 3+3 Valkey Cluster (tools/bench/nodes-cluster.sh, also run alone): the publish
#      script with classic PUBLISH vs sharded SPUBLISH, by EVAL vs EVALSHA, and three relays.
# For each load: Valkey's CPU per message (utime + stime from /proc/<pid>/stat over the whole
# run, divided by the messages it stored: XADD calls, from INFO commandstats) and all relays' CPU
# per message the same way, plus Valkey commands per message.
#
#   tools/bench/nodes.sh [duration=10s] [fanout subscribers=500] [fanout rate=20]
# Needs a release build (built when missing), valkey-server (tools/provision.sh finds or
# provisions one), redis-cli and redis-benchmark (Debian: redis-tools), python3, curl, jq.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
duration=${1:-10s}; fan_subs=${2:-500}; fan_rate=${3:-20}
. tools/provision.sh
valkey=$(find_valkey)
relay=target/release/pulsar-relay
loadgen=target/release/pulsar-loadgen
[ -x "$relay" ] && [ -x "$loadgen" ] || cargo build --release
secret=bench-secret-bench-secret-bench-secret
vport=16520
ports=(18121 18122 18123 18124)
url() { echo "http://127.0.0.1:${ports[$1 - 1]}"; }
work=$(mktemp -d)
pids=()
holder_in=
cleanup() {
  [ -n "$holder_in" ] && exec {holder_in}>&- 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
tck=$(getconf CLK_TCK)

wait_ready() {
  for _ in $(seq 300); do curl -sf "$1/ready" >/dev/null && return; sleep 0.05; done
  echo "$1 not ready" >&2; exit 1
}
mkdir -p "$work/valkey"
"$valkey" "$PWD/valkey.conf" --port "$vport" --dir "$work/valkey" --save "" >"$work/valkey.log" 2>&1 &
vpid=$!; pids+=("$vpid")
for _ in $(seq 100); do redis-cli -p "$vport" ping >/dev/null 2>&1 && break; sleep 0.05; done
relay_pids=()
for n in 1 2 3 4; do
  cluster=true; [ "$n" = 4 ] && cluster=false
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=${ports[$n - 1]} PULSAR_SERVER_SHARDS=1 \
    PULSAR_STORAGE_BACKEND=valkey PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT=$vport \
    PULSAR_CLUSTER_ENABLED=$cluster "$relay" >"$work/node$n.log" 2>&1 &
  pids+=($!); relay_pids+=($!)
done
for n in 1 2 3 4; do wait_ready "$(url "$n")"; done
token=$(PULSAR_JWT_SECRET_KEY=$secret "$relay" token --sub bench --permissions read,write --ttl 2h)
echo "valkey: $("$valkey" --version | head -n1); relays: 3 cluster nodes + 1 without, 1 shard each"

# CPU seconds (user + system) of a process so far; the fields after the command name.
cpu_s() { sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$tck" '{printf "%.4f", ($12 + $13) / t}'; }
relays_cpu_s() { local s=0; for p in "${relay_pids[@]}"; do s=$(echo "$s + $(cpu_s "$p")" | bc -l); done; echo "$s"; }
# INFO commandstats as "command calls" lines.
cmdstats() {
  redis-cli -p "$vport" info commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' | sort
}
snap_before() {
  v0=$(cpu_s "$vpid"); r0=$(relays_cpu_s); cmdstats >"$work/cmd0"
}
# Prints the costs since snap_before per message stored (XADD calls; PUBLISH calls when
# none): Valkey µs, relays' µs, and Valkey commands (all, and each) per message.
snap_after() { # $1 = label
  local v1 r1; v1=$(cpu_s "$vpid"); r1=$(relays_cpu_s); cmdstats >"$work/cmd1"
  join -a2 -e0 -o 0,1.2,2.2 "$work/cmd0" "$work/cmd1" | awk -v v="$(echo "$v1 - $v0" | bc -l)" \
    -v r="$(echo "$r1 - $r0" | bc -l)" -v label="$1" '
    { d[$1] = $3 - $2; if ($1 != "info" && $1 != "ping") total += $3 - $2 }
    END {
      m = d["xadd"]; if (m == 0) m = d["publish"]
      if (m == 0) { printf "%-34s no messages\n", label; exit }
      printf "%-34s messages %8d  valkey %6.1f us/msg  relays %6.1f us/msg  valkey cmds/msg %.2f (", label, m, v * 1e6 / m, r * 1e6 / m, total / m
      n = 0
      for (c in d) if (d[c] > 0 && c != "info" && c != "ping") { printf "%s%s %.2f", (n++ ? ", " : ""), c, d[c] / m }
      print ")"
    }'
}
lg() { "$loadgen" --secret "$secret" --duration "$duration" "$@"; }
# A loadgen run between two snapshots; its JSON summary goes to $work/$1.json.
measured() { # $1 = name, $2 = label, then loadgen arguments
  local name=$1 label=$2; shift 2
  snap_before
  lg "$@" --json "$work/$name.json" >"$work/$name.out" 2>"$work/$name.err" \
    || { echo "$label: loadgen exited $? (see below)"; cat "$work/$name.out" "$work/$name.err"; }
  snap_after "$label"
}
latency() { jq -r '"p50 \(.latency_ms.p50) ms  p99 \(.latency_ms.p99) ms  lost \(.lost)  delivered \(.delivered)"' "$work/$1.json"; }

echo
echo "== 1. publish -> receive latency, 10 subscribers, 1000 msg/s, $duration =="
e2e=(e2e --subscribers 10 --rate 1000)
measured single "node 4 alone (no cluster mode)" "${e2e[@]}" --url "$(url 4)"
measured cnode "node 1 alone (cluster mode)" "${e2e[@]}" --url "$(url 1)"
measured cross "cross-node (pub 1, sub 2)" "${e2e[@]}" --url "$(url 2)" --publish-url "$(url 1)"
measured spread "spread (pub 1, sub 1-3)" "${e2e[@]}" --url "$(url 1)" --url "$(url 2)" --url "$(url 3)" \
  --publish-url "$(url 1)"
for r in single cnode cross spread; do printf '%-7s %s\n' "$r" "$(latency "$r")"; done

echo
echo "== 2. deliveries/s, $fan_subs subscribers at $fan_rate msg/s, $duration =="
fan=(fanout --subscribers "$fan_subs" --rate "$fan_rate" --max-error-rate 100%)
measured fan1 "all on node 1" "${fan[@]}" --url "$(url 1)"
measured fan3 "spread over nodes 1-3 (pub 1)" "${fan[@]}" --url "$(url 1)" --url "$(url 2)" --url "$(url 3)" \
  --publish-url "$(url 1)"
for r in fan1 fan3; do
  jq -r --arg r "$r" '"\($r)  deliveries/s \(.rate | floor)  p50 \(.latency_ms.p50) ms  p99 \(.latency_ms.p99) ms  lost \(.lost) of \(.expected)"' "$work/$r.json"
done

echo
echo "== 3. per-topic channels: N topics held by each of nodes 1-3, publishes at 1000 msg/s over them =="
metric_sum() { # $1 = node, $2 = metric name
  curl -sf "$(url "$1")/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
for n_topics in 1 1000 10000; do
  prefix=held$n_topics
  coproc HOLDER { exec python3 tools/bench/topic_holder.py "$token" "$prefix" "$n_topics" "$(url 1)" "$(url 2)" "$(url 3)"; }
  holder_in=${HOLDER[1]}
  read -r _ took <&"${HOLDER[0]}"
  echo "N=$n_topics: subscribed on 3 nodes in ${took}s; listened topics per node:" \
    "$(for n in 1 2 3; do metric_sum "$n" pulsar_cluster_listened_topics; done | xargs)"
  echo "  valkey: $(redis-cli -p "$vport" pubsub numsub "$(echo "pulsar:{$prefix-0}:n")" | tail -n1) subscribers on a channel, $(redis-cli -p "$vport" pubsub channels 'pulsar:*' | wc -l) channels"
  measured "ch$n_topics" "  publish over N=$n_topics topics" publish --rate 1000 --connections 4 \
    --topics "$n_topics" --topic-prefix "$prefix" --url "$(url 1)"
  # Resubscription: every pub/sub connection killed at once; each node is back when its
  # resumes counter moves (the listener confirmed every channel again).
  snap_before
  python3 - "$vport" "$(url 1)" "$(url 2)" "$(url 3)" <<'EOF'
import subprocess, sys, time, urllib.request
port, urls = sys.argv[1], sys.argv[2:]
def resumes(url):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("pulsar_cluster_resumes_total"))
before = [resumes(u) for u in urls]
killed = subprocess.run(["redis-cli", "-p", port, "client", "kill", "type", "pubsub"], capture_output=True, text=True).stdout.strip()
start = time.monotonic()
back = [None] * len(urls)
while None in back and time.monotonic() - start < 120:
    for i, u in enumerate(urls):
        if back[i] is None and resumes(u) > before[i]:
            back[i] = time.monotonic() - start
    time.sleep(0.002)
print(f"  CLIENT KILL TYPE pubsub ({killed} connections): nodes back after " +
      ", ".join("timeout" if b is None else f"{b * 1000:.0f} ms" for b in back))
EOF
  sleep 1
  v1=$(cpu_s "$vpid"); cmdstats >"$work/cmd1"
  echo "  resume: valkey CPU $(echo "($v1 - $v0) * 1000" | bc -l | xargs printf '%.1f') ms;" \
    "commands $(join -a2 -e0 -o 0,1.2,2.2 "$work/cmd0" "$work/cmd1" | awk '$3 > $2 && $1 != "info" && $1 != "ping" { printf "%s %d  ", $1, $3 - $2 }')"
  exec {holder_in}>&-; holder_in=
  wait "$HOLDER_PID" 2>/dev/null || true
  for n in 1 2 3; do
    for _ in $(seq 200); do [ "$(metric_sum "$n" pulsar_cluster_listened_topics)" = 0 ] && break; sleep 0.05; done
  done
done

echo
echo "== 4. Valkey alone: PUBLISH to C channels, each subscribed by S connections (redis-benchmark) =="
# S = 3: the three nodes here, per-topic channels (C = topics) or partitions (C = K); C = 1000
# with S = 1 and 30: what each further subscribed node costs per message.
for pair in 1:3 64:3 1000:3 10000:3 1000:1 1000:30; do
  channels=${pair%:*}; n_subs=${pair#*:}
  names=$(seq -f "bench:%012g" 0 $((channels - 1)))
  subs=()
  for _ in $(seq "$n_subs"); do
    # shellcheck disable=SC2086
    redis-cli -p "$vport" subscribe $names >/dev/null & subs+=($!)
  done
  for _ in $(seq 400); do
    [ "$(redis-cli -p "$vport" pubsub numsub "bench:$(printf %012d $((channels - 1)))" | tail -n1)" = "$n_subs" ] && break
    sleep 0.05
  done
  snap_before
  redis-benchmark -p "$vport" -c 4 -n 200000 -r "$channels" -q PUBLISH "bench:__rand_int__" \
    "$(head -c 100 /dev/zero | tr '\0' x)" >/dev/null
  snap_after "PUBLISH, C=$channels x S=$n_subs"
  left=$(redis-cli -p "$vport" pubsub numsub "bench:$(printf %012d $((channels - 1)))" | tail -n1)
  if [ "$left" -lt "$n_subs" ] 2>/dev/null; then
    echo "  (only $left of $n_subs subscribers left: Valkey dropped slow ones)"
  fi
  kill "${subs[@]}"; wait "${subs[@]}" 2>/dev/null || true
done

echo
cleanup; trap - EXIT
tools/bench/nodes-cluster.sh "$duration"
