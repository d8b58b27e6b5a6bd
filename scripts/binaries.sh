# Sourced by the scripts in scripts/: find the binaries the way the tests do
# (tests/broker_process.py, bench-client/src/test_broker.rs).
#
#   ROOT         the repository
#   TARGET_DIR   $CARGO_TARGET_DIR (relative to ROOT when relative: the scripts run cargo
#                from ROOT), else ROOT/target
#   use_shardlog_bin
#                sets and exports SHARDLOG_BIN unless it is set: builds the release broker
#                and points at TARGET_DIR/release/shardlog (never a debug build)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in
  /*) ;;
  *) TARGET_DIR="$ROOT/$TARGET_DIR" ;;
esac

use_shardlog_bin() {
  if [[ -z "${SHARDLOG_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p shardlog)
    SHARDLOG_BIN="$TARGET_DIR/release/shardlog"
  fi
  export SHARDLOG_BIN
}
