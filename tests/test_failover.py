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
CLIENT_TIMEOUT_S = 30.0


@pytest.fixture
def report(capsys):
    """Print a measurement even without -s (pytest would capture it)."""
    def say(text):
        with capsys.disabled():
            print(f"\n[failover] {text}", flush=True)
    return say


# --- the history of a run, and its judge -------------------------------------------------------
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


# --- clients that run while the test breaks the cluster ----------------------------------------
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
        self.undelivered = producer.flush(FLUSH_DEADLINE_S)

    def stop(self):
        self.stopping.set()
        self.join(FLUSH_DEADLINE_S + 15)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.crash is None, f"{self.name} crashed: {self.crash!r}"
        with self.history.lock:
            reported = {v for items in self.history.acked.values() for _, v in items}
            reported |= set(self.history.unknown)
            for values in self.history.sent.values():
                for v in values:
                    if v not in reported:
                        self.history.unknown[v] = "no delivery report"

    def wait_progress(self, partitions, after_s, what, deadline_s=PROGRESS_DEADLINE_S):
        """Wait until each of `partitions` has an acknowledgement later than `after_s`;
        returns the monotonic time when that was seen."""
        def acked():
            assert not self.fatal, f"producer fatal error: {self.fatal}"
            assert self.crash is None, f"producer crashed: {self.crash!r}"
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


# --- what the cluster says ---------------------------------------------------------------------
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


# --- 1. failover under load ---------------------------------------------------------------------
@pytest.mark.timeout(90 + 40 * FAILOVER_KILLS)
def test_acknowledged_messages_survive_sigkills_of_leaders_under_load(start_cluster, report):
    cluster = start_cluster(3, extra_args=GROUP_ARGS)
    topic, partitions = "failover", range(3)
    cluster.create_topic(topic, partitions=3, replication_factor=3)
    wait_fully_in_sync(cluster, topic, partitions)
    history = History()
    producer = LoadProducer(cluster.bootstrap, topic, partitions, history, "load",
                            enable_idempotence=True, acks="all", message_timeout_ms=60000)
    group = Reader(cluster.bootstrap, topic, partitions, group="failover-group")
    producer.start()
    group.start()
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
    finally:
        producer.stop()
    assert not producer.fatal, f"producer fatal errors: {producer.fatal}"
    log = read_back(cluster.bootstrap, topic, partitions)
    assert_history_holds(history, log)
    try:
        group.wait_seen(history.acked_values())
    finally:
        group.stop()
    report(f"{FAILOVER_KILLS} leader kills: {history.acked_total()} acknowledged, "
           f"{len(history.unknown)} unknown, longest stall per kill "
           f"{[round(s, 2) for s in stalls]} (max {max(stalls, default=0):.2f}s)")
