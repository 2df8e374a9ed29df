# Helpers shared by the benchmark scripts. Everything runs on loopback; every process a script
# starts gets its own process group and is stopped by that id when the script exits.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# CLUSTERD_BIN=path runs another build (to compare two); the default is built first.
BIN=${CLUSTERD_BIN:-"$ROOT/target/release/clusterd"}
WORK=$(mktemp -d /tmp/clusterd-bench.XXXXXX)
GROUPS_STARTED=()
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-2}

cleanup() {
    for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    sleep 1
    for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
    done
}

build() {
    [ -n "${CLUSTERD_BIN:-}" ] && return
    (cd "$ROOT" && cargo build --release --quiet --bins --examples)
}

# start NAME CMD...: runs CMD in its own session/process group, logs to $WORK/NAME.log, and
# sets STARTED_PID (also the group id).
start() {
    local name=$1; shift
    setsid "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    GROUPS_STARTED+=("$STARTED_PID")
}

# start_redis: a redis-server without persistence on a free loopback port, answering PING
# when this returns; sets R to its port.
start_redis() {
    need redis-server redis-cli
    R=$(free_port)
    start redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
    for _ in $(seq 100); do redis-cli -p "$R" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "redis-server on port $R did not answer PING (log: $WORK/redis.log)" >&2
    exit 1
}

# start_clusterd NAME [ARG...]: clusterd on a free port (set in `port`) with its data in
# $WORK/data, on a Redis of its own when STORE=redis, else on the embedded store; STARTED_PID is
# the master.
start_clusterd() {
    local name=$1; shift
    port=$(free_port)
    local args=(--bind "127.0.0.1:$port" --data-dir "$WORK/data")
    if [ "${STORE:-sqlite}" = redis ]; then
        start_redis
        args+=(--redis-url "redis://127.0.0.1:$R")
    fi
    start "$name" "$BIN" "${args[@]}" "$@"
}

wait_http() {
    for _ in $(seq 200); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "timed out waiting for $1" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

machine() {
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem/{print $2}') GiB RAM, Linux $(uname -r), $(date -u +%Y-%m-%d)"
}

# wrk_summary FILE: "req/s p50 p99 errors non2xx" from wrk --latency output.
wrk_summary() {
    local f=$1
    local rps p50 p99 errors non2xx
    rps=$(awk '/Requests\/sec/{print $2}' "$f")
    p50=$(awk '$1=="50%"{print $2}' "$f")
    p99=$(awk '$1=="99%"{print $2}' "$f")
    errors=$(awk '/Socket errors/{gsub(",","");print $4+$6+$8+$10}' "$f")
    non2xx=$(awk '/Non-2xx/{print $5}' "$f")
    echo "${rps:-?} ${p50:-?} ${p99:-?} ${errors:-0} ${non2xx:-0}"
}

# run_wrk KEY URL [COOKIES [PATH]]: one wrk run at the configured load, kept as
# $WORK/KEY.<n>.wrk. With COOKIES (a file of "name=value" lines) every request is an
# authenticated GET of PATH (/me by default).
run_wrk() {
    local key=$1 url=$2 cookies=${3:-} path=${4:-/me} n=1
    while [ -e "$WORK/$key.$n.wrk" ]; do n=$((n + 1)); done
    if [ -n "$cookies" ]; then
        WRK_PATH=$path COOKIES=$cookies wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
            -s "$ROOT/bench/me.lua" "$url" >"$WORK/$key.$n.wrk"
    else
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$WORK/$key.$n.wrk"
    fi
}

# report_header / report KEY LABEL: the median run of KEY (by req/s) with its latencies, every
# run's req/s, and the errors and non-2xx answers summed over all runs.
report_header() {
    printf '%-46s %10s %9s %9s %6s %6s  %s\n' "server" "req/s" "p50" "p99" "errors" "non2xx" "all runs (req/s)"
}
report() {
    local key=$1 label=$2 f rows median
    rows=$(for f in "$WORK/$key".*.wrk; do echo "$(wrk_summary "$f") $f"; done | sort -n -k1)
    median=$(echo "$rows" | sed -n "$(( ($(echo "$rows" | wc -l) + 1) / 2 ))p")
    read -r rps p50 p99 _ _ _ <<<"$median"
    local errors non2xx runs
    errors=$(echo "$rows" | awk '{s+=$4} END {print s}')
    non2xx=$(echo "$rows" | awk '{s+=$5} END {print s}')
    runs=$(echo "$rows" | awk '{printf "%s%.0f", (NR>1?" ":""), $1}')
    printf '%-46s %10.0f %9s %9s %6s %6s  %s\n' "$label" "$rps" "$p50" "$p99" "$errors" "$non2xx" "$runs"
}

# login_cookie PORT: logs alice (the demo user) in and prints the session cookie (name=value).
login_cookie() {
    local cookie
    cookie=$(curl -s -D - -o /dev/null -H 'content-type: application/json' \
        -d '{"username":"alice","password":"wonderland"}' "http://127.0.0.1:$1/login" |
        awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}')
    [ -n "$cookie" ] || { echo "login failed" >&2; exit 1; }
    echo "$cookie"
}
