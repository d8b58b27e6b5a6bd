"""Followers copy their leaders' logs: every replica of a partition holds the leader's
batches byte for byte at the same offsets, a new leader after a SIGKILL serves what its
follower copy held, and a follower of a compacted leader keeps its gaps. ISR, high
watermark, acks=all, failover and truncation by leader epoch: test_failover.py."""

from clients import ck_produce, ck_producer, ck_read

TOPIC = "replicated"
PARTITIONS = 3
MESSAGES_PER_PARTITION = 34_000  # 102,000 in all, as the issue asks


def log_bytes(node, topic, partition):
    """The bytes a node's log of a partition holds: its segment files in order, without the
    zero-filled preallocated space at their ends."""
    directory = node.data_dir / "topics" / f"{topic}-{partition}"
    return b"".join(path.read_bytes().rstrip(b"\0") for path in sorted(directory.glob("*.log")))


def wait_identical(cluster, topic, partition, nodes, timeout_s=30.0):
    def same():
        copies = [log_bytes(n, topic, partition) for n in nodes]
        return copies[0] if copies[0] and all(c == copies[0] for c in copies) else None
    return cluster.wait_for(same, timeout_s, f"{topic}-{partition} identical on {nodes}")


def produce_all(cluster, topic):
    producer = ck_producer(cluster.nodes[0], acks="all")
    sent = {}
    for p in range(PARTITIONS):
        values = [f"{topic}-{p}-{i}".encode() for i in range(MESSAGES_PER_PARTITION)]
        reports = ck_produce(producer, topic, values, partition=p)
        assert [e for e, _, _ in reports] == [None] * len(values)
        sent[p] = values
    return sent


def test_every_replica_holds_the_leaders_batches_byte_for_byte(start_cluster):
    cluster = start_cluster(3)
    view = cluster.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    assert all(sorted(info["replicas"]) == [1, 2, 3] for info in view.values()), view
    produce_all(cluster, TOPIC)
    for p in range(PARTITIONS):
        data = wait_identical(cluster, TOPIC, p, cluster.nodes)
        assert len(data) > MESSAGES_PER_PARTITION * 10  # real data, not empty files


def test_a_new_leader_after_sigkill_serves_what_its_follower_copy_held(start_cluster):
    cluster = start_cluster(3)
    view = cluster.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    sent = produce_all(cluster, TOPIC)
    for p in range(PARTITIONS):
        wait_identical(cluster, TOPIC, p, cluster.nodes)
    old_leader = cluster.node(view[0]["leader"])
    old_leader.kill()
    survivors = [n for n in cluster.nodes if n is not old_leader]

    def moved():
        md = cluster.try_metadata(survivors[0], [TOPIC])
        leader = md and md["topics"][TOPIC]["partitions"][0]["leader"]
        return leader if leader not in (None, -1, old_leader.node_id) else None
    new_leader = cluster.node(cluster.wait_for(moved, 20, "partition 0 to get a new leader"))
    got = ck_read(new_leader, TOPIC, 0, 0, MESSAGES_PER_PARTITION)
    assert [value for _, _, value, _ in got] == sent[0]

    # More data on the new leader; the old leader comes back as a follower and catches up.
    producer = ck_producer(new_leader, acks="all")
    more = [f"after-{i}".encode() for i in range(100)]
    reports = ck_produce(producer, TOPIC, more, partition=0)
    assert [o for _, _, o in reports] == list(range(MESSAGES_PER_PARTITION,
                                                    MESSAGES_PER_PARTITION + 100))
    old_leader.start()
    cluster.wait_brokers({1, 2, 3}, timeout_s=20)
    wait_identical(cluster, TOPIC, 0, [new_leader, old_leader])
    got = ck_read(new_leader, TOPIC, 0, MESSAGES_PER_PARTITION, 100)
    assert [value for _, _, value, _ in got] == more


def test_a_follower_catches_up_across_a_compacted_leaders_gaps(start_cluster):
    """A follower down while its leader's cleaner removed records fetches batches with
    offset gaps between them when it returns; it keeps the leader's offsets (gaps
    included), rejoins the ISR, and once it leads, consumers read every key's latest value
    from it."""
    from test_compaction import CLEANER_ARGS, SMALL_SEGMENTS, read_table

    cluster = start_cluster(3, extra_args=CLEANER_ARGS)
    config = {**SMALL_SEGMENTS, "min.cleanable.dirty.ratio": "0.01"}
    cluster.create_topic("table", assignment={0: [1, 3, 2]}, config=config)
    leader, late = cluster.node(1), cluster.node(3)
    late.kill()
    producer = ck_producer(leader, acks="all", linger_ms=20)
    keys = [f"k{i:04}".encode() for i in range(2000)]
    for round_ in range(10):
        values = [f"v{round_}-{k.decode()}".encode() for k in keys]
        assert all(e is None for e, _, _ in ck_produce(producer, "table", values, keys=keys))
    want = {k: f"v9-{k.decode()}".encode() for k in keys}

    def cleaned():
        # Another key now and then rolls the active segment once it is older than
        # segment.ms, so the last rounds become cleanable too.
        ck_produce(producer, "table", [b"tick"], keys=[b"tick"])
        count, table = read_table(leader, "table")
        return count if count <= 2_500 else None
    cluster.wait_for(cleaned, 60, "the leader's cleaner to remove old values")
    want[b"tick"] = b"tick"

    late.start()

    def in_sync():
        md = cluster.try_metadata(leader, ["table"])
        return md and 3 in md["topics"]["table"]["partitions"][0]["isr"]
    cluster.wait_for(in_sync, 30, "broker 3 back in the ISR")
    assert "stops fetching" not in late.log_text()
    # Broker 3 is next in line: it leads once broker 1 is gone, and serves the table.
    leader.kill()

    def led_by_3():
        md = cluster.try_metadata(late, ["table"])
        return md and md["topics"]["table"]["partitions"][0]["leader"] == 3
    cluster.wait_for(led_by_3, 20, "broker 3 to lead")
    count, table = read_table(late, "table")
    assert table == want
    assert count < 20_001, "the follower copied the cleaned log, not every write"
