#!/usr/bin/env bash
# Soak: CONNECTIONS connections producing (acks=all) and fetching against one release
# broker on loopback for SECONDS; prints RSS samples and produce/fetch latency percentiles,
# and fails if any request failed or RSS grew after warm-up. See tests/reliability/soak.py.
#
# Usage: scripts/soak.sh [SECONDS] [CONNECTIONS]     (defaults 120, 1000)
# Env:   SHARDLOG_BIN (default: build the release broker under $CARGO_TARGET_DIR or
#        target/, see scripts/binaries.sh), SOAK_CORES (default 1),
#        SOAK_TAIL_CACHE_BYTES (default 1 MiB per partition, so the cache fills early and a
#        flat RSS after warm-up means no growth elsewhere)
set -euo pipefail
source "$(dirname "$0")/binaries.sh"
cd "$ROOT"
seconds="${1:-120}"
connections="${2:-1000}"
use_shardlog_bin
# Each connection is a socket on both ends: make room for them.
ulimit -n "$(( connections * 2 + 1024 > $(ulimit -Hn) ? $(ulimit -Hn) : connections * 2 + 1024 ))"
data="$(mktemp -d)"
log="$data.log"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$SHARDLOG_BIN" --data-dir "$data" --listen "127.0.0.1:$port" --advertise "127.0.0.1:$port" \
    --cores "${SOAK_CORES:-1}" --num-partitions 8 \
    --tail-cache-bytes "${SOAK_TAIL_CACHE_BYTES:-1048576}" 2>"$log" &
broker=$!
cleanup() { kill -TERM "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$data" "$log"; }
trap cleanup EXIT
for _ in $(seq 300); do
    grep -q "listening on" "$log" && break
    kill -0 "$broker" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
grep -q "listening on" "$log" || { echo "broker not ready after 30 s"; cat "$log"; exit 1; }
status=0
python3 tests/reliability/soak.py --port "$port" --pid "$broker" \
    --connections "$connections" --seconds "$seconds" --warmup "$(( seconds / 6 ))" || status=$?
echo "broker log: $(grep -c WARN "$log" || true) warnings, $(grep -c ERROR "$log" || true) errors"
kill -TERM "$broker"
wait "$broker" && echo "broker exited 0 on SIGTERM" || { echo "broker exit $?"; status=1; }
exit "$status"
