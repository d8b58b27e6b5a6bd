#!/usr/bin/env bash
# Install everything the tests need, build the broker, and run every test:
#   1. Rust unit and property tests of the whole workspace (cargo test),
#   2. the end-to-end suite in tests/: the real `shardlog` binary driven by real Kafka
#      clients (confluent-kafka, kafka-python, kcat) and by raw sockets,
#   3. a few seconds of each standard bench workload, which must verify every message.
# Meant for a fresh Debian machine as root, and for CI (.ci/run). Exits non-zero on any failure.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k restart -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

step "system packages"
command -v kcat >/dev/null || apt_install kcat
# tests/test_metrics.py scrapes the broker with a real Prometheus server (skipped without it).
command -v prometheus >/dev/null || apt_install --no-install-recommends prometheus
command -v python3 >/dev/null || apt_install python3
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install a Rust toolchain (rustup or the rust image) first" >&2
    exit 1
fi

step "python packages (tests/requirements.txt)"
pip_args=(-q --disable-pip-version-check -r tests/requirements.txt)
# Debian's own python refuses system-wide pip installs (PEP 668) unless told otherwise;
# the packages pinned here do not collide with Debian's python3-* packages.
if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")))'; then
    pip_args+=(--break-system-packages)
fi
python3 -m pip install --root-user-action=ignore "${pip_args[@]}" 2>/dev/null \
    || python3 -m pip install "${pip_args[@]}"

# One build for both suites, so dependencies compile once. The unit tests need the
# dev-dependencies (proptest, tempfile, criterion for the benches crate), and cargo turns on
# the features those ask of shared dependencies (serde's `alloc`, more of syn, ...) only in
# a build that includes test targets: a plain `cargo build -p shardlog -p shardlog-bench`
# resolved other features, so `cargo test` compiled about 80 dependencies (and the broker)
# a second time. Building the libraries, binaries and every test target of the workspace in
# one go resolves features as `cargo test --workspace` does: the test step below compiles
# nothing more, and the broker the end-to-end tests run comes from the same build.
step "cargo build --release --workspace --lib --bins --tests"
cargo build --release --workspace --lib --bins --tests

# Both suites run this release broker: pytest, and shardlog-bench's end-to-end tests
# (SHARDLOG_BIN, else the release build under CARGO_TARGET_DIR: see scripts/binaries.sh).
source scripts/binaries.sh
export SHARDLOG_BIN="$TARGET_DIR/release/shardlog"

# Run both suites even when the first fails, so one run shows every failure.
failed=()
step "cargo test --workspace --release (broker: $SHARDLOG_BIN)"
cargo test --workspace --release || failed+=("cargo test")

step "pytest tests/ (broker: $SHARDLOG_BIN)"
python3 -m pytest tests/ -q "$@" || failed+=("pytest")

# A short run of the standard bench suite: it must verify every message (no loss, no
# duplicate, no corruption); its throughput figures are reported, never judged (shared,
# noisy machines). Skipped when pytest arguments select a subset of tests.
if [ "$#" -eq 0 ]; then
    step "scripts/bench.sh --quick (verification only)"
    bash scripts/bench.sh --quick --no-build || failed+=("bench verification")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
