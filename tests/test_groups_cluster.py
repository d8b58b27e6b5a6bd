"""Consumer groups survive a broker loss (issue 12): committed offsets live in the
replicated internal topic __consumer_offsets, a group's coordinator is the leader of
partition abs(javaHash(group)) % partitions, and moves with it."""

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

import wire
from clients import ck_produce, ck_producer

OFFSETS_PARTITIONS = 5
GROUP_ARGS = ["--offsets-topic-num-partitions", str(OFFSETS_PARTITIONS),
              "--group-min-session-timeout-ms", "1000",
              "--group-initial-rebalance-delay-ms", "0"]
SESSION_TIMEOUT_MS = 6000
wire_invalid_topic = 17  # INVALID_TOPIC_EXCEPTION


def java_hash(text):
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (h * 31 + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition(group):
    h = java_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % OFFSETS_PARTITIONS


def find_coordinator(node, group):
    with wire.Conn(node.address) as conn:
        return wire.find_coordinator(conn, group)


def wait_coordinator(cluster, nodes, group, timeout_s=30):
    """The coordinator every node in `nodes` names, once they all agree."""
    def agreed():
        answers = {find_coordinator(n, group) for n in nodes}
        if len(answers) == 1:
            error, node_id, _, _ = answers.pop()
            return node_id if error == 0 else None
        return None
    return cluster.wait_for(agreed, timeout_s, f"brokers to agree on {group}'s coordinator")


def consumer(cluster, group):
    return Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": SESSION_TIMEOUT_MS,
                     "heartbeat.interval.ms": 500, "topic.metadata.refresh.interval.ms": 1000})


def poll_values(c, count, timeout_s):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append((m.partition(), m.offset(), m.value()))
    return got


def test_find_coordinator_answers_agree_and_name_the_offsets_partitions_leader(start_cluster):
    cluster = start_cluster(3, extra_args=GROUP_ARGS)
    groups = ["orders", "billing", "g-3", "polygenelubricants"]
    for group in groups:
        coordinator = wait_coordinator(cluster, cluster.nodes, group)
        md = cluster.metadata(topics=["__consumer_offsets"])
        offsets = md["topics"]["__consumer_offsets"]["partitions"]
        assert len(offsets) == OFFSETS_PARTITIONS
        assert coordinator == offsets[offsets_partition(group)]["leader"], group
        assert sorted(offsets[0]["replicas"]) == [1, 2, 3], "replication factor 3"
    # Internal: Metadata v1 marks it, clients cannot produce to it or delete it.
    with wire.Conn(cluster.nodes[0].address) as conn:
        batch = wire.record_batch([b"x"])
        assert wire.produce(conn, "__consumer_offsets", {0: batch}) == {
            0: (wire_invalid_topic, -1)}
        r = conn.request(wire.API_METADATA, 1, wire.array([wire.string("__consumer_offsets")]))
        r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
        r.i32()
        topics = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.array(
            lambda r: (r.i16(), r.i32(), r.i32(), r.array(wire.Reader.i32),
                       r.array(wire.Reader.i32)))))
        assert [(name, internal) for _, name, internal, _ in topics] == [
            ("__consumer_offsets", 1)]


def test_a_group_resumes_from_its_commits_after_its_coordinator_is_killed(start_cluster):
    cluster = start_cluster(3, extra_args=GROUP_ARGS)
    topic, group = "failover-orders", "failover-group"
    cluster.create_topic(topic, partitions=2, replication_factor=3)
    producer = ck_producer(cluster.nodes[0], acks="all")
    sent = {}
    for p in range(2):
        values = [f"{p}-{i}".encode() for i in range(100)]
        assert [e for e, _, _ in ck_produce(producer, topic, values, partition=p)] == [None] * 100
        sent[p] = values

    c = consumer(cluster, group)
    c.subscribe([topic])
    first = poll_values(c, 100, 60)
    assert len(first) == 100
    c.commit(asynchronous=False)
    # A partition nothing was read from has no commit (-1001): it resumes at the earliest.
    committed = {tp.partition: max(tp.offset, 0) for tp in c.committed(
        [TopicPartition(topic, p) for p in range(2)], timeout=10)}
    assert sum(committed.values()) == 100

    coordinator = wait_coordinator(cluster, cluster.nodes, group)
    victim = cluster.node(coordinator)
    victim.kill()
    survivors = [n for n in cluster.nodes if n is not victim]
    killed_at = time.monotonic()

    # The consumer goes on: its commits now go to the new coordinator, which does not know
    # its member id (membership is not persisted), so it rejoins and resumes from the
    # commits it made before the kill. It may read again what it read after them, never
    # what came before them, and skips nothing.
    rest = []
    resumed_after = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rest += poll_values(c, 1, 0.5)
        positions = c.position([TopicPartition(topic, p) for p in range(2)])
        # A partition read to its end before the kill has no position after a rejoin.
        if all(tp.offset == 100 or (tp.offset < 0 and committed[tp.partition] == 100)
               for tp in positions):
            try:
                c.commit(asynchronous=False)
                resumed_after = time.monotonic() - killed_at
                break
            except KafkaException:
                continue  # rejoining; what was read since the commit comes again
    assert resumed_after is not None, "the group never committed at the new coordinator"
    assert all(o >= committed[p] for p, o, _ in rest), "read again before its commit"
    assert {(p, o) for p, o, _ in rest} == {
        (p, o) for p in range(2) for o in range(committed[p], 100)}, "skipped messages"
    for p, o, value in first + rest:
        assert sent[p][o] == value
    new_coordinator = wait_coordinator(cluster, survivors, group)
    assert new_coordinator != coordinator
    assert resumed_after < 30, f"resumed {resumed_after:.1f} s after the kill"
    c.close()

    # A new member of the group starts from the final commits: nothing left to read.
    late = consumer(cluster, group)
    got = late.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)
    assert {tp.partition: tp.offset for tp in got} == {0: 100, 1: 100}
    late.close()
