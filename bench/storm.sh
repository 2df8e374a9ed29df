#!/usr/bin/env bash
# A login storm next to signed-in traffic: wrk keeps 8 connections on GET /me with a session
# while 300 logins arrive at once (each on its own connection). Prints /me's latency without and
# with the storm, what the 300 logins were answered, and the peak memory of master + workers.
# Two storms: alice from one address (the throttle answers most), and 300 different user names
# from 300 loopback addresses (127.0.x.y), which all pass the throttle and queue for argon2.
# /me is measured over WINDOW seconds (default 3) starting 0.3 s before the storm, so the
# figure is the storm's: a longer window (WINDOW=10 was used before) mixes in quiet seconds.
# Usage: bench/storm.sh   (STORE=sqlite|redis, LOGINS=300, WINDOW=3)
source "$(dirname "$0")/lib.sh"
need wrk curl python3
build
LOGINS=${LOGINS:-300}
WINDOW=${WINDOW:-3}
STORE=${STORE:-sqlite}
port=$(free_port)
args=(--bind "127.0.0.1:$port" --data-dir "$WORK/data")
if [ "$STORE" = redis ]; then
    need redis-server
    R=$(free_port)
    start redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
    for _ in $(seq 100); do redis-cli -p "$R" ping >/dev/null 2>&1 && break; sleep 0.05; done
    args+=(--redis-url "redis://127.0.0.1:$R")
fi
start storm "$BIN" "${args[@]}"
master=$STARTED_PID
wait_http "http://127.0.0.1:$port/healthz"
cookie=$(login_cookie "$port")

# storm same|spread
storm() {
    python3 - "$port" "$LOGINS" "$1" <<'PY'
import socket, sys, threading, collections
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
barrier = threading.Barrier(n); out = collections.Counter(); lock = threading.Lock()
def one(i):
    if mode == "same":
        body = b'{"username":"alice","password":"wonderland"}'
        src = "127.0.0.1"
    else:
        body = b'{"username":"user%d","password":"guess"}' % i
        src = f"127.0.{1 + i // 200}.{1 + i % 200}"
    req = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    s = socket.socket()
    s.settimeout(30)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    barrier.wait()
    s.sendall(req)
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    head = data.split(b"\r\n\r\n")[0].decode(errors="replace").lower()
    status = head.split()[1] if head else "none"
    key = status + ("" if status in ("200", "401") or "retry-after:" in head else " (no Retry-After)")
    with lock: out[key] += 1
import time
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]; started = time.monotonic(); [t.join() for t in ts]
print(", ".join(f"{k}: {v}" for k, v in sorted(out.items())),
      "(the storm took %.1f s)" % (time.monotonic() - started))
PY
}

peak_rss_mib() {
    local total=0
    for p in "$master" $(pgrep -P "$master"); do
        total=$((total + $(awk '/VmHWM/{print $2}' "/proc/$p/status")))
    done
    echo $((total / 1024))
}

echo "machine: $(machine)"
echo "clusterd $(nproc) workers, store $STORE; wrk -t1 -c8 on GET /me with a session, ${WINDOW} s from 0.3 s before each storm"
wrk -t1 -c8 -d6s --latency -H "Cookie: $cookie" "http://127.0.0.1:$port/me" >"$WORK/quiet.wrk"
read -r rps p50 p99 errors non2xx < <(wrk_summary "$WORK/quiet.wrk")
echo "without a storm: $rps req/s, p50 $p50, p99 $p99, errors $errors, non-2xx $non2xx"
for mode in same spread; do
    wrk -t1 -c8 -d"${WINDOW}s" --latency -H "Cookie: $cookie" "http://127.0.0.1:$port/me" >"$WORK/storm-$mode.wrk" &
    wrk_pid=$!
    sleep 0.3
    answers=$(storm "$mode")
    wait "$wrk_pid"
    read -r rps p50 p99 errors non2xx < <(wrk_summary "$WORK/storm-$mode.wrk")
    case $mode in
        same) what="$LOGINS logins of alice from one address" ;;
        spread) what="$LOGINS logins of $LOGINS user names from $LOGINS addresses" ;;
    esac
    echo "during $what: /me $rps req/s, p50 $p50, p99 $p99, errors $errors, non-2xx $non2xx"
    echo "  the logins were answered: $answers"
done
echo "peak memory of master + workers (sum of VmHWM): $(peak_rss_mib) MiB"
if [ -n "${DETAIL:-}" ]; then for p in "$master" $(pgrep -P "$master"); do echo "  pid $p: $(awk '/VmHWM|VmRSS|Threads/{printf "%s %s %s  ", $1, $2, $3}' /proc/$p/status)"; done; fi
