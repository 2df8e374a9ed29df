#!/usr/bin/env bash
# Why clusterd's Redis session cache is its own and not the redis crate's `cache-aio`: one
# program (bench/peers/cache-aio) holds both on the same Redis and the same session, and
# measures what a cached read costs in each (interleaved rounds, one thread), then freezes
# Redis (SIGSTOP to its PID) for 3 s and reads through both every 50 ms.
# Usage: bench/cache-aio.sh
source "$(dirname "$0")/lib.sh"
need redis-server redis-cli
PEER="$ROOT/bench/peers/cache-aio"
# Its own lock file, and its own target dir unless CARGO_TARGET_DIR names one (an absolute
# path to the main build's target shares the dependencies built there).
(cd "$PEER" && cargo build --release --quiet)
PEER_BIN="$(cd "$PEER" && realpath -m "${CARGO_TARGET_DIR:-target}")/release/cache-aio-peer"
start_redis
echo "machine: $(machine)"
"$PEER_BIN" "redis://127.0.0.1:$R" cost
redis_pid=$(redis-cli -p "$R" info server | awk -F: '/^process_id/{print $2}' | tr -d '\r')
"$PEER_BIN" "redis://127.0.0.1:$R" freeze "$redis_pid"
