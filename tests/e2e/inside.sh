#!/usr/bin/env bash
# Runs inside the booted container (tests/e2e/systemd.sh), after the README's install block:
# checks clusterd.service the way an operator would. Prints "ok - ..." per check and a closing
# "N passed, 0 failed"; exits non-zero at the first failure with the journal's tail.
set -euo pipefail
URL=http://127.0.0.1:8080
LOGIN="{\"username\":\"alice\",\"password\":\"$ALICE_PASSWORD\"}"
PASSED=0

fail() {
    echo "not ok - $*"
    systemctl status clusterd --no-pager || true
    journalctl -u clusterd --no-pager | tail -n 40
    echo "$PASSED passed, 1 failed"
    exit 1
}
ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }

main_pid() { systemctl show -p MainPID --value clusterd; }
workers() { pgrep -P "$(main_pid)" | sort | xargs; }
n_workers() { pgrep -c -P "$(main_pid)"; }
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
# Reads the whole journal before grepping: with pipefail, `grep -q` closing the pipe early
# would fail the pipeline through journalctl's SIGPIPE.
journal_has() { journalctl -u clusterd --no-pager -o cat | grep -- "$1" >/dev/null; }
# wait_for SECONDS WHAT COMMAND...: polls every 100 ms.
wait_for() {
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    fail "timed out after ${limit}s waiting for: $what"
}
# me_loop: GET /me with the session for 6 s; writes "ok failed" counts to /tmp/loop.
me_loop() {
    local n=0 f=0 end=$((SECONDS + 6))
    while [ $SECONDS -lt $end ]; do
        if [ "$(code -b /tmp/jar "$URL/me")" = 200 ]; then n=$((n + 1)); else f=$((f + 1)); fi
    done
    echo "$n $f" >/tmp/loop
}
gone() { for p in $1; do [ -d "/proc/$p" ] && return 1; done; return 0; }
# conn_loop FILE: GET / on a fresh connection each time until /tmp/stop-loops exists; one line
# per request: its start (ns), its status (000: no answer) and curl's exit code (7: refused,
# 28: timed out, 52/56: the connection was accepted, then closed or reset unanswered).
conn_loop() {
    local out=$1 t code rc
    : >"$out"
    while [ ! -e /tmp/stop-loops ]; do
        t=$(date +%s%N)
        rc=0
        code=$(curl -s -o /dev/null -m 20 -w '%{http_code}' "$URL/") || rc=$?
        echo "$t $code $rc" >>"$out"
    done
}
# under_loops COMMAND...: runs COMMAND while 3 request loops run (from 1 s before to 1.5 s after);
# sets BEGAN (ns, just before COMMAND) and leaves the loops' lines in /tmp/conn.*.
under_loops() {
    rm -f /tmp/stop-loops /tmp/conn.*
    local pids=()
    for i in 1 2 3; do conn_loop "/tmp/conn.$i" & pids+=($!); done
    sleep 1
    BEGAN=$(date +%s%N)
    "$@"
    sleep 1.5
    touch /tmp/stop-loops
    wait "${pids[@]}"
}
# after BEGAN: "total failed" of the requests started at or after BEGAN; before: the same for
# those started before it.
after() { cat /tmp/conn.* | awk -v b="$BEGAN" '$1 >= b {n++; if ($2 != 200) f++} END {print n+0, f+0}'; }
# cut_off: of the requests started at or after BEGAN that failed, "other cut": `cut` are those an
# old worker accepted and that died with it (curl 52/56); `other` every other failure (refused,
# timed out, an error status).
cut_off() { cat /tmp/conn.* | awk -v b="$BEGAN" '$1 >= b && $2 != 200 {if ($3 == 52 || $3 == 56) c++; else o++} END {print o+0, c+0}'; }
before() { cat /tmp/conn.* | awk -v b="$BEGAN" '$1 < b {n++; if ($2 != 200) f++} END {print n+0, f+0}'; }
EXPECTED=$(nproc)

# -- the units pass systemd-analyze verify with no output at all (typos only warn)
out=$(systemd-analyze verify /etc/systemd/system/clusterd.service /etc/systemd/system/clusterd.socket 2>&1)
[ -z "$out" ] || fail "systemd-analyze verify: $out"
ok "systemd-analyze verify: no warnings"
echo "# $(systemd-analyze security --offline=true /etc/systemd/system/clusterd.service 2>&1 | grep 'Overall exposure')"

# -- READY=1 came only when every worker served: the first request right after start works
[ "$(systemctl is-active clusterd)" = active ] || fail "clusterd is not active"
[ "$(code "$URL/healthz")" = 200 ] || fail "/healthz right after enable --now"
[ "$(n_workers)" = "$EXPECTED" ] || fail "$(n_workers) workers, expected $EXPECTED"
wait_for 5 "status line" bash -c "systemctl show -p StatusText --value clusterd | grep -q '$EXPECTED/$EXPECTED workers ready, 0 restarts, store redis ok'"
ok "active, $EXPECTED workers serving, status: $(systemctl show -p StatusText --value clusterd)"

# -- login, then the protected route
curl -sf -c /tmp/jar -H 'content-type: application/json' -d "$LOGIN" "$URL/login" >/dev/null || fail "login"
curl -sf -b /tmp/jar "$URL/me" | grep -q '"user":"alice"' || fail "/me after login"
[ "$(code -H 'content-type: application/json' -d '{"username":"alice","password":"wonderland"}' "$URL/login")" = 401 ] \
    || fail "the demo password must not work under systemd"
ok "login and protected route; no demo user"

# -- the unit lets the hashing threads lower their priority (setpriority, sched_setscheduler)
niced=0
for w in $(workers); do
    for t in /proc/"$w"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in hasher-*) ;; *) continue ;; esac
        # Field 19 of stat is the niceness; fields counted after the ")" that ends the name.
        nice=$(sed 's/.*) //' "$t/stat" | awk '{print $17}')
        [ "$nice" = 19 ] || fail "hashing thread $t runs at nice $nice, not 19"
        niced=$((niced + 1))
    done
done
[ "$niced" -ge "$EXPECTED" ] || fail "found $niced hashing threads"
ok "$niced hashing threads at nice 19 under the unit's system call filter"

# -- kill -9 a worker: replaced, session still valid on every worker
before=$(workers)
victim=${before%% *}
kill -9 "$victim"
replaced() { [ "$(n_workers)" = "$EXPECTED" ] && ! workers | grep -qw "$victim"; }
wait_for 10 "worker $victim replaced" replaced
for _ in $(seq 20); do [ "$(code -b /tmp/jar "$URL/me")" = 200 ] || fail "/me after worker kill"; done
journal_has "worker died; respawning" || fail "no death line in the journal"
journalctl -u clusterd --no-pager -o cat | grep "worker died" | grep "pid=$victim.*SIGKILL" >/dev/null || fail "death line names pid and signal"
ok "kill -9 worker $victim: replaced, logged, session valid"

# -- systemctl reload under a request loop: every worker replaced, zero failures
old=$(workers)
me_loop &
loop=$!
sleep 1
systemctl reload clusterd
wait_for 20 "reload complete" journal_has "reload complete"
wait_for 20 "old workers gone" gone "$old"
wait "$loop"
read -r n f </tmp/loop
[ "$f" = 0 ] || fail "$f of $((n + f)) requests failed during reload"
[ "$n" -gt 20 ] || fail "the request loop ran only $n requests"
for p in $(workers); do echo " $old " | grep -q " $p " && fail "worker $p was not replaced"; done
ok "systemctl reload: workers $old -> $(workers), $n requests, 0 failed"

# -- clusterd status (as root, on /run/clusterd/control.sock) lists every worker pid
st=$(clusterd status) || fail "clusterd status: $st"
for p in $(workers); do echo "$st" | grep -qw "$p" || fail "clusterd status lacks worker $p: $st"; done
ok "clusterd status lists workers $(workers)"

# -- a deploy: install a new binary (the same program with bytes appended), systemctl reload
# under a request loop: the master re-executes in place (same MainPID), every process runs the
# new file, zero failures, the session survives
master=$(main_pid)
old=$(workers)
cp /usr/local/bin/clusterd /tmp/clusterd.new
printf '\0another build\0' >>/tmp/clusterd.new
me_loop &
loop=$!
sleep 1
install -m 0755 /tmp/clusterd.new /usr/local/bin/clusterd
case $(readlink /proc/"$master"/exe) in *"(deleted)") ;; *) fail "install did not replace the running binary" ;; esac
started=$(date +%s%N)
systemctl reload clusterd
on_new_binary() {
    for p in $(main_pid) $(workers); do
        case $(readlink /proc/"$p"/exe) in *"(deleted)") return 1 ;; esac
    done
    gone "$old"
}
wait_for 15 "master and workers on the new binary" on_new_binary
took=$((($(date +%s%N) - started) / 1000000))
wait "$loop"
read -r n f </tmp/loop
[ "$(main_pid)" = "$master" ] || fail "MainPID changed from $master to $(main_pid)"
[ "$f" = 0 ] || fail "$f of $((n + f)) requests failed during the upgrade"
[ "$n" -gt 20 ] || fail "the request loop ran only $n requests"
journal_has "master re-executed from the new binary" || fail "no re-exec line in the journal"
[ "$(code -b /tmp/jar "$URL/me")" = 200 ] || fail "the session did not survive the upgrade"
[ "$(systemctl is-active clusterd)" = active ] || fail "clusterd is not active after the upgrade"
ok "deploy + systemctl reload: master $master re-executed in place in ${took} ms, workers $old -> $(workers), $n requests, 0 failed"

# -- systemctl stop with a slow request in flight: it completes
pad=$(head -c 3000 /dev/zero | tr '\0' ' ')
body="{\"username\":\"alice\",\"password\":\"$ALICE_PASSWORD\"$pad}"
(curl -s -o /dev/null -w '%{http_code}' --limit-rate 1000 -H 'content-type: application/json' \
    -d "$body" "$URL/login" >/tmp/slow) &
slow=$!
# In flight once a connection to port 8080 (0x1F90) is established.
established() { grep -q ':1F90 [0-9A-F]*:[0-9A-F]* 01' /proc/net/tcp; }
wait_for 5 "slow request connected" established
systemctl stop clusterd
wait "$slow"
[ "$(cat /tmp/slow)" = 200 ] || fail "slow request during stop answered $(cat /tmp/slow)"
[ "$(systemctl is-active clusterd)" = inactive ] || fail "not inactive after stop"
journal_has "graceful stop" || fail "no graceful stop line"
ok "systemctl stop: the 3 s upload in flight completed with 200"

# -- kill -9 the master: systemd restarts the service; the session survives (Redis + shared key)
systemctl start clusterd
first=$(main_pid)
kill -9 "$first"
restarted() {
    local p
    p=$(main_pid)
    [ "$p" != 0 ] && [ "$p" != "$first" ] && [ "$(systemctl is-active clusterd)" = active ] \
        && [ "$(code "$URL/healthz")" = 200 ]
}
wait_for 20 "systemd restarting clusterd" restarted
[ "$(systemctl show -p NRestarts --value clusterd)" -ge 1 ] || fail "NRestarts"
[ "$(code -b /tmp/jar "$URL/me")" = 200 ] || fail "session lost across the master restart"
ok "kill -9 master $first: restarted as $(main_pid), session still valid"

# -- restarts that lose nothing: the master keeps its sockets in systemd's descriptor store, so
# `systemctl restart` and a kill -9 of the master refuse and reset no connection opened after
# they began (requests in flight on workers that systemd kills may fail: counted, not hidden)
restart_and_wait() {
    local was
    was=$(main_pid)
    systemctl restart clusterd
    [ "$(main_pid)" != "$was" ] || fail "systemctl restart kept MainPID $was"
}
under_loops restart_and_wait
read -r n f < <(after)
read -r bn bf < <(before)
[ "$n" -gt 20 ] || fail "the loops ran only $n requests after the restart began"
[ "$f" = 0 ] || fail "$f of $n connections opened after systemctl restart began failed: $(cat /tmp/conn.* | awk -v b="$BEGAN" '$1 >= b && $2 != 200' | head -3)"
journal_has "serving on the previous master's sockets" || fail "the new master did not take the stored sockets"
ok "systemctl restart under 3 request loops: $n connections opened after it began, 0 failed (before it: $bf of $bn failed)"

kill_master_and_wait() {
    local was
    was=$(main_pid)
    kill -9 "$was"
    back() { local p; p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$was" ] && [ "$(systemctl is-active clusterd)" = active ]; }
    wait_for 20 "systemd restarting clusterd after kill -9" back
}
under_loops kill_master_and_wait
read -r n f < <(after)
read -r bn bf < <(before)
read -r other cut < <(cut_off)
[ "$n" -gt 20 ] || fail "the loops ran only $n requests after the kill"
# systemd kills the orphaned workers (KillMode=mixed): a connection one of them accepted in the
# instant between `kill -9` and its own death dies with it, as a request in flight does. None
# may be refused or time out: that is what the descriptor store is for.
[ "$other" = 0 ] || fail "$other of $n connections opened after the kill -9 were refused, timed out or failed: $(cat /tmp/conn.* | awk -v b="$BEGAN" '$1 >= b && $2 != 200 && $3 != 52 && $3 != 56' | head -3)"
ok "kill -9 of the master under 3 request loops: $n connections opened after it, 0 refused or timed out, $cut accepted by an old worker and cut when systemd killed it (before it: $bf of $bn failed)"

# -- socket activation: systemd owns the socket, the master adopts it
systemctl stop clusterd
systemctl start clusterd.socket
systemctl start clusterd
wait_for 10 "adopted socket" journal_has "using the socket passed by systemd"
[ "$(code -b /tmp/jar "$URL/me")" = 200 ] || fail "/me over the activated socket"
# One root-made socket: the DynamicUser master cannot join its SO_REUSEPORT group, says so once,
# and the workers share it.
journal_has "cannot open a socket next to systemd's" || fail "no line about sharing systemd's socket"
ok "socket activation (one ListenStream: workers share it, the journal says why)"

# -- one ListenStream= per worker (the drop-in the .socket unit describes): a socket per worker
listeners() { awk '$2 ~ /:1F90$/ && $4 == "0A"' /proc/net/tcp | wc -l; }
shared_lines() { journalctl -u clusterd --no-pager -o cat | grep -c "cannot open a socket next to systemd's" || true; }
before=$(shared_lines)
mkdir -p /etc/systemd/system/clusterd.socket.d
{ echo "[Socket]"; echo "ListenStream="; for _ in $(seq "$EXPECTED"); do echo "ListenStream=127.0.0.1:8080"; done; } \
    > /etc/systemd/system/clusterd.socket.d/per-worker.conf
systemctl stop clusterd clusterd.socket
systemctl daemon-reload
systemctl start clusterd.socket
[ "$(listeners)" = "$EXPECTED" ] || fail "systemd opened $(listeners) sockets, wanted $EXPECTED"
systemctl start clusterd
wait_for 10 "all workers" test "$(n_workers)" = "$EXPECTED"
[ "$(code -b /tmp/jar "$URL/me")" = 200 ] || fail "/me over the per-worker sockets"
journal_has "sockets=$EXPECTED" || fail "the master did not adopt $EXPECTED sockets"
[ "$(shared_lines)" = "$before" ] || fail "fell back to sharing with one socket per worker"
# Every worker holds one of systemd's sockets, and no two the same one.
held=$(for p in $(workers); do ls -l "/proc/$p/fd" | grep -o 'socket:\[[0-9]*\]' | sort -u; done)
ours=$(awk '$2 ~ /:1F90$/ && $4 == "0A" {print "socket:[" $10 "]"}' /proc/net/tcp | sort)
[ "$(grep -cxF -f <(echo "$ours") <<<"$held")" = "$EXPECTED" ] || fail "workers do not hold one listener each"
[ "$(grep -xF -f <(echo "$ours") <<<"$held" | sort -u | wc -l)" = "$EXPECTED" ] || fail "two workers share a listener"
ok "socket activation with $EXPECTED ListenStream= lines: one socket per worker"
rm -r /etc/systemd/system/clusterd.socket.d
systemctl daemon-reload

# -- the journal tells the story, one timestamp per line (journald's own)
for line in "master started" "worker died" "worker started" "reload complete" "graceful stop" "all workers stopped"; do
    journal_has "$line" || fail "journal lacks '$line'"
done
if journalctl -u clusterd --no-pager -o cat | grep -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' >/dev/null; then
    fail "clusterd adds its own timestamps under journald"
fi
ok "journalctl -u clusterd shows start, deaths, respawns, reloads and stop"

echo "$PASSED passed, 0 failed"
