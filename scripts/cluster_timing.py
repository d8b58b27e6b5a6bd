#!/usr/bin/env python3
"""Cluster timings, through the test harness (tests/cluster.py):

- how long a 3-node cluster takes from start to serving: every node spawned at once on
  fresh data dirs, until each prints `listening on` and until every node's Metadata lists
  all of them and names the same controller (median of --starts runs);
- how long a new quorum leader takes to be elected after a SIGKILL of the leader: from the
  SIGKILL until both survivors' Metadata name the same new controller, and until a first
  CreateTopics succeeds (median of --kills kills; the killed node is restarted and the
  cluster serves again before the next kill);
- partition failover (--failovers N): a topic with replication factor 3, a librdkafka
  producer (acks=all, idempotent) sending one message at a time; the partition's leader is
  SIGKILLed and the time from the kill to the first acks=all produce acknowledged after it
  is measured (median and max of N); the node is restarted and back in the ISR before the
  next kill.

Usage: scripts/cluster_timing.py [--kills 10] [--starts 3] [--failovers 20] [--voters 3] [--settle-s 1]
       [--session-timeout-ms 1500] [--heartbeat-interval-ms 250]
Env:   SHARDLOG_BIN, else <CARGO_TARGET_DIR or target>/release/shardlog (as the tests find
       it; build it first: cargo build --release -p shardlog). The data dirs go to a
       temporary dir under $TMPDIR, removed at the end.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from broker_process import Fleet, shardlog_binary  # noqa: E402
from cluster import Cluster  # noqa: E402

POLL_S = 0.01


def summary(values):
    return (f"median {statistics.median(values):.3f} s "
            f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")


def partition_failovers(cluster, count):
    """Kill the leader of a replicated partition `count` times; for each, the seconds from
    the SIGKILL to the first acks=all produce acknowledged after it."""
    if count <= 0:
        return []
    from confluent_kafka import KafkaException, Producer

    topic = "failover-timing"
    cluster.create_topic(topic, partitions=1, replication_factor=3)
    bootstrap = ",".join(n.bootstrap for n in cluster.nodes)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 0,
                         "retry.backoff.ms": 10, "retry.backoff.max.ms": 100,
                         "topic.metadata.refresh.interval.ms": 1000})

    def produce_one(value, timeout_s):
        outcome = []
        producer.produce(topic, value, partition=0,
                         on_delivery=lambda err, msg: outcome.append(err))
        producer.flush(timeout_s)
        if not outcome or outcome[0] is not None:
            raise KafkaException(outcome[0] if outcome else "not delivered in time")

    def isr_full():
        md = cluster.try_metadata(topics=[topic])
        part = md and md["topics"][topic]["partitions"][0]
        return part if part and len(part.get("isr", [])) == 3 and part["leader"] >= 0 else None

    stalls = []
    for i in range(count):
        part = cluster.wait_for(isr_full, 60, "the ISR back to 3")
        produce_one(b"warm-%d" % i, 30)
        leader = cluster.node(part["leader"])
        leader.kill()
        killed_at = time.monotonic()
        produce_one(b"after-%d" % i, 60)
        stalls.append(time.monotonic() - killed_at)
        print(f"  failover {i + 1}: leader {leader.node_id} killed, next acks=all produce "
              f"acknowledged after {stalls[-1]:.3f} s", flush=True)
        leader.start()
        cluster.wait_serving()
    producer.flush(10)
    return stalls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=0)
    parser.add_argument("--voters", type=int, default=3)
    parser.add_argument("--session-timeout-ms", type=int, default=1500)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=250)
    parser.add_argument("--settle-s", type=float, default=1.0,
                        help="seconds between a restarted node serving and the next kill")
    args = parser.parse_args()
    binary = shardlog_binary()
    if not binary.is_file():
        sys.exit(f"no broker binary at {binary}: build it (cargo build --release -p shardlog) "
                 "or set SHARDLOG_BIN")
    settings = dict(voters=args.voters, session_timeout_ms=args.session_timeout_ms,
                    heartbeat_interval_ms=args.heartbeat_interval_ms)
    print(f"shardlog cluster timing: {args.voters} voters, 1 core each, session timeout "
          f"{args.session_timeout_ms} ms, heartbeat {args.heartbeat_interval_ms} ms; {binary}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="shardlog-cluster-timing-") as tmp:
        fleet = Fleet(binary, Path(tmp))
        try:
            listening, serving = [], []
            for i in range(args.starts):
                cluster = Cluster(fleet, name=f"start{i}", **settings).start()
                listening.append(cluster.listening_s)
                serving.append(cluster.serving_s)
                print(f"  start {i + 1}: every node listening after {cluster.listening_s:.3f} s, "
                      f"serving after {cluster.serving_s:.3f} s", flush=True)
                if i < args.starts - 1:
                    cluster.stop()

            elected, created = [], []
            for i in range(args.kills):
                old = cluster.controller()
                old.kill()
                killed_at = time.monotonic()
                new = cluster.wait_new_controller(old.node_id, timeout_s=60, interval_s=POLL_S)
                elected.append(time.monotonic() - killed_at)
                cluster.create_topic(f"after-kill-{i}", partitions=1, replication_factor=1)
                created.append(time.monotonic() - killed_at)
                print(f"  kill {i + 1}: leader {old.node_id} killed, node {new} elected after "
                      f"{elected[-1]:.3f} s, first topic created after {created[-1]:.3f} s",
                      flush=True)
                old.start()
                cluster.wait_serving()
                # Steady state before the next kill: the restarted node has heard the
                # leader for a while (see --settle-s; 0 kills right after it serves).
                time.sleep(args.settle_s)
            failovers = partition_failovers(cluster, args.failovers)
        finally:
            problems = fleet.close(together=True)

    print()
    print(f"start to every node listening ({args.voters} nodes, fresh): {summary(listening)}")
    print(f"start to serving (all listed, one controller):  {summary(serving)}")
    if elected:
        print(f"SIGKILL of the quorum leader to a new one elected: {summary(elected)}")
        print(f"SIGKILL of the quorum leader to a topic created:   {summary(created)}")
    if failovers:
        print(f"SIGKILL of a partition leader to the next acks=all produce acknowledged: "
              f"{summary(failovers)}")
    if problems:
        sys.exit("teardown: " + "; ".join(problems))


if __name__ == "__main__":
    main()
