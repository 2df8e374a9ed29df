#!/usr/bin/env bash
# Changes to the pool under load: for each of kill -9 of a worker, HUP (rolling restart), TTOU
# and TTIN, one wrk run of 64 keep-alive connections with the event 2 s in; then a new burst
# must still reach every worker. Prints wrk's socket errors and non-2xx answers per event.
# Usage: bench/pool.sh  (SOCKETS=per-worker|shared, WORKERS=4, EVENT_SECS=6)
source "$(dirname "$0")/lib.sh"
need wrk curl ss
build
SOCKETS=${SOCKETS:-per-worker}
WORKERS=${WORKERS:-4}
EVENT_SECS=${EVENT_SECS:-6}

port=$(free_port)
start pool "$BIN" --bind "127.0.0.1:$port" --workers "$WORKERS" --sockets "$SOCKETS" \
    --data-dir "$WORK/data" --graceful-timeout 10
master=$STARTED_PID
wait_http "http://127.0.0.1:$port/healthz"
for _ in $(seq 100); do grep -q "all workers ready" "$WORK/pool.log" && break; sleep 0.05; done

echo "machine: $(machine)"
echo "clusterd --workers $WORKERS --sockets $SOCKETS; wrk -t2 -c64 -d${EVENT_SECS}s, the event 2 s in"
printf '%-10s %10s %8s %8s %8s %8s %8s %s\n' event requests connect read write timeout non2xx workers-after
for event in kill9 HUP TTOU TTIN; do
    wrk -t2 -c64 -d"${EVENT_SECS}s" "http://127.0.0.1:$port/healthz" >"$WORK/$event.wrk" &
    wrk_pid=$!
    sleep 2
    case $event in
        kill9) kill -9 "$(pgrep -P "$master" | head -n 1)" ;;
        *) kill -"$event" "$master" ;;
    esac
    wait "$wrk_pid"
    # Let the pool settle (a rollout or a retirement) before the next event.
    sleep 2
    f=$WORK/$event.wrk
    read -r c r w t < <(awk '/Socket errors/{gsub(",","");print $4, $6, $8, $10}' "$f" | grep . || echo "0 0 0 0")
    printf '%-10s %10s %8s %8s %8s %8s %8s %s\n' "$event" "$(awk '/requests in/{print $1}' "$f")" \
        "$c" "$r" "$w" "$t" "$(awk '/Non-2xx/{print $5}' "$f" | grep . || echo 0)" "$(pgrep -P "$master" | wc -l)"
done

mapfile -t pids < <(pgrep -P "$master" | sort -n)
wrk -t2 -c64 -d3s "http://127.0.0.1:$port/healthz" >/dev/null &
wrk_pid=$!
sleep 1
ssout=$(ss -tnpH state established "( sport = :$port )")
counts=()
for p in "${pids[@]}"; do counts+=("$(grep -c "pid=$p," <<<"$ssout" || true)"); done
wait "$wrk_pid"
echo "burst after the four events, connections per worker: $(tr ' ' '\n' <<<"${counts[*]}" | sort -rn | xargs | tr ' ' '/')"
grep -E "did not stop|ERROR" "$WORK/pool.log" || true
