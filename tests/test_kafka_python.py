"""kafka-python 3.0 (a pure-Python, independent implementation) against the real broker."""

import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import (InvalidPartitionsError, MessageSizeTooLargeError,
                          TopicAlreadyExistsError)

import wire

TIMEOUT_S = 20


def values(n, prefix="m", size=0):
    return [f"{prefix}-{i:05d}".encode().ljust(size, b".") for i in range(n)]


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)


def create_topic(broker, name, partitions=1, configs=None):
    client = admin(broker)
    try:
        client.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                     "configs": configs or {}}})
    finally:
        client.close()


def producer(broker, **config):
    config.setdefault("enable_idempotence", False)
    return KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000,
                         **config)


def produce(prod, topic, sent, partition=0, timestamps=None):
    """Send every value and return the record metadata of each (raises on any failure)."""
    futures = [prod.send(topic, v, partition=partition,
                         timestamp_ms=timestamps[i] if timestamps else None)
               for i, v in enumerate(sent)]
    prod.flush(timeout=TIMEOUT_S)
    return [f.get(timeout=TIMEOUT_S) for f in futures]


def consumer(broker):
    return KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                         enable_auto_commit=False, fetch_max_wait_ms=100,
                         request_timeout_ms=15000)


def read(cons, count, timeout_s=TIMEOUT_S):
    """Poll an assigned consumer until `count` records arrived; return the first `count`
    as [(offset, value, timestamp_ms)]."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        assert time.monotonic() < deadline, f"read {len(out)} of {count} records"
        for records in cons.poll(timeout_ms=200).values():
            out.extend((r.offset, r.value, r.timestamp) for r in records)
    return out[:count]


def test_admin_create_topics_makes_topic_with_requested_partitions(broker):
    create_topic(broker, "orders", partitions=4)

    cons = consumer(broker)
    try:
        assert cons.partitions_for_topic("orders") == {0, 1, 2, 3}
    finally:
        cons.close()
    with pytest.raises(TopicAlreadyExistsError):
        create_topic(broker, "orders", partitions=4)


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_produce_at_each_acks_level_then_read_from_beginning(broker, acks):
    create_topic(broker, "events")
    sent = values(300)

    metadata = produce(producer(broker, acks=acks), "events", sent)

    if acks != 0:
        assert [m.offset for m in metadata] == list(range(300))
    cons = consumer(broker)
    try:
        tp = TopicPartition("events", 0)
        cons.assign([tp])
        cons.seek_to_beginning(tp)
        got = read(cons, 300)
        assert cons.end_offsets([tp]) == {tp: 300}
    finally:
        cons.close()
    assert [(o, v) for o, v, _ in got] == list(enumerate(sent))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_as_sent_and_read_back(broker, codec):
    create_topic(broker, "compressed")
    sent = values(400, prefix=codec, size=200)

    metadata = produce(producer(broker, compression_type=codec, linger_ms=50), "compressed", sent)

    assert [m.offset for m in metadata] == list(range(400))
    cons = consumer(broker)
    try:
        cons.assign([TopicPartition("compressed", 0)])
        cons.seek(TopicPartition("compressed", 0), 0)
        got = read(cons, 400)
    finally:
        cons.close()
    assert [(o, v) for o, v, _ in got] == list(enumerate(sent))
    with wire.Conn(broker.address) as conn:
        _, _, batches = wire.fetch(conn, "compressed", 0, 0, max_bytes=8 << 20)
    codec_id = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    assert batches and all(b["compression"] == codec_id and b["crc_ok"] for b in batches)


def test_seek_to_an_offset_and_to_the_end(broker):
    create_topic(broker, "log")
    sent = values(40)
    produce(producer(broker), "log", sent)
    tp = TopicPartition("log", 0)

    cons = consumer(broker)
    try:
        cons.assign([tp])
        cons.seek(tp, 25)
        assert [(o, v) for o, v, _ in read(cons, 15)] == list(enumerate(sent))[25:]
        cons.seek_to_end(tp)
        assert cons.position(tp) == 40
        assert cons.poll(timeout_ms=300) == {}
        produce(producer(broker), "log", [b"after-end"])
        assert [(o, v) for o, v, _ in read(cons, 1)] == [(40, b"after-end")]
    finally:
        cons.close()


def test_offsets_for_times_returns_first_offset_at_or_after_timestamp(broker):
    create_topic(broker, "timed")
    t0 = int(time.time() * 1000) - 60_000
    prod = producer(broker, linger_ms=0)
    for i in range(6):
        produce(prod, "timed", [f"t{i}".encode()], timestamps=[t0 + 1000 * i])
    tp = TopicPartition("timed", 0)

    cons = consumer(broker)
    try:
        found = cons.offsets_for_times({tp: t0 + 2500})
        missing = cons.offsets_for_times({tp: t0 + 10_000})
        cons.assign([tp])
        cons.seek(tp, found[tp].offset)
        [(offset, value, ts)] = read(cons, 1)
    finally:
        cons.close()
    assert (found[tp].offset, found[tp].timestamp) == (3, t0 + 3000)
    assert missing[tp] is None
    assert (offset, value, ts) == (3, b"t3", t0 + 3000)


def test_idempotent_producer_delivers_each_message_exactly_once(broker):
    create_topic(broker, "exactly-once", partitions=2)
    prod = producer(broker, enable_idempotence=True, acks="all")
    sent = {p: values(150, prefix=f"p{p}") for p in range(2)}

    for p in range(2):
        metadata = produce(prod, "exactly-once", sent[p], partition=p)
        assert [m.offset for m in metadata] == list(range(150))

    cons = consumer(broker)
    try:
        tps = [TopicPartition("exactly-once", p) for p in range(2)]
        cons.assign(tps)
        cons.seek_to_beginning()
        got = read(cons, 300)
        assert cons.end_offsets(tps) == {tp: 150 for tp in tps}
    finally:
        cons.close()
    assert sorted(v for _, v, _ in got) == sorted(sent[0] + sent[1])
    with wire.Conn(broker.address) as conn:
        _, _, batches = wire.fetch(conn, "exactly-once", 0, 0, max_bytes=8 << 20)
    assert batches and all(b["producer_id"] >= 0 for b in batches)


def test_message_larger_than_max_message_bytes_fails_with_message_too_large(broker):
    create_topic(broker, "small", configs={"max.message.bytes": "10000"})
    prod = producer(broker, max_request_size=5_000_000)

    future = prod.send("small", b"x" * 20_000, partition=0)
    with pytest.raises(MessageSizeTooLargeError):
        future.get(timeout=TIMEOUT_S)

    [metadata] = produce(prod, "small", [b"fits"])
    assert metadata.offset == 0


def test_create_partitions_grows_a_topic_and_refuses_to_shrink_it(broker):
    create_topic(broker, "growing", partitions=1)
    client = admin(broker)
    try:
        client.create_partitions({"growing": 3})
        with pytest.raises(InvalidPartitionsError):
            client.create_partitions({"growing": 2})
    finally:
        client.close()

    [metadata] = produce(producer(broker), "growing", [b"p2"], partition=2)
    assert (metadata.partition, metadata.offset) == (2, 0)
    cons = consumer(broker)
    try:
        assert cons.partitions_for_topic("growing") == {0, 1, 2}
    finally:
        cons.close()


def test_delete_topics_removes_the_topic(broker):
    create_topic(broker, "doomed")
    create_topic(broker, "kept")
    client = admin(broker)
    try:
        client.delete_topics(["doomed"])
        topics = set(client.list_topics())
    finally:
        client.close()
    assert "doomed" not in topics and "kept" in topics


def describe(client, topic):
    result = client.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return _find_topic_configs(result, topic)


def _find_topic_configs(result, topic):
    """kafka-python 3 returns {resource_type: {resource_name: {key: {config data}}}}."""
    for by_name in result.values():
        if topic in by_name:
            return by_name[topic]
    raise AssertionError(f"no configs for {topic} in {result!r}")


def _value(entry):
    return entry["value"] if isinstance(entry, dict) else entry


def test_describe_and_alter_configs_round_trip(broker):
    create_topic(broker, "tuned", configs={"retention.ms": "3600000"})
    client = admin(broker)
    try:
        before = describe(client, "tuned")
        client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "tuned",
                                             configs={"retention.bytes": "1073741824"})])
        after = describe(client, "tuned")
    finally:
        client.close()

    assert _value(before["retention.ms"]) == "3600000"
    assert _value(before["retention.bytes"]) == "-1"
    assert _value(after["retention.bytes"]) == "1073741824"
    assert _value(after["retention.ms"]) == "3600000", "an incremental change keeps the others"


def test_legacy_alter_configs_round_trips(broker):
    """AlterConfigs (key 33), which older clients use, as well as the incremental API."""
    create_topic(broker, "legacy")
    client = admin(broker)
    try:
        client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "legacy",
                                             configs={"retention.ms": "7200000"})],
                             incremental=False)
        after = describe(client, "legacy")
    finally:
        client.close()
    assert _value(after["retention.ms"]) == "7200000"


def test_a_topic_id_survives_restart_and_describes_and_deletes_the_topic(broker):
    create_topic(broker, "by-id", partitions=2)
    client = admin(broker)
    try:
        [described] = client.describe_topics(["by-id"])
    finally:
        client.close()
    topic_id = uuid.UUID(described["topic_id"])
    assert topic_id.int != 0

    broker.restart()

    client = admin(broker)
    try:
        [by_id] = client.describe_topics([topic_id])
        client.delete_topics([topic_id])
        left = client.list_topics()
    finally:
        client.close()
    assert (by_id["error_code"], by_id["name"], len(by_id["partitions"])) == (0, "by-id", 2)
    assert "by-id" not in left
