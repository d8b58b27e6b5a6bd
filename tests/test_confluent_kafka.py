"""confluent-kafka (librdkafka 2.16) against the real broker: topics, produce at every acks
level and codec, consume by offset, latest and timestamp, idempotence, admin round trips."""

import json
import time

import pytest
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException,
                             TopicPartition)
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewPartitions)

import wire
from broker_process import wait_until
from clients import (CLIENT_TIMEOUT_S, ck_admin, ck_consumer, ck_create_topic, ck_offsets,
                     ck_partition_count, ck_produce, ck_producer, ck_read, ck_read_nothing_more)

CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def values(n, prefix="m", size=0):
    return [f"{prefix}-{i:05d}".encode().ljust(size, b".") for i in range(n)]


def test_admin_create_topics_makes_topic_with_requested_partitions(broker):
    ck_create_topic(broker, "orders", partitions=3)

    md = ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S)
    assert sorted(md.topics["orders"].partitions) == [0, 1, 2]
    for p in md.topics["orders"].partitions.values():
        assert p.error is None and p.leader == md.brokers[p.leader].id
    [advertised] = md.brokers.values()
    assert (advertised.host, advertised.port) == broker.address


def test_admin_create_existing_topic_fails_with_topic_already_exists(broker):
    ck_create_topic(broker, "orders", partitions=2)

    with pytest.raises(KafkaException) as failure:
        ck_create_topic(broker, "orders", partitions=5)
    assert failure.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert ck_partition_count(broker, "orders") == 2


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_at_each_acks_level_delivers_every_message_in_order(broker, acks):
    ck_create_topic(broker, "events")
    sent = values(300)
    keys = [f"k{i % 7}".encode() for i in range(300)]

    reports = ck_produce(ck_producer(broker, acks=acks), "events", sent, keys=keys)

    assert [r[0] for r in reports] == [None] * 300
    if acks != "0":
        assert [r[2] for r in reports] == list(range(300))
    got = ck_read(broker, "events", 0, OFFSET_BEGINNING, 300)
    assert [(o, k, v) for o, k, v, _ in got] == list(zip(range(300), keys, sent))
    assert ck_offsets(broker, "events", 0) == (0, 300)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_as_sent_and_read_back(broker, codec):
    ck_create_topic(broker, "compressed")
    # Repetitive values so every codec really shrinks the batch.
    sent = values(500, prefix=codec, size=200)

    reports = ck_produce(ck_producer(broker, compression_type=codec, linger_ms=50),
                         "compressed", sent)

    assert [r[:3:2] for r in reports] == [(None, i) for i in range(500)]
    got = ck_read(broker, "compressed", 0, 0, 500)
    assert [(o, v) for o, _, v, _ in got] == list(enumerate(sent))
    # The broker keeps the producer's compressed batches: fetch them raw and look.
    with wire.Conn(broker.address) as conn:
        error, high_watermark, batches = wire.fetch(conn, "compressed", 0, 0, max_bytes=8 << 20)
    assert (error, high_watermark) == (wire.NONE, 500)
    assert batches and all(b["compression"] == CODEC_IDS[codec] for b in batches)
    assert all(b["crc_ok"] for b in batches)
    assert sum(b["length"] + 12 for b in batches) < 500 * 200 / 2
    assert sum(b["record_count"] for b in batches) == 500


def test_consume_from_earliest_and_from_an_offset_returns_the_log_from_there(broker):
    ck_create_topic(broker, "log")
    sent = values(50)
    ck_produce(ck_producer(broker), "log", sent)

    from_start = ck_read(broker, "log", 0, OFFSET_BEGINNING, 50)
    from_37 = ck_read(broker, "log", 0, 37, 13)

    assert [(o, v) for o, _, v, _ in from_start] == list(enumerate(sent))
    assert [(o, v) for o, _, v, _ in from_37] == list(enumerate(sent))[37:]


def test_consume_from_latest_gets_only_messages_produced_after_assign(broker):
    ck_create_topic(broker, "tail")
    ck_produce(ck_producer(broker), "tail", values(20, prefix="old"))
    stats = {}

    def on_stats(text):
        part = json.loads(text)["topics"].get("tail", {}).get("partitions", {}).get("0", {})
        stats.update(part)

    consumer = ck_consumer(broker, statistics_interval_ms=100, stats_cb=on_stats)
    try:
        consumer.assign([TopicPartition("tail", 0, OFFSET_END)])
        # Wait until librdkafka resolved "latest" (ListOffsets) and fetches from there.
        wait_until(lambda: (consumer.poll(0.05), stats.get("fetch_state") == "active")[1],
                   CLIENT_TIMEOUT_S, "the consumer to start fetching at the latest offset")
        assert stats["next_offset"] == 20
        ck_read_nothing_more(consumer, wait_s=0.5)

        new = values(5, prefix="new")
        ck_produce(ck_producer(broker), "tail", new)

        got = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < 5 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append((msg.offset(), msg.value()))
        assert got == list(zip(range(20, 25), new))
    finally:
        consumer.close()


def test_offsets_for_times_returns_first_offset_at_or_after_timestamp(broker):
    ck_create_topic(broker, "timed")
    t0 = int(time.time() * 1000) - 60_000
    producer = ck_producer(broker, linger_ms=0)
    for i in range(10):  # one batch per message
        ck_produce(producer, "timed", [f"t{i}".encode()], timestamps=[t0 + 1000 * i])

    consumer = ck_consumer(broker)
    try:
        def lookup(ts):
            [tp] = consumer.offsets_for_times([TopicPartition("timed", 0, ts)],
                                              timeout=CLIENT_TIMEOUT_S)
            assert tp.error is None
            return tp.offset

        assert lookup(t0 - 5000) == 0
        assert lookup(t0 + 3000) == 3
        assert lookup(t0 + 3500) == 4
        assert lookup(t0 + 9000) == 9
        assert lookup(t0 + 9001) == OFFSET_END  # no such message: -1, "the end"
    finally:
        consumer.close()
    [(offset, _, value, ts)] = ck_read(broker, "timed", 0, 4, 1)
    assert (offset, value, ts) == (4, b"t4", t0 + 4000)


def test_offsets_for_times_finds_the_exact_record_inside_a_batch(broker):
    """Kafka answers with the first *record* whose timestamp is >= the target, even when it
    sits in the middle of a batch."""
    ck_create_topic(broker, "timed")
    t0 = int(time.time() * 1000) - 60_000
    producer = ck_producer(broker, linger_ms=1000)
    ck_produce(producer, "timed", values(10), timestamps=[t0 + 1000 * i for i in range(10)])
    with wire.Conn(broker.address) as conn:
        _, _, batches = wire.fetch(conn, "timed", 0, 0)
    assert len(batches) == 1, "precondition: the ten messages share one batch"

    consumer = ck_consumer(broker)
    try:
        [tp] = consumer.offsets_for_times([TopicPartition("timed", 0, t0 + 3500)],
                                          timeout=CLIENT_TIMEOUT_S)
    finally:
        consumer.close()
    assert (tp.error, tp.offset) == (None, 4)


def test_idempotent_producer_delivers_each_message_exactly_once(broker):
    ck_create_topic(broker, "exactly-once", partitions=3)
    producer = ck_producer(broker, enable_idempotence=True, acks="all")
    sent = {p: values(200, prefix=f"p{p}") for p in range(3)}

    reports = {p: ck_produce(producer, "exactly-once", sent[p], partition=p) for p in range(3)}

    for p in range(3):
        assert [(r[0], r[2]) for r in reports[p]] == [(None, i) for i in range(200)]
        got = ck_read(broker, "exactly-once", p, OFFSET_BEGINNING, 200)
        assert [(o, v) for o, _, v, _ in got] == list(enumerate(sent[p]))
        assert ck_offsets(broker, "exactly-once", p) == (0, 200)
        with wire.Conn(broker.address) as conn:
            _, _, batches = wire.fetch(conn, "exactly-once", p, 0, max_bytes=8 << 20)
        # The batches really carry a producer id and gap-free sequences (idempotence is on).
        assert all(b["producer_id"] >= 0 and b["producer_epoch"] >= 0 for b in batches)
        sequences = [(b["base_sequence"], b["record_count"]) for b in batches]
        assert sequences[0][0] == 0
        for (seq, count), (next_seq, _) in zip(sequences, sequences[1:]):
            assert next_seq == seq + count


def test_message_larger_than_topic_max_message_bytes_fails_with_message_too_large(broker):
    ck_create_topic(broker, "small", config={"max.message.bytes": "10000"})
    producer = ck_producer(broker, compression_type="none", message_max_bytes=1_000_000)

    [(error, _, _)] = ck_produce(producer, "small", [b"x" * 20_000])
    [(ok, _, offset)] = ck_produce(producer, "small", [b"fits"])

    assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert (ok, offset) == (None, 0), "the rejected message must not take an offset"
    assert ck_offsets(broker, "small", 0) == (0, 1)


def test_message_larger_than_broker_max_message_bytes_fails_with_message_too_large(start_broker):
    broker = start_broker(args=["--max-message-bytes", "100000"])
    ck_create_topic(broker, "big")
    producer = ck_producer(broker, compression_type="none", message_max_bytes=5_000_000)

    [(error, _, _)] = ck_produce(producer, "big", [b"y" * 200_000])

    assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert ck_offsets(broker, "big", 0) == (0, 0)


def test_unknown_topic_with_auto_create_off_is_refused_and_not_created(start_broker):
    broker = start_broker(args=["--auto-create-topics", "false"])

    with wire.Conn(broker.address) as conn:
        metadata = wire.metadata(conn, ["nowhere"])
        produced = wire.produce(conn, "nowhere", {0: wire.record_batch([b"lost"])})
    # librdkafka keeps waiting for the topic to appear until the message times out.
    [(error, _, _)] = ck_produce(ck_producer(broker, message_timeout_ms=1000), "nowhere",
                                 [b"lost"])

    assert metadata == {"nowhere": (wire.UNKNOWN_TOPIC_OR_PARTITION, {})}
    assert produced == {0: (wire.UNKNOWN_TOPIC_OR_PARTITION, -1)}
    assert error is not None and error.code() == KafkaError._MSG_TIMED_OUT
    assert "nowhere" not in ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_create_partitions_grows_topic_and_new_partitions_take_messages(broker):
    ck_create_topic(broker, "growing", partitions=2)
    ck_produce(ck_producer(broker), "growing", [b"before"], partition=1)

    futures = ck_admin(broker).create_partitions([NewPartitions("growing", 5)])
    futures["growing"].result(timeout=CLIENT_TIMEOUT_S)

    assert ck_partition_count(broker, "growing") == 5
    producer = ck_producer(broker)
    for p in range(5):
        [(error, partition, offset)] = ck_produce(producer, "growing", [f"p{p}".encode()],
                                                  partition=p)
        assert (error, partition, offset) == (None, p, 1 if p == 1 else 0)
    assert [v for _, _, v, _ in ck_read(broker, "growing", 1, 0, 2)] == [b"before", b"p1"]
    assert [v for _, _, v, _ in ck_read(broker, "growing", 4, 0, 1)] == [b"p4"]


def test_create_partitions_cannot_shrink_a_topic(broker):
    ck_create_topic(broker, "fixed", partitions=3)

    futures = ck_admin(broker).create_partitions([NewPartitions("fixed", 2)])
    with pytest.raises(KafkaException) as failure:
        futures["fixed"].result(timeout=CLIENT_TIMEOUT_S)

    assert failure.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert ck_partition_count(broker, "fixed") == 3


def test_delete_topics_removes_topic_and_its_messages(broker):
    ck_create_topic(broker, "doomed", partitions=2)
    ck_create_topic(broker, "kept")
    ck_produce(ck_producer(broker), "doomed", values(10))
    ck_produce(ck_producer(broker), "kept", values(3))

    futures = ck_admin(broker).delete_topics(["doomed"], operation_timeout=10)
    futures["doomed"].result(timeout=CLIENT_TIMEOUT_S)

    topics = ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert "doomed" not in topics and "kept" in topics
    # A topic created again under the same name starts empty.
    ck_create_topic(broker, "doomed", partitions=2)
    assert ck_offsets(broker, "doomed", 0) == (0, 0)
    assert [v for _, _, v, _ in ck_read(broker, "kept", 0, 0, 3)] == values(3)


def test_delete_unknown_topic_fails_with_unknown_topic(broker):
    futures = ck_admin(broker).delete_topics(["never-existed"], operation_timeout=10)
    with pytest.raises(KafkaException) as failure:
        futures["never-existed"].result(timeout=CLIENT_TIMEOUT_S)
    assert failure.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def describe_topic(broker, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    futures = ck_admin(broker).describe_configs([resource])
    return futures[resource].result(timeout=CLIENT_TIMEOUT_S)


def test_describe_configs_shows_topic_overrides_and_broker_defaults(broker):
    ck_create_topic(broker, "configured", config={"retention.ms": "3600000"})

    configs = describe_topic(broker, "configured")

    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["max.message.bytes"].value == "1048588"
    assert configs["max.message.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"
    for name in ("retention.bytes", "segment.bytes"):
        assert name in configs


def test_incremental_alter_configs_round_trips_and_takes_effect(broker):
    ck_create_topic(broker, "tuned")
    resource = ConfigResource(ConfigResource.Type.TOPIC, "tuned", incremental_configs=[
        ConfigEntry("max.message.bytes", "5000",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", "86400000", incremental_operation=AlterConfigOpType.SET),
    ])

    futures = ck_admin(broker).incremental_alter_configs([resource])
    futures[resource].result(timeout=CLIENT_TIMEOUT_S)

    configs = describe_topic(broker, "tuned")
    assert configs["max.message.bytes"].value == "5000"
    assert configs["retention.ms"].value == "86400000"
    producer = ck_producer(broker, compression_type="none")
    [(error, _, _)] = ck_produce(producer, "tuned", [b"z" * 8000])
    assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_alter_configs_with_an_invalid_value_is_refused_and_changes_nothing(broker):
    ck_create_topic(broker, "strict", config={"retention.ms": "3600000"})
    resource = ConfigResource(ConfigResource.Type.TOPIC, "strict", incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET),
    ])

    futures = ck_admin(broker).incremental_alter_configs([resource])
    with pytest.raises(KafkaException) as failure:
        futures[resource].result(timeout=CLIENT_TIMEOUT_S)

    assert failure.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic(broker, "strict")["retention.ms"].value == "3600000"
