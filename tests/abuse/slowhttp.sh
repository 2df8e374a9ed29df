#!/usr/bin/env bash
# Slow clients at scale against a release clusterd, with slowhttptest: slow headers
# (Slowloris, 1,000 connections) and slow bodies (R-U-Dead-Yet, 900 connections on POST /login).
# Passes when clusterd cuts them off near its read timeout and stays available throughout
# (slowhttptest's probe connection is answered). Bounded: about 70 s. Run by .ci/run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v slowhttptest >/dev/null || { echo "slowhttptest missing: apt-get install -y slowhttptest" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked --quiet)
WORK=$(mktemp -d /tmp/clusterd-slowhttp.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Room for a thousand connections per worker.
ulimit -n 8192
setsid "$ROOT/target/release/clusterd" --bind "127.0.0.1:$PORT" --workers 2 --data-dir "$WORK/data" \
    --read-timeout 10 >"$WORK/clusterd.log" 2>&1 &
MASTER=$!
cleanup() { kill -TERM -- "-$MASTER" 2>/dev/null || true; sleep 1; kill -KILL -- "-$MASTER" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
WORKERS=$(pgrep -P "$MASTER" | sort | xargs)
passed=0
failed=0

# check NAME CONNECTIONS ARGS...: one slowhttptest run. Its CSV has a line per second (seconds,
# closed, pending, connected, service available: 0 when the probe went unanswered). The service
# must stay available, and the server must have closed all but a fifth of the connections by
# the end (each is cut at the read timeout, not held for the whole test).
check() {
    local name=$1 total=$2; shift 2
    slowhttptest "$@" -u "http://127.0.0.1:$PORT/$URL_PATH" -p 3 -g -o "$WORK/$name" >"$WORK/$name.out" 2>&1 || true
    local csv="$WORK/$name.csv"
    # Columns: seconds, closed, pending, connected, service available.
    local last; last=$(tail -n 1 "$csv")
    local connected; connected=$(cut -d, -f4 <<<"$last")
    local unavailable; unavailable=$(awk -F, 'NR>1 && $5==0' "$csv" | wc -l)
    local max_connected; max_connected=$(awk -F, 'NR>1 && $4>m {m=$4} END {print m+0}' "$csv")
    echo "$name: connected at most $max_connected, at the end $connected, seconds unavailable $unavailable"
    if [ "$unavailable" -le 1 ] && [ "$connected" -lt $((total / 5)) ]; then
        echo "ok - $name"; passed=$((passed + 1))
    else
        echo "not ok - $name"; tail -n 5 "$csv"; failed=$((failed + 1))
    fi
}

URL_PATH=healthz check slow-headers 1000 -H -c 1000 -r 200 -i 3 -l 30
# A body under the app's 4 KiB limit, so the read timeout (not the size check) ends it.
URL_PATH=login check slow-body 900 -B -c 900 -r 200 -i 3 -s 1000 -t POST -l 30

[ "$(pgrep -P "$MASTER" | sort | xargs)" = "$WORKERS" ] || { echo "not ok - workers changed: $WORKERS -> $(pgrep -P "$MASTER" | sort | xargs)"; failed=$((failed + 1)); }
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
