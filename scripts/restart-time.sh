#!/usr/bin/env bash
# Restart time with a large log: fill a release broker with GIB GiB (default 10), stop it
# with SIGTERM (timed), start it again (timed until `listening on`, and checked to need no
# recovery scan), then kill it with SIGKILL and time the start after a crash (which scans
# the tail of each partition's active segment). Deletes the data afterwards.
#
# Usage: scripts/restart-time.sh [GIB]
# Env:   SHARDLOG_BIN (default: build the release broker under $CARGO_TARGET_DIR or
#        target/, see scripts/binaries.sh), RESTART_DIR (parent of the data dir; default /tmp)
set -euo pipefail
source "$(dirname "$0")/binaries.sh"
cd "$ROOT"
gib="${1:-10}"
use_shardlog_bin
parent="${RESTART_DIR:-/tmp}"
# Never fill the disk for everyone else: GIB plus 64 MiB preallocation per partition plus
# 4 GiB to spare must be free.
free_gib=$(( $(df -k --output=avail "$parent" | tail -1) / 1024 / 1024 ))
need_gib=$(python3 -c "import math; print(math.ceil($gib) + 4)")
if (( free_gib < need_gib )); then
    echo "only ${free_gib} GiB free under $parent; ${need_gib} GiB needed for a ${gib} GiB run" >&2
    exit 2
fi
data="$(mktemp -d -p "$parent" shardlog-restart.XXXXXX)"
log="$data.log"
trap 'kill -KILL $broker 2>/dev/null || true; rm -rf "$data" "$log"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
now_ms() { date +%s%3N; }
start() {
    : >"$log"
    local t0; t0=$(now_ms)
    "$SHARDLOG_BIN" --data-dir "$data" --listen "127.0.0.1:$port" --advertise "127.0.0.1:$port" \
        --cores 2 --num-partitions 4 2>"$log" &
    broker=$!
    until grep -q "listening on" "$log"; do
        kill -0 "$broker" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.005
    done
    ready_ms=$(( $(now_ms) - t0 ))
}
start
python3 tests/reliability/fill.py --port "$port" --gib "$gib"
echo "data on disk: $(du -sh "$data" | cut -f1)"
t0=$(now_ms); kill -TERM "$broker"; wait "$broker"; stop_ms=$(( $(now_ms) - t0 ))
echo "SIGTERM: exit 0 after ${stop_ms} ms"
start; clean_ms=$ready_ms
scans=$(grep -c "recovered log" "$log" || true)
echo "start after SIGTERM: ready in ${clean_ms} ms; recovery scans: ${scans}"
grep "opened log" "$log" | head -2 | sed 's/^/  /'
kill -KILL "$broker"; wait "$broker" || true
start; crash_ms=$ready_ms
echo "start after SIGKILL: ready in ${crash_ms} ms; recovery scans: $(grep -c "recovered log" "$log" || true)"
grep "recovered log" "$log" | head -2 | sed 's/^/  /'
kill -TERM "$broker"; wait "$broker"
[[ "$scans" == 0 ]]
