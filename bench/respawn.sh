#!/usr/bin/env bash
# Respawn latency: one worker, kill -9 it, time to the first 200 from the replacement (the
# request waits in the listening socket's backlog meanwhile). Median of SAMPLES (default 20).
source "$(dirname "$0")/lib.sh"
need curl
build
P=$(free_port)
start clusterd "$BIN" --bind "127.0.0.1:$P" --workers 1 --data-dir "$WORK/data"
wait_http "http://127.0.0.1:$P/healthz"
echo "machine: $(machine)"
"$ROOT/target/release/examples/bench_respawn" "$STARTED_PID" "127.0.0.1:$P" "${SAMPLES:-20}"
