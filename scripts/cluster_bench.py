#!/usr/bin/env python3
"""Replication cost, measured as a ratio in one run: a 3-node cluster (tests/cluster.py), two
topics, one with replication factor 1 and one with 3; `shardlog-bench` produces (acks=all by
default) to each in turn, --rounds times, and the script prints the medians and RF3/RF1.
All three brokers and the bench share this machine's cores, so the ratio includes the
followers' CPU.

Two layouts:
- default: every partition led by node 1 (RF1 [1], RF3 [1, 2, 3]); the bench bootstraps
  from node 1 only, so it measures one leader with and without followers.
- --spread (cluster mode): partition p led by node p % 3 + 1, its followers the next nodes
  round the ring, so leaders are spread over the three brokers; the bench bootstraps from
  all three and follows each partition's leader (one connection per leader). Then one
  e2e run per topic at --e2e-rate (open loop) gives the end-to-end p99 (send to receipt)
  of each replication factor.

Usage: scripts/cluster_bench.py [--spread] [--rounds 3] [--duration-s 5] [--partitions 8]
                                [--acks all] [--e2e-rate 200000] [--json FILE]
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


def assignment(rf, partitions, spread):
    """{partition: replicas}: all led by node 1, or leaders spread round the ring."""
    if spread:
        return {p: [(p + i) % 3 + 1 for i in range(rf)] for p in range(partitions)}
    return {p: [1, 2, 3][:rf] for p in range(partitions)}


def bench(binary, mode, bootstrap, topic, args, *extra):
    """One bench run; its JSON result (exits the script if it failed or did not verify)."""
    out = subprocess.run(
        [str(binary), mode, "--bootstrap", bootstrap, "--topic", topic,
         "--partitions", str(args.partitions), "--acks", args.acks,
         "--duration-s", str(args.duration_s), "--json", "--quiet", *extra],
        capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        sys.exit(f"bench {mode} {topic} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--acks", default="all")
    parser.add_argument("--spread", action="store_true",
                        help="leaders spread over the three brokers; adds e2e p99 per RF")
    parser.add_argument("--e2e-rate", type=float, default=200000,
                        help="messages/s of the e2e runs of --spread (open loop)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    binary = Path(os.environ.get("SHARDLOG_BENCH_BIN")
                  or shardlog_binary().parent / "shardlog-bench")
    rates = {1: [], 3: []}
    e2e = {}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(shardlog_binary(), Path(tmp))
        try:
            cluster = Cluster(fleet, name="bench").start()
            bootstrap = cluster.bootstrap if args.spread else cluster.node(1).bootstrap
            for rf in (1, 3):
                cluster.create_topic(f"rf{rf}",
                                     assignment=assignment(rf, args.partitions, args.spread))
            for round_ in range(args.rounds):
                for rf in (1, 3):
                    r = bench(binary, "produce", bootstrap, f"rf{rf}", args)
                    rates[rf].append(r["messages_per_s"])
                    print(f"round {round_ + 1} RF{rf}: {r['messages_per_s']:,.0f} msg/s, "
                          f"retries {r.get('retries', 0)}", flush=True)
            if args.spread:
                for rf in (1, 3):
                    # Its own topic: e2e reads from the end, but a fresh topic keeps the
                    # runs' retention and recovery apart.
                    topic = f"e2e-rf{rf}"
                    cluster.create_topic(topic,
                                         assignment=assignment(rf, args.partitions, True))
                    r = bench(binary, "e2e", bootstrap, topic, args,
                              "--rate", str(args.e2e_rate))
                    e2e[rf] = {"messages_per_s": r["messages_per_s"],
                               "p50_us": r["latency_us"]["p50"],
                               "p99_us": r["latency_us"]["p99"],
                               "p99.9_us": r["latency_us"]["p99.9"],
                               "retries": r.get("retries", 0)}
                    print(f"e2e RF{rf} at {args.e2e_rate:,.0f} msg/s: "
                          f"{r['messages_per_s']:,.0f} msg/s consumed, "
                          f"p50 {e2e[rf]['p50_us']} µs, p99 {e2e[rf]['p99_us']} µs, "
                          f"p99.9 {e2e[rf]['p99.9_us']} µs", flush=True)
        finally:
            problems = fleet.close(together=True)
    m1, m3 = statistics.median(rates[1]), statistics.median(rates[3])
    layout = "leaders spread over 3 brokers" if args.spread else "all partitions led by node 1"
    print(f"{layout}, acks={args.acks}: RF1 median {m1:,.0f} msg/s, RF3 median {m3:,.0f} "
          f"msg/s, RF3/RF1 {m3 / m1:.3f} (rounds {args.rounds}, {args.duration_s} s each)")
    if e2e:
        print(f"e2e p99 at {args.e2e_rate:,.0f} msg/s: RF1 {e2e[1]['p99_us']} µs, "
              f"RF3 {e2e[3]['p99_us']} µs")
    if args.json:
        args.json.write_text(json.dumps({
            "layout": "spread" if args.spread else "leader1", "acks": args.acks,
            "rf1_messages_per_s": rates[1], "rf3_messages_per_s": rates[3],
            "rf1_median": m1, "rf3_median": m3, "rf3_over_rf1": m3 / m1, "e2e": e2e}))
    if problems:
        sys.exit("teardown: " + "; ".join(problems))


if __name__ == "__main__":
    main()
