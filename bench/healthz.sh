#!/usr/bin/env bash
# /healthz throughput with one worker per CPU, next to a single-process actix-web server with
# one thread per CPU (examples/ceiling.rs, the ceiling); how requests spread across workers; and
# the failed requests of a HUP rolling restart under the same load.
# Usage: bench/healthz.sh   (DURATION, CONNECTIONS, WRK_THREADS, RUNS override the defaults;
#        COMPARE_BIN=/path/to/another/clusterd adds that build, interleaved, e.g. the last release)
source "$(dirname "$0")/lib.sh"
need wrk curl
build

P1=$(free_port); P2=$(free_port)
start clusterd "$BIN" --bind "127.0.0.1:$P1" --data-dir "$WORK/data" --graceful-timeout 10
MASTER=$STARTED_PID
start ceiling "$ROOT/target/release/examples/ceiling" "127.0.0.1:$P2"
wait_http "http://127.0.0.1:$P1/healthz"; wait_http "http://127.0.0.1:$P2/healthz"
if [ -n "${COMPARE_BIN:-}" ]; then
    P3=$(free_port)
    start compare "$COMPARE_BIN" --bind "127.0.0.1:$P3" --data-dir "$WORK/data-compare" --graceful-timeout 10
    wait_http "http://127.0.0.1:$P3/healthz"
fi

echo "machine: $(machine)"
echo "load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $RUNS runs each, interleaved"
for _ in $(seq "$RUNS"); do
    run_wrk clusterd "http://127.0.0.1:$P1/healthz"
    run_wrk ceiling "http://127.0.0.1:$P2/healthz"
    if [ -n "${COMPARE_BIN:-}" ]; then run_wrk compare "http://127.0.0.1:$P3/healthz"; fi
done
report_header
report clusterd "clusterd, $(nproc) workers x 1 thread"
report ceiling "actix-web, 1 process x $(nproc) threads"
if [ -n "${COMPARE_BIN:-}" ]; then report compare "COMPARE_BIN, $(nproc) workers x 1 thread"; fi

echo
echo "spread across workers (share of responses by x-clusterd-worker, 5 s):"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d5s -s "$ROOT/bench/count_workers.lua" "http://127.0.0.1:$P1/healthz" | sed -n '/^worker/p'

echo
echo "HUP rolling restart under load:"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d12s --latency "http://127.0.0.1:$P1/healthz" >"$WORK/hup.wrk" &
WRK=$!
sleep 3
BEFORE=$(pgrep -P "$MASTER" | sort | xargs)
kill -HUP "$MASTER"
wait "$WRK"
AFTER=$(pgrep -P "$MASTER" | sort | xargs)
read -r rps _ _ errors non2xx < <(wrk_summary "$WORK/hup.wrk")
total=$(awk '/requests in/{print $1}' "$WORK/hup.wrk")
echo "workers before: $BEFORE; after: $AFTER"
echo "requests: $total, socket errors: $errors, non-2xx: $non2xx, req/s: $rps"
grep -E "reload complete|did not stop" "$WORK/clusterd.log" || true
