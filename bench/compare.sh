#!/usr/bin/env bash
# mailgate beside Postfix, on one machine, in one run: the same loads against (a) mailgate
# relaying to Postfix's smtp-sink and (b) a private Postfix configured as a relayhost to
# the same sink. The headline loads come from Postfix's own smtp-source (a new connection
# per message, no pipelining: the way legacy clients submit); the mailgate-load figures
# (pipelining, reused connections, latency percentiles) follow. CPU per message is read
# from /proc (mailgate: its process; Postfix: the master and all its children). Loopback
# only; everything is started and stopped by PID under a temporary directory.
#
#   bench/compare.sh            # needs root (Postfix); installs postfix when missing
#   N=2000 bench/compare.sh     # fewer messages for a quick look
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-5000}            # messages for the 2 KB loads
N_BIG=${N_BIG:-1000}    # messages for the 100 KB load
N_ONE=${N_ONE:-1000}    # messages for the single-session load
WORK=$(mktemp -d /tmp/mailgate-bench.XXXXXX)
chmod 755 "$WORK"   # Postfix's own user must reach its queue below it
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PFX:-}" ] && postfix -c "$PFX/etc" stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

if ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
  echo "postfix missing: installing it (Debian package)" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
fi

cargo build --release --locked -q
MG=target/release/mailgate
LOAD=target/release/mailgate-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port); MG_SMTP=$(free_port); MG_STATUS=$(free_port); PF_SMTP=$(free_port)

# --- the sink ---------------------------------------------------------------------------
smtp-sink -u postfix 127.0.0.1:"$SINK" 2048 >/dev/null 2>&1 &
PIDS+=($!)

# --- mailgate ---------------------------------------------------------------------------
mkdir -p "$WORK/mg"
cat > "$WORK/mg/mailgate.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$MG_SMTP"]
hostname = "bench.local"
max_connections = 2000
[store]
path = "$WORK/mg/data/mailgate.redb"
min_free_space = 0
[status]
listen = "127.0.0.1:$MG_STATUS"
[distributor]
default_provider = "sink"
[[provider]]
name = "sink"
kind = "smtp"
host = "127.0.0.1"
port = $SINK
tls = "none"
max_connections = 20
per_minute_limit = 0
EOF

start_mailgate() {
  rm -rf "$WORK/mg/data"
  MAILGATE_LOG=warn $MG --config "$WORK/mg/mailgate.toml" serve 2>>"$WORK/mg/log" &
  MG_PID=$!
  PIDS+=("$MG_PID")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$MG_STATUS/healthz" >/dev/null && return; sleep 0.1; done
  echo "mailgate did not start" >&2; exit 1
}
stop_mailgate() { kill "$MG_PID"; wait "$MG_PID" 2>/dev/null || true; }
mailgate_drained() {
  curl -fs "http://127.0.0.1:$MG_STATUS/status" | python3 -c '
import json,sys; q=json.load(sys.stdin)["queue"]; sys.exit(0 if q["queued"]+q["deferred"]+q["sending"]==0 else 1)'
}

# --- Postfix as a relayhost -------------------------------------------------------------
PFX="$WORK/pf"
mkdir -p "$PFX/etc" "$PFX/queue" "$PFX/data"
cp /etc/postfix/master.cf "$PFX/etc/master.cf"
cat > "$PFX/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PFX/queue
data_directory = $PFX/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.local
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
local_recipient_maps =
message_size_limit = 50000000
maillog_file = $PFX/maillog
maillog_file_prefixes = /tmp
smtp_tls_security_level = none
smtpd_tls_security_level = none
EOF
chown postfix "$PFX/data"
postconf -c "$PFX/etc" -F '*/*/chroot = n' >/dev/null
postconf -c "$PFX/etc" -M "127.0.0.1:$PF_SMTP/inet=127.0.0.1:$PF_SMTP inet n - n - - smtpd" >/dev/null
postconf -c "$PFX/etc" -MX smtp/inet >/dev/null 2>&1 || true

start_postfix() {
  postfix -c "$PFX/etc" start >/dev/null 2>&1
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PF_SMTP") 2>/dev/null && return; sleep 0.1; done
  echo "postfix did not start" >&2; exit 1
}
stop_postfix() { postfix -c "$PFX/etc" stop >/dev/null 2>&1 || true; sleep 1; }
postfix_drained() { postqueue -c "$PFX/etc" -p 2>/dev/null | grep -q "Mail queue is empty"; }
# Postfix is many processes sharing pages: count proportional set size (Pss), so a
# shared page is not counted once per process.
postfix_rss_kb() {
  local master; master=$(head -1 "$PFX/queue/pid/master.pid" 2>/dev/null | tr -d ' ')
  [ -n "$master" ] || { echo 0; return; }
  local total=0 p
  for p in $master $(ps -o pid= --ppid "$master"); do
    total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
mailgate_rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$MG_PID/status"; }
TCK=$(getconf CLK_TCK)
# CPU ticks used so far: mailgate's process; Postfix's master with its reaped children
# (cutime, cstime) plus the children alive now.
mailgate_cpu() { awk '{print $14+$15}' "/proc/$MG_PID/stat"; }
postfix_cpu() {
  local master; master=$(head -1 "$PFX/queue/pid/master.pid" 2>/dev/null | tr -d ' ')
  local total; total=$(awk '{print $14+$15+$16+$17}' "/proc/$master/stat")
  local p
  for p in $(ps -o pid= --ppid "$master"); do
    total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
mailgate_peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$MG_PID/status"; }

# --- one measurement --------------------------------------------------------------------
# run TARGET_PORT DRAINED_FN SESSIONS MESSAGES SIZE -> "accepted_rate p99 e2e_rate"
run() {
  local port=$1 drained=$2 sessions=$3 n=$4 size=$5
  local start end out
  start=$(date +%s.%N)
  out=$($LOAD --target "127.0.0.1:$port" --sessions "$sessions" --messages "$n" --size "$size")
  for _ in $(seq 6000); do $drained && break; sleep 0.05; done
  end=$(date +%s.%N)
  local rate p50 p99 errors
  rate=$(sed -E 's/.* rate=([0-9.]+).*/\1/' <<<"$out")
  p50=$(sed -E 's/.* p50_ms=([0-9.]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.* p99_ms=([0-9.]+).*/\1/' <<<"$out")
  errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$out")
  local e2e; e2e=$(python3 -c "print(f'{$n/($end-$start):.1f}')")
  echo "$rate $p50 $p99 $e2e $errors"
}

# run_source PORT DRAINED_FN CPU_FN SESSIONS MESSAGES SIZE -> "accepted_rate e2e_rate cpu_ms"
# smtp-source: one connection per message, no pipelining (legacy clients).
run_source() {
  local port=$1 drained=$2 cpufn=$3 sessions=$4 n=$5 size=$6
  local c0 c1 t0 t1 t2
  c0=$($cpufn); t0=$(date +%s.%N)
  smtp-source -s "$sessions" -m "$n" -l "$size" -f app@erp.local -t sink@contoso.com "127.0.0.1:$port"
  t1=$(date +%s.%N)
  for _ in $(seq 6000); do $drained && break; sleep 0.02; done
  t2=$(date +%s.%N); c1=$($cpufn)
  python3 -c "n=$n; print(f'{n/($t1-$t0):.0f} {n/($t2-$t0):.0f} {($c1-$c0)*1000/$TCK/n:.3f}')"
}

declare -A R
measure_source() { # name sessions messages size
  local name=$1 s=$2 n=$3 size=$4
  start_mailgate; R[mgs_$name]=$(run_source "$MG_SMTP" mailgate_drained mailgate_cpu "$s" "$n" "$size"); stop_mailgate
  start_postfix;  R[pfs_$name]=$(run_source "$PF_SMTP" postfix_drained postfix_cpu "$s" "$n" "$size"); stop_postfix
}

measure() { # name sessions messages size
  local name=$1 s=$2 n=$3 size=$4
  start_mailgate; R[mg_$name]=$(run "$MG_SMTP" mailgate_drained "$s" "$n" "$size"); R[mg_${name}_peak]=$(mailgate_peak_kb); stop_mailgate
  start_postfix;  R[pf_$name]=$(run "$PF_SMTP" postfix_drained "$s" "$n" "$size"); stop_postfix
}

measure_source small20 20 "$N" 2048
measure_source small1 1 "$N_ONE" 2048
measure_source big20 20 "$N_BIG" 102400

measure small20 20 "$N" 2048
measure big20 20 "$N_BIG" 102400
measure small1 1 "$N_ONE" 2048

# 1000 idle connections: resident memory while they are held.
start_mailgate
$LOAD --target "127.0.0.1:$MG_SMTP" --idle 1000 --hold 8s >/dev/null & LP=$!
sleep 6; R[mg_idle]=$(mailgate_rss_kb); wait $LP; stop_mailgate
start_postfix
$LOAD --target "127.0.0.1:$PF_SMTP" --idle 1000 --hold 8s >/dev/null & LP=$!
sleep 6; R[pf_idle]=$(postfix_rss_kb); wait $LP; stop_postfix

# Large messages: peak resident memory for one 25 MB message, and for twenty 5 MB
# messages submitted at once, each measured from idle (just started) to the end of its
# relaying. Postfix is sampled every 50 ms (Pss over its processes).
large_mg() { # name sessions size
  start_mailgate; sleep 1
  R[mg_$1_idle]=$(mailgate_rss_kb)
  $LOAD --target "127.0.0.1:$MG_SMTP" --sessions "$2" --messages "$2" --size "$3" >/dev/null
  for _ in $(seq 600); do mailgate_drained && break; sleep 0.1; done
  R[mg_$1]=$(mailgate_peak_kb); stop_mailgate
}
large_pf() { # name sessions size
  start_postfix; sleep 1
  R[pf_$1_idle]=$(postfix_rss_kb)
  local peak=0 r
  $LOAD --target "127.0.0.1:$PF_SMTP" --sessions "$2" --messages "$2" --size "$3" >/dev/null & LP=$!
  while kill -0 $LP 2>/dev/null || ! postfix_drained; do r=$(postfix_rss_kb); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.05; done
  R[pf_$1]=$peak; stop_postfix
}
large_mg 25mb 1 25000000; large_pf 25mb 1 25000000
large_mg 5mbx20 20 5000000; large_pf 5mbx20 20 5000000

# --- report -----------------------------------------------------------------------------
f() { awk -v i="$2" '{print $i}' <<<"${R[$1]}"; }
ratio() { python3 -c "a,b=float('$1'),float('$2'); print(f'{a/b:.2f}x' if b else 'n/a')"; }
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m); postfix $(postconf -c "$PFX/etc" -h mail_version)"
echo "load: smtp-source (a connection per message, no pipelining), sink: Postfix smtp-sink; accepted = 250 after DATA; e2e = submitted and relayed"
printf '%-30s %14s %14s %8s\n' "" "mailgate" "postfix" "ratio"
for load in small20:"2 KB x 20 sessions" big20:"100 KB x 20 sessions" small1:"2 KB x 1 session"; do
  k=${load%%:*}; label=${load#*:}
  g() { awk -v i="$2" '{print $i}' <<<"${R[$1]}"; }
  printf '%-30s %14s %14s %8s\n' "$label accepted/s" "$(g mgs_$k 1)" "$(g pfs_$k 1)" "$(ratio "$(g mgs_$k 1)" "$(g pfs_$k 1)")"
  printf '%-30s %14s %14s %8s\n' "$label e2e/s" "$(g mgs_$k 2)" "$(g pfs_$k 2)" "$(ratio "$(g mgs_$k 2)" "$(g pfs_$k 2)")"
  printf '%-30s %14s %14s %8s\n' "$label CPU ms/message" "$(g mgs_$k 3)" "$(g pfs_$k 3)" "$(ratio "$(g pfs_$k 3)" "$(g mgs_$k 3)")"
done
echo
echo "load: mailgate-load (pipelining, reused connections), same sink"
printf '%-26s %14s %14s %8s\n' "" "mailgate" "postfix" "ratio"
for load in small20:"2 KB x 20 sessions" big20:"100 KB x 20 sessions" small1:"2 KB x 1 session"; do
  k=${load%%:*}; label=${load#*:}
  printf '%-26s %14s %14s %8s\n' "$label accepted/s" "$(f mg_$k 1)" "$(f pf_$k 1)" "$(ratio "$(f mg_$k 1)" "$(f pf_$k 1)")"
  printf '%-26s %14s %14s %8s\n' "$label e2e/s" "$(f mg_$k 4)" "$(f pf_$k 4)" "$(ratio "$(f mg_$k 4)" "$(f pf_$k 4)")"
  printf '%-26s %14s %14s\n' "$label p50/p99 ms" "$(f mg_$k 2)/$(f mg_$k 3)" "$(f pf_$k 2)/$(f pf_$k 3)"
  printf '%-26s %14s %14s\n' "$label errors" "$(f mg_$k 5)" "$(f pf_$k 5)"
done
printf '%-26s %11s MB %11s MB\n' "1000 idle connections mem" "$((R[mg_idle]/1024))" "$((R[pf_idle]/1024))"
above() { python3 -c "print(f'{($1-$2)*1024/$3:.2f}x')"; }
printf '%-26s %11s MB %11s MB\n' "one 25 MB message peak mem" "$((R[mg_25mb]/1024))" "$((R[pf_25mb]/1024))"
printf '%-26s %11s MB %11s MB\n' "  idle before it" "$((R[mg_25mb_idle]/1024))" "$((R[pf_25mb_idle]/1024))"
printf '%-26s %14s %14s\n' "  peak above idle / size" "$(above "${R[mg_25mb]}" "${R[mg_25mb_idle]}" 25000000)" "$(above "${R[pf_25mb]}" "${R[pf_25mb_idle]}" 25000000)"
printf '%-26s %11s MB %11s MB\n' "20 x 5 MB at once peak mem" "$((R[mg_5mbx20]/1024))" "$((R[pf_5mbx20]/1024))"
echo "mailgate peak RSS during 2 KB x 20: $((R[mg_small20_peak]/1024)) MB"
echo "memory: mailgate RSS (peak: VmHWM); postfix: sum of Pss over master and its children"
