"""Requests at and over the limits: invalid topic requests get Kafka's error codes, a message
just under max.message.bytes goes through whole, many partitions fan out, retention removes
old segments and moves the log start."""

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

import wire
from broker_process import wait_until
from clients import (CLIENT_TIMEOUT_S, ck_admin, ck_create_topic, ck_offsets, ck_produce,
                     ck_producer, ck_read)

INVALID_REQUIRED_ACKS = 21


@pytest.mark.parametrize("name, partitions, replication, code", [
    ("bad/name", 1, 1, KafkaError.TOPIC_EXCEPTION),
    ("x" * 250, 1, 1, KafkaError.TOPIC_EXCEPTION),
    ("zero-partitions", 0, 1, KafkaError.INVALID_PARTITIONS),
    ("three-replicas", 1, 3, KafkaError.INVALID_REPLICATION_FACTOR),
])
def test_create_topics_refuses_invalid_requests_with_kafka_error_codes(broker, name, partitions,
                                                                       replication, code):
    futures = ck_admin(broker).create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=10)
    with pytest.raises(KafkaException) as failure:
        futures[name].result(timeout=CLIENT_TIMEOUT_S)

    assert failure.value.args[0].code() == code
    assert name not in ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_create_topics_refuses_an_unknown_or_invalid_topic_config(broker):
    for config in ({"no.such.config": "1"}, {"retention.ms": "soon"}):
        futures = ck_admin(broker).create_topics(
            [NewTopic("configured", num_partitions=1, replication_factor=1, config=config)],
            operation_timeout=10)
        with pytest.raises(KafkaException) as failure:
            futures["configured"].result(timeout=CLIENT_TIMEOUT_S)
        assert failure.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "configured" not in ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_produce_with_an_invalid_acks_value_gets_invalid_required_acks(broker):
    ck_create_topic(broker, "acks")
    with wire.Conn(broker.address) as conn:
        answer = wire.produce(conn, "acks", {0: wire.record_batch([b"x"])}, acks=2)
        assert answer == {0: (INVALID_REQUIRED_ACKS, -1)}
        assert wire.fetch(conn, "acks", 0, 0)[1] == 0


def test_a_message_just_under_max_message_bytes_goes_through_whole(broker):
    ck_create_topic(broker, "big")
    value = bytes(range(256)) * 4000  # 1,024,000 bytes: a batch just under 1,048,588
    producer = ck_producer(broker, compression_type="none", message_max_bytes=2_000_000)

    [(error, _, offset)] = ck_produce(producer, "big", [value])

    assert (error, offset) == (None, 0)
    [(_, _, got, _)] = ck_read(broker, "big", 0, OFFSET_BEGINNING, 1,
                               fetch_max_bytes=4_000_000, max_partition_fetch_bytes=2_000_000)
    assert got == value


def test_a_topic_with_many_partitions_serves_each_of_them(broker2):
    ck_create_topic(broker2, "wide", partitions=64)
    producer = ck_producer(broker2)
    for p in range(64):
        ck_produce(producer, "wide", [f"p{p}".encode()], partition=p)

    with wire.Conn(broker2.address) as conn:
        metadata = wire.metadata(conn, ["wide"])
        for p in range(64):
            error, high_watermark, batches = wire.fetch(conn, "wide", p, 0)
            assert (error, high_watermark) == (wire.NONE, 1)
            assert batches[0]["values"] == [f"p{p}".encode()]
    assert metadata["wide"][0] == wire.NONE
    assert metadata["wide"][1] == {p: wire.NONE for p in range(64)}


def test_retention_bytes_deletes_old_segments_and_moves_the_log_start(start_broker):
    broker = start_broker(args=["--retention-check-interval-ms", "100"])
    ck_create_topic(broker, "retained", config={"segment.bytes": "65536",
                                                "retention.bytes": "65536"})
    with wire.Conn(broker.address) as conn:
        for i in range(40):  # 40 batches of ~10 KB: several 64 KiB segments
            value = f"r{i}".encode().ljust(10_000, b".")
            assert wire.produce(conn, "retained", {0: wire.record_batch([value])}) == \
                {0: (wire.NONE, i)}

        def log_start_once_retention_is_done():
            # Retention deletes the oldest closed segments (six batches each here) while the
            # rest without the oldest is still at least retention.bytes: it is done exactly
            # when what is left fits retention.bytes plus one segment.
            earliest = wire.list_offset(conn, "retained", 0, -2)[1]
            return earliest if 0 < earliest and (40 - earliest) * 10_000 <= 65536 + 65536 \
                else None

        earliest = wait_until(log_start_once_retention_is_done, 15,
                              "retention to delete the oldest segments")

        assert wire.list_offset(conn, "retained", 0, -1) == (wire.NONE, 40)
        assert 0 < earliest < 40
        assert wire.fetch(conn, "retained", 0, 0)[0] == 1  # OFFSET_OUT_OF_RANGE
        error, _, batches = wire.fetch(conn, "retained", 0, earliest)
        assert error == wire.NONE and batches[0]["base_offset"] == earliest
    assert ck_offsets(broker, "retained", 0) == (earliest, 40)
