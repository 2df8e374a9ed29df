#!/usr/bin/env bash
# Runs the benchmarks the README plots and writes their figures as CSV and SVG charts into
# docs/plots/: signed-in req/s and p99 against the Node peer (bench/sessions.sh), how a burst of
# keep-alive connections spreads over 4 workers with one shared socket and with a socket per
# worker (bench/spread.sh), and respawn latency (bench/respawn.sh). About 8 minutes.
# Usage: bench/plots.sh   (OUT=dir to write elsewhere)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/docs/plots}
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/clusterd-plots.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "== sessions (req/s and p99)"
"$ROOT/bench/sessions.sh" | tee "$TMP/sessions.txt"
echo "== spread (4 workers, shared vs per-worker sockets)"
MODES="shared per-worker" WORKER_COUNTS=4 TRIALS=3 "$ROOT/bench/spread.sh" | tee "$TMP/spread.txt"
echo "== respawn"
"$ROOT/bench/respawn.sh" | tee "$TMP/respawn.txt"

python3 "$ROOT/bench/svg.py" "$TMP" "$OUT"
ls -l "$OUT"
