#!/usr/bin/env bash
# Respawn latency: one worker, kill -9 it, time to the first 200 from the replacement (the
# request waits in the listening socket's backlog meanwhile). Median of SAMPLES (default 20),
# for clusterd and, the same way, for the seed's Node cluster stack (bench/peers/node).
# COMPARE_BIN=<another build> measures that build too, in turn with this one, ROUNDS times
# (default 1); NODE=0 leaves the Node peer out.
source "$(dirname "$0")/lib.sh"
need curl
build
echo "machine: $(machine)"

# respawn_of LABEL BINARY: one master with one worker, SAMPLES kills, the median.
respawn_of() {
    local p
    p=$(free_port)
    start "clusterd-$p" "$2" --bind "127.0.0.1:$p" --workers 1 --data-dir "$WORK/data-$p"
    local master=$STARTED_PID
    wait_http "http://127.0.0.1:$p/healthz"
    echo -n "$1: "
    "$ROOT/target/release/examples/bench_respawn" "$master" "127.0.0.1:$p" "${SAMPLES:-20}"
    kill -TERM "$master"
}

for _ in $(seq "${ROUNDS:-1}"); do
    respawn_of clusterd "$BIN"
    if [ -n "${COMPARE_BIN:-}" ]; then respawn_of "compare ($COMPARE_BIN)" "$COMPARE_BIN"; fi
done

[ "${NODE:-1}" = 0 ] && exit 0
need redis-server node npm
(cd "$ROOT/bench/peers/node" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
N=$(free_port)
start_redis
start node env WORKERS=1 PORT="$N" REDIS_URL="redis://127.0.0.1:$R" node "$ROOT/bench/peers/node/server.js"
wait_http "http://127.0.0.1:$N/healthz"
echo -n "node cluster: "
"$ROOT/target/release/examples/bench_respawn" "$STARTED_PID" "127.0.0.1:$N" "${SAMPLES:-20}"
