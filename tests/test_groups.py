"""Consumer groups and committed offsets, end to end: the real broker binary driven by real
clients (confluent-kafka / librdkafka, kafka-python, kcat -G).

Run: python3 -m pytest tests/test_groups.py -v (against the release build, see README.md)
Group joins take a while: every wait is on a condition with a generous deadline.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_process import wait_until

HERE = Path(__file__).resolve().parent
JOIN_DEADLINE_S = 60
# Short group timings so rebalances take well under a second.
GROUP_MIN_SESSION_TIMEOUT_MS = 1000
GROUP_INITIAL_REBALANCE_DELAY_MS = 300


def group_broker_args(initial_rebalance_delay_ms=GROUP_INITIAL_REBALANCE_DELAY_MS):
    return ["--num-partitions", "1",
            "--group-min-session-timeout-ms", str(GROUP_MIN_SESSION_TIMEOUT_MS),
            "--group-initial-rebalance-delay-ms", str(initial_rebalance_delay_ms)]


@pytest.fixture
def start_group_broker(start_broker):
    """start_broker with the group tests' settings: two shards, short group timings."""
    def start(cores=2, args=(), **kwargs):
        return start_broker(cores=cores, args=[*group_broker_args(), *args], **kwargs)
    return start


@pytest.fixture
def broker(start_group_broker):
    return start_group_broker()


def create_topic(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)


def produce(bootstrap, topic, values, partitions):
    """Produce each value (a string) round-robin over the partitions; wait for every ack."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        producer.produce(topic, v.encode(), partition=i % partitions)
        if i % 10_000 == 9_999:
            producer.poll(0)
    assert producer.flush(60) == 0, "unacknowledged messages"


class ConsumerProcess:
    """One consumer (groups_consumer.py) in its own process."""

    def __init__(self, client, bootstrap, group, topic, directory, name, instance_id=None, assignor=None):
        self.prefix = str(Path(directory) / name)
        self.name = name
        env = dict(os.environ, **({"GROUPS_TEST_ASSIGNOR": assignor} if assignor else {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "groups_consumer.py"), client, bootstrap, group, topic, self.prefix]
            + ([instance_id] if instance_id else []),
            stderr=open(self.prefix + ".stderr", "a"),
            env=env,
        )

    def assignment(self):
        try:
            text = open(self.prefix + ".assign").read().strip()
        except FileNotFoundError:
            return None
        return [int(p) for p in text.split(",")] if text else []

    def assignment_changes(self):
        try:
            return open(self.prefix + ".assign.log").read().splitlines()
        except FileNotFoundError:
            return []

    def messages(self):
        """(partition, offset, value) of every message consumed so far."""
        try:
            lines = open(self.prefix + ".msgs").read().splitlines()
        except FileNotFoundError:
            return []
        return [tuple(line.split(" ", 2)) for line in lines if line.count(" ") == 2]

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, open(self.prefix + ".stderr").read()

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)


def wait_assigned(consumers, partitions, what):
    """Wait until the consumers' assignments are disjoint and cover range(partitions)."""

    def covered():
        assignments = [c.assignment() or [] for c in consumers]
        flat = sorted(p for a in assignments for p in a)
        return flat == list(range(partitions)) and all(assignments)

    wait_until(covered, JOIN_DEADLINE_S, what)
    return [c.assignment() for c in consumers]


def consumed_values(consumers):
    return [v for c in consumers for (_, _, v) in c.messages()]


def test_queue_three_consumers_share_partitions_survive_a_kill_and_resume_from_commits(broker, tmp_path):
    topic, group, partitions = "queue", "workers", 6
    create_topic(broker.bootstrap, topic, partitions)
    consumers = [
        ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, f"c{i}") for i in range(3)
    ]
    assignments = wait_assigned(consumers, partitions, "three consumers sharing 6 partitions")
    assert sorted(len(a) for a in assignments) == [2, 2, 2]

    # 1. All up: each of 30,000 messages is consumed exactly once across the group.
    first = [f"a{i}" for i in range(30_000)]
    produce(broker.bootstrap, topic, first, partitions)
    wait_until(lambda: len(consumed_values(consumers)) >= 30_000, 90, "30,000 messages consumed")
    values = consumed_values(consumers)
    assert len(values) == 30_000 and set(values) == set(first), "each message exactly once"
    for c, owned in zip(consumers, assignments):
        assert {int(p) for p, _, _ in c.messages()} <= set(owned), f"{c.name} read only its partitions"

    # 2. kill -9 one consumer: within its session timeout its partitions move to the others.
    victim, survivors = consumers[0], consumers[1:]
    killed_at = time.monotonic()
    victim.kill9()
    wait_assigned(survivors, partitions, "the survivors taking over the killed consumer's partitions")
    moved_after_s = time.monotonic() - killed_at
    assert moved_after_s < 20, f"partitions moved only after {moved_after_s:.1f}s"
    second = [f"b{i}" for i in range(3_000)]
    produce(broker.bootstrap, topic, second, partitions)
    wait_until(lambda: set(second) <= set(consumed_values(survivors)), 60, "survivors consuming everything")

    # 3. Stop all (commit + leave), produce more, restart: resume from the commits.
    for c in survivors:
        c.terminate()
    before_restart = set(consumed_values(consumers))
    third = [f"c{i}" for i in range(3_000)]
    produce(broker.bootstrap, topic, third, partitions)
    restarted = [
        ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, f"r{i}") for i in range(3)
    ]
    wait_until(lambda: set(third) <= set(consumed_values(restarted)), 60, "restarted consumers catching up")
    again = consumed_values(restarted)
    assert not (set(again) & before_restart), "a committed message was consumed again"
    assert set(first) | set(second) | set(third) == before_restart | set(again), "nothing skipped"
    for c in restarted:
        c.terminate()


def test_a_clean_leave_moves_partitions_before_any_session_could_expire(broker, tmp_path):
    topic, group, partitions = "leavers", "leave-group", 4
    create_topic(broker.bootstrap, topic, partitions)
    staying = ConsumerProcess("kafka-python", broker.bootstrap, group, topic, tmp_path, "stay")
    leaving = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "leave")
    wait_assigned([staying, leaving], partitions, "two members sharing 4 partitions")
    left_at = time.monotonic()
    leaving.terminate()
    wait_until(lambda: staying.assignment() == list(range(partitions)), 30, "the stayer owning every partition")
    moved_after_s = time.monotonic() - left_at
    # The session timeout is 3 s: a move well under it was triggered by the LeaveGroup.
    assert moved_after_s < 2.5, f"partitions moved only after {moved_after_s:.1f}s"
    staying.terminate()


def test_admin_clients_list_describe_and_delete_groups_and_offsets(broker, tmp_path):
    from confluent_kafka import ConsumerGroupState, KafkaException
    from kafka import TopicPartition as KpTopicPartition
    from kafka.admin import KafkaAdminClient

    topic, group = "admin-topic", "admin-group"
    create_topic(broker.bootstrap, topic, 2)
    produce(broker.bootstrap, topic, [str(i) for i in range(10)], 2)
    member = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "member")
    wait_assigned([member], 2, "the member joining")
    wait_until(lambda: len(member.messages()) == 10, 30, "the member consuming")

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_groups(request_timeout=30).result()
    states = {g.group_id: g.state for g in listed.valid}
    assert states.get(group) == ConsumerGroupState.STABLE, states
    described = admin.describe_consumer_groups([group], request_timeout=30)[group].result()
    assert described.state == ConsumerGroupState.STABLE and len(described.members) == 1
    assigned = described.members[0].assignment.topic_partitions
    assert sorted((tp.topic, tp.partition) for tp in assigned) == [(topic, 0), (topic, 1)]
    with pytest.raises(KafkaException, match="NON_EMPTY_GROUP"):
        admin.delete_consumer_groups([group], request_timeout=30)[group].result()

    kp_admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        member.terminate()
        offsets = kp_admin.list_group_offsets({group: None})[group]
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == {0: 5, 1: 5}
        kp_admin.delete_group_offsets(group, [KpTopicPartition(topic, 0)])
        offsets = kp_admin.list_group_offsets({group: None})[group]
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == {1: 5}
    finally:
        kp_admin.close()

    admin.delete_consumer_groups([group], request_timeout=30)[group].result()
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [-1001, -1001]
    listed = admin.list_consumer_groups(request_timeout=30).result()
    assert group not in {g.group_id for g in listed.valid}


def test_offsets_of_an_empty_group_expire_after_the_retention(start_group_broker):
    topic, group = "expiring", "forgetful"
    b = start_group_broker(args=[
        "--offsets-retention-ms", "1000", "--offsets-retention-check-interval-ms", "200"])
    create_topic(b.bootstrap, topic, 1)
    produce(b.bootstrap, topic, ["x"] * 10, 1)
    commit_with_metadata(b.bootstrap, group, topic, [(0, 7)])
    assert [tp.offset for tp in committed(b.bootstrap, group, topic, 1)] == [7]
    wait_until(lambda: [tp.offset for tp in committed(b.bootstrap, group, topic, 1)] == [-1001],
               30, "the committed offset to expire")
    wait_until(lambda: group not in groups_cli(b, "list"), 30, "the group to be forgotten")


def test_a_restarted_static_member_gets_its_partitions_back_without_a_rebalance(broker, tmp_path):
    topic, group, partitions = "static", "static-group", 4
    create_topic(broker.bootstrap, topic, partitions)
    leader = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "leader", "static-a")
    wait_assigned([leader], partitions, "the first static member")
    follower = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "f1", "static-b")
    before = wait_assigned([leader, follower], partitions, "two static members")
    changes = len(leader.assignment_changes())
    # A static member leaves no LeaveGroup behind: its restart within the session timeout
    # (3 s) takes its old place under a new member id.
    follower.terminate()
    again = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "f2", "static-b")
    wait_until(lambda: again.assignment() == before[1], 30, "the restarted member's old partitions")
    assert len(leader.assignment_changes()) == changes, "the other member saw no rebalance"
    for c in (leader, again):
        c.terminate()


def test_a_clean_shutdown_does_not_wait_for_a_parked_join(start_broker, tmp_path):
    topic, group = "parked", "parked-group"
    # The join phase of a new group lasts a minute: the JoinGroup stays parked.
    b = start_broker(cores=2, args=group_broker_args(initial_rebalance_delay_ms=60000))
    create_topic(b.bootstrap, topic, 1)
    member = ConsumerProcess("confluent", b.bootstrap, group, topic, tmp_path, "parked")
    try:
        # Until the member's JoinGroup arrives the group does not exist: describe fails.
        wait_until(lambda: "PreparingRebalance" in run_groups_cli(b, "describe", group).stdout,
                   30, "a parked join")
        stop_s = b.stop()
        assert stop_s < 3, "shutdown waited for the join phase"
    finally:
        member.kill9()


def test_cooperative_sticky_members_share_partitions_through_incremental_rebalances(broker, tmp_path):
    topic, group, partitions = "coop", "coop-group", 6
    create_topic(broker.bootstrap, topic, partitions)
    members = []
    for i in range(3):
        members.append(ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, f"coop{i}",
                                       assignor="cooperative-sticky"))
        assignments = wait_assigned(members, partitions, f"{len(members)} cooperative members")
    assert sorted(len(a) for a in assignments) == [2, 2, 2]
    values = [f"s{i}" for i in range(6_000)]
    produce(broker.bootstrap, topic, values, partitions)
    wait_until(lambda: len(consumed_values(members)) >= len(values), 60, "all messages consumed")
    got = consumed_values(members)
    assert len(got) == len(values) and set(got) == set(values)
    for m in members:
        m.terminate()


def test_publish_subscribe_two_groups_each_receive_every_message(broker):
    topic = "news"
    create_topic(broker.bootstrap, topic, 3)
    values = [f"n{i}" for i in range(2_000)]
    produce(broker.bootstrap, topic, values, 3)
    for group in ("readers-a", "readers-b"):
        assert sorted(consume_all(broker.bootstrap, group, topic, len(values))) == sorted(values)


def consume_all(bootstrap, group, topic, count, extra=None):
    """Consume `count` messages with a fresh confluent consumer in `group`; commit; close."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(extra or {}),
        }
    )
    consumer.subscribe([topic])
    seen = []
    deadline = time.monotonic() + JOIN_DEADLINE_S
    while len(seen) < count and time.monotonic() < deadline:
        for m in consumer.consume(1000, 0.5):
            if m.error() is None:
                seen.append(m.value().decode())
    if seen:
        consumer.commit(asynchronous=False)
    consumer.close()
    return seen


def committed(bootstrap, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        consumer.close()


def run_groups_cli(broker, *args):
    """Run `shardlog groups ARGS` against the broker; the finished process."""
    return subprocess.run(
        [str(broker.binary), "groups", "--bootstrap", broker.bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def groups_cli(broker, *args):
    result = run_groups_cli(broker, *args)
    assert result.returncode == 0, f"shardlog groups {args}: {result.stderr}"
    return result.stdout


def now_ms():
    return int(time.time() * 1000)


def test_replay_by_resetting_offsets_to_earliest_and_to_a_timestamp(broker):
    topic, group = "history", "replayers"
    create_topic(broker.bootstrap, topic, 2)
    old = [f"old{i}" for i in range(500)]
    produce(broker.bootstrap, topic, old, 2)
    # Timestamps are milliseconds: "between the two halves" must be an instant of its own,
    # later than every old record's and earlier than every new one's.
    last_old_ms = now_ms()
    middle_ms = wait_until(lambda: now_ms() > last_old_ms and now_ms(), 1, "the next millisecond",
                           interval_s=0.0005)
    wait_until(lambda: now_ms() > middle_ms, 1, "the next millisecond", interval_s=0.0005)
    new = [f"new{i}" for i in range(500)]
    produce(broker.bootstrap, topic, new, 2)
    assert len(consume_all(broker.bootstrap, group, topic, 1_000)) == 1_000

    assert group in groups_cli(broker, "list")
    described = groups_cli(broker, "describe", group)
    assert topic in described and "Empty" in described

    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--to-earliest")
    assert sorted(consume_all(broker.bootstrap, group, topic, 1_000)) == sorted(old + new)

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle_ms / 1000)) + f".{middle_ms % 1000:03d}Z"
    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--to-datetime", stamp)
    assert sorted(consume_all(broker.bootstrap, group, topic, 500)) == sorted(new)

    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--to-offset", "200")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [200, 200]
    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--to-latest")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [500, 500]
    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--shift-by", "-120")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [380, 380]
    assert sorted(consume_all(broker.bootstrap, group, topic, 240)) == sorted((old + new)[760:])

    groups_cli(broker, "delete", group)
    assert group not in groups_cli(broker, "list")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [-1001, -1001]


def test_reset_offsets_is_refused_while_the_group_has_members(broker, tmp_path):
    topic, group = "busy", "busy-group"
    create_topic(broker.bootstrap, topic, 1)
    member = ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "m")
    wait_assigned([member], 1, "the member joining")
    result = subprocess.run(
        [str(broker.binary), "groups", "--bootstrap", broker.bootstrap, "reset-offsets", "--execute", group,
         "--topic", topic, "--to-earliest"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "not empty" in result.stderr, result.stderr
    member.terminate()


def groups_cli_failing(broker, *args):
    """Run `shardlog groups ARGS`, expect a non-zero exit, return stderr."""
    result = run_groups_cli(broker, *args)
    assert result.returncode != 0, f"shardlog groups {args} succeeded: {result.stdout}"
    assert "panicked" not in result.stderr, result.stderr
    return result.stderr


def test_reset_offsets_to_an_impossible_date_is_refused_and_a_real_one_works(broker):
    topic, group = "dates", "daters"
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [f"m{i}" for i in range(10)], 1)

    stderr = groups_cli_failing(broker, "reset-offsets", group, "--topic", topic,
                                "--to-datetime", "2026-02-31T00:00:00")
    assert "2026-02-31T00:00:00" in stderr and "day" in stderr, stderr
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 1)] == [-1001], \
        "nothing committed"

    # Long before the messages: the first message; after them: the log end.
    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic, "--to-datetime", "2020-02-29T00:00:00")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 1)] == [0]
    groups_cli(broker, "reset-offsets", "--execute", group, "--topic", topic,
               "--to-datetime", "2999-01-01T00:00:00+02:00")
    assert [tp.offset for tp in committed(broker.bootstrap, group, topic, 1)] == [10]


def test_reset_offsets_of_an_unknown_topic_fails_without_creating_it(broker):
    stderr = groups_cli_failing(broker, "reset-offsets", "lost", "--topic", "no-such-topic",
                                "--to-earliest")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in stderr, stderr
    topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=30).topics
    assert "no-such-topic" not in topics


def commit_with_metadata(bootstrap, group, topic, offsets):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o, metadata=f"meta-{p}") for p, o in offsets],
            asynchronous=False,
        )
    finally:
        consumer.close()


def storage_is_durable():
    """The in-memory stand-in storage (before the real engine is merged) forgets at exit."""
    return (Path(__file__).resolve().parent.parent / "broker/src/log/partition.rs").exists()


@pytest.mark.skipif(not storage_is_durable(), reason="storage engine not merged yet: logs are in memory")
def test_committed_offsets_with_metadata_survive_a_restart_and_a_kill_9(broker):
    topic, group = "durable", "keepers"
    create_topic(broker.bootstrap, topic, 3)
    produce(broker.bootstrap, topic, [str(i) for i in range(300)], 3)
    commit_with_metadata(broker.bootstrap, group, topic, [(0, 10), (1, 20), (2, 30)])

    def check(offsets):
        got = committed(broker.bootstrap, group, topic, 3)
        assert [(tp.partition, tp.offset, tp.metadata) for tp in got] == [
            (p, o, f"meta-{p}") for p, o in offsets
        ]

    check([(0, 10), (1, 20), (2, 30)])
    broker.restart()
    check([(0, 10), (1, 20), (2, 30)])
    commit_with_metadata(broker.bootstrap, group, topic, [(0, 11), (1, 21), (2, 31)])
    broker.restart(hard=True)
    check([(0, 11), (1, 21), (2, 31)])


@pytest.mark.skipif(not storage_is_durable(), reason="storage engine not merged yet: logs are in memory")
def test_offsets_move_with_their_groups_when_the_shard_count_changes(start_group_broker):
    topic, groups = "reshard", [f"g{i}" for i in range(8)]
    b = start_group_broker(cores=2)
    create_topic(b.bootstrap, topic, 2)
    produce(b.bootstrap, topic, [str(i) for i in range(100)], 2)
    for i, g in enumerate(groups):
        commit_with_metadata(b.bootstrap, g, topic, [(0, i), (1, 10 + i)])

    def check(offset_of):
        for i, g in enumerate(groups):
            got = [(tp.offset, tp.metadata) for tp in committed(b.bootstrap, g, topic, 2)]
            assert got == [(offset_of(i, 0), "meta-0"), (offset_of(i, 1), "meta-1")], g

    b.stop()
    b.cores = 1
    b.start()
    check(lambda i, p: 10 * p + i)
    for i, g in enumerate(groups):
        commit_with_metadata(b.bootstrap, g, topic, [(0, 20 + i), (1, 30 + i)])
    b.stop()
    b.cores = 2
    b.start()
    check(lambda i, p: 20 + 10 * p + i)
    b.restart()
    check(lambda i, p: 20 + 10 * p + i)


@pytest.mark.skipif(not storage_is_durable(), reason="storage engine not merged yet: logs are in memory")
def test_the_offsets_topic_is_compacted_and_still_restores_every_offset(start_group_broker):
    """__consumer_offsets is a compacted topic: the log cleaner drops superseded commits
    (its records all have keys) and the latest of each survives restarts."""
    topic, group = "compacted", "busy-committer"
    b = start_group_broker(cores=1, args=["--offsets-topic-num-partitions", "1",
                                          "--segment-bytes", "65536",
                                          "--log-cleaner-backoff-ms", "100"])
    create_topic(b.bootstrap, topic, 2)
    produce(b.bootstrap, topic, [str(i) for i in range(500)], 2)
    for n in range(400):
        commit_with_metadata(b.bootstrap, group, topic, [(0, n), (1, 2 * n)])
    commit_with_metadata(b.bootstrap, group, topic, [(0, 400), (1, 800)])

    def records_left():
        consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "reader",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition("__consumer_offsets", 0, 0)])
            count, idle = 0, 0
            while idle < 3:
                m = consumer.poll(0.5)
                if m is None:
                    idle += 1
                elif not m.error():
                    count += 1
            return count
        finally:
            consumer.close()

    wait_until(lambda: records_left() < 400, 60, "the cleaner to compact the offsets topic")
    for restart_hard in (False, True):
        b.restart(hard=restart_hard)
        got = [(tp.offset, tp.metadata) for tp in committed(b.bootstrap, group, topic, 2)]
        assert got == [(400, "meta-0"), (800, "meta-1")]


@pytest.mark.skipif(not storage_is_durable(), reason="storage engine not merged yet: logs are in memory")
def test_running_consumers_rejoin_after_a_broker_restart_and_skip_nothing(broker, tmp_path):
    # Group membership is not persisted: after a restart members are unknown, rejoin, and
    # resume from their committed offsets.
    topic, group, partitions = "restart", "restart-group", 4
    create_topic(broker.bootstrap, topic, partitions)
    members = [
        ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "rd"),
        ConsumerProcess("kafka-python", broker.bootstrap, group, topic, tmp_path, "kp"),
    ]
    wait_assigned(members, partitions, "two members")
    before = [f"x{i}" for i in range(1_000)]
    produce(broker.bootstrap, topic, before, partitions)
    wait_until(lambda: set(before) <= set(consumed_values(members)), 60, "consumption before the restart")
    broker.restart()
    after = [f"y{i}" for i in range(1_000)]
    produce(broker.bootstrap, topic, after, partitions)
    wait_until(lambda: set(after) <= set(consumed_values(members)), 90, "consumption after the restart")
    again = [v for v in consumed_values(members) if v.startswith("x")]
    assert len(again) == len(before), "committed messages were consumed again after the restart"
    for m in members:
        m.terminate()


def test_mixed_librdkafka_and_kafka_python_members_share_one_group(broker, tmp_path):
    topic, group, partitions = "mixed", "mixed-group", 6
    create_topic(broker.bootstrap, topic, partitions)
    members = [
        ConsumerProcess("confluent", broker.bootstrap, group, topic, tmp_path, "rd"),
        ConsumerProcess("kafka-python", broker.bootstrap, group, topic, tmp_path, "kp"),
    ]
    assignments = wait_assigned(members, partitions, "librdkafka and kafka-python sharing a group")
    assert [len(a) for a in assignments] == [3, 3]
    values = [f"m{i}" for i in range(6_000)]
    produce(broker.bootstrap, topic, values, partitions)
    wait_until(lambda: len(consumed_values(members)) >= len(values), 60, "all messages consumed")
    got = consumed_values(members)
    assert len(got) == len(values) and set(got) == set(values)
    for m in members:
        m.terminate()


def test_kcat_balanced_consumer_reads_and_commits(broker):
    topic, group = "kcat-topic", "kcat-group"
    create_topic(broker.bootstrap, topic, 2)
    values = [f"k{i}" for i in range(100)]
    produce(broker.bootstrap, topic, values, 2)
    # -e: exit once every assigned partition reached its end; closing commits (auto-commit).
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-G", group, "-o", "beginning", "-e", "-u", "-f", "%s\n", topic],
        capture_output=True, text=True, timeout=JOIN_DEADLINE_S,
    )
    assert sorted(result.stdout.split()) == sorted(values), result.stderr
    wait_until(
        lambda: [tp.offset for tp in committed(broker.bootstrap, group, topic, 2)] == [50, 50],
        30, "kcat's commit at close",
    )
