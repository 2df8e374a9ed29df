#!/usr/bin/env bash
# /healthz throughput with --access-log (plain and JSON lines, written to a file as the journal
# would receive them) against the same build without it, interleaved in one run.
# Usage: bench/access-log.sh   (DURATION, CONNECTIONS, WRK_THREADS, RUNS override the defaults)
source "$(dirname "$0")/lib.sh"
need wrk curl
build

P1=$(free_port); P2=$(free_port); P3=$(free_port)
start off "$BIN" --bind "127.0.0.1:$P1" --data-dir "$WORK/d1"
start plain "$BIN" --bind "127.0.0.1:$P2" --data-dir "$WORK/d2" --access-log
start json "$BIN" --bind "127.0.0.1:$P3" --data-dir "$WORK/d3" --access-log --log-format json
for p in $P1 $P2 $P3; do wait_http "http://127.0.0.1:$p/healthz"; done

echo "machine: $(machine)"
echo "load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $RUNS runs each, interleaved; $(nproc) workers each"
for _ in $(seq "$RUNS"); do
    run_wrk off "http://127.0.0.1:$P1/healthz"
    run_wrk plain "http://127.0.0.1:$P2/healthz"
    run_wrk json "http://127.0.0.1:$P3/healthz"
done
report_header
report off "/healthz, no access log"
report plain "/healthz, --access-log"
report json "/healthz, --access-log --log-format json"
echo "access lines written: plain $(grep -c ' access client=' "$WORK/plain.log"), json $(grep -c '"target":"access"' "$WORK/json.log")"
echo "lines dropped (writer behind): $(grep -h 'lines were dropped' "$WORK/plain.log" "$WORK/json.log" | grep -o 'dropped=[0-9]*' | cut -d= -f2 | awk "{s+=\$1} END{print s+0}")"
