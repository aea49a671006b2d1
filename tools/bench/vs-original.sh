#!/usr/bin/env bash
# Pulsar Relay against the original Python pulsar-relay (PyPI pulsar-relay 0.2.1, FastAPI on
# uvicorn), one after the other on this machine, with the same load, through the API both
# serve (reference: the original's wire contract, §3.1, §5.1, §7.1):
#
#   tools/bench/vs-original.sh [connections=64] [duration=10s]
#
# For each server (ours with 2 shards, ours with 1 shard, the original with 1 uvicorn worker,
# the original with 2 workers if that works): start it with the memory backend and a bootstrap
# admin, get an access token from POST /auth/login (form), then
#   1. throughput: wrk, keep-alive connections, single-message POST /api/v1/messages
#      (tools/bench/publish.lua), after a 2 s warm-up; the server's CPU time over the run;
#   2. latency: ROUNDS (200) sequential rounds of "a poller waits in POST /messages/poll,
#      the publisher POSTs one message, time from sending the publish until the poll
#      answers", on an otherwise idle server; p50 / p99 / max.
# Then prints each measurement and the ratios, and stops everything it started.
#
# The original's per-IP rate limits (slowapi: 120 publishes and 5 logins per minute) would
# turn any load test into a 429 test, so tools/bench/original_launcher.py disables its
# limiter (limiter.enabled = False) and runs uvicorn with access logs off; nothing else of
# the original is changed. Its memory backend keeps users per worker process (a token
# minted by one worker is "User not found" on the other), so with 2 workers the script
# first checks whether one token works on every connection and skips that run if not.
#
# The original is installed, pinned, into target/original-venv (reused when present).
# Needs wrk, curl and python3.11 (with venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}; duration=${2:-10s}
rounds=${ROUNDS:-200}
ours_port=18191; original_port=18192
secret=bench-secret-bench-secret-bench-secret
admin=bench-admin; password=bench-admin-password
relay=target/release/pulsar-relay
venv=target/original-venv
py=$venv/bin/python
threads=2

# The original and the packages it runs on, as measured (benches/BENCHMARKS.md).
pins=(pulsar-relay==0.2.1 uvicorn==0.54.0 uvloop==0.23.0 httptools==0.9.0 fastapi==0.165.0
      starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 slowapi==0.1.10 limits==5.8.0
      pwdlib==0.3.1 argon2-cffi==25.1.0 pyjwt==2.15.1 python-multipart==0.0.34)
if ! "$py" -c 'import importlib.metadata as m, sys; sys.exit(m.version("pulsar-relay") != "0.2.1")' 2>/dev/null; then
  python3.11 -m venv "$venv"
  "$py" -m pip install --quiet "${pins[@]}"
fi
if [ ! -x "$relay" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$relay" -print -quit)" ]; then
  cargo build --release
fi

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null' EXIT

# start_ours SHARDS / start_original WORKERS: start a server in the background, set $server.
start_ours() {
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_SERVER_HTTP_PORT=$ours_port PULSAR_SERVER_SHARDS="$1" \
    PULSAR_STORAGE_BACKEND=memory PULSAR_SERVER_TOPIC_NAMESPACE=per_user \
    PULSAR_BOOTSTRAP_ADMIN_USERNAME=$admin PULSAR_BOOTSTRAP_ADMIN_PASSWORD=$password \
    PULSAR_ACCOUNTS_LOGIN_RATE=0 "$relay" >/dev/null 2>&1 &
  server=$!; pids+=("$server"); port=$ours_port
}
start_original() {
  env PULSAR_JWT_SECRET_KEY=$secret PULSAR_STORAGE_BACKEND=memory \
    PULSAR_BOOTSTRAP_ADMIN_USERNAME=$admin PULSAR_BOOTSTRAP_ADMIN_PASSWORD=$password \
    PULSAR_ALLOWED_ORIGINS='["http://localhost"]' PULSAR_TRUSTED_HOSTS='["127.0.0.1","localhost"]' \
    "$py" tools/bench/original_launcher.py $original_port "$1" >/dev/null 2>&1 &
  server=$!; pids+=("$server"); port=$original_port
}
wait_ready() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
  echo "server on port $port did not become ready" >&2; exit 1
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }
login() {
  curl -sf -d "username=$admin" -d "password=$password" "http://127.0.0.1:$port/auth/login" |
    "$py" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
# CPU seconds (user + system) the server has used so far: its process and its worker
# processes (uvicorn with several workers).
cpu_seconds() {
  local p stats=()
  for p in "$server" $(pgrep -P "$server" || true); do stats+=("/proc/$p/stat"); done
  awk -v hz="$(getconf CLK_TCK)" '{t += $14 + $15} END {printf "%.2f", t / hz}' "${stats[@]}"
}

# throughput NAME: wrk warm-up then the measured run; sets rate_<NAME>, cpu_<NAME>, wrk50/99_<NAME>.
throughput() {
  local url="http://127.0.0.1:$port/" out before after
  TOKEN=$token wrk -t$threads -c"$conns" -d2s -s tools/bench/publish.lua "$url" >/dev/null
  before=$(cpu_seconds)
  out=$(TOKEN=$token wrk -t$threads -c"$conns" -d"$duration" --latency -s tools/bench/publish.lua "$url")
  after=$(cpu_seconds)
  echo "$out"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then echo "$1: errors during the run" >&2; exit 1; fi
  printf -v "rate_$1" %s "$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  printf -v "cpu_$1" %s "$(awk -v a="$after" -v b="$before" -v d="${duration%s}" 'BEGIN{printf "%.2f", (a-b)/d}')"
  printf -v "wrk50_$1" %s "$(echo "$out" | awk '$1 == "50%" {print $2}')"
  printf -v "wrk99_$1" %s "$(echo "$out" | awk '$1 == "99%" {print $2}')"
}

# latency NAME: publish -> long-poll receipt rounds; sets lat_<NAME> to "p50 p99 max" in ms.
latency() {
  local result
  result=$("$py" - "$port" "$token" "$rounds" <<'PY'
import http.client, json, sys, threading, time
port, token, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
publisher = http.client.HTTPConnection("127.0.0.1", port)
poller = http.client.HTTPConnection("127.0.0.1", port)
poll_body = json.dumps({"topics": ["latency-probe"], "timeout": 10})
samples = []
for i in range(rounds + 10):  # the first 10 rounds warm up connections and code paths
    answer = {}
    def poll():
        poller.request("POST", "/messages/poll", poll_body, headers)
        response = poller.getresponse()
        body = response.read()
        answer["at"] = time.perf_counter()
        answer["status"], answer["body"] = response.status, body
    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(0.05)  # the poll is registered long before this on an idle server
    sent = time.perf_counter()
    publisher.request("POST", "/api/v1/messages",
                      json.dumps({"topic": "latency-probe", "payload": {"round": i}}), headers)
    published = publisher.getresponse()
    published.read()
    waiting.join(15)
    if published.status != 201 or answer.get("status") != 200:
        sys.exit(f"round {i}: publish {published.status}, poll {answer.get('status')}")
    messages = json.loads(answer["body"])["messages"]
    if [m["payload"] for m in messages] != [{"round": i}]:
        sys.exit(f"round {i}: poll answered {messages}")
    if i >= 10:
        samples.append((answer["at"] - sent) * 1000)
samples.sort()
pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
print(f"{pick(0.50):.2f} {pick(0.99):.2f} {samples[-1]:.2f}")
PY
)
  echo "publish -> poll receipt over $rounds rounds, ms: p50 p99 max = $result"
  printf -v "lat_$1" %s "$result"
}

measure() { # measure NAME DESCRIPTION (server already started)
  echo "== $2: $conns connections, $threads wrk threads, $duration"
  wait_ready
  token=$(login)
  throughput "$1"
  latency "$1"
  stop_server
}

# One token must work on every connection; false for the original's memory backend with
# more than one worker (users live in each worker process).
one_token_works() {
  local code bad=0
  for _ in $(seq 40); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' -d '{"topic":"probe","payload":{}}' \
      "http://127.0.0.1:$port/api/v1/messages")
    [ "$code" = 201 ] || bad=$((bad + 1))
  done
  echo "$bad of 40 publishes with one token refused"
  [ "$bad" = 0 ]
}

echo "pulsar-relay (ours) $(git rev-parse --short HEAD); original: pulsar-relay $("$py" -c 'import importlib.metadata as m; print(m.version("pulsar-relay"))'), uvicorn $("$py" -c 'import uvicorn; print(uvicorn.__version__)'), $("$py" --version); $(nproc) cores"
start_ours 2; measure ours2 "ours, 2 shards"
start_ours 1; measure ours1 "ours, 1 shard"
start_original 1; measure orig1 "original, 1 uvicorn worker (rate limiter disabled)"
echo "== original, 2 uvicorn workers"
start_original 2; wait_ready; sleep 1; token=$(login)
if one_token_works; then
  measure orig2 "original, 2 uvicorn workers (rate limiter disabled)"
else
  echo "original with 2 workers not measured: its memory backend keeps users per worker"
  stop_server
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", a/b}'; }
echo
echo "== summary ($conns connections, $duration, single-message publishes; latency: $rounds rounds)"
printf "%-34s %10s %10s %12s %12s %14s\n" server "req/s" "CPU cores" "wrk p50" "wrk p99" "poll p50/p99/max ms"
row() { printf "%-34s %10s %10s %12s %12s %14s\n" "$1" "$2" "$3" "$4" "$5" "$6"; }
row "ours, 2 shards" "$rate_ours2" "$cpu_ours2" "$wrk50_ours2" "$wrk99_ours2" "${lat_ours2// //}"
row "ours, 1 shard" "$rate_ours1" "$cpu_ours1" "$wrk50_ours1" "$wrk99_ours1" "${lat_ours1// //}"
row "original, 1 worker" "$rate_orig1" "$cpu_orig1" "$wrk50_orig1" "$wrk99_orig1" "${lat_orig1// //}"
if [ -n "${rate_orig2:-}" ]; then
  row "original, 2 workers" "$rate_orig2" "$cpu_orig2" "$wrk50_orig2" "$wrk99_orig2" "${lat_orig2// //}"
fi
read -r o2p50 o2p99 _ <<<"$lat_ours2"; read -r o1p50 o1p99 _ <<<"$lat_ours1"; read -r pp50 pp99 _ <<<"$lat_orig1"
echo "throughput: ours 2 shards / original 1 worker = $(ratio "$rate_ours2" "$rate_orig1")x; ours 1 shard / original 1 worker = $(ratio "$rate_ours1" "$rate_orig1")x"
[ -n "${rate_orig2:-}" ] && echo "throughput: ours 2 shards / original 2 workers = $(ratio "$rate_ours2" "$rate_orig2")x"
echo "requests per CPU-second: ours 2 shards $(ratio "$rate_ours2" "$cpu_ours2"), ours 1 shard $(ratio "$rate_ours1" "$cpu_ours1"), original 1 worker $(ratio "$rate_orig1" "$cpu_orig1")"
echo "publish -> poll latency, original / ours: p50 $(ratio "$pp50" "$o2p50")x (2 shards), $(ratio "$pp50" "$o1p50")x (1 shard); p99 $(ratio "$pp99" "$o2p99")x (2 shards), $(ratio "$pp99" "$o1p99")x (1 shard)"
