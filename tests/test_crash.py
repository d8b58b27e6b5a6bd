"""Crash under load: an idempotent acks=all producer runs while the broker is killed with
SIGKILL at random moments; after each restart on the same data dir every acknowledged
message is still at its offset, intact, exactly once, and every batch passes its CRC.

SHARDLOG_CRASH_CYCLES sets the number of kill/restart cycles (default 10, the CI length).
"""

import os
import random
import time

from confluent_kafka import KafkaError

import wire
from clients import ck_create_topic, ck_producer

CYCLES = int(os.environ.get("SHARDLOG_CRASH_CYCLES", "10"))
PARTITIONS = 2


def read_partition(broker, topic, partition):
    """Every record of a partition as {offset: value}, checking each batch's CRC."""
    records = {}
    with wire.Conn(broker.address) as conn:
        _, high_watermark, _ = wire.fetch(conn, topic, partition, 0, max_bytes=1)
        offset = 0
        while offset < high_watermark:
            error, _, batches = wire.fetch(conn, topic, partition, offset, max_bytes=1 << 20)
            assert error == wire.NONE and batches, f"fetch at {offset} of {high_watermark}"
            for b in batches:
                assert b["crc_ok"], f"batch at offset {b['base_offset']} fails its CRC"
                for i, value in enumerate(b["values"]):
                    records[b["base_offset"] + i] = value
            offset = batches[-1]["base_offset"] + batches[-1]["last_offset_delta"] + 1
    return high_watermark, records


def test_acknowledged_messages_survive_repeated_sigkill_under_load(start_broker):
    rng = random.Random(2026)
    broker = start_broker(cores=2)
    ck_create_topic(broker, "crash", partitions=PARTITIONS)
    acknowledged = {}  # (partition, offset) -> value
    sent = 0

    for cycle in range(CYCLES):
        producer = ck_producer(broker, acks="all", enable_idempotence=True, linger_ms=2,
                               compression_type="none", message_timeout_ms=30000)

        delivered = []

        def on_delivery(err, msg):
            if err is None:
                delivered.append(((msg.partition(), msg.offset()), msg.value()))

        # An idempotent librdkafka producer needs about 0.5 s to get its producer id:
        # start the clock once it is delivering.
        producer.produce("crash", f"c{cycle}-{sent}".encode(), partition=sent % PARTITIONS,
                         on_delivery=on_delivery)
        sent += 1
        assert producer.flush(20) == 0 and delivered, "the producer delivers nothing"
        kill_at = time.monotonic() + rng.uniform(0.1, 0.5)
        while time.monotonic() < kill_at:
            try:
                producer.produce("crash", f"c{cycle}-{sent}".encode(),
                                 partition=sent % PARTITIONS, on_delivery=on_delivery)
                sent += 1
            except BufferError:
                pass
            # About 5,000 messages a second: load, yet a quick read-back at the end.
            producer.poll(0.002 if sent % 10 == 0 else 0)
        broker.kill()
        # Whatever was not acknowledged by now is given up.
        producer.purge()
        producer.flush(5)
        del producer
        for key, value in delivered:
            assert key not in acknowledged, (
                f"(partition, offset) {key} acknowledged for {acknowledged[key]!r} before a "
                f"crash and for {value!r} after it: acknowledged data was lost")
            acknowledged[key] = value
        broker.start()

    assert len(acknowledged) > CYCLES * 100, f"only {len(acknowledged)} messages acknowledged"
    for p in range(PARTITIONS):
        high_watermark, records = read_partition(broker, "crash", p)
        assert sorted(records) == list(range(high_watermark)), "offsets have gaps"
        mine = {o: v for (part, o), v in acknowledged.items() if part == p}
        missing = {o: v for o, v in mine.items() if records.get(o) != v}
        assert not missing, f"{len(missing)} acknowledged messages lost or changed, e.g. " \
                            f"{sorted(missing.items())[:3]}"
        values = list(records.values())
        assert len(values) == len(set(values)), "a message was stored twice"
