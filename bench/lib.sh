# Helpers shared by the benchmark scripts. Everything runs on loopback; every process a script
# starts gets its own process group and is stopped by that id when the script exits.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release/clusterd"
WORK=$(mktemp -d /tmp/clusterd-bench.XXXXXX)
GROUPS_STARTED=()
DURATION=${DURATION:-10}
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
