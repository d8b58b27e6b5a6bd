"""Restart on the same data dir: after a clean stop (SIGTERM) and after a crash (SIGKILL),
every topic, config and acknowledged message is back, at the same offsets."""

import time

from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions

import wire
from broker_process import wait_until
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


def test_restart_after_sigterm_needs_no_recovery_scan(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "clean", partitions=4)
    for p in range(4):
        ck_produce(ck_producer(broker, acks="1"), "clean", sent_for(p, 50), partition=p)

    broker.restart()

    second_start = broker.log_text(last_only=True)
    assert "unclean" not in second_start and "recovered log" not in second_start, second_start
    for p in range(4):
        assert ck_offsets(broker, "clean", p) == (0, 50)


def test_sigterm_under_load_exits_0_and_keeps_every_acknowledged_message(start_broker):
    broker = start_broker(cores=2)
    ck_create_topic(broker, "busy", partitions=2)
    producer = ck_producer(broker, acks="1", linger_ms=2, message_timeout_ms=5000)
    delivered = []

    def on_delivery(err, msg):
        if err is None:
            delivered.append((msg.partition(), msg.offset(), msg.value()))

    n = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline or not delivered:
        producer.produce("busy", f"b{n}".encode(), partition=n % 2, on_delivery=on_delivery)
        n += 1
        producer.poll(0.001 if n % 20 == 0 else 0)

    broker.stop()  # while the producer still sends; asserts exit code 0
    producer.purge()
    producer.flush(5)
    broker.start()

    for p in range(2):
        mine = sorted((o, v) for part, o, v in delivered if part == p)
        high_watermark = ck_offsets(broker, "busy", p)[1]
        assert high_watermark >= len(mine)
        got = dict((o, v) for o, _, v, _ in ck_read(broker, "busy", p, OFFSET_BEGINNING,
                                                      high_watermark))
        assert [(o, got.get(o)) for o, _ in mine] == mine


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


def fetch_body(topic, max_wait_ms):
    return (wire.i32(-1) + wire.i32(max_wait_ms) + wire.i32(1) + wire.i32(1 << 20) + wire.i8(0)
            + wire.array([wire.string(topic) + wire.array(
                [wire.i32(0) + wire.i64(0) + wire.i32(1 << 20)])]))


def test_sigterm_stops_promptly_after_a_client_left_with_requests_in_flight(broker):
    ck_create_topic(broker, "quiet")
    with wire.Conn(broker.address) as conn:
        # Pipelined long polls on an empty partition, ending one after the other.
        for max_wait_ms in (100, 300, 3000):
            conn.send(wire.API_FETCH, 4, fetch_body("quiet", max_wait_ms))
        sent_at = time.monotonic()
    # The first answers reach a closed connection while the last long poll still waits.
    wait_until(lambda: "closing connection" in broker.log_text(), 10,
               "the broker to notice the client left")
    # Once the longest max wait has passed, no request of that client can still be running.
    time.sleep(max(0.0, sent_at + 3.2 - time.monotonic()))

    started = time.monotonic()
    broker.stop()
    stop_s = time.monotonic() - started

    assert "requests still running" not in broker.log_text(), broker.log_text()
    assert stop_s < 2.0, f"SIGTERM took {stop_s:.1f}s with no client connected"
