"""The cluster control plane end to end: three voters (and a broker-only fourth) of the real
binary (cluster.py), driven by librdkafka, kafka-python and raw wire requests.

What a cluster must do (Kafka's names): every broker lists every live broker and names the
quorum leader as controller; partitions get replicas on distinct brokers and leaders spread
evenly; a non-leader answers NOT_LEADER_OR_FOLLOWER and clients follow leaders; the quorum
elects a new leader after a SIGKILL and a killed node rejoins from its data dir; a broker
that stops heartbeating leaves Metadata and its partitions get other leaders; without a
majority, CreateTopics fails with a retriable error in bounded time while the survivors keep
serving; bad settings, a foreign data dir, a duplicate node id and bad bytes on the
controller port are refused. And a data dir of the single-node version opens unchanged.

Run: python3 -m pytest tests/test_cluster.py -q  (-s also shows the timings printed)
Short session timeout (1.5 s) and heartbeat (250 ms): see cluster.py.
"""

import collections
import re
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from kafka import KafkaAdminClient, KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

import wire
from broker_process import free_port
from cluster import ck_admin, ck_cluster_metadata, leaders
from clients import (RDKAFKA_LOGGER, ck_create_topic, ck_offsets, ck_produce, ck_producer,
                     ck_read)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
CLIENT_TIMEOUT_S = 30
ELECTION_DEADLINE_S = 10.0
# Short group timings, so a group consumer joins in well under a second.
GROUP_ARGS = ["--group-initial-rebalance-delay-ms", "300",
              "--group-min-session-timeout-ms", "1000"]


@pytest.fixture(scope="module")
def cluster(start_module_cluster):
    """Three voters the non-destructive tests of this module share."""
    return start_module_cluster(3, extra_args=GROUP_ARGS)


REPORT_PREFIX = "cluster timing"  # how `report` (conftest) labels this module's figures


# --- client helpers --------------------------------------------------------------------------
def kp_brokers(bootstrap):
    """kafka-python's broker list after bootstrapping from `bootstrap` (Metadata)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             request_timeout_ms=10000)
    try:
        consumer.bootstrap(timeout_ms=10000)
        return {b.node_id: (b.host, b.port) for b in consumer._cluster.brokers()}
    finally:
        consumer.close()


def ck_produce_keyed(bootstrap, topic, messages):
    """Produce {partition: [(key, value)]} with librdkafka bootstrapped at `bootstrap` only;
    returns {partition: [offset]} from the delivery reports (any error fails)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "logger": RDKAFKA_LOGGER})
    reports = collections.defaultdict(list)
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            reports[msg.partition()].append((msg.offset(), msg.key()))

    for p, items in messages.items():
        for key, value in items:
            producer.produce(topic, value, key=key, partition=p, on_delivery=on_delivery)
            producer.poll(0)
    assert producer.flush(CLIENT_TIMEOUT_S) == 0, "undelivered messages"
    assert not errors, errors
    return {p: [o for o, _ in sorted(r)] for p, r in reports.items()}


def ck_read_partitions(bootstrap, topic, partitions, count, timeout_s=CLIENT_TIMEOUT_S):
    """librdkafka consumer bootstrapped at `bootstrap`, assigned every partition from the
    beginning: {partition: [(offset, key, value)]} once `count` messages arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-assign-only",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                         "logger": RDKAFKA_LOGGER})
    out = collections.defaultdict(list)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout_s
        got = 0
        while got < count:
            assert time.monotonic() < deadline, f"read {got} of {count}: {dict(out)}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            out[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
            got += 1
        return dict(out)
    finally:
        consumer.close()


def kp_read_partitions(bootstrap, topic, partitions, count, timeout_s=CLIENT_TIMEOUT_S):
    """The same through kafka-python."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=100,
                             request_timeout_ms=15000)
    out = collections.defaultdict(list)
    try:
        tps = [KpTopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        got = 0
        while got < count:
            assert time.monotonic() < deadline, f"read {got} of {count}: {dict(out)}"
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    out[tp.partition].append((r.offset, r.key, r.value))
                    got += 1
        return dict(out)
    finally:
        consumer.close()


def replicas(parts):
    return {p: sorted(info["replicas"]) for p, info in parts.items()}


def create_error(bootstrap, topic):
    """The KafkaError with which librdkafka's CreateTopics of `topic` fails."""
    admin = ck_admin(bootstrap)
    future = admin.create_topics([topic], operation_timeout=10,
                                 request_timeout=CLIENT_TIMEOUT_S)[topic.topic]
    with pytest.raises(KafkaException) as raised:
        future.result(timeout=CLIENT_TIMEOUT_S)
    return raised.value.args[0]


# --- three nodes, nothing killed (one cluster for these tests) --------------------------------
def test_every_client_sees_the_three_brokers_from_any_bootstrap(cluster, report):
    report(f"3 voters: spawn to every node listening {cluster.listening_s:.2f}s, "
           f"to every node serving (all brokers listed, one controller) "
           f"{cluster.serving_s:.2f}s")
    expected = {n.node_id: n.address for n in cluster.nodes}
    controller = cluster.controller_id()
    assert controller in expected
    cluster_ids = set()
    for node in cluster.nodes:
        md = cluster.metadata(node)
        assert md["brokers"] == expected, f"asked node {node.node_id}"
        assert md["controller_id"] == controller, f"asked node {node.node_id}"
        cluster_ids.add(md["cluster_id"])
        brokers, ck_controller, _ = ck_cluster_metadata(node.bootstrap)
        assert brokers == expected, f"librdkafka bootstrapped at node {node.node_id}"
        assert ck_controller == controller
        assert kp_brokers(node.bootstrap) == expected, f"kafka-python at node {node.node_id}"
    assert len(cluster_ids) == 1 and None not in cluster_ids and "" not in cluster_ids


def test_twelve_partitions_three_replicas_leaders_spread_and_clients_follow_leaders(cluster):
    topic = "spread"
    parts = cluster.create_topic(topic, partitions=12, replication_factor=3)
    for node in cluster.nodes:  # every node tells the same placement
        view = cluster.wait_topic(topic, 12, nodes=[node])
        assert replicas(view) == replicas(parts) and leaders(view) == leaders(parts)
    for p, info in parts.items():
        assert sorted(info["replicas"]) == [1, 2, 3], f"partition {p}: {info}"
        assert info["leader"] in info["replicas"]
        # Until replication lands the ISR is the leader alone; later, a subset of replicas.
        assert info["leader"] in info["isr"] and set(info["isr"]) <= set(info["replicas"])
    assert collections.Counter(leaders(parts).values()) == {1: 4, 2: 4, 3: 4}, leaders(parts)

    sent = {p: [(f"k{p}-{i}".encode(), f"v{p}-{i}".encode()) for i in range(5)]
            for p in range(12)}
    # Bootstrapped at one node, librdkafka sends each partition's batches to its leader.
    offsets = ck_produce_keyed(cluster.nodes[0].bootstrap, topic, sent)
    assert offsets == {p: [0, 1, 2, 3, 4] for p in range(12)}
    expected = {p: [(i, k, v) for i, (k, v) in enumerate(items)] for p, items in sent.items()}
    assert ck_read_partitions(cluster.nodes[1].bootstrap, topic, range(12), 60) == expected
    assert kp_read_partitions(cluster.nodes[2].bootstrap, topic, range(12), 60) == expected
    # Each partition's messages are on its leader.
    for p, info in parts.items():
        with wire.Conn(cluster.node(info["leader"]).address) as conn:
            error, hw, batches = wire.fetch(conn, topic, p, 0)
        assert (error, hw) == (wire.NONE, 5)
        assert [v for b in batches for v in b["values"]] == [v for _, v in sent[p]]


def test_produce_fetch_and_list_offsets_to_a_non_leader_get_not_leader_or_follower(cluster):
    three = cluster.create_topic("three-replicas", partitions=3, replication_factor=3)
    one = cluster.create_topic("one-replica", partitions=3, replication_factor=1)
    for topic, parts in (("three-replicas", three), ("one-replica", one)):
        for p, info in parts.items():
            leader = cluster.node(info["leader"])
            for other in cluster.others(leader):
                where = f"{topic}/{p} asked of node {other.node_id} (leader {leader.node_id})"
                with wire.Conn(other.address) as conn:
                    answer = wire.produce(conn, topic, {p: wire.record_batch([b"wrong node"])},
                                          acks=-1)
                    assert answer[p][0] == wire.NOT_LEADER_OR_FOLLOWER, (where, answer)
                    error, _, _ = wire.fetch(conn, topic, p, 0)
                    assert error == wire.NOT_LEADER_OR_FOLLOWER, (where, error)
                    error, _ = wire.list_offset(conn, topic, p, -1)
                    assert error == wire.NOT_LEADER_OR_FOLLOWER, (where, error)
            with wire.Conn(leader.address) as conn:
                answer = wire.produce(conn, topic, {p: wire.record_batch([b"leader"])}, acks=-1)
                assert answer == {p: (wire.NONE, 0)}, answer
                error, hw, batches = wire.fetch(conn, topic, p, 0)
            # Nothing of the refused produces was stored anywhere.
            assert (error, hw) == (wire.NONE, 1)
            assert [v for b in batches for v in b["values"]] == [b"leader"]


def test_replication_factor_above_the_broker_count_is_refused(cluster):
    error = create_error(cluster.bootstrap, NewTopic("too-many", num_partitions=3,
                                                     replication_factor=4))
    assert error.code() == KafkaError.INVALID_REPLICATION_FACTOR, error
    with wire.Conn(cluster.controller().address) as conn:
        answer = wire.create_topics(conn, [("too-many", 3, 4)])
    assert answer["too-many"][0] == wire.INVALID_REPLICATION_FACTOR, answer
    for node in cluster.nodes:
        md = cluster.metadata(node, ["too-many"])
        assert md["topics"]["too-many"]["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, md


def test_create_partitions_places_new_partitions_automatically_or_as_assigned(cluster):
    from confluent_kafka.admin import NewPartitions
    cluster.create_topic("grown", partitions=2, replication_factor=2)
    admin = ck_admin(cluster.bootstrap)
    admin.create_partitions([NewPartitions("grown", 4)])["grown"].result(timeout=20)
    view = cluster.wait_topic("grown", 4)
    assert all(len(info["replicas"]) == 2 for info in view.values()), view
    admin.create_partitions([NewPartitions("grown", 6, replica_assignment=[[3, 1], [2, 3]])])[
        "grown"].result(timeout=20)
    view = cluster.wait_topic("grown", 6)
    assert (view[4]["replicas"], view[4]["leader"]) == ([3, 1], 3), view
    assert (view[5]["replicas"], view[5]["leader"]) == ([2, 3], 2), view
    # Kafka's rule: the new partitions keep the topic's replication factor.
    with pytest.raises(KafkaException) as refused:
        admin.create_partitions([NewPartitions("grown", 7, replica_assignment=[[1]])])[
            "grown"].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert len(cluster.metadata(topics=["grown"])["topics"]["grown"]["partitions"]) == 6


def test_describe_cluster_lists_the_three_brokers_and_the_controller(cluster):
    expected = {n.node_id: n.address for n in cluster.nodes}
    md = cluster.metadata()
    for node in cluster.nodes:
        with wire.Conn(node.address) as conn:
            _, versions = wire.api_versions(conn)
            assert wire.API_DESCRIBE_CLUSTER in versions, "ApiVersions lacks DescribeCluster"
            low, high = versions[wire.API_DESCRIBE_CLUSTER]
            for version in range(low, min(high, 2) + 1):  # every version it has, up to v2
                described = wire.describe_cluster(conn, version)
                assert described.pop("fenced", []) == [], (version, described)
                assert described == {"error": wire.NONE, "error_message": None,
                                     "cluster_id": md["cluster_id"],
                                     "controller_id": md["controller_id"],
                                     "brokers": expected}, version
        admin = ck_admin(node.bootstrap)
        result = admin.describe_cluster(request_timeout=10).result(timeout=CLIENT_TIMEOUT_S)
        assert {n.id: (n.host, n.port) for n in result.nodes} == expected
        assert result.controller.id == md["controller_id"]
        assert result.cluster_id == md["cluster_id"]
        kp_admin = KafkaAdminClient(bootstrap_servers=node.bootstrap, request_timeout_ms=10000)
        try:
            kp = kp_admin.describe_cluster()
        finally:
            kp_admin.close()
        assert {b["broker_id"]: (b["host"], b["port"]) for b in kp["brokers"]} == expected
        assert kp["controller_id"] == md["controller_id"]


def test_a_group_has_one_coordinator_and_the_other_brokers_answer_not_coordinator(cluster):
    for group in ("g-a", "g-b", "g-c", "g-d"):  # the same answer from every broker
        answers = set()
        for node in cluster.nodes:
            with wire.Conn(node.address) as conn:
                error, node_id, host, port = wire.find_coordinator(conn, group)
            assert error == wire.NONE
            answers.add((node_id, host, port))
        assert len(answers) == 1, f"{group}: {answers}"
        (coordinator, host, port), = answers
        assert cluster.node(coordinator).address == (host, port)
        for node in cluster.others(coordinator):
            with wire.Conn(node.address) as conn:
                assert wire.heartbeat(conn, group) == wire.NOT_COORDINATOR, node
        with wire.Conn(cluster.node(coordinator).address) as conn:
            assert wire.heartbeat(conn, group) != wire.NOT_COORDINATOR

    # A librdkafka group member bootstrapped at a broker that is not the coordinator finds
    # it, consumes everything and commits; the commits are read back through another one.
    topic, group = "grouped", "cluster-group"
    cluster.create_topic(topic, partitions=6, replication_factor=3)
    with wire.Conn(cluster.nodes[0].address) as conn:
        coordinator = wire.find_coordinator(conn, group)[1]
    elsewhere = cluster.others(coordinator)
    sent = {p: [(None, f"g{p}-{i}".encode()) for i in range(10)] for p in range(6)}
    ck_produce_keyed(elsewhere[0].bootstrap, topic, sent)
    consumer = Consumer({"bootstrap.servers": elsewhere[0].bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "logger": RDKAFKA_LOGGER})
    seen = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(seen) < 60:
            assert time.monotonic() < deadline, f"consumed {len(seen)} of 60"
            for m in consumer.consume(100, 0.5):
                assert m.error() is None, m.error()
                seen.append(m.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert sorted(seen) == sorted(v for items in sent.values() for _, v in items)
    reader = Consumer({"bootstrap.servers": elsewhere[-1].bootstrap, "group.id": group,
                       "logger": RDKAFKA_LOGGER})
    try:
        committed = reader.committed([TopicPartition(topic, p) for p in range(6)],
                                     timeout=CLIENT_TIMEOUT_S)
    finally:
        reader.close()
    assert [tp.offset for tp in committed] == [10] * 6


# --- failures ---------------------------------------------------------------------------------
def test_sigkill_of_the_quorum_leader_elects_another_and_the_old_one_rejoins(start_cluster,
                                                                            report):
    cluster = start_cluster(3)
    before = cluster.create_topic("before", partitions=6, replication_factor=3)
    old = cluster.controller()
    port, controller_port, data_dir = old.port, old.controller_port, old.data_dir

    old.kill()
    killed_at = time.monotonic()
    new = cluster.wait_new_controller(old.node_id, timeout_s=ELECTION_DEADLINE_S)
    elected_s = time.monotonic() - killed_at
    report(f"SIGKILL of quorum leader {old.node_id}: node {new} is controller after "
           f"{elected_s:.2f}s")
    assert cluster.node(new).is_voter and cluster.node(new).is_running()
    # The new quorum takes metadata changes (RF 2: two brokers are certainly alive).
    after = cluster.create_topic("after", partitions=4, replication_factor=2)
    created_s = time.monotonic() - killed_at
    report(f"first topic created {created_s:.2f}s after the SIGKILL")

    old.start()  # the same ports and data dir; it replays and rejoins
    assert (old.port, old.controller_port, old.data_dir) == (port, controller_port, data_dir)
    cluster.wait_brokers({1, 2, 3}, timeout_s=10)
    # Asked directly, the restarted node knows both topics with the same placement.
    for name, parts in (("before", before), ("after", after)):
        view = cluster.wait_topic(name, len(parts), nodes=[old], timeout_s=10)
        assert replicas(view) == replicas(parts), name
    cluster.wait_serving(10)
    cluster.create_topic("rejoined", partitions=3, replication_factor=3)


def test_a_whole_cluster_restart_keeps_topics_and_placement(start_cluster, report):
    cluster = start_cluster(3)
    parts = cluster.create_topic("kept", partitions=6, replication_factor=3)
    ck_produce_keyed(cluster.bootstrap, "kept", {p: [(None, b"before restart")] for p in parts})
    cluster.stop()  # SIGTERM to all three at once; each exits 0
    cluster.start()
    report(f"3 voters restarted: spawn to every node serving {cluster.serving_s:.2f}s")
    for node in cluster.nodes:
        view = cluster.wait_topic("kept", 6, nodes=[node], timeout_s=10)
        assert replicas(view) == replicas(parts)
    got = ck_read_partitions(cluster.nodes[0].bootstrap, "kept", range(6), 6)
    assert {p: [v for _, _, v in items] for p, items in got.items()} == {
        p: [b"before restart"] for p in range(6)}


def test_a_broker_only_node_registers_and_gets_replicas(start_cluster):
    cluster = start_cluster(3)
    four = cluster.add_broker()
    assert four.node_id == 4 and not four.is_voter
    cluster.wait_brokers({1, 2, 3, 4}, timeout_s=10)  # asked of every node, the new one too
    assert cluster.wait_serving(10) in (1, 2, 3), "a broker-only node is never controller"

    wide = cluster.create_topic("wide", partitions=8, replication_factor=4)
    assert all(sorted(info["replicas"]) == [1, 2, 3, 4] for info in wide.values()), wide
    assert collections.Counter(leaders(wide).values()) == {1: 2, 2: 2, 3: 2, 4: 2}

    # Kafka's rule: every partition of a manual assignment has as many replicas.
    placed = cluster.create_topic("placed", assignment={0: [4, 2], 1: [1, 4]})
    assert placed[0]["replicas"] == [4, 2] and placed[0]["leader"] == 4, placed
    assert placed[1]["replicas"] == [1, 4] and placed[1]["leader"] == 1, placed
    # A client bootstrapped at node 1 produces to node 4's partition; read through node 2.
    producer = ck_producer(cluster.nodes[0])
    [(err, _, offset)] = ck_produce(producer, "placed", [b"on four"], partition=0)
    assert (err, offset) == (None, 0)
    assert [m[2] for m in ck_read(cluster.nodes[1], "placed", 0, 0, 1)] == [b"on four"]
    with wire.Conn(four.address) as conn:
        error, hw, batches = wire.fetch(conn, "placed", 0, 0)
    assert (error, hw, [v for b in batches for v in b["values"]]) == (wire.NONE, 1, [b"on four"])


def test_a_killed_broker_leaves_metadata_after_the_session_timeout_and_its_partitions_move(
        start_cluster, report):
    cluster = start_cluster(3)
    parts = cluster.create_topic("moving", partitions=6, replication_factor=3)
    controller = cluster.controller_id()
    victim = next(n for n in cluster.nodes if n.node_id != controller)  # the quorum stays
    led = {p: info["leader_epoch"] for p, info in parts.items()
           if info["leader"] == victim.node_id}
    kept = {p: info["leader"] for p, info in parts.items() if p not in led}
    assert len(led) == 2, leaders(parts)

    victim.kill()
    killed_at = time.monotonic()
    survivors = cluster.others(victim)
    cluster.wait_brokers({n.node_id for n in survivors}, nodes=survivors,
                         timeout_s=cluster.session_timeout_ms / 1000 + 10)
    gone_s = time.monotonic() - killed_at

    def moved(view):
        return all(view[p]["leader"] not in (victim.node_id, -1)
                   and view[p]["leader_epoch"] > epoch for p, epoch in led.items())
    view = cluster.wait_topic("moving", 6, nodes=survivors, condition=moved, timeout_s=10)
    moved_s = time.monotonic() - killed_at
    report(f"SIGKILL of broker {victim.node_id} (session timeout "
           f"{cluster.session_timeout_ms} ms): gone from Metadata after {gone_s:.2f}s, "
           f"its partitions led elsewhere after {moved_s:.2f}s")
    assert {p: view[p]["leader"] for p in kept} == kept, "partitions it did not lead moved"
    # Clients follow the new leaders.
    offsets = ck_produce_keyed(survivors[0].bootstrap, "moving",
                               {p: [(None, b"after the move")] for p in range(6)})
    assert sorted(offsets) == list(range(6))

    victim.start()
    cluster.wait_brokers({1, 2, 3}, timeout_s=10)
    cluster.wait_serving(10)


@pytest.mark.parametrize("survivor_role", ["quorum-leader", "follower"])
def test_with_a_majority_down_create_topics_fails_retriably_and_the_survivor_serves(
        start_cluster, report, survivor_role):
    cluster = start_cluster(3)
    pinned = cluster.create_topic("pinned", partitions=3, replication_factor=1)
    assert sorted(leaders(pinned).values()) == [1, 2, 3], "one partition led by each node"
    controller = cluster.controller_id()
    survivor = (cluster.node(controller) if survivor_role == "quorum-leader"
                else cluster.others(controller)[0])
    own = next(p for p, leader in leaders(pinned).items() if leader == survivor.node_id)
    down = cluster.others(survivor)
    for node in down:
        node.kill()

    with wire.Conn(survivor.address, timeout_s=60) as conn:
        started = time.monotonic()
        answer = wire.create_topics(conn, [("during-outage", 1, 1)], timeout_ms=5000)
        answered_s = time.monotonic() - started
    report(f"majority down ({survivor_role} survives): CreateTopics answered "
           f"{answer['during-outage']} after {answered_s:.2f}s")
    assert answer["during-outage"][0] in (wire.REQUEST_TIMED_OUT, wire.NOT_CONTROLLER), answer
    assert answered_s < 30
    # The survivor keeps serving Metadata, and its own partition.
    md = cluster.metadata(survivor, ["pinned", "during-outage"])
    assert md["topics"]["pinned"]["error"] == wire.NONE
    assert md["topics"]["during-outage"]["error"] != wire.NONE, "created without a quorum"
    with wire.Conn(survivor.address) as conn:
        answer = wire.produce(conn, "pinned", {own: wire.record_batch([b"no quorum"])}, acks=-1)
        assert answer == {own: (wire.NONE, 0)}, answer
        error, hw, batches = wire.fetch(conn, "pinned", own, 0)
    assert (error, hw, [v for b in batches for v in b["values"]]) == (wire.NONE, 1, [b"no quorum"])

    cluster.start_nodes(down)  # the majority is back: metadata changes again
    cluster.wait_serving()
    cluster.create_topic("after-outage", partitions=3, replication_factor=3)


# --- refused starts -----------------------------------------------------------------------
def run_briefly(shardlog_bin, tmp_path, *args):
    return subprocess.run([str(shardlog_bin), "--data-dir", str(tmp_path / "data"),
                           "--cores", "1", "--listen", f"127.0.0.1:{free_port()}", *args],
                          capture_output=True, timeout=20, stdin=subprocess.DEVNULL)


def names_setting(text, setting):
    """The message names the setting, as a flag (controller-listen) or a key
    (controller_listen)."""
    return setting in text or setting.replace("-", "_") in text


@pytest.mark.parametrize("voters", [
    "1@nohost",                       # no port
    "x@127.0.0.1:1",                  # the id is not a number
    "127.0.0.1:1",                    # no id
    "1@127.0.0.1:notaport",
    "1@127.0.0.1:70000",              # the port is out of range
    "1@127.0.0.1:1,1@127.0.0.1:2",    # one id twice
])
def test_a_malformed_voter_list_is_refused_naming_the_setting(shardlog_bin, tmp_path, voters):
    proc = run_briefly(shardlog_bin, tmp_path, "--node-id", "1",
                       "--controller-listen", f"127.0.0.1:{free_port()}",
                       "--controller-quorum-voters", voters)
    stderr = proc.stderr.decode()
    assert proc.returncode != 0, stderr
    assert names_setting(stderr, "controller-quorum-voters"), stderr
    assert "listening on" not in stderr


def test_a_voter_without_a_controller_listen_address_is_refused(shardlog_bin, tmp_path):
    proc = run_briefly(shardlog_bin, tmp_path, "--node-id", "1",
                       "--controller-quorum-voters", f"1@127.0.0.1:{free_port()}")
    stderr = proc.stderr.decode()
    assert proc.returncode != 0, stderr
    assert names_setting(stderr, "controller-listen"), stderr
    assert "listening on" not in stderr


CLUSTER_ID_PHRASE = re.compile(r"cluster[ _-]?id", re.IGNORECASE)


def test_a_node_on_another_clusters_data_dir_refuses_to_start(start_cluster):
    cluster = start_cluster(3)
    # One-node clusters whose voters have the ids a node of ours will have: only the
    # cluster id tells their data dirs apart from ours.
    other3 = start_cluster(1, name="other3", first_id=3)
    other4 = start_cluster(1, name="other4", first_id=4)
    ours = cluster.metadata()["cluster_id"]
    theirs = {other3.metadata()["cluster_id"], other4.metadata()["cluster_id"]}
    assert ours and all(theirs) and ours not in theirs, "each cluster has an id of its own"
    other3.stop()
    other4.stop()

    def refused_naming_the_cluster_id(node):
        node.expect_refused_start(timeout_s=20)
        log = node.run_log()
        assert CLUSTER_ID_PHRASE.search(log), log
        assert ours in log or any(t in log for t in theirs), log

    # A broker-only node 4 of ours on other4's node 4 data dir.
    intruder = cluster.add_broker(name="intruder", data_dir=other4.nodes[0].data_dir,
                                  start=False)
    assert intruder.node_id == 4
    refused_naming_the_cluster_id(intruder)
    assert set(cluster.metadata()["brokers"]) == {1, 2, 3}

    # Our voter 3 restarted on other3's voter 3 data dir: refused too; the quorum goes on.
    voter = cluster.node(3)
    voter.stop()
    own_dir, voter.data_dir = voter.data_dir, other3.nodes[0].data_dir
    refused_naming_the_cluster_id(voter)
    # If voter 3 led the quorum, Metadata names it until the others notice its silence
    # (at most an election timeout); librdkafka's admin client would wait on it until its
    # timeout without asking again, so wait for a live controller first.
    running = {n.node_id for n in cluster.running()}
    cluster.wait_for(lambda: cluster.controller_id() in running, 10, "a live controller")
    cluster.create_topic("still-ours", partitions=2, replication_factor=2)
    voter.data_dir = own_dir
    voter.start()
    cluster.wait_serving(10)
    assert cluster.metadata(voter)["cluster_id"] == ours


DUPLICATE_PHRASE = re.compile(r"duplicate|already registered", re.IGNORECASE)


def test_a_second_process_with_a_live_node_id_never_serves(start_cluster):
    cluster = start_cluster(3)
    four = cluster.add_broker()
    cluster.wait_brokers({1, 2, 3, 4}, timeout_s=10)
    up_at = time.monotonic()
    twin = cluster.add_broker(node_id=4, name="twin-n4", start=False)  # own ports and dir
    twin.spawn()

    cluster.wait_for(lambda: DUPLICATE_PHRASE.search(twin.run_log()) or not twin.is_running(),
                     10, "the second node 4 to log why it cannot register")
    assert twin.is_running(), f"it keeps retrying instead of exiting:\n{twin.run_log()}"
    # Bounded watch: 5 s after the first node 4 was up, the twin still does not serve.
    cluster.wait_for(lambda: "listening on" in twin.run_log()
                     or time.monotonic() - up_at >= 5, 10, "5 s to pass")
    assert "listening on" not in twin.run_log(), twin.run_log()
    assert twin.is_running()
    assert DUPLICATE_PHRASE.search(twin.run_log())
    for node in cluster.others(twin):
        assert cluster.metadata(node)["brokers"][4] == four.address, "node 4 was taken over"
    twin.stop()  # SIGTERM while retrying: exit 0
    assert cluster.metadata(four)["brokers"][4] == four.address


# --- the controller port ------------------------------------------------------------------
BAD_CONTROLLER_INPUT = [
    # (what, bytes, then close our writing side)
    ("garbage", b"\xff" * 64, False),                       # length prefix 0xffffffff
    ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("a frame that does not decode", wire.i32(16) + b"\xff" * 16, False),
    ("a truncated frame", wire.i32(100) + b"\x01" * 10, True),
    ("an oversized length prefix", wire.i32(0x7FFFFFFF) + b"\x01" * 16, False),
]


def test_bad_bytes_on_the_controller_port_close_that_connection_and_the_node_serves_on(
        start_cluster):
    cluster = start_cluster(3)
    leader = cluster.controller()
    follower = cluster.others(leader)[0]
    for node in (leader, follower):
        for what, data, half_close in BAD_CONTROLLER_INPUT:
            with wire.Conn(node.controller_address) as conn:
                conn.send_raw(data)
                if half_close:
                    conn.sock.shutdown(socket.SHUT_WR)
                assert conn.closed_by_peer(timeout_s=10, drop_data=True), \
                    f"node {node.node_id} kept a connection open after {what}"
            assert node.is_running(), f"node {node.node_id} died of {what}"
    # A peer that stalls mid-frame does not hold the quorum up.
    with wire.Conn(leader.controller_address) as stalled:
        stalled.send_raw(wire.i32(100) + b"\x01" * 10)
        cluster.wait_serving(10)
        cluster.create_topic("after-bad-input", partitions=3, replication_factor=3)
        for node in cluster.nodes:
            assert "after-bad-input" in cluster.metadata(node)["topics"]


# --- the single-node data dir of the version before the cluster -----------------------------
def load_fixture_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_single_node_v1", FIXTURES / "make_single_node_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_single_node_data_dir_opens_unchanged(start_broker, tmp_path):
    v1 = load_fixture_module()
    with tarfile.open(v1.ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    data_dir = tmp_path / v1.DATA_DIR_NAME
    # The fixture's messages have fixed, old timestamps: no time retention here.
    broker = start_broker(name="upgraded", data_dir=data_dir, args=["--retention-ms", "-1"])

    def check(extra):
        """Everything the old version wrote is there, plus the values `extra` (no key) at
        the end of legacy/0."""
        with wire.Conn(broker.address) as conn:
            md = wire.metadata_v7(conn)
        assert md["brokers"] == {0: broker.address} and md["controller_id"] == 0, md
        legacy = md["topics"][v1.TOPIC]
        assert legacy["error"] == wire.NONE
        assert {p: (i["leader"], i["replicas"]) for p, i in legacy["partitions"].items()} == {
            p: (0, [0]) for p in range(v1.PARTITIONS)}
        for p, messages in v1.expected_messages().items():
            added = extra if p == 0 else []
            got = ck_read(broker, v1.TOPIC, p, 0, len(messages) + len(added))
            assert got[:len(messages)] == [(n, key, value, ts)
                                           for n, (key, value, ts) in enumerate(messages)], p
            assert [(o, k, v) for o, k, v, _ in got[len(messages):]] == [
                (len(messages) + i, None, v) for i, v in enumerate(added)]
            assert ck_offsets(broker, v1.TOPIC, p) == (0, len(messages) + len(added))
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": v1.GROUP,
                             "logger": RDKAFKA_LOGGER})
        try:
            got = consumer.committed([TopicPartition(v1.TOPIC, p) for p in range(v1.PARTITIONS)],
                                     timeout=CLIENT_TIMEOUT_S)
        finally:
            consumer.close()
        assert {tp.partition: (tp.offset, tp.metadata) for tp in got} == v1.expected_commits()

    check([])
    # The upgraded broker writes on: to the old topic and to a new one.
    producer = ck_producer(broker)
    [(err, _, offset)] = ck_produce(producer, v1.TOPIC, [b"after upgrade"], partition=0)
    assert (err, offset) == (None, v1.MESSAGES // v1.PARTITIONS)
    ck_create_topic(broker, "after-upgrade", partitions=2)
    [(err, _, offset)] = ck_produce(producer, "after-upgrade", [b"new"], partition=1)
    assert (err, offset) == (None, 0)
    # And reads it all back after a restart.
    broker.restart()
    check([b"after upgrade"])
    assert [m[2] for m in ck_read(broker, "after-upgrade", 1, 0, 1)] == [b"new"]
    # The old per-shard offsets logs were imported once, then set aside (kept, renamed).
    assert not (data_dir / "__consumer_offsets").exists()
    assert (data_dir / "__consumer_offsets.imported").is_dir()


def test_old_single_node_data_dir_with_a_damaged_catalog_is_refused(start_broker, tmp_path):
    """The catalog.bin of a single-node data dir becomes the cluster's first record: a
    damaged one stops the start, and is left as it was (never replaced by an empty one)."""
    v1 = load_fixture_module()
    with tarfile.open(v1.ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    data_dir = tmp_path / v1.DATA_DIR_NAME
    catalog = data_dir / "catalog.bin"
    raw = bytearray(catalog.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    catalog.write_bytes(bytes(raw))
    fleet = start_broker.__self__  # the fixture's Fleet: a broker it tracks, not started
    broker = fleet.new(name="damaged", data_dir=data_dir)
    broker.expect_refused_start()
    log = broker.run_log()
    assert "catalog" in log and "damaged" in log and "refusing to start" in log, log
    assert catalog.read_bytes() == bytes(raw)
