#!/usr/bin/env bash
# How long a login takes while signed-in traffic keeps the cores busy: wrk holds CONNECTIONS
# connections on GET /me (with a session) for DURATION seconds, and meanwhile LOGINS logins of
# alice are made one after another with curl. Password hashing runs at the lowest priority, so
# this is the price logins pay for /me keeping its latency. Prints each login's status and time.
# Usage: bench/login-under-load.sh   (CONNECTIONS=50, DURATION=10 as in lib.sh; LOGINS=10,
# STORE=sqlite|redis). The README's figures are from CONNECTIONS=8 and 64, 10 s each.
source "$(dirname "$0")/lib.sh"
need wrk curl
build
LOGINS=${LOGINS:-10}
STORE=${STORE:-sqlite}
start_clusterd server
wait_http "http://127.0.0.1:$port/healthz"
cookie=$(login_cookie "$port")
echo "machine: $(machine)"
echo "clusterd $(nproc) workers, store $STORE; wrk -t2 -c$CONNECTIONS on GET /me for ${DURATION} s; $LOGINS logins of alice meanwhile"
wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Cookie: $cookie" "http://127.0.0.1:$port/me" >"$WORK/me.wrk" &
wrk_pid=$!
sleep 1
times=()
for _ in $(seq "$LOGINS"); do
    # A login that is still waiting when the load stops finishes then: its time says so.
    times+=("$(curl -s -o /dev/null -w '%{http_code} %{time_total}s' -H 'Content-Type: application/json' \
        -d '{"username":"alice","password":"wonderland"}' "http://127.0.0.1:$port/login")")
    kill -0 "$wrk_pid" 2>/dev/null || break
done
wait "$wrk_pid"
read -r rps p50 p99 errors non2xx < <(wrk_summary "$WORK/me.wrk")
echo "/me meanwhile: $rps req/s, p50 $p50, p99 $p99, errors $errors, non-2xx $non2xx"
echo "logins (status, time) made while the load ran: ${times[*]/%/,}"
