#!/usr/bin/env bash
# Failover soak: tests/test_failover.py's failover-under-load test with KILLS leader SIGKILLs
# (default 20, issue 12's count) instead of the 3 the test suite runs. An idempotent acks=all
# producer and a consumer group run throughout; every acknowledged message must be present
# exactly once, in order. Prints, per kill, the election time, the longest produce stall and
# the time until the killed node is back in every ISR. About 10 s per kill on two cores.
#
# Usage: scripts/failover-soak.sh [KILLS]     (default 20)
# Env:   SHARDLOG_BIN (default: build the release broker, see scripts/binaries.sh)
set -euo pipefail
source "$(dirname "$0")/binaries.sh"
cd "$ROOT"
use_shardlog_bin
FAILOVER_KILLS="${1:-20}" python3 -m pytest tests/test_failover.py -q -s -p no:cacheprovider \
    -k sigkills_of_leaders_under_load
