#!/usr/bin/env python3
"""Replication cost, measured as a ratio in one run: a 3-node cluster (tests/cluster.py), two
topics whose partitions are all led by node 1, one with replication factor 1 ([1]) and one
with 3 ([1, 2, 3]); `shardlog-bench` produces to node 1 (acks=all) against each in turn,
--rounds times, and the script prints the medians and RF3/RF1. All three brokers and the
bench share this machine's cores, so the ratio includes the followers' CPU.

Usage: scripts/cluster_bench.py [--rounds 3] [--duration-s 5] [--partitions 8] [--acks all]
Env:   SHARDLOG_BIN (as the tests); SHARDLOG_BENCH_BIN, else <target>/release/shardlog-bench.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from broker_process import Fleet, shardlog_binary  # noqa: E402
from cluster import Cluster  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--acks", default="all")
    args = parser.parse_args()
    bench = Path(os.environ.get("SHARDLOG_BENCH_BIN")
                 or shardlog_binary().parent / "shardlog-bench")
    results = {1: [], 3: []}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(shardlog_binary(), Path(tmp))
        try:
            cluster = Cluster(fleet, name="bench").start()
            leader = cluster.node(1)
            for rf in (1, 3):
                cluster.create_topic(f"rf{rf}", assignment={
                    p: [1, 2, 3][:rf] for p in range(args.partitions)})
            for round_ in range(args.rounds):
                for rf in (1, 3):
                    out = subprocess.run(
                        [str(bench), "produce", "--bootstrap", leader.bootstrap,
                         "--topic", f"rf{rf}", "--partitions", str(args.partitions),
                         "--acks", args.acks, "--duration-s", str(args.duration_s),
                         "--json", "--quiet"],
                        capture_output=True, text=True, timeout=300)
                    if out.returncode != 0:
                        sys.exit(f"bench failed:\n{out.stdout}\n{out.stderr}")
                    rate = json.loads(out.stdout.strip().splitlines()[-1])["messages_per_s"]
                    results[rf].append(rate)
                    print(f"round {round_ + 1} RF{rf}: {rate:,.0f} msg/s", flush=True)
        finally:
            problems = fleet.close(together=True)
    m1, m3 = statistics.median(results[1]), statistics.median(results[3])
    print(f"RF1 median {m1:,.0f} msg/s, RF3 median {m3:,.0f} msg/s, RF3/RF1 {m3 / m1:.3f}")
    if problems:
        sys.exit("teardown: " + "; ".join(problems))


if __name__ == "__main__":
    main()
