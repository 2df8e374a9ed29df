#!/usr/bin/env bash
# What Redis receives while 50 sessions signed in together stay in use: clusterd (Redis store,
# one worker per CPU) gets CONNECTIONS logins within a second or two, then wrk rotates GET /me
# over them for SECONDS (default 100: past the first renewals, which come 30 - 60 s after a
# login at the default 30 min idle timeout). Prints the commands Redis ran in each second
# (`INFO commandstats`, this sampler's own INFO included) and the busiest 5 s after the first
# second (which fills the workers' caches).
# Usage: bench/renewals.sh   (SECONDS_RUN=100, CONNECTIONS=50)
source "$(dirname "$0")/lib.sh"
need wrk curl redis-server redis-cli
build
SECONDS_RUN=${SECONDS_RUN:-100}
start_redis
P=$(free_port)
start clusterd "$BIN" --bind "127.0.0.1:$P" --redis-url "redis://127.0.0.1:$R" --data-dir "$WORK/data"
wait_http "http://127.0.0.1:$P/healthz"
for _ in $(seq "$CONNECTIONS"); do login_cookie "$P"; done >"$WORK/cookies"
calls() { redis-cli -p "$R" INFO commandstats | awk -F'calls=' 'NF>1{split($2,a,","); s+=a[1]} END{print s+0}'; }
echo "machine: $(machine)"
echo "load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${SECONDS_RUN}s rotating over $CONNECTIONS sessions; $(nproc) workers"
COOKIES="$WORK/cookies" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${SECONDS_RUN}s" -s "$ROOT/bench/me.lua" \
    "http://127.0.0.1:$P" >"$WORK/wrk.out" &
wrk_pid=$!
prev=$(calls)
while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 1
    now=$(calls); echo $((now - prev)); prev=$now
done >"$WORK/per-second"
wait "$wrk_pid"
echo "commands per second: $(tr '\n' ' ' <"$WORK/per-second")"
awk 'NR>1{a[NR]=$1} END{if(NR<6){print "no 5 s window after the first second: run longer"; exit} m=-1; for(i=2;i<=NR-4;i++){s=0; for(j=i;j<i+5;j++) s+=a[j]; if(s>m){m=s; at=i}} print "busiest 5 s after the first second: " m " commands (seconds " at "-" at+4 ")"}' "$WORK/per-second"
redis-cli -p "$R" INFO commandstats | awk -F'[:,=]' '/calls=/{printf "%s %s  ", $1, $3} END{print ""}' | sed 's/cmdstat_//g'
grep -E "Requests/sec|Non-2xx" "$WORK/wrk.out"
