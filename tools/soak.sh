#!/usr/bin/env bash
# tools/soak.sh DURATION [--debug] [--interval D] [--kills N] [--stall-every S] [--stall-for S]
#                        [-- extra pulsar-loadgen soak flags]
#
# The soak (issue #14): a private valkey-server, pulsar-faultproxy between the relay and
# it, the relay (Valkey backend, persisted acks, bootstrap admin), and `pulsar-loadgen soak`
# for DURATION (60, 90s, 30m, 1h): durable WebSocket and long-poll consumers that disconnect
# and resume at random, cursor long-polls, publishers (single and bulk, retried with their
# Idempotency-Key), and logins with refreshes. Meanwhile this script injects faults:
#
#   - relay SIGKILL and restart on the same port, --kills times (default 2 to 6, one per
#     ~400 s of the run) evenly spread over the first third of the run; every second kill
#     happens while Valkey is stalled (writes held in flight when the process dies);
#   - Valkey stalls (`stall both` on the proxy: bytes stop, connections stay open) of
#     --stall-for seconds every --stall-every seconds, for the whole run.
#
# The load generator checks all along that every acknowledged publish (201, or accepted in
# a 207) reaches every durable consumer of its topic in ID order with no gap; that a
# message comes twice only as at-least-once redelivery at the start of a durable
# consumer's later session, above its last ack known to be persisted; that cursor
# consumers never see one twice; and that a publish retried with its Idempotency-Key
# exists under one ID only (pulsar-loadgen's soak checker documents the exact rules).
# Once per second it reads the relay's RSS (/proc/PID/status VmRSS) and open descriptors
# (/proc/PID/fd), and prints a row per --interval (default 10 s up to 5 minutes, else
# 60 s): RSS, fds, kills, stalls, publishes, retries, deliveries, redeliveries,
# publish-to-delivery p50/p99 and publish p99.
#
# It fails (exit 1) on: any checker violation (gap, loss, reorder, a duplicate that is not
# allowed redelivery, one publish under two IDs, an unexpected answer such as a 500 or a
# refresh token the relay forgot), the relay dying without being killed or panicking, or
# growth that does not level off: RSS or open descriptors whose highest value in the last
# third of the run is above the middle third's highest by more than 10% (RSS: or 16 MiB,
# descriptors: or 16, whichever is more) while the last interval is still above the first interval of
# the last third. Kills happen in the first third only, so that the last two thirds are
# one relay process whose growth can be judged.
#
# --debug runs the binaries of target/debug (what `cargo test` built; ./tools/test.sh runs
# `tools/soak.sh 60 --debug`); otherwise it builds and runs release binaries. The last line
# is `soak: 1 passed, 0 failed` or `soak: 0 passed, 1 failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. tools/provision.sh

say() { echo "tools/soak.sh: $*" >&2; }
usage() { sed -n '2,3p' "$0" | sed 's/^# //' >&2; exit 2; }

[ $# -ge 1 ] || usage
seconds_of() {
  case $1 in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
duration=$(seconds_of "$1"); shift
[[ $duration =~ ^[0-9]+$ ]] && [ "$duration" -ge 30 ] || { say "DURATION must be 30 s or more"; exit 2; }
profile=release interval= kills= stall_every= stall_for=
while [ $# -gt 0 ]; do
  case $1 in
    --debug) profile=debug ;;
    --interval) interval=$(seconds_of "$2"); shift ;;
    --kills) kills=$2; shift ;;
    --stall-every) stall_every=$(seconds_of "$2"); shift ;;
    --stall-for) stall_for=$(seconds_of "$2"); shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
  shift
done
[ -n "$interval" ] || interval=$(( duration <= 300 ? 10 : 60 ))
if [ -z "$kills" ]; then kills=$(( duration / 400 )); kills=$(( kills < 2 ? 2 : kills > 6 ? 6 : kills )); fi
[ -n "$stall_every" ] || stall_every=$(( duration <= 300 ? 15 : 90 ))
[ -n "$stall_for" ] || stall_for=$(( duration <= 300 ? 2 : 3 ))

bin=${CARGO_TARGET_DIR:-$repo/target}/$profile
if [ "$profile" = release ]; then
  say "building release binaries"
  cargo build --release --bins -p pulsar-relay -p pulsar-loadgen -p pulsar-faultproxy >&2
else
  cargo build --bins -p pulsar-relay -p pulsar-loadgen -p pulsar-faultproxy >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pulsar-soak.XXXXXX")
valkey_pid= proxy_pid= relay_pid= loadgen_pid=
cleanup() {
  local status=$?
  for pid in $loadgen_pid $relay_pid $proxy_pid $valkey_pid; do
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# The relay's port must still be free when it restarts. A port from the ephemeral range can
# be taken meanwhile as the source port of any outgoing connection (the load generator's,
# another test's); one below the range is only ever taken by a listener.
relay_free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    port = random.randrange(10000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
'
}
answers() { # PORT REQUEST EXPECTED-PREFIX: one request over bash's /dev/tcp, first line
  local reply=
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf '%b' "$2" >&3 2>/dev/null && read -r -t 2 reply <&3 2>/dev/null || true
  exec 3<&-
  [[ $reply == "$3"* ]]
}

# --- Valkey, and the fault proxy in front of it ---------------------------------------------
valkey=$(find_valkey)
valkey_port=$(free_port)
mkdir -p "$work/valkey"
"$valkey" ./valkey.conf --port "$valkey_port" --dir "$work/valkey" --daemonize no \
  >"$work/valkey.log" 2>&1 &
valkey_pid=$!
for _ in $(seq 100); do answers "$valkey_port" 'PING\r\n' '+PONG' && break; sleep 0.1; done
answers "$valkey_port" 'PING\r\n' '+PONG' || { say "valkey-server did not start:"; cat "$work/valkey.log" >&2; exit 1; }

proxy_port=$(free_port) control_port=$(free_port)
"$bin/pulsar-faultproxy" --listen "127.0.0.1:$proxy_port" --upstream "127.0.0.1:$valkey_port" \
  --control "127.0.0.1:$control_port" </dev/null >"$work/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 50); do grep -q "control on" "$work/proxy.log" 2>/dev/null && break; sleep 0.1; done
exec 4<>"/dev/tcp/127.0.0.1/$control_port"
proxy() { # one control command, which must be answered ok
  local answer
  echo "$1" >&4
  read -r -t 5 answer <&4 || answer="(no answer)"
  [[ $answer == ok* ]] || { say "fault proxy: $1: $answer"; exit 1; }
}

# --- The relay ------------------------------------------------------------------------------
relay_port=$(relay_free_port)
secret=$(head -c 32 /dev/urandom | base64)
export PULSAR_BOOTSTRAP_ADMIN_USERNAME=soak-admin
export PULSAR_BOOTSTRAP_ADMIN_PASSWORD=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
restarts=0
start_relay() {
  env $(env | grep -o '^PULSAR_[A-Z_]*' | grep -v BOOTSTRAP | sed 's/^/-u /') \
    PULSAR_SERVER_HTTP_PORT="$relay_port" PULSAR_JWT_SECRET_KEY="$secret" \
    PULSAR_STORAGE_BACKEND=valkey PULSAR_STORAGE_ACK=persisted \
    PULSAR_VALKEY_HOST=127.0.0.1 PULSAR_VALKEY_PORT="$proxy_port" \
    PULSAR_BOOTSTRAP_ADMIN_EMAIL=soak@example.com \
    PULSAR_STORAGE_HOT_TIER_MESSAGES_PER_TOPIC=1000 \
    "$bin/pulsar-relay" >>"$work/relay.log" 2>&1 &
  relay_pid=$!
  echo "$relay_pid" >"$work/relay.pid"
  local i
  for i in $(seq 300); do
    answers "$relay_port" 'GET /health HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n' 'HTTP/1.1 200' && return 0
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.1
  done
  say "the relay did not start:"; tail -n 20 "$work/relay.log" >&2; exit 1
}
start_relay
relay_gone_by_itself() { ! kill -0 "$relay_pid" 2>/dev/null; }
# Waits (up to 10 s) until nothing listens on the relay's port. A killed relay's listeners
# can outlive its process by a moment: the accepts it had queued in io_uring hold them until
# the kernel tears the ring down, after the process was reaped. Probed as the relay probes
# (SO_REUSEADDR bind), which fails only while someone listens.
wait_port_released() {
  python3 -c '
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
        sys.exit(0)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
    finally:
        s.close()
' "$relay_port" || { say "port $relay_port still taken 10 s after the relay was killed"; exit 1; }
}

# --- The load, and the fault schedule -------------------------------------------------------
say "$duration s, $profile build, interval $interval s; $kills relay kills in the first third," \
  "Valkey stalls of $stall_for s every $stall_every s; relay :$relay_port, proxy :$proxy_port," \
  "valkey :$valkey_port ($("$valkey" --version | head -n1 | cut -d' ' -f1-3))"
: >"$work/events"
"$bin/pulsar-loadgen" soak --url "http://127.0.0.1:$relay_port" --secret "$secret" \
  --duration "${duration}s" --interval "${interval}s" --topic-prefix "soak-$$" \
  --server-pid-file "$work/relay.pid" --events-file "$work/events" --ready-file "$work/ready" \
  --json "$work/soak.json" "$@" >"$work/summary.txt" &
loadgen_pid=$!
for _ in $(seq 600); do [ -s "$work/ready" ] && break; kill -0 "$loadgen_pid" 2>/dev/null || break; sleep 0.1; done
[ -s "$work/ready" ] || { wait "$loadgen_pid" || true; cat "$work/summary.txt"; say "the load did not start"; exit 1; }
t0=$(( $(cat "$work/ready") / 1000 ))   # µs, like EPOCHREALTIME

# "at-second action" lines, in time order.
{
  for k in $(seq "$kills"); do echo "$(( duration * k / (3 * (kills + 1)) )) kill$(( k % 2 ))"; done
  for (( s = stall_every / 2; s + stall_for < duration; s += stall_every )); do echo "$s stall"; done
} | sort -n >"$work/schedule"

at() { # waits until second $1 of the run
  local now=${EPOCHREALTIME/./} wait_us
  wait_us=$(( t0 + $1 * 1000000 - now ))
  [ "$wait_us" -gt 0 ] && sleep "$(printf '%d.%06d' $(( wait_us / 1000000 )) $(( wait_us % 1000000 )))"
  return 0
}
stall_valkey() { echo "stall $(now_ns)" >>"$work/events"; proxy "stall both"; }
failure=
while read -r second action; do
  at "$second"
  if relay_gone_by_itself; then failure="the relay exited by itself (see its log below)"; break; fi
  case $action in
    stall)
      stall_valkey; sleep "$stall_for"; proxy "flow both"
      say "[${second}s] Valkey stalled for ${stall_for}s" ;;
    kill*)
      # kill0: SIGKILL while Valkey is stalled, writes in flight; kill1: a plain SIGKILL.
      [ "$action" = kill0 ] && { stall_valkey; sleep 1; }
      kill -9 "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
      wait_port_released
      restarts=$(( restarts + 1 ))
      start_relay
      [ "$action" = kill0 ] && { sleep 1; proxy "flow both"; }
      if [ "$action" = kill0 ]; then
        say "[${second}s] relay killed and restarted, Valkey stalled across it"
      else
        say "[${second}s] relay killed and restarted"
      fi ;;
  esac
done <"$work/schedule"

status=0
wait "$loadgen_pid" || status=$?
loadgen_pid=
cat "$work/summary.txt"
if [ -z "$failure" ] && relay_gone_by_itself; then failure="the relay exited by itself (see its log below)"; fi
if grep -q "panicked" "$work/relay.log"; then failure="the relay panicked (see its log below)"; fi
if [ -z "$failure" ] && [ "$status" -ne 0 ]; then failure="pulsar-loadgen soak exited $status"; fi
if [ -n "$failure" ]; then
  say "FAILED: $failure"
  say "relay log (last 30 lines):"; tail -n 30 "$work/relay.log" >&2
  echo "soak: 0 passed, 1 failed"
  exit 1
fi
say "passed: $restarts relay restarts, $(grep -c '^stall' "$work/events") Valkey stalls"
echo "soak: 1 passed, 0 failed"
