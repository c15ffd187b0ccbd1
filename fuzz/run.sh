#!/usr/bin/env bash
# Runs every fuzz target (or those named after the time) for SECONDS each, default 600,
# and prints executions, coverage and crashes per target. Needs the nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`); it is not part of .ci/run, whose stable
# tests replay fuzz/regressions/ and the corpus instead (docs/fuzzing.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     JOBS=2 fuzz/run.sh   (two targets at a time)
#   MINIMIZE=1 fuzz/run.sh 60             (then shrink each corpus with cargo fuzz cmin)
set -u
cd "$(dirname "$0")/.."

secs=${1:-600}
shift $(( $# > 0 ? 1 : 0 ))
jobs=${JOBS:-1}
all=(smtp_session data_reader message_stage maildrop aliases config upstream_reply
     json_answers bounce heartbeat)
targets=("${@:-${all[@]}}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2
    exit 1
fi

# What each target reads: a dictionary, and seeds beyond its own corpus.
dict_of() {
    case $1 in
        smtp_session | data_reader) echo fuzz/dicts/smtp.dict ;;
        message_stage | bounce) echo fuzz/dicts/mime.dict ;;
        config) echo fuzz/dicts/toml.dict ;;
        maildrop | json_answers | heartbeat) echo fuzz/dicts/json.dict ;;
    esac
}
seeds_of() {
    case $1 in
        message_stage | bounce) echo tests/data/corpus/eml ;;
    esac
}

cargo +nightly fuzz build >/dev/null 2>&1 || { echo "fuzz/run.sh: the targets do not build" >&2; exit 1; }

logs=$(mktemp -d)
stamp=$logs/.started
touch "$stamp"
run_one() {
    local t=$1 dict seeds before
    dict=$(dict_of "$t")
    seeds=$(seeds_of "$t")
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    # Each input within 10 s and 2 GB; a slow one is a finding (timeout-*), as a crash.
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" $seeds -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        ${dict:+-dict=$dict} >"$logs/$t.log" 2>&1
    local rc=$?
    local after
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    local runs cov
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$logs/$t.log" | tail -1)
    printf '%-15s %6ss  %12s executions  %-20s  %s new finding(s)  exit %s\n' \
        "$t" "$secs" "${runs:-?}" "${cov:-cov: ?}" "$((after - before))" "$rc"
    if [ "$after" -gt "$before" ]; then
        find "fuzz/artifacts/$t" -type f -newer "$stamp" | sed 's/^/    /'
    fi
    if [ "${MINIMIZE:-0}" = 1 ]; then
        cargo +nightly fuzz cmin "$t" "fuzz/corpus/$t" >/dev/null 2>&1
    fi
}

echo "fuzz/run.sh: ${#targets[@]} target(s), ${secs} s each, $jobs at a time ($(date -u +%FT%TZ), $(nproc) cores)"
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
echo "logs: $logs"
if find fuzz/artifacts -type f -newer "$stamp" | grep -q .; then
    echo "fuzz/run.sh: findings above; each goes to fuzz/regressions/TARGET/ with its fix" >&2
    exit 2
fi
