"""Bad input over a raw socket. Each test sends one kind of bad input on its own connection
and states what the broker answers (an error code, or a closed connection); then it checks
that the broker is still up, that a well-behaved client on another connection still
produces and consumes, and that data written before was not touched."""

import random
import socket
import struct
import threading

import pytest
from confluent_kafka import OFFSET_BEGINNING

import wire
from clients import ck_create_topic, ck_produce, ck_producer, ck_read

RSS_GROWTH_BYTES_MAX = 64 << 20


class Bystander:
    """Data written before the bad input, checked after it."""

    def __init__(self, broker):
        self.broker = broker
        ck_create_topic(broker, "bystander", partitions=2)
        self.sent = {p: [f"before-{p}-{i}".encode() for i in range(20)] for p in range(2)}
        producer = ck_producer(broker, acks="all")
        for p in range(2):
            ck_produce(producer, "bystander", self.sent[p], partition=p)

    def check(self):
        assert self.broker.is_running(), "the broker died"
        with wire.Conn(self.broker.address) as conn:
            for p in range(2):
                error, high_watermark, batches = wire.fetch(conn, "bystander", p, 0)
                assert (error, high_watermark) == (wire.NONE, 20)
                assert [v for b in batches for v in b["values"]] == self.sent[p]
        # A well-behaved client, on new connections, still produces and consumes.
        [(error, _, offset)] = ck_produce(ck_producer(self.broker, acks="all"), "bystander",
                                          [b"after"], partition=1)
        assert (error, offset) == (None, 20)
        got = ck_read(self.broker, "bystander", 1, OFFSET_BEGINNING, 21)
        assert [v for _, _, v, _ in got] == self.sent[1] + [b"after"]


@pytest.fixture
def bystander(broker):
    return Bystander(broker)


def send_and_expect_close(broker, data, half_close=False):
    with wire.Conn(broker.address) as conn:
        conn.send_raw(data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        assert conn.closed_by_peer(timeout_s=10), "the broker kept the connection open"


@pytest.mark.parametrize("api_key", [9999, 32767, -1])
def test_unknown_api_key_closes_that_connection(broker, bystander, api_key):
    send_and_expect_close(broker, wire.frame(api_key, 0, 1, b"\x00" * 16))
    bystander.check()


@pytest.mark.parametrize("api_key, version", [
    (wire.API_METADATA, 99),
    (wire.API_METADATA, -1),
    (wire.API_FETCH, 0),  # pre-RecordBatch fetch: not advertised
    (wire.API_PRODUCE, 2),  # advertised from v0 like Kafka 4, but message sets are refused
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


def test_truncated_frame_then_close_leaves_the_broker_serving(broker, bystander):
    full = wire.frame(wire.API_METADATA, 1, 1, wire.i32(-1))
    for cut in (1, 3, 4, 6, len(full) - 1):
        with wire.Conn(broker.address) as conn:
            conn.send_raw(full[:cut])
    # The same frame, whole, on a new connection is answered.
    with wire.Conn(broker.address) as conn:
        assert "bystander" in wire.metadata(conn, None)
    bystander.check()


@pytest.mark.parametrize("size", [-1, -2147483648, 2147483647, 100 * 1024 * 1024 + 1])
def test_negative_or_huge_frame_size_closes_the_connection_without_allocating(broker,
                                                                              bystander, size):
    rss_before = broker.rss_bytes()
    send_and_expect_close(broker, struct.pack(">i", size) + b"\x00" * 64)
    assert broker.rss_bytes() - rss_before < RSS_GROWTH_BYTES_MAX
    bystander.check()


@pytest.mark.parametrize("size", [0, 3, 4])
def test_frame_too_short_for_a_request_header_closes_the_connection(broker, bystander, size):
    send_and_expect_close(broker, struct.pack(">i", size) + b"\x00\x03\x00\x01"[:size])
    bystander.check()


def test_http_request_closes_the_connection(broker, bystander):
    send_and_expect_close(broker, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    bystander.check()


@pytest.mark.parametrize("seed", range(6))
def test_random_garbage_closes_the_connection(broker, bystander, seed):
    garbage = random.Random(seed).randbytes(4096)
    send_and_expect_close(broker, garbage, half_close=True)
    bystander.check()


def test_array_count_that_would_allocate_gigabytes_closes_the_connection(broker, bystander):
    rss_before = broker.rss_bytes()
    # Metadata v1 saying it names 2^31-1 topics, then one short name and the end of frame.
    send_and_expect_close(broker, wire.frame(wire.API_METADATA, 1, 1,
                                             wire.i32(2**31 - 1) + wire.string("x")))
    # Produce v3 with 2^31-1 topics.
    send_and_expect_close(broker, wire.frame(wire.API_PRODUCE, 3, 2, wire.string(None)
                                             + wire.i16(1) + wire.i32(1000)
                                             + wire.i32(2**31 - 1)))
    assert broker.rss_bytes() - rss_before < RSS_GROWTH_BYTES_MAX
    bystander.check()


def corrupt(batch, kind):
    b = bytearray(batch)
    if kind == "flipped-payload-byte":
        b[-3] ^= 0x20
    elif kind == "flipped-crc":
        b[17] ^= 0x01
    elif kind == "flipped-header-field":
        b[23] ^= 0x01  # last offset delta, covered by the CRC
    elif kind == "length-longer-than-data":
        b[8:12] = struct.pack(">i", len(b) - 12 + 100)
    elif kind == "length-shorter-than-header":
        b[8:12] = struct.pack(">i", 20)
    elif kind == "truncated-header":
        b = b[:40]
    return bytes(b)


@pytest.mark.parametrize("kind", ["flipped-payload-byte", "flipped-crc", "flipped-header-field",
                                  "length-longer-than-data", "length-shorter-than-header",
                                  "truncated-header"])
def test_corrupt_batch_gets_corrupt_message_for_its_partition_only(broker, bystander, kind):
    ck_create_topic(broker, "target", partitions=2)
    bad = corrupt(wire.record_batch([b"bad-0", b"bad-1"]), kind)
    good = wire.record_batch([b"good-0", b"good-1"])

    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "target", {0: bad, 1: good}, acks=-1)
        assert answer[0][0] == wire.CORRUPT_MESSAGE
        assert answer[1] == (wire.NONE, 0)
        # Nothing of the corrupt batch was appended; the connection still works.
        assert wire.fetch(conn, "target", 0, 0)[:2] == (wire.NONE, 0)
        assert wire.produce(conn, "target", {0: good}, acks=-1) == {0: (wire.NONE, 0)}
        error, high_watermark, batches = wire.fetch(conn, "target", 1, 0)
    assert (error, high_watermark) == (wire.NONE, 2)
    assert [v for b in batches for v in b["values"]] == [b"good-0", b"good-1"]
    bystander.check()


def test_produce_to_a_partition_that_does_not_exist_gets_unknown_topic_or_partition(broker,
                                                                                  bystander):
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "bystander", {7: wire.record_batch([b"nowhere"])})
    assert answer == {7: (wire.UNKNOWN_TOPIC_OR_PARTITION, -1)}
    bystander.check()


def test_pipelined_requests_are_answered_in_request_order(broker, bystander):
    requests = []
    for i in range(60):
        if i % 3 == 0:
            requests.append((wire.API_API_VERSIONS, 0, b""))
        elif i % 3 == 1:
            requests.append((wire.API_METADATA, 1, wire.array([wire.string("bystander")])))
        else:
            requests.append((wire.API_PRODUCE, 3, wire.produce_body(
                "bystander", {0: wire.record_batch([f"pipelined-{i}".encode()])})))
    with wire.Conn(broker.address) as conn:
        conn.send_raw(b"".join(wire.frame(k, v, 1000 + i, body)
                               for i, (k, v, body) in enumerate(requests)))
        correlation_ids = [wire.Reader(conn.recv_frame()).i32() for _ in requests]
    assert correlation_ids == [1000 + i for i in range(60)]
    with wire.Conn(broker.address) as conn:
        _, high_watermark, batches = wire.fetch(conn, "bystander", 0, 20)
    assert high_watermark == 40
    assert [v for b in batches for v in b["values"]] == \
        [f"pipelined-{i}".encode() for i in range(60) if i % 3 == 2]


def test_a_producer_on_another_connection_is_not_disturbed_by_bad_input(broker, bystander):
    ck_create_topic(broker, "steady")
    stop = threading.Event()
    outcome = {}

    def produce_steadily():
        producer = ck_producer(broker, acks="all", linger_ms=1)
        reports = []
        n = 0
        while not stop.is_set():
            reports += ck_produce(producer, "steady", [f"s{n + i}".encode() for i in range(20)])
            n += 20
        outcome["reports"] = reports

    thread = threading.Thread(target=produce_steadily)
    thread.start()
    try:
        for data in (struct.pack(">i", -1), b"GET / HTTP/1.0\r\n\r\n",
                     wire.frame(9999, 0, 1, b""), wire.frame(wire.API_METADATA, 99, 1, b""),
                     random.Random(1).randbytes(2000)):
            send_and_expect_close(broker, data, half_close=True)
    finally:
        stop.set()
        thread.join(timeout=60)
    reports = outcome["reports"]
    assert reports and all(err is None for err, _, _ in reports)
    assert [offset for _, _, offset in reports] == list(range(len(reports)))
    bystander.check()


def test_requests_for_topics_that_do_not_exist_get_unknown_topic_or_partition(start_broker):
    broker = start_broker(args=["--auto-create-topics", "false"])
    bystander = Bystander(broker)
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


def test_produce_with_null_or_empty_records_is_refused_for_that_partition(broker, bystander):
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "bystander", {0: None, 1: b""})
    assert answer[0][0] != wire.NONE and answer[1][0] != wire.NONE
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
    ck_create_topic(broker, "target")
    bad = with_attributes(wire.record_batch([b"poison"]), attributes)

    with wire.Conn(broker.address) as conn:
        [(error, base_offset)] = wire.produce(conn, "target", {0: bad}).values()
        high_watermark = wire.fetch(conn, "target", 0, 0)[1]

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
