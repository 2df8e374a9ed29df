#!/usr/bin/env bash
# Authenticated GET /me at CONNECTIONS connections with one worker per CPU: clusterd with the
# Redis store, clusterd with the embedded store, and the seed's Node stack (cluster + Express +
# express-session + connect-redis, pinned in bench/peers/node) on the same Redis, plus clusterd's
# /healthz (no session) for the ratio. All in one run. Each server gets CONNECTIONS logins first;
# requests rotate through those sessions.
source "$(dirname "$0")/lib.sh"
need wrk curl redis-server node npm
build
(cd "$ROOT/bench/peers/node" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)

P1=$(free_port); P2=$(free_port); P3=$(free_port)
start_redis
start clusterd-redis "$BIN" --bind "127.0.0.1:$P1" --redis-url "redis://127.0.0.1:$R" --data-dir "$WORK/d1"
start clusterd-sqlite "$BIN" --bind "127.0.0.1:$P2" --data-dir "$WORK/d2"
start node env PORT="$P3" REDIS_URL="redis://127.0.0.1:$R" node "$ROOT/bench/peers/node/server.js"
for p in $P1 $P2 $P3; do wait_http "http://127.0.0.1:$p/healthz"; done

login() { # port -> cookies file
    local f="$WORK/cookies.$1"
    : >"$f"
    for _ in $(seq "$CONNECTIONS"); do
        curl -s -D - -o /dev/null -H 'content-type: application/json' \
            -d '{"username":"alice","password":"wonderland"}' "http://127.0.0.1:$1/login" \
            | awk 'tolower($1)=="set-cookie:"{split($2,a,";"); print a[1]}' >>"$f"
    done
    [ "$(wc -l <"$f")" -eq "$CONNECTIONS" ] || { echo "login failed on port $1" >&2; exit 1; }
    # Every session answers 200 before the load starts.
    while read -r c; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $c" "http://127.0.0.1:$1/me")" = 200 ] \
            || { echo "session check failed on port $1" >&2; exit 1; }
    done <"$f"
    echo "$f"
}

C1=$(login "$P1"); C2=$(login "$P2"); C3=$(login "$P3")
echo "machine: $(machine)"
echo "load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $RUNS runs each, interleaved; $(nproc) workers each, redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), node $(node --version)"
for _ in $(seq "$RUNS"); do
    run_wrk healthz "http://127.0.0.1:$P1/healthz"
    run_wrk redis "http://127.0.0.1:$P1" "$C1"
    run_wrk sqlite "http://127.0.0.1:$P2" "$C2"
    run_wrk node "http://127.0.0.1:$P3" "$C3"
done
report_header
report healthz "clusterd, /healthz (no session)"
report redis "clusterd + Redis store, /me"
report sqlite "clusterd + embedded SQLite store, /me"
report node "Node cluster + express-session + Redis, /me"
