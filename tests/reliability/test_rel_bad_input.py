"""Bad input never takes the broker down, and other connections never notice.

Each test sends one kind of bad input on connections of its own and states what the broker
answers: a Kafka error code, or a closed connection. The tests share one broker (two shards,
tight limits, auto-creation off) on which a well-behaved client produces (acks=all,
idempotent) and consumes (CRCs checked) all along. After its bad input each test checks,
for itself, that the broker is up, that the good client kept making progress while the bad
input came in (no stall of 2 s or more) and still does, that data written before the bad
input is intact and a new connection still produces and fetches, and that the broker's RSS
stayed within a bound. So the tests run in any order, alone or together; the module's end
also bounds the RSS growth over every test that ran.
"""

import os
import random
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import wire
from broker_process import wait_until
from clients import RDKAFKA_LOGGER, ck_create_topic, ck_produce, ck_producer

MAX_FRAME_BYTES = 4 << 20
BUFFERED_BYTES_PER_SHARD = 16 << 20
CORES = 2
# RSS growth allowed for one test, and for the whole module: the shards' request budgets
# plus allocator slack.
RSS_GROWTH_MAX_BYTES = CORES * BUFFERED_BYTES_PER_SHARD + (48 << 20)
# Longest the good client may go without consuming a record while bad input comes in.
STALL_MAX_S = 2.0
BYSTANDER_RECORDS = 20


class GoodClient:
    """Produces (acks=all, idempotent) and consumes topic `good` in a thread, checking that
    it reads back exactly what it sent, in order; records when each record was consumed."""

    def __init__(self, bootstrap):
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 1,
                                  "logger": RDKAFKA_LOGGER})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "good",
                                  "check.crcs": True, "enable.auto.commit": False,
                                  "logger": RDKAFKA_LOGGER})
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

    def longest_stall_s(self, since, until):
        times = [since] + [t for t in self.progress if since <= t <= until] + [until]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=30)
        self.producer.flush(10)
        self.consumer.close()


class Target:
    """The shared broker, its good client, and the bystander data written before any test."""

    def __init__(self, broker):
        self.broker = broker
        ck_create_topic(broker, "good")
        ck_create_topic(broker, "bystander", partitions=2)
        self.bystander = {p: [f"before-{p}-{i}".encode() for i in range(BYSTANDER_RECORDS)]
                          for p in range(2)}
        producer = ck_producer(broker, acks="all")
        for p, values in self.bystander.items():
            ck_produce(producer, "bystander", values, partition=p)
        self.client = GoodClient(broker.bootstrap)
        self.client.thread.start()
        wait_until(lambda: self.client.consumed >= 20, 30, "the good client to make progress")
        self.rss_start = broker.rss_bytes()


@pytest.fixture(scope="module")
def target(start_module_broker):
    broker = start_module_broker(name="target", cores=CORES, args=[
        "--max-frame-bytes", str(MAX_FRAME_BYTES),
        "--max-buffered-bytes-per-shard", str(BUFFERED_BYTES_PER_SHARD),
        "--max-message-bytes", str(1 << 20),
        "--auto-create-topics", "false",
    ])
    target = Target(broker)
    yield target
    target.client.stop()
    grown = broker.rss_bytes() - target.rss_start
    print(f"\nbad input: the good client consumed {target.client.consumed} records; "
          f"RSS grew {grown >> 20} MiB over the module")
    assert not target.client.errors, target.client.errors[:5]
    assert grown < RSS_GROWTH_MAX_BYTES, f"RSS grew by {grown >> 20} MiB over the module"


class Bystander:
    """What the test's bad input must not disturb; `check()` after the bad input."""

    def __init__(self, target):
        self.target = target
        self.broker = target.broker
        self.started = time.monotonic()
        self.rss_before = self.broker.rss_bytes()

    def check(self, rss_growth_max_bytes=RSS_GROWTH_MAX_BYTES):
        broker, client = self.broker, self.target.client
        assert broker.is_running(), "the broker died"
        grown = broker.rss_bytes() - self.rss_before
        assert grown < rss_growth_max_bytes, f"RSS grew by {grown >> 20} MiB"
        # The good client keeps going after the bad input, and went on during it.
        consumed = client.consumed
        wait_until(lambda: client.consumed >= consumed + 20, 30,
                   "the good client to make progress after the bad input")
        assert not client.errors, client.errors[:5]
        stall_s = client.longest_stall_s(self.started, time.monotonic())
        assert stall_s < STALL_MAX_S, f"the good client stalled for {stall_s:.2f}s"
        # Data written before is intact; a new connection produces and fetches.
        with wire.Conn(broker.address) as conn:
            for p, values in self.target.bystander.items():
                error, _, batches = wire.fetch(conn, "bystander", p, 0)
                assert error == wire.NONE and all(b["crc_ok"] for b in batches)
                assert [v for b in batches for v in b["values"]][:len(values)] == values
            end = wire.list_offset(conn, "bystander", 1, -1)[1]
            assert wire.produce(conn, "bystander", {1: wire.record_batch([b"after"])},
                                acks=-1) == {1: (wire.NONE, end)}
            error, _, batches = wire.fetch(conn, "bystander", 1, end)
            assert error == wire.NONE and batches[0]["values"] == [b"after"]


@pytest.fixture
def bystander(target):
    return Bystander(target)


@pytest.fixture
def broker(target):
    return target.broker


def send_and_expect_close(broker, data, half_close=False, drop_data=False):
    """Send `data` on a new connection; the broker must close it (within 10 s)."""
    with wire.Conn(broker.address) as conn:
        try:
            conn.send_raw(data)
            if half_close:
                conn.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed before we were done sending
        assert conn.closed_by_peer(timeout_s=10, drop_data=drop_data), \
            f"the broker kept the connection open after {data[:16]!r}"


# --- Framing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [-1, -2**31, MAX_FRAME_BYTES + 1, 100 * 1024 * 1024 + 1,
                                  2**31 - 1])
def test_negative_or_huge_frame_size_closes_the_connection_without_allocating(broker,
                                                                              bystander, size):
    send_and_expect_close(broker, struct.pack(">i", size) + b"\x00" * 64)
    bystander.check(rss_growth_max_bytes=8 << 20)


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x03\x00", b"\x00\x03\x00\x01",
                                  b"\x00\x12\x00\x00\x00\x00\x00"])
def test_frame_too_short_for_a_request_header_closes_the_connection(broker, bystander, body):
    send_and_expect_close(broker, struct.pack(">i", len(body)) + body)
    bystander.check()


def test_truncated_frames_from_vanishing_peers_leave_the_broker_serving(broker, bystander):
    for whole in (wire.metadata_request(["bystander"]),
                  wire.produce_request("bystander", 0, wire.record_batch([b"x" * 100]))):
        for cut in (1, 2, 3, 4, 6, 10, len(whole) // 2, len(whole) - 1):
            with wire.Conn(broker.address) as conn:  # FIN mid-frame
                conn.send_raw(whole[:cut])
        # The same, but with the peer sending a reset instead of a FIN.
        conn = wire.Conn(broker.address)
        conn.send_raw(whole[:len(whole) // 2])
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    # The frame, whole, on a new connection is answered.
    with wire.Conn(broker.address) as conn:
        assert "bystander" in wire.metadata(conn, None)
    bystander.check()


def test_claimed_frames_that_never_arrive_do_not_grow_memory(broker, bystander):
    """Connections announcing max-size frames and then sending almost nothing: the broker
    may not allocate a frame-sized buffer per connection beyond its per-shard budget."""
    conns = []
    try:
        for _ in range(40):  # 40 x 4 MiB = 160 MiB if each claim were backed by memory
            conn = wire.Conn(broker.address)
            conn.send_raw(struct.pack(">i", MAX_FRAME_BYTES)
                          + wire.frame(wire.API_PRODUCE, 3, 1, b"")[4:] + b"\x00" * 64)
            conns.append(conn)
        # The broker has read every claim once it read all that was sent.
        for conn in conns:
            wait_until(conn.broker_read_everything_sent, 10, "the broker to read each claim")
        bystander.check(rss_growth_max_bytes=CORES * BUFFERED_BYTES_PER_SHARD + (16 << 20))
    finally:
        for conn in conns:
            conn.close()


def test_many_bad_connections_at_once_are_each_closed(broker, bystander):
    conns = []
    try:
        for i in range(300):
            conn = wire.Conn(broker.address)
            # Negative sizes: a random positive one may be a valid size whose body never comes.
            conn.send_raw(struct.pack(">i", -i - 1) if i % 2 else b"\xff" + os.urandom(63))
            conns.append(conn)
        for conn in conns:
            assert conn.closed_by_peer(10)
    finally:
        for conn in conns:
            conn.close()
    bystander.check()


# --- Not Kafka at all --------------------------------------------------------------------------
def test_http_request_closes_the_connection(broker, bystander):
    send_and_expect_close(broker, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    bystander.check()


def test_random_garbage_closes_the_connection(broker, bystander):
    rng = random.Random(6)
    for _ in range(50):
        garbage = rng.randbytes(rng.randrange(4, 4096))
        # Closed at once (bad size or header) or at our EOF mid-frame; random bytes may
        # happen to hold a request the broker answers first.
        send_and_expect_close(broker, garbage, half_close=True, drop_data=True)
    bystander.check()


# --- Headers: API keys and versions ----------------------------------------------------------
@pytest.mark.parametrize("api_key", [57, 9999, 32767, -1])
def test_unknown_api_key_closes_that_connection(broker, bystander, api_key):
    send_and_expect_close(broker, wire.frame(api_key, 0, 1, b"\x00" * 16))
    bystander.check()


@pytest.mark.parametrize("api_key, version", [
    (wire.API_METADATA, 99),
    (wire.API_METADATA, -1),
    (wire.API_METADATA, 0),  # before the first version we advertise
    (wire.API_FETCH, 0),  # pre-RecordBatch fetch: not advertised
    (wire.API_FETCH, 3),
    (wire.API_PRODUCE, 2),  # advertised from v0 like Kafka 4, but message sets are refused
    (wire.API_PRODUCE, 99),
])
def test_unsupported_version_of_a_known_api_closes_that_connection(broker, bystander, api_key,
                                                                   version):
    body = wire.produce_body("bystander", {0: wire.record_batch([b"v2"])}) \
        if api_key == wire.API_PRODUCE else wire.i32(-1)
    send_and_expect_close(broker, wire.frame(api_key, version, 1, body))
    bystander.check()


def test_api_versions_at_an_unknown_version_answers_error_35_with_a_v0_body(broker, bystander):
    # A future client: flexible header v2 (tagged fields) and a body we cannot know.
    header = (wire.i16(wire.API_API_VERSIONS) + wire.i16(999) + wire.i32(7)
              + wire.string("future-client") + b"\x00")
    body = b"\x0dsome-client\x041.0\x00"
    with wire.Conn(broker.address) as conn:
        conn.send_raw(wire.i32(len(header + body)) + header + body)
        r = wire.Reader(conn.recv_frame())
        assert r.i32() == 7  # response header v0: correlation id only
        error = r.i16()
        ranges = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
        assert r.done(), "a v0 body has nothing after the api keys array"
        assert error == wire.UNSUPPORTED_VERSION
        advertised = {k: (lo, hi) for k, lo, hi in ranges}
        assert advertised[wire.API_API_VERSIONS][0] == 0 <= 3 <= advertised[wire.API_API_VERSIONS][1]
        assert wire.API_PRODUCE in advertised and wire.API_FETCH in advertised
        # The client steps down on the same connection.
        assert wire.api_versions(conn, 0) == (wire.NONE, advertised)
    bystander.check()


def test_api_versions_v3_flexible_request_is_answered_in_full(broker):
    header = (wire.i16(wire.API_API_VERSIONS) + wire.i16(3) + wire.i32(11)
              + wire.string("flex") + b"\x00")
    body = b"\x05flex\x041.0\x00"  # compact strings: length + 1
    with wire.Conn(broker.address) as conn:
        conn.send_raw(wire.i32(len(header + body)) + header + body)
        r = wire.Reader(conn.recv_frame())
        assert r.i32() == 11
        assert r.i16() == wire.NONE
        count = _uvarint(r) - 1  # compact array: length + 1
        keys = []
        for _ in range(count):
            keys.append(r.i16())
            r.i16()
            r.i16()
            assert _uvarint(r) == 0, "no tagged fields in api key entries (trap for old librdkafka)"
        r.i32()  # throttle time
        assert _uvarint(r) == 0
        assert r.done()
    assert {wire.API_PRODUCE, wire.API_FETCH, wire.API_METADATA, wire.API_API_VERSIONS} <= set(keys)


def _uvarint(r):
    shift = 0
    value = 0
    while True:
        b = r.take(1)[0]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7


# --- Bodies: counts and lengths that lie -------------------------------------------------------
PRODUCE_HEAD = wire.string(None) + wire.i16(1) + wire.i32(1000)
HOSTILE = {
    # Metadata v1 saying it names 2^31-1 topics, then one short name and the end of frame.
    "metadata-topics": (wire.API_METADATA, 1, wire.i32(2**31 - 1) + wire.string("x")),
    "produce-topics": (wire.API_PRODUCE, 3, PRODUCE_HEAD + wire.i32(2**31 - 1)),
    "produce-partitions": (wire.API_PRODUCE, 3, PRODUCE_HEAD + wire.i32(1) + wire.string("good")
                           + wire.i32(2**31 - 1)),
    "fetch-topics": (wire.API_FETCH, 4, wire.i32(-1) + wire.i32(0) + wire.i32(0) + wire.i32(1)
                     + wire.i8(0) + wire.i32(2**31 - 1)),
    "create-topics-topics": (19, 2, wire.i32(2**31 - 1)),
    "string-longer-than-the-frame": (wire.API_METADATA, 1, wire.i32(1) + wire.i16(32767)),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_count_that_would_allocate_gigabytes_closes_the_connection(broker, bystander, what):
    api_key, version, body = HOSTILE[what]
    send_and_expect_close(broker, wire.frame(api_key, version, 1, body))
    bystander.check(rss_growth_max_bytes=8 << 20)


# --- Record batches ----------------------------------------------------------------------------
def corrupt(batch, kind):
    b = bytearray(batch)
    if kind == "flipped-payload-byte":
        b[-3] ^= 0x20
    elif kind == "flipped-crc":
        b[17] ^= 0x01
    elif kind == "flipped-header-field":
        b[23] ^= 0x01  # last offset delta, covered by the CRC
    elif kind == "record-count-changed":
        b[57:61] = struct.pack(">i", 9)  # covered by the CRC
    elif kind == "length-longer-than-data":
        b[8:12] = struct.pack(">i", len(b) - 12 + 100)
    elif kind == "length-shorter-than-header":
        b[8:12] = struct.pack(">i", 20)
    elif kind == "truncated-header":
        b = b[:40]
    return bytes(b)


@pytest.mark.parametrize("kind", ["flipped-payload-byte", "flipped-crc", "flipped-header-field",
                                  "record-count-changed", "length-longer-than-data",
                                  "length-shorter-than-header", "truncated-header"])
def test_corrupt_batch_gets_corrupt_message_for_its_partition_only(broker, bystander, kind):
    topic = f"corrupt-{kind}"
    ck_create_topic(broker, topic, partitions=2)
    bad = corrupt(wire.record_batch([b"bad-0", b"bad-1"]), kind)
    good = wire.record_batch([b"good-0", b"good-1"])

    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, topic, {0: bad, 1: good}, acks=-1)
        assert answer[0][0] == wire.CORRUPT_MESSAGE
        assert answer[1] == (wire.NONE, 0)
        # Nothing of the corrupt batch was appended; the connection still works.
        assert wire.fetch(conn, topic, 0, 0)[:2] == (wire.NONE, 0)
        assert wire.produce(conn, topic, {0: good}, acks=-1) == {0: (wire.NONE, 0)}
        error, high_watermark, batches = wire.fetch(conn, topic, 1, 0)
    assert (error, high_watermark) == (wire.NONE, 2)
    assert [v for b in batches for v in b["values"]] == [b"good-0", b"good-1"]
    bystander.check()


def with_attributes(batch, attributes):
    """The same batch with other attributes and a CRC that matches them."""
    b = bytearray(batch)
    b[21:23] = struct.pack(">h", attributes)
    b[17:21] = struct.pack(">I", wire.crc32c(bytes(b[21:])))
    return bytes(b)


@pytest.mark.parametrize("attributes, what", [
    (5, "compression codec 5 (none such)"),
    (7, "compression codec 7 (none such)"),
    (0x20, "a control batch (only brokers write those)"),
])
def test_batch_no_consumer_could_read_is_refused_for_its_partition(broker, bystander,
                                                                   attributes, what):
    topic = f"poison-{attributes}"
    ck_create_topic(broker, topic)
    bad = with_attributes(wire.record_batch([b"poison"]), attributes)

    with wire.Conn(broker.address) as conn:
        [(error, base_offset)] = wire.produce(conn, topic, {0: bad}).values()
        high_watermark = wire.fetch(conn, topic, 0, 0)[1]

    assert error != wire.NONE and base_offset == -1, f"{what} was accepted at {base_offset}"
    assert high_watermark == 0
    bystander.check()


@pytest.mark.parametrize("magic", [0, 1])
def test_old_message_format_gets_unsupported_for_message_format(broker, bystander, magic):
    batch = bytearray(wire.record_batch([b"old"]))
    batch[16] = magic
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "bystander", {0: bytes(batch)})
    assert answer == {0: (43, -1)}
    bystander.check()


def test_produce_with_null_or_empty_records_is_refused_for_that_partition(broker, bystander):
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "bystander", {0: None, 1: b""})
    assert answer[0][0] != wire.NONE and answer[1][0] != wire.NONE
    bystander.check()


# --- Topics and partitions that do not exist -------------------------------------------------
def test_produce_to_a_partition_that_does_not_exist_gets_unknown_topic_or_partition(broker,
                                                                                  bystander):
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "bystander", {7: wire.record_batch([b"nowhere"])})
    assert answer == {7: (wire.UNKNOWN_TOPIC_OR_PARTITION, -1)}
    bystander.check()


def test_requests_for_topics_that_do_not_exist_get_unknown_topic_or_partition(broker, bystander):
    # Auto-creation is off on this broker.
    with wire.Conn(broker.address) as conn:
        assert wire.fetch(conn, "missing", 0, 0)[0] == wire.UNKNOWN_TOPIC_OR_PARTITION
        assert wire.fetch(conn, "bystander", 9, 0)[0] == wire.UNKNOWN_TOPIC_OR_PARTITION
        assert wire.fetch(conn, "bystander", -1, 0)[0] == wire.UNKNOWN_TOPIC_OR_PARTITION
        assert wire.list_offset(conn, "missing", 0, -1)[0] == wire.UNKNOWN_TOPIC_OR_PARTITION
        assert wire.produce(conn, "missing", {0: wire.record_batch([b"x"])}) == \
            {0: (wire.UNKNOWN_TOPIC_OR_PARTITION, -1)}
        assert wire.produce(conn, "bystander", {-1: wire.record_batch([b"x"])}) == \
            {-1: (wire.UNKNOWN_TOPIC_OR_PARTITION, -1)}
        assert wire.metadata(conn, ["missing"]) == {"missing": (wire.UNKNOWN_TOPIC_OR_PARTITION, {})}
    bystander.check()


# --- Pipelining ------------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_request_order(broker, bystander):
    ck_create_topic(broker, "pipelined")
    requests = []
    for i in range(60):
        if i % 3 == 0:
            requests.append((wire.API_API_VERSIONS, 0, b""))
        elif i % 3 == 1:
            requests.append((wire.API_METADATA, 1, wire.array([wire.string("pipelined")])))
        else:
            requests.append((wire.API_PRODUCE, 3, wire.produce_body(
                "pipelined", {0: wire.record_batch([f"pipelined-{i}".encode()])})))
    with wire.Conn(broker.address) as conn:
        conn.send_raw(b"".join(wire.frame(k, v, 1000 + i, body)
                               for i, (k, v, body) in enumerate(requests)))
        correlation_ids = [wire.correlation_id(conn.recv_frame()) for _ in requests]
    assert correlation_ids == [1000 + i for i in range(60)]
    with wire.Conn(broker.address) as conn:
        _, high_watermark, batches = wire.fetch(conn, "pipelined", 0, 0)
    assert high_watermark == 20
    assert [v for b in batches for v in b["values"]] == \
        [f"pipelined-{i}".encode() for i in range(60) if i % 3 == 2]
    bystander.check()
