#!/usr/bin/env bash
# Respawn latency: one worker, kill -9 it, time to the first 200 from the replacement (the
# request waits in the listening socket's backlog meanwhile). Median of SAMPLES (default 20),
# for clusterd and, the same way, for the seed's Node cluster stack (bench/peers/node).
source "$(dirname "$0")/lib.sh"
need curl redis-server node npm
build
(cd "$ROOT/bench/peers/node" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
echo "machine: $(machine)"

P=$(free_port)
start clusterd "$BIN" --bind "127.0.0.1:$P" --workers 1 --data-dir "$WORK/data"
wait_http "http://127.0.0.1:$P/healthz"
echo -n "clusterd: "
"$ROOT/target/release/examples/bench_respawn" "$STARTED_PID" "127.0.0.1:$P" "${SAMPLES:-20}"

N=$(free_port)
start_redis
start node env WORKERS=1 PORT="$N" REDIS_URL="redis://127.0.0.1:$R" node "$ROOT/bench/peers/node/server.js"
wait_http "http://127.0.0.1:$N/healthz"
echo -n "node cluster: "
"$ROOT/target/release/examples/bench_respawn" "$STARTED_PID" "127.0.0.1:$N" "${SAMPLES:-20}"
