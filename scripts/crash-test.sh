#!/usr/bin/env bash
# Crash test: N SIGKILL/restart cycles under acks=all load (and N/2 under acks=1), then a
# consumer with check.crcs=true verifies every acknowledged record is at its offset, in
# order, intact, exactly once. See tests/reliability/test_rel_crash.py.
#
# Usage: scripts/crash-test.sh [N]       (default 50; CI runs 10 through pytest)
# Env:   SHARDLOG_BIN          broker binary (default: build the release broker under
#                              $CARGO_TARGET_DIR or target/, see scripts/binaries.sh)
#        SHARDLOG_CRASH_SEED   seed of the kill points (default 6)
set -euo pipefail
source "$(dirname "$0")/binaries.sh"
cd "$ROOT"
cycles="${1:-50}"
use_shardlog_bin
python3 -c 'import confluent_kafka, pytest' 2>/dev/null \
    || python3 -m pip install --quiet confluent-kafka pytest pytest-timeout
SHARDLOG_CRASH_CYCLES="$cycles" exec python3 -m pytest -q -s -p no:cacheprovider \
    tests/reliability/test_rel_crash.py
