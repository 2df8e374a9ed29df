#!/usr/bin/env bash
# A deploy under load: the master runs from a copy of the release binary; while wrk keeps 32
# connections on GET /healthz, the copy is replaced by a different file (the same program with
# bytes appended, renamed over the old name) and the master gets SIGHUP. Prints how long until
# the master (same pid) and every worker run the new file, what wrk saw, and whether a session
# from before the upgrade still answers.
# Usage: bench/upgrade.sh   (DURATION=10 seconds of load; the HUP comes after 3)
source "$(dirname "$0")/lib.sh"
need wrk curl
build
port=$(free_port)
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/clusterd"
start upgrade "$WORK/bin/clusterd" --bind "127.0.0.1:$port" --workers 2 --data-dir "$WORK/data"
master=$STARTED_PID
wait_http "http://127.0.0.1:$port/healthz"
cookie=$(login_cookie "$port")
old_workers=$(pgrep -P "$master" | sort | xargs)

echo "machine: $(machine)"
wrk -t2 -c32 -d"${DURATION}s" --latency "http://127.0.0.1:$port/healthz" >"$WORK/upgrade.wrk" &
wrk_pid=$!
sleep 3
{ cat "$BIN"; printf '\0another build\0'; } >"$WORK/bin/clusterd.new"
chmod 755 "$WORK/bin/clusterd.new"
mv "$WORK/bin/clusterd.new" "$WORK/bin/clusterd"
t0=$(date +%s%N)
kill -HUP "$master"
# Done when the master and every worker run the new file and no old worker is left.
done_ms=""
for _ in $(seq 1500); do
    pids="$master $(pgrep -P "$master" | xargs)"
    deleted=0
    for p in $pids; do
        case $(readlink "/proc/$p/exe" 2>/dev/null) in *"(deleted)") deleted=1 ;; esac
    done
    left=0
    for p in $old_workers; do [ -e "/proc/$p" ] && left=1; done
    if [ "$deleted" = 0 ] && [ "$left" = 0 ]; then
        done_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        break
    fi
    sleep 0.01
done
wait "$wrk_pid"
read -r rps p50 p99 errors non2xx < <(wrk_summary "$WORK/upgrade.wrk")
me=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$port/me")
echo "master pid $master before and $( [ -e "/proc/$master" ] && echo "still $master" || echo gone) after"
echo "master and every worker on the new binary, old workers gone: ${done_ms:-not within 15 s} ms after SIGHUP"
echo "wrk -c32 over ${DURATION}s: $rps req/s, p99 $p99, socket errors $errors, non-2xx $non2xx"
echo "a session from before the upgrade: GET /me $me"
