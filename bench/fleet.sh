#!/usr/bin/env bash
# Fleet mode's cost: messages per second end to end through Postfix's smtp-sink with a
# fleet-wide limit far above the load (so every dispatch runs the Redis script), one node
# and three nodes, against the same without [fleet]; Redis round trips per message (from
# Redis's own command statistics), the script's time per call, and the round trip as the
# nodes see it (their mailgate_fleet_call_duration_seconds). Loopback only; a private
# redis-server and sink, stopped by PID.
#
# Each case runs ROUNDS times, the cases interleaved (this VM's speed drifts between runs);
# the summary gives each case's median and the ratio with [fleet] to without. Three nodes
# without [fleet] open 20 connections each (60); with it the mailbox's 20 are shared, so
# two more cases separate the fleet's cost from its cap: the 20 split by hand (7 each,
# no [fleet]) and [fleet] with max_connections = 60.
#
#   bench/fleet.sh             # needs redis-server and postfix (smtp-sink)
#   N=3000 ROUNDS=5 bench/fleet.sh
#   ONLY='3 nodes' bench/fleet.sh   # only the cases whose label matches
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3000}
ROUNDS=${ROUNDS:-3}
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install redis-server)" >&2; exit 1; }
command -v smtp-sink >/dev/null || { echo "smtp-sink missing (apt-get install postfix)" >&2; exit 1; }
cargo build --release --locked -q
MG=target/release/mailgate
LOAD=target/release/mailgate-load
WORK=$(mktemp -d /tmp/mailgate-fleet-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port); REDIS=$(free_port)
smtp-sink -u postfix 127.0.0.1:"$SINK" 2048 >/dev/null 2>&1 & PIDS+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

# start_node NAME FLEET(0/1) [CONNS] -> prints "smtp_port status_port pid"
start_node() {
  local name=$1 fleet=$2 conns=${3:-20} smtp status
  smtp=$(free_port); status=$(free_port)
  mkdir -p "$WORK/$name"
  {
    printf '[smtp]\nlisten = ["127.0.0.1:%s"]\nmax_connections = 2000\n' "$smtp"
    printf '[store]\npath = "%s/data/m.redb"\nmin_free_space = 0\n' "$WORK/$name"
    printf '[status]\nlisten = "127.0.0.1:%s"\n[distributor]\ndefault_provider = "sink"\n' "$status"
    printf '[[provider]]\nname = "sink"\nkind = "smtp"\nhost = "127.0.0.1"\nport = %s\ntls = "none"\nmax_connections = %s\nper_minute_limit = 1000000\nper_day_recipient_limit = 100000000\n' "$SINK" "$conns"
    if [ "$fleet" = 1 ]; then
      printf '[fleet]\nredis_url = "redis://127.0.0.1:%s/0"\nnode = "%s"\nkey_prefix = "bench:"\nexpected_nodes = 3\n' "$REDIS" "$name"
    fi
  } > "$WORK/$name/m.toml"
  MAILGATE_LOG=warn $MG --config "$WORK/$name/m.toml" serve 2>>"$WORK/$name/log" &
  local pid=$!
  for _ in $(seq 100); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$status/healthz', timeout=1)" 2>/dev/null && break; sleep 0.1; done
  echo "$smtp $status $pid"
}
drained() { # status ports...
  for st in "$@"; do
    python3 - "$st" <<'PY' || return 1
import json, sys, urllib.request
q = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status"))["queue"]
sys.exit(0 if q["queued"] + q["deferred"] + q["sending"] == 0 else 1)
PY
  done
}
redis_calls() { redis-cli -p "$REDIS" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_(evalsha|zrem|set|sadd|smembers|mget|srem):/ {n+=$3} END {print n+0}'; }
script_usec() { redis-cli -p "$REDIS" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_evalsha/ {print $7}'; }
# The scripts' p99 as Redis measures it (Redis 7 latencystats), microseconds.
script_p99() { redis-cli -p "$REDIS" INFO latencystats | tr -d '\r' | awk -F'[=,:]' '/^latency_percentiles_usec_evalsha/ {for (i=1;i<=NF;i++) if ($i=="p99") print $(i+1)}'; }

# The round trips the nodes themselves saw (mailgate_fleet_call_duration_seconds, summed
# over the nodes): p50 and p99 as the upper bound of their histogram bucket, microseconds.
client_rtt() { # status ports...
  python3 - "$@" <<'PY'
import sys, urllib.request, re
buckets, count = {}, 0
for port in sys.argv[1:]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        m = re.match(r'mailgate_fleet_call_duration_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
        if m:
            buckets[m.group(1)] = buckets.get(m.group(1), 0) + int(m.group(2))
        m = re.match(r'mailgate_fleet_call_duration_seconds_count (\d+)', line)
        if m:
            count += int(m.group(1))
def q(p):
    for le, n in sorted(((float(k), v) for k, v in buckets.items())):
        if n >= p * count:
            return "inf" if le == float("inf") else f"<={le * 1e6:.0f}"
    return "-"
print(f"node-side round trip p50 {q(0.5)} us, p99 {q(0.99)} us ({count} calls)" if count else "")
PY
}

# Store commits (group commits: intake and outcomes) the nodes made, summed.
commits() { # status ports...
  python3 - "$@" <<'PY'
import sys, urllib.request, re
n = 0
for port in sys.argv[1:]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    m = re.search(r'^mailgate_store_commit_duration_seconds_count (\d+)', text, re.M)
    n += int(m.group(1)) if m else 0
print(n)
PY
}

# run LABEL NODES FLEET [CONNS per node]; ONLY (a grep -E pattern) picks cases by label.
run() {
  local label=$1 nodes=$2 fleet=$3 conns=${4:-20} ports=() statuses=() pids=() i
  if [ -n "${ONLY:-}" ] && ! grep -qE -- "$ONLY" <<<"$label"; then return 0; fi
  redis-cli -p "$REDIS" CONFIG RESETSTAT >/dev/null
  for i in $(seq "$nodes"); do
    read -r smtp status pid < <(start_node "$label-$i" "$fleet" "$conns")
    ports+=("$smtp"); statuses+=("$status"); pids+=("$pid"); PIDS+=("$pid")
  done
  local per=$((N / nodes)) start end
  start=$(date +%s.%N)
  local loads=()
  for p in "${ports[@]}"; do $LOAD --target "127.0.0.1:$p" --sessions 20 --messages "$per" --size 2048 >/dev/null & loads+=($!); done
  wait "${loads[@]}" 2>/dev/null || true
  for _ in $(seq 6000); do drained "${statuses[@]}" && break; sleep 0.05; done
  end=$(date +%s.%N)
  local calls; calls=$(redis_calls)
  local commits; commits=$(commits "${statuses[@]}")
  # CPU the nodes used (user + system, from /proc), per message.
  local ticks=0 t
  for pid in "${pids[@]}"; do t=$(awk '{print $14 + $15}' "/proc/$pid/stat"); ticks=$((ticks + t)); done
  python3 -c "n=$per*$nodes; print(f'{\"$label\":<34} {n/($end-$start):8.0f} msg/s e2e   redis calls/msg {$calls/n:5.2f}   node CPU {$ticks*1e6/$(getconf CLK_TCK)/n:4.0f} us/msg   commits/msg {$commits/n:4.2f}   script {\"$(script_usec)\" or \"-\"} us/call, p99 {\"$(script_p99)\" or \"-\"} us')" | tee -a "$WORK/results"
  if [ "$fleet" = 1 ]; then echo "    $(client_rtt "${statuses[@]}")"; fi
  for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); mailgate-load 20 sessions per node, 2 KB, $N messages in all, sink: smtp-sink; $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run "1 node, no [fleet]" 1 0
  run "1 node, [fleet]" 1 1
  run "3 nodes, no [fleet]" 3 0
  run "3 nodes, no [fleet], 7 conns each" 3 0 7
  run "3 nodes, [fleet] (one mailbox)" 3 1
  run "3 nodes, [fleet], 60 conns" 3 1 60
done
python3 - "$WORK/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(.{34}) +(\d+) msg/s e2e +redis calls/msg +([\d.]+) +node CPU +(\d+) us/msg +commits/msg +([\d.]+)", line)
    if m:
        runs.setdefault(m.group(1).strip(), []).append((int(m.group(2)), float(m.group(3)), int(m.group(4)), float(m.group(5))))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(4)) for k, v in runs.items()}
print("summary (medians):")
for k, (rate, calls, cpu, commits) in med.items():
    print(f"  {k:<34} {rate:8.0f} msg/s   redis calls/msg {calls:5.2f}   node CPU {cpu:4.0f} us/msg   commits/msg {commits:4.2f}")
def rounds(a, b):
    """The ratio a/b in each round (the cases of a round run one after the other)."""
    pairs = zip(runs.get(a, []), runs.get(b, []))
    return ", ".join(f"{100 * x[0] / y[0]:.0f}%" for x, y in pairs)
for n, fleet in (("1 node", "1 node, [fleet]"), ("3 nodes", "3 nodes, [fleet] (one mailbox)")):
    base = med.get(f"{n}, no [fleet]")
    with_ = med.get(fleet)
    if base and with_:
        print(f"  {n}: with [fleet] {100 * with_[0] / base[0]:.0f}% of the throughput without (each round: {rounds(fleet, f'{n}, no [fleet]')}), {with_[1]:.2f} Redis calls per message")
split = med.get("3 nodes, no [fleet], 7 conns each")
with3 = med.get("3 nodes, [fleet] (one mailbox)")
if split and with3:
    print(f"  3 nodes: with [fleet] {100 * with3[0] / split[0]:.0f}% of the throughput without it with the mailbox's 20 connections split by hand (7 each) (each round: {rounds('3 nodes, [fleet] (one mailbox)', '3 nodes, no [fleet], 7 conns each')})")
wide = med.get("3 nodes, [fleet], 60 conns")
base3 = med.get("3 nodes, no [fleet]")
if wide and base3:
    print(f"  3 nodes: with [fleet] and max_connections = 60 (as many connections as three nodes open without it) {100 * wide[0] / base3[0]:.0f}% of the throughput without (each round: {rounds('3 nodes, [fleet], 60 conns', '3 nodes, no [fleet]')}), {wide[1]:.2f} Redis calls per message")
PY
