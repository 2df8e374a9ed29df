#!/usr/bin/env bash
# End-to-end test in a real systemd: builds a minimal Debian root with debootstrap (cached in
# $CLUSTERD_E2E_CACHE, default /var/cache/clusterd-e2e), boots it with systemd-nspawn, runs the
# README's install block word for word inside it, then tests/e2e/inside.sh checks the service.
# Needs root. Everything it starts is stopped by PID when it exits.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${CLUSTERD_E2E_CACHE:-/var/cache/clusterd-e2e}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
ROOTFS="$CACHE/$SUITE"
[ "$(id -u)" = 0 ] || { echo "e2e: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

# The machine's configured Debian mirror (deb822 or one-line sources).
mirror() {
    local m
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n 1)
    [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n 1)
    echo "${m:-http://deb.debian.org/debian}"
}

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The README's install block, exactly as written there.
INSTALL=$(awk '/<!-- install:begin/{on=1; next} /<!-- install:end/{on=0} on && !/^```/' "$REPO/README.md")
[ -n "$INSTALL" ] || { echo "e2e: no install block in README.md" >&2; exit 1; }

echo "== build (README: cargo build --release --locked)"
(cd "$REPO" && cargo build --release --locked --quiet)

if [ ! -e "$ROOTFS/.complete" ]; then
    echo "== debootstrap $SUITE from $(mirror) (cached in $ROOTFS)"
    rm -rf "$ROOTFS.tmp"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,curl,procps,redis-server,ca-certificates \
        "$SUITE" "$ROOTFS.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    touch "$ROOTFS.tmp/.complete"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi

MACHINE=$(mktemp -d /var/tmp/clusterd-e2e.XXXXXX)
NSPAWN=
cleanup() {
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        [ -n "${LEADER:-}" ] && nsenter -t "$LEADER" -a systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$NSPAWN" 2>/dev/null || true
    fi
    rm -rf "$MACHINE"
}
trap cleanup EXIT
cp -a --reflink=auto "$ROOTFS" "$MACHINE/root"

echo "== boot systemd in the container"
setsid systemd-nspawn -D "$MACHINE/root" -b --register=no --keep-unit --private-network \
    -M clusterd-e2e --bind-ro="$REPO:/src" >"$MACHINE/console.log" 2>&1 &
NSPAWN=$!
LEADER=
for _ in $(seq 200); do
    LEADER=$(cat "/proc/$NSPAWN/task/$NSPAWN/children" 2>/dev/null | awk '{print $1}')
    [ -n "$LEADER" ] && break
    sleep 0.05
done
[ -n "$LEADER" ] || { cat "$MACHINE/console.log"; echo "e2e: container did not start" >&2; exit 1; }

# Runs a shell command inside the container, with a clean environment.
inside() {
    nsenter -t "$LEADER" -a -- env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        ALICE_PASSWORD="$ALICE_PASSWORD" bash -c "$1"
}
ALICE_PASSWORD="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# PID 1 needs a moment before its bus answers; then wait for the boot to finish.
state=
for _ in $(seq 300); do
    state=$(inside 'systemctl is-system-running --wait 2>/dev/null' || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
echo "system: $state"
case "$state" in running | degraded) ;; *) cat "$MACHINE/console.log"; exit 1 ;; esac

echo "== README install block"
inside "set -euo pipefail; cd /src; $INSTALL"

echo "== checks"
inside 'bash /src/tests/e2e/inside.sh'
