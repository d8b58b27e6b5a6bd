"""Restart on the same data dir: after a clean stop (SIGTERM) and after a crash (SIGKILL),
every topic, config and acknowledged message is back, at the same offsets. (SIGTERM under
load and with requests in flight: reliability/test_rel_sigterm.py; SIGKILL cycles under
load: reliability/test_rel_crash.py.)"""

import time

from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions

import wire
from clients import (ck_admin, ck_create_topic, ck_offsets, ck_partition_count, ck_produce, ck_producer,
                     ck_read)
from test_confluent_kafka import describe_topic


def sent_for(p, n, prefix="m"):
    return [f"{prefix}-{p}-{i:05d}".encode() for i in range(n)]


def assert_partition_holds(broker, topic, p, expected):
    assert ck_offsets(broker, topic, p) == (0, len(expected))
    got = ck_read(broker, topic, p, OFFSET_BEGINNING, len(expected))
    assert [(o, v) for o, _, v, _ in got] == list(enumerate(expected))
    with wire.Conn(broker.address) as conn:
        offset = 0
        while offset < len(expected):
            error, _, batches = wire.fetch(conn, topic, p, offset, max_bytes=1 << 20)
            assert error == wire.NONE and batches
            assert all(b["crc_ok"] for b in batches), "a batch served after restart fails its CRC"
            offset = batches[-1]["base_offset"] + batches[-1]["last_offset_delta"] + 1


def test_sigterm_restart_keeps_topics_configs_and_every_message(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "kept", partitions=4, config={"retention.ms": "3600000"})
    ck_create_topic(broker, "other", partitions=1)
    producer = ck_producer(broker, acks="1")
    sent = {p: sent_for(p, 150) for p in range(4)}
    for p in range(4):
        ck_produce(producer, "kept", sent[p], partition=p)
    ck_produce(producer, "other", [b"o1", b"o2"])

    broker.restart()

    assert ck_partition_count(broker, "kept") == 4
    assert ck_partition_count(broker, "other") == 1
    assert describe_topic(broker, "kept")["retention.ms"].value == "3600000"
    for p in range(4):
        assert_partition_holds(broker, "kept", p, sent[p])
    assert_partition_holds(broker, "other", 0, [b"o1", b"o2"])
    # Offsets continue where they stopped.
    for p in range(4):
        [(error, _, offset)] = ck_produce(ck_producer(broker), "kept", [b"next"], partition=p)
        assert (error, offset) == (None, 150)


def test_sigkill_after_acks_all_loses_no_acknowledged_message(start_broker):
    broker = start_broker(cores=2, preallocate_bytes=None)  # the default preallocation
    ck_create_topic(broker, "durable", partitions=4)
    sent = {p: sent_for(p, 300, prefix="d") for p in range(4)}
    for p in range(4):
        codec = "zstd" if p % 2 else "none"
        reports = ck_produce(ck_producer(broker, acks="all", compression_type=codec),
                             "durable", sent[p], partition=p)
        assert [(e, o) for e, _, o in reports] == [(None, i) for i in range(300)]

    broker.kill()
    broker.start()

    for p in range(4):
        assert_partition_holds(broker, "durable", p, sent[p])


def test_sigkill_keeps_topics_whose_creation_was_acknowledged(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "made-before-crash", partitions=3,
                    config={"max.message.bytes": "50000"})

    broker.kill()
    broker.start()

    assert ck_partition_count(broker, "made-before-crash") == 3
    assert describe_topic(broker, "made-before-crash")["max.message.bytes"].value == "50000"


def test_sigkill_twice_in_a_row_keeps_everything_acknowledged(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "twice", partitions=2)
    expected = {0: [], 1: []}
    for round_ in range(2):
        for p in range(2):
            batch = sent_for(p, 100, prefix=f"r{round_}")
            reports = ck_produce(ck_producer(broker, acks="all"), "twice", batch, partition=p)
            assert [o for _, _, o in reports] == list(range(100 * round_, 100 * (round_ + 1)))
            expected[p] += batch
        broker.kill()
        broker.start()

    for p in range(2):
        assert_partition_holds(broker, "twice", p, expected[p])


def test_idempotent_producer_state_survives_restart(start_broker):
    broker = start_broker()
    ck_create_topic(broker, "idem")
    with wire.Conn(broker.address) as conn:
        error, producer_id, epoch = wire.init_producer_id(conn)
        assert error == wire.NONE and producer_id >= 0
        first = wire.record_batch([b"a", b"b", b"c"], producer_id=producer_id,
                                  producer_epoch=epoch, base_sequence=0)
        assert wire.produce(conn, "idem", {0: first}, acks=-1) == {0: (wire.NONE, 0)}

    broker.kill()
    broker.start()

    with wire.Conn(broker.address) as conn:
        # The retry of an acknowledged batch is recognised as a duplicate, not appended.
        [(error, base_offset)] = wire.produce(conn, "idem", {0: first}, acks=-1).values()
        assert (error, base_offset) in ((wire.NONE, 0), (wire.DUPLICATE_SEQUENCE_NUMBER, -1))
        assert wire.fetch(conn, "idem", 0, 0)[1] == 3
        gap = wire.record_batch([b"z"], producer_id=producer_id, producer_epoch=epoch,
                                base_sequence=5)
        assert wire.produce(conn, "idem", {0: gap}, acks=-1)[0][0] == \
            wire.OUT_OF_ORDER_SEQUENCE_NUMBER
        following = wire.record_batch([b"d"], producer_id=producer_id, producer_epoch=epoch,
                                      base_sequence=3)
        assert wire.produce(conn, "idem", {0: following}, acks=-1) == {0: (wire.NONE, 3)}
        # Producer ids handed out after the restart are new ones.
        error, new_id, _ = wire.init_producer_id(conn)
        assert error == wire.NONE and new_id != producer_id


def test_restart_takes_little_time_with_a_few_topics(start_broker):
    broker = start_broker(cores=2)
    for t in range(5):
        ck_create_topic(broker, f"topic-{t}", partitions=4)
    ck_produce(ck_producer(broker), "topic-0", sent_for(0, 1000))

    broker.stop()
    started = time.monotonic()
    broker.start()

    assert time.monotonic() - started < 10.0
    assert ck_offsets(broker, "topic-0", 0) == (0, 1000)


def test_sigkill_keeps_acknowledged_admin_changes(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "grown", partitions=2)
    ck_create_topic(broker, "altered")
    ck_create_topic(broker, "deleted")
    admin = ck_admin(broker)
    admin.create_partitions([NewPartitions("grown", 5)])["grown"].result(timeout=20)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "altered", incremental_configs=[
        ConfigEntry("retention.ms", "1234567", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=20)
    admin.delete_topics(["deleted"], operation_timeout=10)["deleted"].result(timeout=20)
    [(error, _, _)] = ck_produce(ck_producer(broker, acks="all"), "grown", [b"p4"], partition=4)
    assert error is None

    broker.kill()
    broker.start()

    assert ck_partition_count(broker, "grown") == 5
    assert describe_topic(broker, "altered")["retention.ms"].value == "1234567"
    assert "deleted" not in ck_admin(broker).list_topics(timeout=20).topics
    assert_partition_holds(broker, "grown", 4, [b"p4"])
