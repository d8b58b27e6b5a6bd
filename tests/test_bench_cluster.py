"""shardlog-bench against a 3-node cluster (issue 15, clusters): it produces and fetches each
partition at its leader, and when a broker goes away mid-run it waits, reconnects, resends
what was not acknowledged, and still verifies that every acknowledged message was read back.

The bench binary is $SHARDLOG_BENCH_BIN, else `shardlog-bench` next to the broker binary.
Short on purpose (CI has 2 cores): a few seconds at a modest rate per run.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import wire
from broker_process import shardlog_binary

PARTITIONS = 6
RATE = 20000  # messages per second over all producers: modest, three nodes share 2 cores


@pytest.fixture(scope="module")
def bench_bin():
    path = Path(os.environ.get("SHARDLOG_BENCH_BIN")
                or shardlog_binary().parent / "shardlog-bench")
    if not path.is_file():
        pytest.fail(f"shardlog-bench not found at {path}: build it (cargo build --release "
                    "-p shardlog-bench) or set SHARDLOG_BENCH_BIN")
    return path


def spread(rf):
    """Partition p led by node p % 3 + 1, its followers the next nodes round the ring."""
    return {p: [(p + i) % 3 + 1 for i in range(rf)] for p in range(PARTITIONS)}


def bench(bench_bin, cluster, mode, topic, *extra):
    """Starts a run bootstrapped from every node."""
    return subprocess.Popen(
        [str(bench_bin), mode, "--bootstrap", cluster.bootstrap, "--topic", topic,
         "--partitions", str(PARTITIONS), "--producers", "3", "--consumers", "3",
         "--warmup-s", "0", "--drain-timeout-s", "20", "--retry-timeout-s", "30", "--json",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench_e2e(bench_bin, cluster, topic, duration_s):
    """An e2e run: acks=all, open loop at RATE."""
    return bench(bench_bin, cluster, "e2e", topic, "--acks", "all", "--rate", str(RATE),
                 "--duration-s", str(duration_s), "--batch-records", "200")


def finish(run, timeout_s=60):
    out, err = run.communicate(timeout=timeout_s)
    assert run.returncode == 0, f"bench exited {run.returncode}:\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1]), err


def assert_all_acknowledged_read_back(result, acknowledged=None):
    """Verified with no fault at all; every acknowledged message was consumed (e2e and
    consume --manifest check it) and duplicates from resends are read on top of those."""
    faults = result["faults"]
    assert result["verified"], result
    assert faults == {"lost": 0, "duplicated": 0, "reordered": 0, "corrupted": 0,
                      "offset_errors": 0, "request_errors": 0}, faults
    acknowledged = acknowledged or result["produce"]["messages"]
    assert acknowledged > 0
    assert result["checked"] >= acknowledged, (result["checked"], acknowledged)


@pytest.mark.parametrize("rf", [1, 3])
def test_the_bench_produces_and_fetches_each_partition_at_its_leader(
        start_cluster, bench_bin, rf):
    cluster = start_cluster()
    topic = f"spread-rf{rf}"
    parts = cluster.create_topic(topic, assignment=spread(rf))
    assert sorted({p["leader"] for p in parts.values()}) == [1, 2, 3]
    result, _ = finish(bench_e2e(bench_bin, cluster, topic, 3))
    assert_all_acknowledged_read_back(result)
    assert result["retries"] == 0, result["recovery"]
    # Each node holds what was produced to the partitions it leads.
    for p, info in parts.items():
        node = cluster.node(info["leader"])
        assert wire.high_watermark(node.address, topic, p) > 0, (p, info)


def test_a_broker_restarted_mid_run_stalls_its_partitions_and_loses_nothing_acknowledged(
        start_cluster, bench_bin, tmp_path):
    """RF1: the killed node's partitions have no other replica, so they stall until it is
    back; the producing run must wait, reconnect, resend, finish, and report the stall; a
    consuming run afterwards must find every message the producing run saw acknowledged
    (the manifest), and count what the resends stored twice as duplicates, not faults.

    Produce, then consume, rather than e2e: a consumer reading during the crash may have
    read a batch the broker served before it was durable (no high watermark yet), which the
    crash then takes back; that is a broker finding, and what this test checks is that
    nothing acknowledged is lost."""
    cluster = start_cluster()
    topic = "restart-rf1"
    parts = cluster.create_topic(topic, assignment=spread(1))
    victim = cluster.node(2)
    victims = [p for p, info in parts.items() if info["leader"] == 2]
    manifest = tmp_path / "acknowledged"
    run = bench(bench_bin, cluster, "produce", topic, "--acks", "all", "--rate", str(RATE),
                "--duration-s", "8", "--batch-records", "200", "--manifest", str(manifest))
    try:
        # The bench is producing to the victim's partitions: acknowledged data to lose.
        cluster.wait_for(lambda: all(wire.high_watermark(victim.address, topic, p) > 1000
                                     for p in victims), 20, "the bench producing to node 2")
        victim.kill()
        down = time.monotonic()

        # Wait until the others no longer name node 2 leader (fenced), so the bench sees
        # the partitions leaderless, not just a refused connection.
        def fenced():
            md = cluster.try_metadata(cluster.node(1), [topic])
            t = md and md["topics"].get(topic)
            return t and all(t["partitions"][p]["leader"] != 2 for p in victims)
        cluster.wait_for(fenced, 20, "node 2's partitions to lose their leader")
        victim.start()
        down_s = time.monotonic() - down
    finally:
        if run.poll() is None and not victim.is_running():
            victim.start()
    produced, err = finish(run)
    assert produced["verified"], produced
    recovery = produced["recovery"]
    assert produced["retries"] > 0 and recovery["resent_batches"] > 0, recovery
    assert recovery["reconnects"] > 0 and recovery["metadata_refreshes"] > 0, recovery
    # The longest time a partition went unacknowledged covers the time its leader was down,
    # and it was one of the victim's partitions.
    assert recovery["stall_ms_max"] >= 0.9 * down_s * 1000, (recovery, down_s)
    assert recovery["stall_partition"] in victims, (recovery, victims)
    assert "connection to" in err, err

    consumed, _ = finish(bench(bench_bin, cluster, "consume", topic,
                               "--manifest", str(manifest)))
    assert_all_acknowledged_read_back(consumed, acknowledged=produced["produce"]["messages"])
