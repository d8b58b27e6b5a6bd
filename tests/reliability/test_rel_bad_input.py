"""Bad input never takes the broker down.

Garbage, truncated frames, negative and huge lengths, array counts that would allocate
gigabytes, unknown API keys and versions, requests for topics that do not exist: each gets
an error answer or a closed connection, the broker's RSS stays bounded, and a well-behaved
client on its own connections keeps producing and consuming throughout.
"""

import os
import random
import signal
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from rel_harness import (Broker, RawConnection, auto_create, api_versions_v0, fetch_v4, fetch_v4_response,
                         frame, kstring, metadata_v1, produce_v3, record_batch,
                         request_header, wait_until)

MAX_FRAME_BYTES = 4 << 20
BUFFERED_BYTES_PER_SHARD = 16 << 20
CORES = 2
# Growth allowed over the whole attack: the shards' request budgets plus allocator slack.
RSS_GROWTH_MAX_BYTES = CORES * BUFFERED_BYTES_PER_SHARD + (48 << 20)


class GoodClient:
    """Produces (acks=all) and consumes topic `good` in a thread; records progress times."""

    def __init__(self, bootstrap):
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 1})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "good",
                                  "check.crcs": True, "enable.auto.commit": False})
        self.consumer.assign([TopicPartition("good", 0, 0)])
        self.acked = 0
        self.consumed = 0
        self.errors = []
        self.progress = []  # monotonic times at which a record was consumed
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(f"produce: {err}")
        else:
            self.acked += 1

    def _run(self):
        seq = 0
        while not self.stop_flag.is_set():
            if seq - self.acked < 20:
                self.producer.produce("good", f"good-{seq}".encode(), partition=0,
                                      on_delivery=self._on_delivery)
                seq += 1
            self.producer.poll(0)
            msg = self.consumer.poll(0.01)
            if msg is None:
                continue
            if msg.error():
                self.errors.append(f"consume: {msg.error()}")
                continue
            expected = f"good-{self.consumed}".encode()
            if msg.value() != expected:
                self.errors.append(f"consumed {msg.value()!r}, expected {expected!r}")
            self.consumed += 1
            self.progress.append(time.monotonic())

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=30)
        self.producer.flush(10)
        self.consumer.close()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("bad") / "data", cores=CORES, extra_args=[
        "--max-frame-bytes", str(MAX_FRAME_BYTES),
        "--max-buffered-bytes-per-shard", str(BUFFERED_BYTES_PER_SHARD),
        "--max-message-bytes", str(1 << 20),
        "--auto-create-topics", "false",
    ])
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("good", 1, 1)])["good"].result(timeout=30)
    client = GoodClient(broker.bootstrap)
    client.thread.start()
    wait_until(lambda: client.consumed >= 20, 30, "the good client to make progress")
    broker.rss_start = broker.rss_bytes()
    broker.attack_started = time.monotonic()
    yield broker, client
    client.stop()
    broker.stop()


def expect_closed(broker, data: bytes, timeout_s=10.0):
    conn = RawConnection(broker.port)
    try:
        try:
            conn.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return
        assert conn.closed_by_peer(timeout_s), f"connection not closed after {data[:16]!r}"
    finally:
        conn.close()


def answer_of(broker, data: bytes) -> bytes:
    conn = RawConnection(broker.port)
    try:
        conn.send(data)
        return conn.recv_frame()
    finally:
        conn.close()


def test_garbage_closes_the_connection(attacked):
    broker, _ = attacked
    rng = random.Random(6)
    for _ in range(50):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(4, 4096)))
        conn = RawConnection(broker.port)
        try:
            conn.send(blob)
            conn.sock.shutdown(socket.SHUT_WR)
            # Either closed at once (bad size or header) or after our EOF mid-frame.
            assert conn.closed_by_peer(10), f"not closed after garbage {blob[:8].hex()}"
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            conn.close()
    assert broker.alive()


@pytest.mark.parametrize("size", [-1, -(2**31), MAX_FRAME_BYTES + 1, 2**31 - 1])
def test_negative_or_huge_frame_size_closes_the_connection(attacked, size):
    broker, _ = attacked
    before = broker.rss_bytes()
    expect_closed(broker, struct.pack(">i", size) + b"\x00" * 16)
    assert broker.rss_bytes() - before < 8 << 20
    assert broker.alive()


def test_frames_too_short_for_a_header_close_the_connection(attacked):
    broker, _ = attacked
    for body in [b"", b"\x00", b"\x00\x12\x00\x00\x00\x00\x00"]:
        expect_closed(broker, frame(body))


def test_truncated_frames_from_vanishing_peers_are_dropped(attacked):
    broker, _ = attacked
    whole = produce_v3("good", 0, record_batch([b"x" * 100]))
    for cut in [2, 4, 10, len(whole) // 2, len(whole) - 1]:
        conn = RawConnection(broker.port)
        conn.send(whole[:cut])
        conn.close()
    # Same, but with the peer sending a reset instead of a FIN.
    conn = RawConnection(broker.port)
    conn.send(whole[: len(whole) // 2])
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert answer_of(broker, api_versions_v0())[:4] == struct.pack(">i", 1)


def test_claimed_frames_that_never_arrive_do_not_grow_memory(attacked):
    """Connections announcing max-size frames and then sending almost nothing: the broker
    may not allocate a frame-sized buffer per connection beyond its per-shard budget."""
    broker, _ = attacked
    before = broker.rss_bytes()
    conns = []
    try:
        for _ in range(40):  # 40 x 4 MiB = 160 MiB if each claim were backed by memory
            conn = RawConnection(broker.port)
            conn.send(struct.pack(">i", MAX_FRAME_BYTES) + request_header(0, 3, 1) + b"\x00" * 64)
            conns.append(conn)
        # Give the broker the chance to act on every claim: answer a request after them.
        assert answer_of(broker, api_versions_v0())[:4] == struct.pack(">i", 1)
        grown = broker.rss_bytes() - before
        assert grown < CORES * BUFFERED_BYTES_PER_SHARD + (16 << 20), (
            f"RSS grew by {grown >> 20} MiB for 40 unfinished frame claims")
    finally:
        for conn in conns:
            conn.close()
    assert broker.alive()


def test_hostile_array_counts_close_the_connection_without_allocating(attacked):
    broker, _ = attacked
    before = broker.rss_bytes()
    # Metadata v1 asking for 2^31-1 topics in a 20-byte frame.
    expect_closed(broker, frame(request_header(3, 1, 1) + struct.pack(">i", 2**31 - 1)))
    # Produce v3 with 2^31-1 topics, then with 2^31-1 partitions.
    head = request_header(0, 3, 1) + struct.pack(">hhi", -1, -1, 1000)
    expect_closed(broker, frame(head + struct.pack(">i", 2**31 - 1)))
    expect_closed(broker, frame(head + struct.pack(">i", 1) + kstring("good")
                                + struct.pack(">i", 2**31 - 1)))
    # Fetch v4 with 2^31-1 topics; CreateTopics v2 with 2^31-1 topics.
    expect_closed(broker, frame(request_header(1, 4, 1) + struct.pack(">iiiib", -1, 0, 0, 1, 0)
                                + struct.pack(">i", 2**31 - 1)))
    expect_closed(broker, frame(request_header(19, 2, 1) + struct.pack(">i", 2**31 - 1)))
    # A string length beyond the frame.
    expect_closed(broker, frame(request_header(3, 1, 1) + struct.pack(">ih", 1, 32767)))
    assert broker.rss_bytes() - before < 8 << 20
    assert broker.alive()


@pytest.mark.parametrize("key,version", [(999, 0), (-1, 0), (57, 0), (0, 2), (0, 99), (1, 3),
                                         (3, 0), (3, 99)])
def test_unknown_api_keys_and_versions_close_the_connection(attacked, key, version):
    broker, _ = attacked
    expect_closed(broker, frame(request_header(key, version, 7) + b"\x00" * 32))


def test_unknown_api_versions_version_gets_error_35_and_our_ranges(attacked):
    broker, _ = attacked
    answer = answer_of(broker, frame(request_header(18, 99, 42)))
    correlation, error, count = struct.unpack_from(">ihi", answer, 0)
    assert (correlation, error) == (42, 35)
    assert count >= 5


def test_missing_topics_get_unknown_topic_errors(attacked):
    broker, _ = attacked
    answer = answer_of(broker, metadata_v1(["no-such-topic"]))
    # v1: correlation, brokers[...], controller, topics[error, name, internal, partitions]
    pos = 4
    (brokers,) = struct.unpack_from(">i", answer, pos)
    pos += 4
    for _ in range(brokers):
        pos += 4
        (n,) = struct.unpack_from(">h", answer, pos)
        pos += 2 + n + 4
        (n,) = struct.unpack_from(">h", answer, pos)
        pos += 2 + max(n, 0)
    pos += 4
    (topics,) = struct.unpack_from(">i", answer, pos)
    (error,) = struct.unpack_from(">h", answer, pos + 4)
    assert (topics, error) == (1, 3)

    answer = answer_of(broker, produce_v3("no-such-topic", 0, record_batch([b"x"])))
    error = struct.unpack_from(">h", answer, 4 + 4 + 2 + len("no-such-topic") + 4 + 4)[0]
    assert error == 3
    answer = answer_of(broker, produce_v3("good", 7, record_batch([b"x"])))
    assert struct.unpack_from(">h", answer, 4 + 4 + 2 + 4 + 4 + 4)[0] == 3
    error, hw, records = fetch_v4_response(answer_of(broker, fetch_v4("no-such-topic", 0, 0)))
    assert (error, records) == (3, b"")


def test_bad_record_batches_get_error_codes_and_are_not_stored(attacked):
    broker, _ = attacked
    good = record_batch([b"hello"])
    hw_before = fetch_v4_response(answer_of(broker, fetch_v4("good", 0, 0, max_bytes=1)))[1]
    cases = {
        "flipped CRC": good[:-1] + bytes([good[-1] ^ 1]),
        "magic 1": good[:16] + b"\x01" + good[17:],
        "length beyond the records": good[:8] + struct.pack(">i", 10_000) + good[12:],
        "length below a header": good[:8] + struct.pack(">i", 3) + good[12:],
        "truncated": good[:40],
        "count mismatch": good[:57] + struct.pack(">i", 9) + good[61:],
    }
    for name, records in cases.items():
        answer = answer_of(broker, produce_v3("good", 0, records))
        error = struct.unpack_from(">h", answer, 4 + 4 + 2 + 4 + 4 + 4)[0]
        assert error in (2, 43, 87), f"{name}: error {error}"
    hw_after = fetch_v4_response(answer_of(broker, fetch_v4("good", 0, 0, max_bytes=1)))[1]
    # The good client keeps appending; what matters is that every batch there is valid,
    # which its check.crcs consumer and the final test verify.
    assert hw_after >= hw_before


def test_many_bad_connections_at_once(attacked):
    broker, _ = attacked
    conns = []
    try:
        for i in range(300):
            conn = RawConnection(broker.port)
            # Negative sizes: a random positive one may be a valid size whose body never comes.
            conn.send(struct.pack(">i", -i - 1) if i % 2 else b"\xff" + os.urandom(63))
            conns.append(conn)
        for conn in conns:
            assert conn.closed_by_peer(10)
    finally:
        for conn in conns:
            conn.close()


def test_zz_broker_survived_and_the_good_client_never_stalled(attacked):
    broker, client = attacked
    # A little more progress after the last attack.
    consumed = client.consumed
    wait_until(lambda: client.consumed >= consumed + 20, 30, "more progress")
    assert broker.alive()
    assert not client.errors, client.errors[:5]
    during = [t for t in client.progress if t >= broker.attack_started]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert during, "no progress during the attack"
    assert max(gaps, default=0) < 2.0, f"the good client stalled for {max(gaps):.2f}s"
    grown = broker.rss_bytes() - broker.rss_start
    print(f"\nbad input: good client consumed {client.consumed} records, "
          f"longest stall {max(gaps, default=0) * 1000:.0f} ms, RSS grew {grown >> 20} MiB")
    assert grown < RSS_GROWTH_MAX_BYTES, f"RSS grew by {grown >> 20} MiB"


def test_creating_more_partitions_than_max_partitions_is_refused(rel_broker_factory):
    """One CreateTopics for more partitions than the broker has file descriptors for used
    them all up (100,000 partitions are allowed per request; this machine allows 20,000 open
    files): the broker then accepted no connection and could not open its catalog again at
    start. `--max-partitions` bounds the total; here 64 partitions with 256 open files."""
    broker = rel_broker_factory(cores=1, open_files_max=256,
                                extra_args=["--max-partitions", "64"]).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    with pytest.raises(Exception, match="max_partitions"):
        admin.create_topics([NewTopic("wide", 400, 1)])["wide"].result(timeout=60)
    admin.create_topics([NewTopic("fits", 60, 1)])["fits"].result(timeout=60)
    with pytest.raises(Exception, match="max_partitions"):
        admin.create_partitions([NewPartitions("fits", 65)])["fits"].result(timeout=60)
    assert broker.alive(), broker.this_run_log()[-2000:]
    auto_create(broker.port, "after")
    answer = answer_of(broker, produce_v3("after", 0, record_batch([b"still here"])))
    assert struct.unpack_from(">h", answer, 4 + 4 + 2 + len("after") + 4 + 4)[0] == 0
    assert broker.kill(signal.SIGTERM) == 0
    broker.start()
    assert "recovered log" not in broker.this_run_log()
