#!/usr/bin/env bash
# Recycling under load: 2 workers with --max-requests (default 3000), wrk with 32 connections on
# /healthz for 6 s. Prints how many workers were recycled (the master's log lines) and what wrk
# saw: every recycled worker is replaced like a rolling restart, so no request may fail.
# Usage: bench/recycle.sh   (MAX_REQUESTS=3000, DURATION=6)
DURATION=${DURATION:-6}
source "$(dirname "$0")/lib.sh"
need wrk curl
build
MAX_REQUESTS=${MAX_REQUESTS:-3000}
port=$(free_port)
start recycle "$BIN" --bind "127.0.0.1:$port" --workers 2 --data-dir "$WORK/data" \
    --max-requests "$MAX_REQUESTS"
wait_http "http://127.0.0.1:$port/healthz"
echo "machine: $(machine)"
wrk -t2 -c32 -d"${DURATION}s" --latency "http://127.0.0.1:$port/healthz" >"$WORK/recycle.wrk"
read -r rps p50 p99 errors non2xx < <(wrk_summary "$WORK/recycle.wrk")
sleep 1
recycled=$(grep -c "recycling the worker" "$WORK/recycle.log" || true)
echo "--max-requests $MAX_REQUESTS, wrk -t2 -c32 -d${DURATION}s on /healthz: $rps req/s, p99 $p99"
echo "workers recycled: $recycled; socket errors $errors, non-2xx $non2xx"
grep -E "Socket errors" "$WORK/recycle.wrk" || true
