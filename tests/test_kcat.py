"""kcat 1.7.1 (Debian's, with librdkafka 2.0.2: older than 2.2, which mis-skips non-empty
tagged fields) against the real broker: metadata, auto-create, acks, codecs, offsets."""

import json
import time

import pytest

import wire
from clients import ck_create_topic, ck_offsets, ck_produce, ck_producer, kcat


def lines(n, prefix="line"):
    return [f"{prefix}-{i:04d}" for i in range(n)]


def kcat_produce(broker, topic, messages, *args):
    kcat(broker, "-P", "-t", topic, "-p", "0", *args, stdin=("\n".join(messages) + "\n").encode())


def kcat_consume(broker, topic, *args):
    """Consume partition 0 until its end; return (offset, value) pairs."""
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-e", "-q", "-f", "%o %s\\n", *args)
    pairs = []
    for line in out.decode().splitlines():
        offset, value = line.split(" ", 1)
        pairs.append((int(offset), value))
    return pairs


def test_metadata_lists_the_advertised_broker_and_topics(broker):
    ck_create_topic(broker, "listed", partitions=3)

    md = json.loads(kcat(broker, "-L", "-J"))

    assert [b["name"] for b in md["brokers"]] == [broker.bootstrap]
    [topic] = [t for t in md["topics"] if t["topic"] == "listed"]
    assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1, 2]


def test_producing_to_an_unknown_topic_creates_it_with_the_default_partition_count(start_broker):
    broker = start_broker(args=["--num-partitions", "2"])

    kcat_produce(broker, "auto", lines(5))

    md = json.loads(kcat(broker, "-L", "-J", "-t", "auto"))
    [topic] = md["topics"]
    assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1]
    assert kcat_consume(broker, "auto", "-o", "beginning") == list(enumerate(lines(5)))


@pytest.mark.parametrize("acks", ["0", "1", "-1"])
def test_produce_at_each_acks_level_then_consume_from_beginning(broker, acks):
    ck_create_topic(broker, "events")

    kcat_produce(broker, "events", lines(100), "-X", f"request.required.acks={acks}")

    assert kcat_consume(broker, "events", "-o", "beginning") == list(enumerate(lines(100)))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_each_compression_codec_round_trips(broker, codec):
    ck_create_topic(broker, "compressed")
    sent = [line + "x" * 100 for line in lines(300, prefix=codec)]

    kcat_produce(broker, "compressed", sent, "-z", codec, "-X", "linger.ms=50")

    assert kcat_consume(broker, "compressed", "-o", "beginning") == list(enumerate(sent))
    with wire.Conn(broker.address) as conn:
        _, _, batches = wire.fetch(conn, "compressed", 0, 0, max_bytes=8 << 20)
    codec_id = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    assert batches and all(b["compression"] == codec_id and b["crc_ok"] for b in batches)


def test_consume_from_an_absolute_offset_and_relative_to_the_end(broker):
    ck_create_topic(broker, "log")
    kcat_produce(broker, "log", lines(20))

    assert kcat_consume(broker, "log", "-o", "15") == list(enumerate(lines(20)))[15:]
    assert kcat_consume(broker, "log", "-o", "-3") == list(enumerate(lines(20)))[17:]
    assert kcat_consume(broker, "log", "-o", "end") == []


def test_consume_from_a_timestamp_starts_at_the_first_message_at_or_after_it(broker):
    ck_create_topic(broker, "timed")
    t0 = int(time.time() * 1000) - 60_000
    producer = ck_producer(broker, linger_ms=0)
    for i in range(8):
        ck_produce(producer, "timed", [f"t{i}".encode()], timestamps=[t0 + 1000 * i])

    got = kcat_consume(broker, "timed", "-o", f"s@{t0 + 4500}")

    assert got == [(5, "t5"), (6, "t6"), (7, "t7")]
    assert ck_offsets(broker, "timed", 0) == (0, 8)
