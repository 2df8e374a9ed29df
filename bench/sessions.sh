#!/usr/bin/env bash
# Authenticated GET /me at CONNECTIONS connections with one worker per CPU: clusterd with the
# Redis store, clusterd with the embedded store, and the seed's Node stack (cluster + Express +
# express-session + connect-redis, pinned in bench/peers/node) on the same Redis, plus clusterd's
# /healthz (no session) for the ratio. All in one run. Each server gets CONNECTIONS logins first;
# requests rotate through those sessions.
# COMPARE_BIN=/path/to/another/clusterd adds that build's two stores, interleaved (NODE=0 leaves
# the Node peer out).
source "$(dirname "$0")/lib.sh"
NODE=${NODE:-1}
need wrk curl redis-server
[ "$NODE" = 1 ] && need node npm
build
[ "$NODE" = 1 ] && (cd "$ROOT/bench/peers/node" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)

P1=$(free_port); P2=$(free_port); P3=$(free_port)
start_redis
start clusterd-redis "$BIN" --bind "127.0.0.1:$P1" --redis-url "redis://127.0.0.1:$R" --data-dir "$WORK/d1"
start clusterd-sqlite "$BIN" --bind "127.0.0.1:$P2" --data-dir "$WORK/d2"
PORTS="$P1 $P2"
if [ "$NODE" = 1 ]; then
    start node env PORT="$P3" REDIS_URL="redis://127.0.0.1:$R" node "$ROOT/bench/peers/node/server.js"
    PORTS="$PORTS $P3"
fi
if [ -n "${COMPARE_BIN:-}" ]; then
    P4=$(free_port); P5=$(free_port)
    start compare-redis "$COMPARE_BIN" --bind "127.0.0.1:$P4" --redis-url "redis://127.0.0.1:$R" --session-prefix other: --data-dir "$WORK/d4"
    start compare-sqlite "$COMPARE_BIN" --bind "127.0.0.1:$P5" --data-dir "$WORK/d5"
    PORTS="$PORTS $P4 $P5"
fi
for p in $PORTS; do wait_http "http://127.0.0.1:$p/healthz"; done

login() { # port -> cookies file
    local f="$WORK/cookies.$1"
    for _ in $(seq "$CONNECTIONS"); do login_cookie "$1"; done >"$f"
    # Every session answers 200 before the load starts.
    while read -r c; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $c" "http://127.0.0.1:$1/me")" = 200 ] \
            || { echo "session check failed on port $1" >&2; exit 1; }
    done <"$f"
    echo "$f"
}

C1=$(login "$P1"); C2=$(login "$P2")
[ "$NODE" = 1 ] && NODE_VERSION=", node $(node --version)"
[ "$NODE" = 1 ] && C3=$(login "$P3")
[ -n "${COMPARE_BIN:-}" ] && { C4=$(login "$P4"); C5=$(login "$P5"); }
echo "machine: $(machine)"
echo "load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $RUNS runs each, interleaved; $(nproc) workers each, redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2)${NODE_VERSION:-}"
# Commands Redis ran in all (INFO commandstats): what each signed-in run cost it.
redis_calls() { redis-cli -p "$R" INFO commandstats | awk -F'calls=' 'NF>1{split($2,a,","); s+=a[1]} END{print s+0}'; }
CALLS=()
for _ in $(seq "$RUNS"); do
    run_wrk healthz "http://127.0.0.1:$P1" "$C1" /healthz
    before=$(redis_calls)
    run_wrk redis "http://127.0.0.1:$P1" "$C1"
    CALLS+=("$(( $(redis_calls) - before ))")
    run_wrk sqlite "http://127.0.0.1:$P2" "$C2"
    [ "$NODE" = 1 ] && run_wrk node "http://127.0.0.1:$P3" "$C3"
    if [ -n "${COMPARE_BIN:-}" ]; then
        run_wrk compare-redis "http://127.0.0.1:$P4" "$C4"
        run_wrk compare-sqlite "http://127.0.0.1:$P5" "$C5"
    fi
done
report_header
report healthz "clusterd, /healthz (same cookies, no session)"
report redis "clusterd + Redis store, /me"
report sqlite "clusterd + embedded SQLite store, /me"
[ "$NODE" = 1 ] && report node "Node cluster + express-session + Redis, /me"
if [ -n "${COMPARE_BIN:-}" ]; then
    report compare-redis "COMPARE_BIN + Redis store, /me"
    report compare-sqlite "COMPARE_BIN + embedded SQLite store, /me"
fi
echo "Redis commands during each ${DURATION} s clusterd + Redis run (INFO commandstats, liveness PINGs included): ${CALLS[*]}"
