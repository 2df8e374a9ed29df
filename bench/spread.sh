#!/usr/bin/env bash
# How connections spread over the workers. For each socket mode and worker count, a fresh
# master gets a burst of keep-alive connections from wrk (as a proxy's keep-alive pool opens
# them), and `ss` counts each worker's established connections while the load runs; then each
# worker's CPU seconds for that run. Also a burst of one-request connections (8 clients) counted
# by the x-clusterd-worker header, and the Node cluster peer (bench/peers/node) when node is
# installed. On a 2-core machine 4 and 8 workers show the shape of a bigger host, not its speed.
# A socket per worker runs under each --balance of BALANCES (load, the default, and hash).
# Usage: bench/spread.sh  (TRIALS, MODES, BALANCES, WORKER_COUNTS, BURST_SECS override the defaults)
source "$(dirname "$0")/lib.sh"
need wrk curl ss python3
build
TRIALS=${TRIALS:-3}
MODES=${MODES-"per-worker shared"}
BALANCES=${BALANCES-"load hash"}
WORKER_COUNTS=${WORKER_COUNTS-"2 4 8"}
BURST_SECS=${BURST_SECS:-4}

# conns_for N: the burst size the issue's checks use (50 over 2 workers, else 64).
conns_for() { if [ "$1" = 2 ]; then echo 50; else echo 64; fi; }

# count PIDS PORT: established connections to PORT held by each pid, in pid order.
count() {
    local port=$1; shift
    local ssout; ssout=$(ss -tnpH state established "( sport = :$port )")
    local out=()
    for p in "$@"; do out+=("$(grep -c "pid=$p," <<<"$ssout" || true)"); done
    echo "${out[*]}"
}

# cpu PIDS: user+system CPU seconds of each pid.
cpu() {
    local tck; tck=$(getconf CLK_TCK)
    for p in "$@"; do
        awk -v t="$tck" '{printf "%.1f ", ($14+$15)/t}' "/proc/$p/stat"
    done
    echo
}

# one_request_spread PORT: 2,000 fresh connections (8 clients x 250), share by worker id.
one_request_spread() {
    python3 - "$1" <<'PY'
import socket, sys, threading, collections
port = int(sys.argv[1]); counts = collections.Counter(); lock = threading.Lock()
def client():
    for _ in range(250):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
        s.close()
        for line in data.split(b"\r\n"):
            if line.lower().startswith(b"x-clusterd-worker:"):
                with lock: counts[line.split(b":")[1].strip().decode()] += 1
ts = [threading.Thread(target=client) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print(" ".join(str(n) for _, n in sorted(counts.items(), key=lambda kv: -kv[1])))
PY
}

# burst LABEL WORKERS TRIAL CONNECTIONS PORT MASTER: a wrk burst on /healthz; prints a row with
# each worker's established connections during the load (busiest first) and CPU seconds.
burst() {
    local label=$1 n=$2 t=$3 c=$4 port=$5 master=$6 pids wrk_pid counts sorted
    mapfile -t pids < <(pgrep -P "$master" | sort -n)
    wrk -t2 -c"$c" -d"${BURST_SECS}s" "http://127.0.0.1:$port/healthz" >/dev/null &
    wrk_pid=$!
    sleep 1
    counts=$(count "$port" "${pids[@]}")
    wait "$wrk_pid"
    sorted=$(tr ' ' '\n' <<<"$counts" | sort -rn | xargs | tr ' ' '/')
    printf '%-16s %-8s %-6s %-28s %s\n' "$label" "$n" "$t" "$sorted" "$(cpu "${pids[@]}")"
}

echo "machine: $(machine)"
echo "burst: wrk -t2 -c(50 for 2 workers, else 64) -d${BURST_SECS}s on /healthz; counts by ss during the load, busiest first"
printf '%-16s %-8s %-6s %-28s %s\n' mode workers trial "connections per worker" "CPU s per worker"
for mode in $MODES; do
    balances=$BALANCES; [ "$mode" = per-worker ] || balances=load
    for balance in $balances; do
    label=$mode; [ "$mode" = per-worker ] && label="$mode/$balance"
    for n in $WORKER_COUNTS; do
        c=$(conns_for "$n")
        for t in $(seq "$TRIALS"); do
            port=$(free_port)
            name="spread-$mode-$balance-$n-$t"
            start "$name" "$BIN" --bind "127.0.0.1:$port" --workers "$n" --sockets "$mode" \
                --balance "$balance" --data-dir "$WORK/data-$name" --graceful-timeout 5
            master=$STARTED_PID
            wait_http "http://127.0.0.1:$port/healthz"
            # Every worker ready, so the burst meets the whole cluster.
            for _ in $(seq 100); do grep -q "all workers ready" "$WORK/$name.log" && break; sleep 0.05; done
            burst "$label" "$n" "$t" "$c" "$port" "$master"
            if [ "$n" = 4 ] && [ "$t" = 1 ]; then
                echo "  2,000 one-request connections, 8 clients, per worker: $(one_request_spread "$port")"
            fi
            kill -TERM "$master"; wait "$master" 2>/dev/null || true
        done
    done
    done
done

if command -v node >/dev/null && command -v redis-server >/dev/null && [ -d "$ROOT/bench/peers/node/node_modules" ]; then
    # The peer keeps sessions in Redis and connects before it listens (/healthz needs none).
    start_redis
    for n in 4; do
        for t in $(seq "$TRIALS"); do
            port=$(free_port)
            start "node-$t" env PORT="$port" WORKERS="$n" REDIS_URL="redis://127.0.0.1:$R" node "$ROOT/bench/peers/node/server.js"
            master=$STARTED_PID
            wait_http "http://127.0.0.1:$port/healthz"
            # The Node master accepts and hands connections over: its workers hold them.
            burst node-cluster "$n" "$t" 64 "$port" "$master"
            kill -TERM -- "-$master" 2>/dev/null; wait "$master" 2>/dev/null || true
        done
    done
else
    echo "(node peer skipped: needs node, redis-server, and npm ci in bench/peers/node)"
fi
