#!/usr/bin/env bash
# Fuzz the request path (framing, header parsing, every API body decoder, record-batch
# validation, and the handler entry point of a one-shard broker) for a bounded time, then
# the controller port's framing and decoding (target `controller`) for a quarter of it.
# Any crash is saved under fuzz/artifacts/requests/ and the script exits non-zero; turn it
# into a regression test in broker/src/protocol (see its tests module).
#
# Usage: scripts/fuzz.sh [SECONDS]   (default 60)
# Env:   FUZZ_HANDLER=0  fuzz only framing and decoding (faster, no disk)
set -euo pipefail
#
# Leak detection is off: the handler runs on one glommio executor that lives for the whole
# run, so tasks still pending when an input returns (a group-commit flush cut by the 20 ms
# per-input limit) look like leaks to LeakSanitizer. Real growth is caught by -rss_limit_mb.
cd "$(dirname "$0")/.."
budget_s="${1:-60}"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer); use a nightly toolchain if there is
# one, else let the stable compiler accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
# The same for AddressSanitizer's own check at exit (the executor is never torn down).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
corpus=fuzz/corpus/requests
mkdir -p "$corpus"
if [[ -z "$(ls -A "$corpus")" ]]; then
    python3 fuzz/seeds.py "$corpus"
fi
if [[ "${FUZZ_HANDLER:-1}" == 1 ]]; then
    export SHARDLOG_FUZZ_HANDLER=1
    export SHARDLOG_FUZZ_DIR="${SHARDLOG_FUZZ_DIR:-$(mktemp -d)}"
    trap 'rm -rf "$SHARDLOG_FUZZ_DIR"' EXIT
fi

"${fuzz[@]}" run requests "$corpus" -- \
    -max_total_time="$budget_s" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
    -detect_leaks=0 \
    -print_final_stats=1

# The controller port (cluster/rpc.rs): framing and decoding of raft and broker requests.
controller_corpus=fuzz/corpus/controller
mkdir -p "$controller_corpus"
"${fuzz[@]}" run controller "$controller_corpus" -- \
    -max_total_time="$(( (budget_s + 3) / 4 ))" -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -timeout=10 -detect_leaks=0 -print_final_stats=1
