#!/usr/bin/env bash
# Crash test: N SIGKILL/restart cycles under acks=all load (and N/2 under acks=1), then a
# consumer with check.crcs=true verifies every acknowledged record is at its offset, in
# order, intact, exactly once. See tests/reliability/test_rel_crash.py.
#
# Usage: scripts/crash-test.sh [N]       (default 50; CI runs 10 through pytest)
# Env:   SHARDLOG_BIN  broker binary (default: build target/release/shardlog)
#        CRASH_SEED    seed of the kill timings (default 6)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-50}"
if [[ -z "${SHARDLOG_BIN:-}" ]]; then
    cargo build --release -p shardlog
    export SHARDLOG_BIN="$PWD/target/release/shardlog"
fi
python3 -c 'import confluent_kafka, pytest' 2>/dev/null \
    || python3 -m pip install --quiet confluent-kafka pytest pytest-timeout
CRASH_CYCLES="$cycles" exec python3 -m pytest -q -s -p no:cacheprovider \
    tests/reliability/test_rel_crash.py
