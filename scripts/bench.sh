#!/usr/bin/env bash
# The standard shardlog benchmark suite, with its baselines measured in the same run.
#
#   scripts/bench.sh            30 s per workload (the figures the targets are stated for)
#   scripts/bench.sh --quick    3 s per workload (CI: verifies every message, figures are noisy)
#
# Builds release, starts the release broker pinned to one core (taskset -c BROKER_CORE)
# on a temporary data dir and an ephemeral port, runs shardlog-bench pinned to the other core,
# measures raw loopback TCP and raw O_DIRECT disk bandwidth, and prints one table with each
# result as a fraction of those baselines. Exits non-zero if any verification fails or a step
# errors; throughput figures never fail it (machines here are noisy).
#
# Options:
#   --quick              short runs (3 s, 1 s warm-up)
#   --duration-s S       measured seconds per workload (default 30)
#   --warmup-s S         warm-up seconds per workload (default 2)
#   --broker PATH        broker binary (default $SHARDLOG_BIN, else shardlog under
#                        $CARGO_TARGET_DIR/release or target/release; see scripts/binaries.sh)
#   --no-build           skip cargo build
#   --broker-core N      core for the broker (default 0)
#   --bench-core N       core for the bench (default 1)
#   --json-dir DIR       keep each step's JSON result in DIR
#   --perf DIR           record a perf profile of the broker during each step into DIR and
#                        print its hottest symbols (needs perf; use --call-graph for stacks)
set -euo pipefail

DURATION=30
WARMUP=2
BUILD=1
BROKER_CORE=0
BENCH_CORE=1
JSON_DIR=""
PERF_DIR=""
source "$(dirname "${BASH_SOURCE[0]}")/binaries.sh"  # ROOT, TARGET_DIR
BROKER="${SHARDLOG_BIN:-$TARGET_DIR/release/shardlog}"
BENCH="$TARGET_DIR/release/shardlog-bench"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) DURATION=3; WARMUP=1 ;;
    --duration-s) DURATION="$2"; shift ;;
    --warmup-s) WARMUP="$2"; shift ;;
    --broker) BROKER="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --broker-core) BROKER_CORE="$2"; shift ;;
    --bench-core) BENCH_CORE="$2"; shift ;;
    --json-dir) JSON_DIR="$2"; shift ;;
    --perf) PERF_DIR="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $BUILD == 1 ]]; then
  (cd "$ROOT" && cargo build --release -p shardlog -p shardlog-bench)
fi
[[ -x $BROKER ]] || { echo "bench.sh: no broker binary at $BROKER" >&2; exit 2; }
[[ -x $BENCH ]] || { echo "bench.sh: no bench binary at $BENCH" >&2; exit 2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/shardlog-bench.XXXXXX")"
[[ -n $JSON_DIR ]] || JSON_DIR="$TMP/results"
mkdir -p "$JSON_DIR"
BROKER_PID=""
FAILED=0

stop_broker() {
  if [[ -n $BROKER_PID ]]; then
    kill "$BROKER_PID" 2>/dev/null || true
    # Give it 10 s to exit on SIGTERM, then insist.
    for _ in $(seq 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
}
cleanup() { stop_broker; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() {
  # A port below the kernel's ephemeral range (so no client socket holds it) that nothing
  # answers on; start_broker retries if it was taken anyway.
  local p lo
  lo="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
  for _ in $(seq 50); do
    p=$(( 10000 + RANDOM % (lo - 10000) ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "bench.sh: no free port found" >&2; exit 2
}

# Disk space: a broker that meets the targets writes about 1 GB/s. Steps whose data is not
# read back run with bounded retention; the others need the space, so check for it first.
need_disk_gb() {
  local need="$1" free
  free="$(df -Pk "$TMP" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')"
  if (( free < need )); then
    echo "bench.sh: $free GB free under $TMP, this run may write $need GB: use --duration-s or free space" >&2
    exit 2
  fi
}
# Per partition: old segments beyond 512 MiB are deleted within a second.
BOUNDED=(--retention-bytes $((512 << 20)) --segment-bytes $((64 << 20)) --retention-check-interval-ms 1000)

# start_broker NAME [BROKER ARGS...]: a fresh broker on a fresh data dir; sets PORT and
# BROKER_PID. Retries on another port when the chosen one turns out to be taken.
start_broker() {
  local attempt
  for attempt in 1 2 3 4 5; do
    if start_broker_once "$@"; then return 0; fi
    grep -q "in use" "$TMP/broker-$1.log" || exit 2
    echo "bench.sh: port $PORT taken, trying another" >&2
  done
  exit 2
}

start_broker_once() {
  local name="$1"; shift
  PORT="$(free_port)"
  local dir="$TMP/data-$name"
  mkdir -p "$dir"
  taskset -c "$BROKER_CORE" "$BROKER" --data-dir "$dir" --listen "127.0.0.1:$PORT" \
    --advertise "127.0.0.1:$PORT" --cores 1 "$@" 2>"$TMP/broker-$name.log" >/dev/null &
  BROKER_PID=$!
  local deadline=$(( SECONDS + 30 ))
  until grep -q "listening on" "$TMP/broker-$name.log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "bench.sh: broker exited before listening:" >&2; tail -20 "$TMP/broker-$name.log" >&2
      BROKER_PID=""; return 1
    fi
    if (( SECONDS > deadline )); then
      echo "bench.sh: broker not listening on $PORT after 30 s" >&2; tail -20 "$TMP/broker-$name.log" >&2; exit 2
    fi
    sleep 0.05
  done
}

# CPU seconds the broker has used so far (user + system), from /proc.
CLK_TCK="$(getconf CLK_TCK)"
broker_cpu() { awk -v hz="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$BROKER_PID/stat" 2>/dev/null || echo 0; }

# bench NAME MODE ARGS...: runs one step, keeps its JSON and the broker's CPU time for it,
# notes a failed verification.
bench() {
  local name="$1" mode="$2"; shift 2
  echo "== $name: shardlog-bench $mode $*" >&2
  local rc=0 cpu0 perf_pid=""
  cpu0="$(broker_cpu)"
  if [[ -n $PERF_DIR ]]; then
    mkdir -p "$PERF_DIR"
    perf record -F 999 -p "$BROKER_PID" -o "$PERF_DIR/$name.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  taskset -c "$BENCH_CORE" "$BENCH" "$mode" --bootstrap "127.0.0.1:$PORT" --json --quiet \
    --warmup-s "$WARMUP" "$@" >"$JSON_DIR/$name.json" || rc=$?
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf report -i "$PERF_DIR/$name.data" --no-children --sort dso,sym --stdio 2>/dev/null \
      | grep -v '^#' | grep '%' | head -12 >"$PERF_DIR/$name.top" || true
    echo "   broker's hottest symbols in $name:" >&2; sed 's/^/   /' "$PERF_DIR/$name.top" >&2
  fi
  awk -v a="$cpu0" -v b="$(broker_cpu)" 'BEGIN { printf "%.2f\n", b - a }' >"$JSON_DIR/$name.broker-cpu"
  if [[ $rc != 0 ]]; then
    echo "bench.sh: step $name failed (exit $rc)" >&2
    FAILED=1
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "bench.sh: the broker died; its log:" >&2; tail -30 "$TMP"/broker-*.log >&2 || true
    fi
  fi
}

# field FILE KEY: the first number after "KEY": in FILE (the headline side comes first).
field() { grep -o "\"$2\":[^,}]*" "$1" 2>/dev/null | head -1 | cut -d: -f2; }

PARTITIONS=8
COMMON=(--partitions "$PARTITIONS" --producers 4 --consumers 4 --cores 1)

# 100 B at the 4M msg/s target for the whole duration, kept for the consume step.
need_disk_gb $(( DURATION * 1 / 2 + 4 ))
start_broker produce-100
bench produce-100b-acks1 produce --topic p100 --message-bytes 100 --acks 1 --duration-s "$DURATION" "${COMMON[@]}"
bench consume-100b consume --topic p100 "${COMMON[@]}"
stop_broker; rm -rf "$TMP"/data-*

start_broker produce-1k "${BOUNDED[@]}"
bench produce-1kib-acks1 produce --topic p1k --message-bytes 1024 --acks 1 --duration-s "$DURATION" "${COMMON[@]}"
stop_broker; rm -rf "$TMP"/data-*

start_broker produce-all "${BOUNDED[@]}"
bench produce-100b-acksall produce --topic pall --message-bytes 100 --acks all --duration-s "$DURATION" "${COMMON[@]}"
stop_broker; rm -rf "$TMP"/data-*

# Ordering under pipelining: one partition per producer connection, 10 KB and 500 KB
# batches mixed (small runs, large runs, alternating), 256 requests in flight. Large appends
# wait for the disk while later requests of the same connection arrive; consume checks that
# every producer's messages are stored in the order sent. This caught the reordering that
# librdkafka's pipelined producer hit (a non-FIFO append lock).
need_disk_gb $(( DURATION * 2 + 2 ))
start_broker mixed
bench produce-mixed-order produce --topic mixed --partitions 2 --producers 2 --consumers 2 --cores 1 \
  --message-bytes 10000 --large-message-bytes 500000 --batch-bytes-max 1000000 --inflight 256 \
  --acks 1 --duration-s "$DURATION"
bench consume-mixed-order consume --topic mixed --partitions 2 --producers 2 --consumers 2 --cores 1
stop_broker; rm -rf "$TMP"/data-*

MAX_RATE="$(field "$JSON_DIR/produce-100b-acks1.json" messages_per_s)"
HALF_RATE="$(awk -v r="${MAX_RATE:-0}" 'BEGIN { h = r / 2; if (h < 1000) h = 1000; printf "%.0f", h }')"
start_broker e2e "${BOUNDED[@]}"
bench e2e-half-rate e2e --topic e2e --message-bytes 100 --acks 1 --rate "$HALF_RATE" --linger-ms 1 --duration-s "$DURATION" "${COMMON[@]}"
stop_broker; rm -rf "$TMP"/data-*

echo "== baselines: raw loopback (cores $BROKER_CORE <- $BENCH_CORE), raw O_DIRECT disk" >&2
LOOPBACK="$("$BENCH" raw-loopback --seconds 3 --sink-core "$BROKER_CORE" --source-core "$BENCH_CORE" --json | grep -o '"bytes_per_s":[0-9.]*' | cut -d: -f2)" || FAILED=1
# Both write fresh blocks only (no wrap-around within the run), as a log does: overwriting
# blocks already written skips block allocation and measured 1.1x to 1.5x faster here.
FRESH=(--file-bytes $((64 << 30)))
# One file, four writes in flight: what the device gives a single stream.
DISK1="$(taskset -c "$BROKER_CORE" "$BENCH" raw-disk --dir "$TMP" --seconds 3 "${FRESH[@]}" --json | grep -o '"bytes_per_s":[0-9.]*' | cut -d: -f2)" || FAILED=1
# The broker's pattern: one file per partition appended at once, 1 MiB writes, 64 MiB
# preallocation steps. The 'of disk' column is measured against this one.
DISK="$(taskset -c "$BROKER_CORE" "$BENCH" raw-disk --dir "$TMP" --seconds 3 --files "$PARTITIONS" --depth 1 "${FRESH[@]}" --json | grep -o '"bytes_per_s":[0-9.]*' | cut -d: -f2)" || FAILED=1

echo
printf "shardlog bench, %s s per workload, broker on core %s, bench on core %s\n" "$DURATION" "$BROKER_CORE" "$BENCH_CORE"
printf "%-22s %12s %10s %10s %10s %8s %8s %8s %8s %8s  %s\n" step msg/s MB/s p99 p99.9 "of loop" "of disk" "brk ns" "bench ns" verified target
row() {
  local name="$1" target="$2" f="$JSON_DIR/$1.json"
  if [[ ! -s $f ]]; then printf "%-22s %12s\n" "$name" "(no result)"; return; fi
  awk -v name="$name" -v target="$target" -v mps="$(field "$f" messages_per_s)" -v bps="$(field "$f" bytes_per_s)" \
      -v p99="$(field "$f" p99)" -v p999="$(field "$f" p99.9)" -v ver="$(field "$f" verified)" \
      -v loop="${LOOPBACK:-0}" -v disk="${DISK:-0}" -v handled="$(field "$f" handled)" \
      -v bench_cpu="$(field "$f" bench_cpu_s)" -v broker_cpu="$(cat "$JSON_DIR/$1.broker-cpu" 2>/dev/null || echo 0)" 'BEGIN {
    fl = loop > 0 ? sprintf("%.2f", bps / loop) : "-"; fd = disk > 0 ? sprintf("%.2f", bps / disk) : "-";
    kb = handled > 0 ? sprintf("%.0f", broker_cpu * 1e9 / handled) : "-";
    cb = handled > 0 ? sprintf("%.0f", bench_cpu * 1e9 / handled) : "-";
    printf "%-22s %12.0f %10.1f %8.2fms %8.2fms %8s %8s %8s %8s %8s  %s\n", name, mps, bps / 1e6, p99 / 1000, p999 / 1000, fl, fd, kb, cb, ver, target }'
}
# verified is read from the JSON: "true"/"false"
row produce-100b-acks1 ">= 4M msg/s"
row produce-1kib-acks1 ">= 1 GB/s"
row produce-100b-acksall ">= 2.5M msg/s"
row consume-100b ">= 6M msg/s"
row e2e-half-rate "p99 <= 5 ms at half max ($HALF_RATE msg/s)"
row produce-mixed-order "10 KB + 500 KB, 256 in flight"
row consume-mixed-order "each producer's order kept"
awk -v b="${LOOPBACK:-0}" 'BEGIN { printf "%-22s %12s %10.1f\n", "raw-loopback", "-", b / 1e6 }'
awk -v b="${DISK1:-0}" 'BEGIN { printf "%-22s %12s %10.1f\n", "raw-disk, 1 file", "-", b / 1e6 }'
awk -v b="${DISK:-0}" -v n="$PARTITIONS" 'BEGIN { printf "%-22s %12s %10.1f\n", "raw-disk, " n " files", "-", b / 1e6 }'
echo "(MB/s counts message values only; 'of loop'/'of disk' = that rate / the baseline's bytes/s;"
echo " 'of disk' is against raw O_DIRECT writes of $PARTITIONS files at once, the broker's pattern;"
echo " 'brk ns'/'bench ns' = CPU nanoseconds per message acknowledged or consumed, warm-up included:"
echo " 1e9 / 'brk ns' is what one broker core could do if it had the core to itself;"
echo " latency in e2e is send-to-receipt from intended send time, else ack or fetch round trip)"

for f in "$JSON_DIR"/*.json; do
  if [[ "$(field "$f" verified)" != "true" ]]; then
    echo "bench.sh: verification FAILED in $(basename "$f" .json)" >&2
    FAILED=1
  fi
done
exit "$FAILED"
