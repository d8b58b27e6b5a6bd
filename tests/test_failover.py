"""Replication under failures (issue 12): real `shardlog` nodes on loopback (cluster.py),
real clients (librdkafka through confluent-kafka, raw wire frames for leader epochs), and
the promises a producer relies on when brokers die, pause or restart.

What must hold:
- An acknowledged acks=all message is never lost, duplicated, moved or reordered, whatever
  happens to the leader (SIGKILL and restart, SIGSTOP past the session timeout, SIGTERM of
  every node in turn); a message whose delivery failed or timed out is unknown (it may or
  may not be in the log), never counted as lost. `check_history` is the one judge, and is
  itself tested on a history that lost data.
- min.insync.replicas: below it acks=all is refused (NOT_ENOUGH_REPLICAS) and nothing refused
  is ever visible; acks=1 still appends, visible once the ISR is back.
- A deposed leader's unreplicated tail is truncated by leader epoch when it rejoins: every
  replica ends byte-identical.
- Leader epochs on the wire: Metadata's epoch grows with each failover, a stale epoch is
  FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH, OffsetForLeaderEpoch answers where
  each epoch ended.
- The preferred leader takes its partitions back once it is in sync again.

Bounded for CI (two cores, three nodes and the clients): the failover test kills
FAILOVER_KILLS leaders (default 3); scripts/failover-soak.sh runs it with 20.
Run: python3 -m pytest tests/test_failover.py -q  (-s also shows the stalls printed)
"""

import collections
import os
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import wire
from clients import RDKAFKA_LOGGER, ck_offsets, ck_produce, ck_producer
from test_replication import log_bytes, wait_identical

# Leaders killed by the failover test; the soak script raises it (20 is the count).
FAILOVER_KILLS = int(os.environ.get("FAILOVER_KILLS", "3"))
# Short group timings, so a group consumer (re)joins in about a second.
GROUP_ARGS = ["--group-initial-rebalance-delay-ms", "300",
              "--group-min-session-timeout-ms", "1000"]
# Messages per second a load producer offers over all its partitions: light enough for two
# cores running three nodes, enough that every failover interrupts a steady stream.
LOAD_RATE_PER_S = 200
# Messages a load producer lets wait for a delivery report before it stops producing more.
LOAD_IN_FLIGHT_MAX = 2000
# From a leader's loss to a new leader named by the survivors: the session timeout (1.5 s)
# plus an election, with room for two busy cores.
ELECTION_DEADLINE_S = 20.0
# A restarted node catches up and is back in every ISR (replica lag time 10 s by default).
IN_SYNC_DEADLINE_S = 40.0
# A producer acknowledges again after a failover (its retries and metadata refreshes).
PROGRESS_DEADLINE_S = 45.0
# Undelivered messages a stopping producer waits for before calling them unknown.
FLUSH_DEADLINE_S = 45.0
# The same at teardown of a test that failed first: it only has to end the thread.
ABANDON_DEADLINE_S = 5.0
CLIENT_TIMEOUT_S = 30.0


@pytest.fixture
def background():
    """Starts a client thread (LoadProducer, Reader) and stops every one at teardown, also
    when the test failed first: a leftover client would keep logging into later tests. The
    test's own `stop()` is where it asserts on what the thread saw."""
    threads = []

    def start(thread):
        threads.append(thread)
        thread.start()
        return thread
    yield start
    for thread in threads:
        thread.abandon()
    for thread in threads:
        thread.join(ABANDON_DEADLINE_S + 5)


REPORT_PREFIX = "failover"  # how `report` (conftest) labels this module's figures


# --- the history of a run, and its judge ------------------------------------------------------
class History:
    """What producers were told, per partition: `sent` values in production order, `acked`
    (offset, value) from successful delivery reports with `ack_times` (monotonic seconds),
    and `unknown` values whose delivery failed or timed out ({value: why}): they may or may
    not be in the log, and are never counted as lost. Delivery callbacks and the test thread
    share it under `lock`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.defaultdict(list)
        self.acked = collections.defaultdict(list)
        self.ack_times = collections.defaultdict(list)
        self.unknown = {}

    def acked_count(self, partition):
        with self.lock:
            return len(self.acked[partition])

    def last_ack_s(self, partition):
        with self.lock:
            times = self.ack_times[partition]
            return times[-1] if times else None

    def acked_total(self):
        with self.lock:
            return sum(len(a) for a in self.acked.values())

    def acked_values(self):
        with self.lock:
            return {(p, v) for p, items in self.acked.items() for _, v in items}

    def longest_gap_s(self, partition, start_s, end_s):
        """The longest time between two successive acknowledgements of `partition` whose
        gap overlaps [start_s, end_s] (a stall across a failover)."""
        with self.lock:
            times = list(self.ack_times[partition])
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= start_s and a <= end_s]
        return max(gaps, default=None)


def check_history(history, log):
    """Judge `log` ({partition: [(offset, value)]}, as read back from offset 0) against what
    the producers were told. Returns {kind: [what, ...]}, empty when all is well:
    - lost: an acknowledged value is not in the log;
    - moved: an acknowledged value is in the log at another offset than acknowledged;
    - duplicated: a value is in the log more than once;
    - reordered: a value precedes, in the log, one produced before it to that partition;
    - foreign: a value that was never produced to that partition;
    - offsets: the log's offsets do not increase.
    Unknown values may be present (once, in order) or absent."""
    problems = collections.defaultdict(list)
    for p in sorted(set(history.sent) | set(log)):
        order = {v: i for i, v in enumerate(history.sent.get(p, []))}
        entries = log.get(p, [])
        offsets_of = collections.defaultdict(list)
        for offset, value in entries:
            offsets_of[value].append(offset)
        for (a, _), (b, _) in zip(entries, entries[1:]):
            if b <= a:
                problems["offsets"].append(f"p{p}: offset {b} after {a}")
        for value, offsets in offsets_of.items():
            if value not in order:
                problems["foreign"].append(f"p{p}: {value!r} at offset {offsets[0]} was never "
                                           "produced to this partition")
            if len(offsets) > 1:
                problems["duplicated"].append(f"p{p}: {value!r} at offsets {offsets}")
        for offset, value in history.acked.get(p, []):
            if value not in offsets_of:
                problems["lost"].append(f"p{p}: {value!r} acknowledged at offset {offset}, "
                                        "absent")
            elif offset not in offsets_of[value]:
                problems["moved"].append(f"p{p}: {value!r} acknowledged at offset {offset}, "
                                         f"found at {offsets_of[value]}")
        seen, latest = set(), None  # latest: (production index, value) of the log so far
        for offset, value in entries:
            index = order.get(value)
            if index is None or value in seen:
                continue  # reported as foreign or duplicated
            seen.add(value)
            if latest is not None and index < latest[0]:
                problems["reordered"].append(
                    f"p{p}: {value!r} (produced #{index}) at offset {offset}, after "
                    f"{latest[1]!r} (produced #{latest[0]})")
            if latest is None or index > latest[0]:
                latest = (index, value)
    return dict(problems)


def test_the_history_checker_reports_a_lost_a_duplicated_and_a_reordered_message():
    history = History()
    values = [f"v{i}".encode() for i in range(8)]
    history.sent[0] = list(values)
    history.acked[0] = [(i, values[i]) for i in range(6)]  # v6, v7: delivery failed
    history.unknown = {values[6]: "timed out", values[7]: "timed out"}
    clean = [(i, values[i]) for i in range(7)]  # unknown v6 present, unknown v7 absent
    assert check_history(history, {0: clean}) == {}

    # v4 lost; v3 twice; v1 and v2 swapped (so each was acknowledged at the other's offset).
    broken = [(0, b"v0"), (1, b"v2"), (2, b"v1"), (3, b"v3"), (4, b"v3"), (5, b"v5"),
              (6, b"stray")]
    problems = check_history(history, {0: broken})
    assert problems == {
        "lost": ["p0: b'v4' acknowledged at offset 4, absent"],
        "duplicated": ["p0: b'v3' at offsets [3, 4]"],
        "reordered": ["p0: b'v1' (produced #1) at offset 2, after b'v2' (produced #2)"],
        "moved": ["p0: b'v1' acknowledged at offset 1, found at [2]",
                  "p0: b'v2' acknowledged at offset 2, found at [1]"],
        "foreign": ["p0: b'stray' at offset 6 was never produced to this partition"],
    }, problems
    # A partition nobody produced to, and offsets that go back.
    assert check_history(history, {0: clean, 1: [(0, b"v0")]})["foreign"] == [
        "p1: b'v0' at offset 0 was never produced to this partition"]
    assert check_history(history, {0: clean[:3] + [(1, b"v3")]})["offsets"] == [
        "p0: offset 1 after 2"]


# --- clients that run while the test breaks the cluster ---------------------------------------
class ProducerDied(AssertionError):
    """A LoadProducer met a fatal error while the test waited for it to make progress: the
    test stops breaking the cluster and judges what was acknowledged until then."""


class LoadProducer(threading.Thread):
    """A librdkafka producer on its own thread: round robin over `partitions`, about
    LOAD_RATE_PER_S messages a second, values `{tag}-p{partition}-{n:07d}`, everything it
    is told recorded in `history`. `stop()` flushes (FLUSH_DEADLINE_S) and marks what got no
    delivery report as unknown. `failures` holds delivery errors, `fatal` librdkafka fatal
    errors, `client_errors` the other errors librdkafka reported (informational)."""

    def __init__(self, bootstrap, topic, partitions, history, tag, **config):
        super().__init__(name=f"producer-{tag}", daemon=True)
        self.topic = topic
        self.partitions = list(partitions)
        self.history = history
        self.tag = tag
        self.conf = {"bootstrap.servers": bootstrap, "linger.ms": 5,
                     "logger": RDKAFKA_LOGGER, "error_cb": self._on_error,
                     **{k.replace("_", "."): v for k, v in config.items()}}
        self.stopping = threading.Event()
        self.failures = []
        self.fatal = []
        self.client_errors = []
        self.crash = None
        self.undelivered = None
        self.flush_s = FLUSH_DEADLINE_S

    def _on_error(self, err):
        (self.fatal if err.fatal() else self.client_errors).append(err)

    def _on_delivery(self, err, msg):
        now = time.monotonic()
        with self.history.lock:
            if err is None:
                self.history.acked[msg.partition()].append((msg.offset(), msg.value()))
                self.history.ack_times[msg.partition()].append(now)
            else:
                self.history.unknown[msg.value()] = str(err)
                self.failures.append(err)

    def run(self):
        try:
            self._produce()
        except BaseException as e:  # reported by stop(), not lost in a thread
            self.crash = e

    def _produce(self):
        producer = Producer(self.conf)
        interval_s = len(self.partitions) / LOAD_RATE_PER_S
        next_s = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            if len(producer) >= LOAD_IN_FLIGHT_MAX:
                producer.poll(0.05)  # bounded: wait for reports before producing more
                continue
            for p in self.partitions:
                value = f"{self.tag}-p{p}-{n:07d}".encode()
                with self.history.lock:
                    self.history.sent[p].append(value)
                producer.produce(self.topic, value, partition=p, on_delivery=self._on_delivery)
            n += 1
            next_s += interval_s
            # Pacing, and the delivery callbacks run meanwhile.
            while (left := next_s - time.monotonic()) > 0:
                producer.poll(left)
            producer.poll(0)
        self.undelivered = producer.flush(self.flush_s)

    def abandon(self):
        self.flush_s = min(self.flush_s, ABANDON_DEADLINE_S)
        self.stopping.set()

    def stop(self):
        """Stop producing, flush, and mark what got no report unknown. A crash (librdkafka
        raises once it met a fatal error) is not asserted here: the test judges the history
        first (a fatal idempotence error often follows lost data), then `assert_healthy`."""
        self.stopping.set()
        self.join(FLUSH_DEADLINE_S + 15)
        assert not self.is_alive(), f"{self.name} did not stop"
        with self.history.lock:
            reported = {v for items in self.history.acked.values() for _, v in items}
            reported |= set(self.history.unknown)
            for values in self.history.sent.values():
                for v in values:
                    if v not in reported:
                        self.history.unknown[v] = "no delivery report"

    def assert_healthy(self):
        assert self.crash is None and not self.fatal, (
            f"{self.name}: crash {self.crash!r}, fatal errors {self.fatal}")

    def wait_progress(self, partitions, after_s, what, deadline_s=PROGRESS_DEADLINE_S):
        """Wait until each of `partitions` has an acknowledgement later than `after_s`;
        returns the monotonic time when that was seen."""
        def acked():
            if self.fatal or self.crash is not None:
                raise ProducerDied(f"{self.name}: crash {self.crash!r}, fatal {self.fatal}")
            return all((self.history.last_ack_s(p) or 0) > after_s for p in partitions)
        wait_until_s(acked, deadline_s, what)
        return time.monotonic()


class Reader(threading.Thread):
    """A librdkafka consumer on its own thread that records every (partition, value) it
    sees: a member of consumer group `group` (subscribed, from the earliest offset), or,
    with `group` None, assigned every partition from offset 0."""

    def __init__(self, bootstrap, topic, partitions, group=None):
        super().__init__(name=f"reader-{group or 'assigned'}", daemon=True)
        self.topic = topic
        self.partitions = list(partitions)
        self.group = group
        self.conf = {"bootstrap.servers": bootstrap,
                     "group.id": group or "unused-assign-only",
                     "auto.offset.reset": "earliest", "enable.auto.commit": group is not None,
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                     "fetch.wait.max.ms": 100, "logger": RDKAFKA_LOGGER}
        self.lock = threading.Lock()
        self.seen = set()
        self.errors = []
        self.stopping = threading.Event()
        self.crash = None

    def run(self):
        try:
            consumer = Consumer(self.conf)
            if self.group:
                consumer.subscribe([self.topic])
            else:
                consumer.assign([TopicPartition(self.topic, p, 0) for p in self.partitions])
            while not self.stopping.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    self.errors.append(msg.error())  # retriable ones are expected in failover
                    continue
                with self.lock:
                    self.seen.add((msg.partition(), msg.value()))
            consumer.close()
        except BaseException as e:
            self.crash = e

    def wait_seen(self, wanted, deadline_s=CLIENT_TIMEOUT_S):
        def all_seen():
            assert self.crash is None, f"{self.name} crashed: {self.crash!r}"
            with self.lock:
                return not (wanted - self.seen)
        try:
            wait_until_s(all_seen, deadline_s, f"{self.name} to see every acknowledged message")
        except AssertionError:
            with self.lock:
                missing = sorted(wanted - self.seen)
            raise AssertionError(f"{self.name} never saw {len(missing)} acknowledged messages, "
                                 f"e.g. {missing[:5]}; consumer errors: {self.errors[:5]}")

    def abandon(self):
        self.stopping.set()

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.crash is None, f"{self.name} crashed: {self.crash!r}"


def wait_until_s(condition, deadline_s, what, interval_s=0.05):
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval_s)


def read_back(bootstrap, topic, partitions, timeout_s=60.0):
    """Every message of each partition, from offset 0 up to its high watermark (ListOffsets
    latest, asked of its leader), read with a fresh consumer: {partition: [(offset, value)]}."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-assign-only",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                         "logger": RDKAFKA_LOGGER})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s,
                                                  cached=False)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = {p: [] for p in partitions}
        next_offset = {p: 0 for p in partitions}
        deadline = time.monotonic() + timeout_s
        while any(next_offset[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, (
                f"read {next_offset} of {ends} from {topic} within {timeout_s}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            out[msg.partition()].append((msg.offset(), msg.value()))
            next_offset[msg.partition()] = msg.offset() + 1
        return out
    finally:
        consumer.close()


def assert_history_holds(history, log):
    problems = check_history(history, log)
    assert not problems, "\n".join(f"{kind}: {len(items)}, e.g. {items[:5]}"
                                   for kind, items in problems.items())


# --- what the cluster says --------------------------------------------------------------------
def partitions_of(cluster, topic, node=None):
    """{partition: {"leader", "leader_epoch", "replicas", "isr", ...}} as `node` (default
    the first running one) answers Metadata v7."""
    md = cluster.metadata(node, [topic])
    return md["topics"][topic]["partitions"]


def wait_partition(cluster, topic, partition, condition, what, nodes=None,
                   timeout_s=ELECTION_DEADLINE_S):
    """Wait until every one of `nodes` (default: the running ones) answers Metadata with a
    view of the partition for which `condition(info)` holds; returns the first one's view."""
    def holds():
        views = []
        for node in nodes or cluster.running():
            md = cluster.try_metadata(node, [topic])
            info = md and md["topics"].get(topic, {}).get("partitions", {}).get(partition)
            if not info or not condition(info):
                return None
            views.append(info)
        return views[0]
    return cluster.wait_for(holds, timeout_s,
                            f"{topic}/{partition}: {what} (asked of {nodes or cluster.running()})")


def wait_fully_in_sync(cluster, topic, partitions, nodes=None, timeout_s=IN_SYNC_DEADLINE_S):
    """Wait until every one of `nodes` says each partition has a leader and every replica
    in its ISR. Returns the first node's view of the topic."""
    def in_sync(info):
        return info["leader"] >= 0 and sorted(info["isr"]) == sorted(info["replicas"])
    for p in partitions:
        wait_partition(cluster, topic, p, in_sync, "every replica in the ISR", nodes, timeout_s)
    return partitions_of(cluster, topic, (nodes or cluster.running())[0])


def new_leader(old_leader_id, old_epoch):
    def moved(info):
        return (info["leader"] not in (-1, old_leader_id)
                and info["leader_epoch"] > old_epoch)
    return moved


# --- 1. failover under load -------------------------------------------------------------------
@pytest.mark.timeout(90 + 40 * FAILOVER_KILLS)
def test_acknowledged_messages_survive_sigkills_of_leaders_under_load(start_cluster, background,
                                                                     report):
    cluster = start_cluster(3, extra_args=GROUP_ARGS)
    topic, partitions = "failover", range(3)
    cluster.create_topic(topic, partitions=3, replication_factor=3)
    wait_fully_in_sync(cluster, topic, partitions)
    history = History()
    producer = LoadProducer(cluster.bootstrap, topic, partitions, history, "load",
                            enable_idempotence=True, acks="all", message_timeout_ms=60000)
    group = Reader(cluster.bootstrap, topic, partitions, group="failover-group")
    background(producer)
    background(group)
    stalls = []
    try:
        producer.wait_progress(partitions, time.monotonic(), "the first acknowledgements")
        for kill in range(FAILOVER_KILLS):
            view = partitions_of(cluster, topic)
            target = kill % len(partitions)
            victim = cluster.node(view[target]["leader"])
            led = {p: info["leader_epoch"] for p, info in view.items()
                   if info["leader"] == victim.node_id}
            victim.kill()
            killed_s = time.monotonic()
            survivors = cluster.others(victim)
            for p, epoch in led.items():
                wait_partition(cluster, topic, p, new_leader(victim.node_id, epoch),
                               f"a leader other than {victim.node_id}", survivors)
            elected_s = time.monotonic()
            producer.wait_progress(led, elected_s, f"acks=all at the new leaders of {list(led)}")
            victim.start()
            cluster.wait_brokers({1, 2, 3}, timeout_s=ELECTION_DEADLINE_S)
            wait_fully_in_sync(cluster, topic, partitions)
            in_sync_s = time.monotonic()
            stall_s = max(history.longest_gap_s(p, killed_s, elected_s) or 0 for p in led)
            stalls.append(stall_s)
            report(f"kill {kill + 1}/{FAILOVER_KILLS}: node {victim.node_id} led {sorted(led)}; "
                   f"new leaders after {elected_s - killed_s:.2f}s, longest produce stall "
                   f"{stall_s:.2f}s, back in every ISR {in_sync_s - killed_s:.2f}s after the "
                   "kill")
        producer.wait_progress(partitions, time.monotonic(), "acks=all after the last restart")
    except ProducerDied:
        pass  # judged below: the history first, then the producer's health
    finally:
        producer.stop()
    log = read_back(cluster.bootstrap, topic, partitions)
    assert_history_holds(history, log)
    producer.assert_healthy()
    try:
        group.wait_seen(history.acked_values())
    finally:
        group.stop()
    report(f"{FAILOVER_KILLS} leader kills: {history.acked_total()} acknowledged, "
           f"{len(history.unknown)} unknown, longest stall per kill "
           f"{[round(s, 2) for s in stalls]} (max {max(stalls, default=0):.2f}s)")


def one_voter_and_two_brokers(start_cluster):
    """Node 1 is the whole metadata quorum, nodes 2 and 3 brokers only: two nodes can be down
    at once and the quorum still fences them and elects leaders (with three voters, two
    down would leave no majority to record anything)."""
    cluster = start_cluster(1)
    cluster.add_broker()
    cluster.add_broker()
    cluster.wait_brokers({1, 2, 3}, timeout_s=ELECTION_DEADLINE_S)
    return cluster


def latest_offset(node, topic, partition=0):
    """ListOffsets latest (the high watermark) as `node` answers it; None on an error."""
    with wire.Conn(node.address) as conn:
        error, offset = wire.list_offset(conn, topic, partition, -1)
    return offset if error == wire.NONE else None


def values_of(log, partition=0):
    return [v for _, v in log[partition]]


# --- 2. min.insync.replicas -------------------------------------------------------------------
def test_below_min_insync_replicas_acks_all_is_refused_and_acks_1_waits_for_the_isr(
        start_cluster):
    cluster = one_voter_and_two_brokers(start_cluster)
    topic = "min-isr"
    cluster.create_topic(topic, assignment={0: [1, 2, 3]},
                         config={"min.insync.replicas": "2"})
    wait_fully_in_sync(cluster, topic, [0])
    leader = cluster.node(1)
    base = [f"base-{i}".encode() for i in range(10)]
    reports = ck_produce(ck_producer(leader, acks="all"), topic, base)
    assert reports == [(None, 0, i) for i in range(10)]

    for follower in cluster.others(leader):
        follower.kill()
    wait_partition(cluster, topic, 0, lambda info: info["leader"] == 1 and info["isr"] == [1],
                   "ISR shrunk to the leader alone", nodes=[leader])

    # acks=all, no retries: librdkafka reports the broker's refusal as it is.
    refuser = ck_producer(leader, acks="all", enable_idempotence=False, retries=0,
                          message_timeout_ms=20000)
    refused = [f"refused-{i}".encode() for i in range(5)]
    reports = ck_produce(refuser, topic, refused)
    assert [(e and e.name(), p) for e, p, _ in reports] == [("NOT_ENOUGH_REPLICAS", 0)] * 5
    assert all(e.code() == KafkaError.NOT_ENOUGH_REPLICAS for e, _, _ in reports)
    with wire.Conn(leader.address) as conn:
        answer = wire.produce(conn, topic, {0: wire.record_batch([b"refused-raw"])}, acks=-1)
    assert answer[0][0] == wire.NOT_ENOUGH_REPLICAS, answer

    # acks=1 appends on the leader alone, right after the base: nothing refused was appended.
    single = [f"single-{i}".encode() for i in range(5)]
    reports = ck_produce(ck_producer(leader, acks=1), topic, single)
    assert reports == [(None, 0, 10 + i) for i in range(5)]
    # Below min.insync.replicas the high watermark stays: consumers do not see them yet.
    assert ck_offsets(leader, topic, 0) == (0, 10)
    with wire.Conn(leader.address) as conn:
        error, hw, batches = wire.fetch(conn, topic, 0, 10)
    assert (error, hw, batches) == (wire.NONE, 10, [])

    cluster.start_nodes([n for n in cluster.nodes if not n.is_running()])
    wait_fully_in_sync(cluster, topic, [0])
    # Followers rejoin the ISR at the high watermark (10), then fetch the acks=1 tail: the
    # high watermark covers it once they hold it durably.
    cluster.wait_for(lambda: latest_offset(leader, topic) == 15, IN_SYNC_DEADLINE_S,
                     "the high watermark to cover the acks=1 messages")
    log = read_back(cluster.bootstrap, topic, [0])
    assert log[0] == list(enumerate(base + single)), log
    for node in cluster.nodes:
        assert not any(v in log_bytes(node, topic, 0) for v in refused + [b"refused-raw"]), node


# --- 3. a paused leader -----------------------------------------------------------------------
def test_a_leader_paused_past_the_session_timeout_is_deposed_and_rejoins_identical(
        start_cluster, background, report):
    cluster = start_cluster(3)
    topic = "paused"
    view = cluster.create_topic(topic, partitions=1, replication_factor=3)
    wait_fully_in_sync(cluster, topic, [0])
    old = cluster.node(view[0]["leader"])
    survivors = cluster.others(old)
    history = History()
    # Bootstrapped at the survivors only; requests stuck at the paused leader time out (5 s)
    # and are retried at the new one, deduplicated by the idempotent producer's sequence.
    producer = LoadProducer(",".join(n.bootstrap for n in survivors), topic, [0], history,
                            "paused", enable_idempotence=True, acks="all",
                            message_timeout_ms=60000, request_timeout_ms=5000,
                            socket_timeout_ms=5000)
    probe_answer = None
    background(producer)
    try:
        producer.wait_progress([0], time.monotonic(), "the first acknowledgements")
        old.pause()
        paused_s = time.monotonic()
        # A produce waiting in the paused leader's socket: the first thing it reads on waking,
        # before it can hear that it was deposed. It must not be acknowledged, nor kept.
        probe = wire.Conn(old.address, timeout_s=30)
        probe.send_raw(wire.produce_request(topic, 0, wire.record_batch([b"probe"]), acks=-1,
                                            timeout_ms=5000))
        moved = wait_partition(cluster, topic, 0, new_leader(old.node_id,
                                                             view[0]["leader_epoch"]),
                               f"a leader other than the paused {old.node_id}", survivors)
        assert old.node_id not in moved["isr"], moved
        elected_s = time.monotonic()
        producer.wait_progress([0], elected_s, "acks=all at the new leader")
        old.resume()
        answer = probe.recv_frame(timeout_s=20)
        probe.close()
        probe_answer = answer and wire.produce_answer(answer)[0]
        report(f"SIGSTOP of leader {old.node_id}: new leader {moved['leader']} after "
               f"{elected_s - paused_s:.2f}s, longest produce stall "
               f"{history.longest_gap_s(0, paused_s, elected_s) or 0:.2f}s; a produce "
               f"waiting at the paused leader got (error, offset) {probe_answer}")
        wait_fully_in_sync(cluster, topic, [0])
    except ProducerDied:
        pass  # judged below: the history first, then the producer's health
    finally:
        producer.stop()
    data = wait_identical(cluster, topic, 0, cluster.nodes)
    log = read_back(cluster.bootstrap, topic, [0])
    assert_history_holds(history, {0: [(o, v) for o, v in log[0] if v != b"probe"]})
    producer.assert_healthy()
    if probe_answer and probe_answer[0] == wire.NONE:
        # Whatever else: an acknowledged acks=all message must be where it was acknowledged.
        assert (probe_answer[1], b"probe") in log[0], (
            f"the deposed leader acknowledged the probe at offset {probe_answer[1]} and it "
            "is gone")
    assert probe_answer and probe_answer[0] != wire.NONE, (
        f"the deposed leader answered an acks=all produce with {probe_answer}")
    assert b"probe" not in data


# --- 4. rolling restart -----------------------------------------------------------------------
def test_a_rolling_restart_by_sigterm_shows_the_producer_no_error(start_cluster, background,
                                                                  report):
    cluster = start_cluster(3)
    topic, partitions = "rolling", range(3)
    cluster.create_topic(topic, partitions=3, replication_factor=3)
    wait_fully_in_sync(cluster, topic, partitions)
    history = History()
    # librdkafka's defaults (retries, message.timeout.ms 300 s): what an application runs.
    producer = LoadProducer(cluster.bootstrap, topic, partitions, history, "rolling",
                            enable_idempotence=True, acks="all")
    reader = Reader(cluster.bootstrap, topic, partitions)
    background(producer)
    background(reader)
    try:
        producer.wait_progress(partitions, time.monotonic(), "the first acknowledgements")
        for node in cluster.nodes:
            stopped_s = node.stop()  # SIGTERM: controlled shutdown, must exit 0
            node.start()
            cluster.wait_brokers({1, 2, 3}, timeout_s=ELECTION_DEADLINE_S)
            wait_fully_in_sync(cluster, topic, partitions)
            producer.wait_progress(partitions, time.monotonic(),
                                   f"acks=all after node {node.node_id} is back")
            report(f"rolling restart: node {node.node_id} stopped in {stopped_s:.2f}s; "
                   f"failed deliveries so far {len(producer.failures)}")
    except ProducerDied:
        pass  # judged below: the history first, then the producer's health
    finally:
        producer.stop()
    assert_history_holds(history, read_back(cluster.bootstrap, topic, partitions))
    producer.assert_healthy()
    assert producer.failures == [] and history.unknown == {}, (
        f"delivery errors: {producer.failures[:10]}; unknown: {list(history.unknown)[:10]}")
    try:
        reader.wait_seen(history.acked_values())
    finally:
        reader.stop()


# --- 5. a divergent tail is truncated ---------------------------------------------------------
def test_a_deposed_leaders_divergent_tail_is_truncated_when_it_rejoins(start_cluster):
    cluster = one_voter_and_two_brokers(start_cluster)
    topic = "diverge"
    a, b = cluster.node(2), cluster.node(3)
    # min.insync.replicas 1 lets the leader alone acknowledge; the unclean election lets B
    # lead although it left the ISR, so A's acks=1 tail is what B never had.
    cluster.create_topic(topic, assignment={0: [a.node_id, b.node_id]},
                         config={"min.insync.replicas": "1",
                                 "unclean.leader.election.enable": "true"})
    wait_fully_in_sync(cluster, topic, [0])
    base = [f"base-{i}".encode() for i in range(20)]
    assert ck_produce(ck_producer(a, acks="all"), topic, base) == [(None, 0, i)
                                                                  for i in range(20)]
    wait_identical(cluster, topic, 0, [a, b])

    b.kill()
    wait_partition(cluster, topic, 0, lambda info: info["isr"] == [a.node_id],
                   f"ISR shrunk to {a.node_id}", nodes=[cluster.node(1), a])
    # Longer in bytes than what B will write in its place, so a tail that is not truncated
    # cannot hide under the new batches.
    divergent = [f"divergent-{i:04d}".encode() for i in range(10)]
    reports = ck_produce(ck_producer(a, acks=1, linger_ms=0), topic, divergent)
    assert reports == [(None, 0, 20 + i) for i in range(10)]
    epoch_a = partitions_of(cluster, topic, a)[0]["leader_epoch"]
    # acks=1 answers once appended, maybe before the write reaches the file: wait until the
    # tail is in A's file, so that the SIGKILL leaves it there to be truncated.
    cluster.wait_for(lambda: all(v in log_bytes(a, topic, 0) for v in divergent), 10,
                     f"the divergent tail in {a.name}'s log file")

    a.kill()
    b.start()
    led = wait_partition(cluster, topic, 0, lambda info: info["leader"] == b.node_id,
                         f"the unclean election of {b.node_id}",
                         nodes=[cluster.node(1), b])
    assert led["leader_epoch"] > epoch_a, led
    replacement = [f"new-{i}".encode() for i in range(5)]
    reports = ck_produce(ck_producer(b, acks="all"), topic, replacement)
    assert reports == [(None, 0, 20 + i) for i in range(5)]

    a.start()
    assert a.recovered_end_offsets()[f"{topic}-0"] == 30, a.run_log()
    wait_fully_in_sync(cluster, topic, [0])
    data = wait_identical(cluster, topic, 0, [a, b])
    assert not any(v in data for v in divergent)
    assert values_of(read_back(cluster.bootstrap, topic, [0])) == base + replacement


# --- 6. leader epochs on the wire -------------------------------------------------------------
def produce_failover_produce(cluster, topic):
    """A partition with 5 messages from its first leader (epoch e0) and 3 from the one
    elected after that leader's SIGKILL (epoch e1): (first node, e0, second node, e1)."""
    view = cluster.create_topic(topic, partitions=1, replication_factor=3)
    wait_fully_in_sync(cluster, topic, [0])
    first, e0 = cluster.node(view[0]["leader"]), view[0]["leader_epoch"]
    assert ck_produce(ck_producer(first, acks="all"), topic,
                      [f"e0-{i}".encode() for i in range(5)]) == [(None, 0, i) for i in range(5)]
    # On every replica before the kill: this is about epochs, not about what acks=all waits
    # for (the failover tests above judge that).
    wait_identical(cluster, topic, 0, cluster.nodes)
    first.kill()
    view = wait_partition(cluster, topic, 0, new_leader(first.node_id, e0),
                          f"a leader other than {first.node_id}", cluster.others(first))
    second, e1 = cluster.node(view["leader"]), view["leader_epoch"]
    assert ck_produce(ck_producer(second, acks="all"), topic,
                      [f"e1-{i}".encode() for i in range(3)]) == [(None, 0, 5 + i)
                                                                  for i in range(3)]
    return first, e0, second, e1


def test_metadata_leader_epochs_grow_with_failover_and_stale_ones_are_fenced(start_cluster):
    cluster = start_cluster(3)
    first, e0, second, e1 = produce_failover_produce(cluster, "fencing")
    assert e1 > e0
    for node in cluster.others(first):  # every survivor tells the new epoch
        info = partitions_of(cluster, "fencing", node)[0]
        assert (info["leader"], info["leader_epoch"]) == (second.node_id, e1), (node, info)
    with wire.Conn(second.address) as conn:
        assert wire.list_offset_v4(conn, "fencing", 0, -1, e0)[0] == wire.FENCED_LEADER_EPOCH
        assert wire.list_offset_v4(conn, "fencing", 0, -1, e1 + 1)[0] == (
            wire.UNKNOWN_LEADER_EPOCH)
        assert wire.list_offset_v4(conn, "fencing", 0, -1, e1)[:2] == (wire.NONE, 8)
        assert wire.list_offset_v4(conn, "fencing", 0, -2, e1)[:2] == (wire.NONE, 0)
        error, _, _ = wire.fetch(conn, "fencing", 0, 0, current_leader_epoch=e0)
        assert error == wire.FENCED_LEADER_EPOCH
        error, _, _ = wire.fetch(conn, "fencing", 0, 0, current_leader_epoch=e1 + 1)
        assert error == wire.UNKNOWN_LEADER_EPOCH
        error, hw, batches = wire.fetch(conn, "fencing", 0, 0, current_leader_epoch=e1)
        assert (error, hw, [v for b in batches for v in b["values"]]) == (
            wire.NONE, 8, [f"e0-{i}".encode() for i in range(5)]
            + [f"e1-{i}".encode() for i in range(3)])


def test_offset_for_leader_epoch_tells_where_each_epoch_ended(start_cluster):
    cluster = start_cluster(3)
    first, e0, second, e1 = produce_failover_produce(cluster, "epoch-ends")
    with wire.Conn(second.address) as conn:
        # Epoch e0 ended where e1 began; the current epoch ends at the log end.
        assert wire.offset_for_leader_epoch(conn, "epoch-ends", 0, e0, e1) == (wire.NONE, e0, 5)
        assert wire.offset_for_leader_epoch(conn, "epoch-ends", 0, e1, e1) == (wire.NONE, e1, 8)
        error, _, _ = wire.offset_for_leader_epoch(conn, "epoch-ends", 0, e1, e0)
        assert error == wire.FENCED_LEADER_EPOCH
        # The batches carry the epoch of the leader that appended them.
        _, _, batches = wire.fetch(conn, "epoch-ends", 0, 0)
    stamped = {v: b["partition_leader_epoch"] for b in batches for v in b["values"]}
    assert stamped == {**{f"e0-{i}".encode(): e0 for i in range(5)},
                       **{f"e1-{i}".encode(): e1 for i in range(3)}}, stamped
    # Only the leader answers.
    for follower in cluster.others(second):
        with wire.Conn(follower.address) as conn:
            error, _, _ = wire.offset_for_leader_epoch(conn, "epoch-ends", 0, e0, e1)
        assert error == wire.NOT_LEADER_OR_FOLLOWER, (follower, error)


# --- 7. the preferred leader comes back -------------------------------------------------------
def test_the_preferred_leader_takes_its_partition_back_once_in_sync(start_cluster, report):
    cluster = start_cluster(3, extra_args=["--leader-imbalance-check-interval-ms", "1000"])
    topic = "preferred"
    view = cluster.create_topic(topic, partitions=1, replication_factor=3)
    preferred = cluster.node(view[0]["replicas"][0])
    view = wait_partition(cluster, topic, 0, lambda info: info["leader"] == preferred.node_id
                          and sorted(info["isr"]) == [1, 2, 3], "led by its first replica")

    preferred.kill()
    survivors = cluster.others(preferred)
    moved = wait_partition(cluster, topic, 0,
                           new_leader(preferred.node_id, view["leader_epoch"]),
                           f"a leader other than {preferred.node_id}", survivors)
    values = [f"while-away-{i}".encode() for i in range(20)]
    assert ck_produce(ck_producer(cluster.node(moved["leader"]), acks="all"), topic,
                      values) == [(None, 0, i) for i in range(20)]

    preferred.start()
    started_s = time.monotonic()
    back = wait_partition(cluster, topic, 0, lambda info: info["leader"] == preferred.node_id
                          and sorted(info["isr"]) == [1, 2, 3],
                          f"leadership back at {preferred.node_id}", timeout_s=30)
    report(f"preferred leader {preferred.node_id} led again {time.monotonic() - started_s:.2f}s "
           "after its restart")
    assert back["leader_epoch"] > moved["leader_epoch"], back
    assert values_of(read_back(cluster.bootstrap, topic, [0])) == values
