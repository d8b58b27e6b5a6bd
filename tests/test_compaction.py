"""Log compaction end to end with confluent-kafka (librdkafka): a topic with
cleanup.policy=compact shrinks to about one record per key once its closed segments are
cleaned, every key reads its latest value, tombstones remove their keys (and go themselves
after delete.retention.ms), a consumer from the beginning rebuilds the same table every
time, and a record without a key is refused with INVALID_RECORD on a compacted topic only."""

import time

from confluent_kafka import KafkaError, TopicPartition

from clients import (CLIENT_TIMEOUT_S, ck_consumer, ck_create_topic, ck_offsets, ck_produce,
                     ck_producer)

# Small segments close often, so most of the log is cleanable; a short backoff lets the
# cleaner look every 100 ms.
CLEANER_ARGS = ["--log-cleaner-backoff-ms", "100"]
SMALL_SEGMENTS = {"cleanup.policy": "compact", "segment.bytes": "65536", "segment.ms": "200"}
DEADLINE_S = 60


def read_table(broker, topic):
    """Reads the partition from the beginning to its end and returns (records read, the
    table a consumer rebuilds: key -> latest value, tombstones deleting their key)."""
    _, high = ck_offsets(broker, topic, 0)
    consumer = ck_consumer(broker)
    table, count = {}, 0
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        last = -1
        while last < high - 1:
            assert time.monotonic() < deadline, f"read up to {last} of {high}"
            msg = consumer.poll(0.5)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            assert not msg.error(), msg.error()
            assert msg.offset() > last, "offsets increase"
            last = msg.offset()
            count += 1
            if msg.value() is None:
                table.pop(msg.key(), None)
            else:
                table[msg.key()] = msg.value()
    finally:
        consumer.close()
    return count, table


def wait_for(condition, what, timeout_s=DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_ten_thousand_keys_written_twenty_times_shrink_to_about_ten_thousand_records(start_broker):
    broker = start_broker(args=CLEANER_ARGS)
    # The last writes land in a segment that is small next to the cleaned rest: a low
    # min.cleanable.dirty.ratio lets it be cleaned too (the default 0.5 would wait).
    ck_create_topic(broker, "table", config={**SMALL_SEGMENTS, "min.cleanable.dirty.ratio": "0.01"})
    producer = ck_producer(broker, linger_ms=20)
    keys = [f"k{i:05}".encode() for i in range(10_000)]
    for round_ in range(20):
        values = [f"v{round_}-{k.decode()}".encode() for k in keys]
        reports = ck_produce(producer, "table", values, keys=keys)
        assert all(err is None for err, _, _ in reports)
    want = {k: f"v19-{k.decode()}".encode() for k in keys}

    def shrunk():
        # The active segment is never cleaned: a record of another key now and then rolls
        # it once it is older than segment.ms, so the last writes become cleanable too.
        ck_produce(producer, "table", [b"tick"], keys=[b"tick"])
        count, table = read_table(broker, "table")
        return (count, table) if count <= 10_100 else None

    count, table = wait_for(shrunk, "the cleaner to shrink 200,000 records")
    want[b"tick"] = b"tick"
    assert table == want
    assert count >= 10_001
    # A second consumer from the beginning rebuilds the same table.
    assert read_table(broker, "table")[1] == want
    log = broker.log_text()
    assert "cleaned log" in log and "records_removed" in log
    # The cleaned log survives a restart as it is.
    broker.restart()
    assert read_table(broker, "table")[1] == want


def test_tombstones_remove_their_keys_and_then_themselves(start_broker):
    broker = start_broker(args=CLEANER_ARGS)
    ck_create_topic(broker, "deleting", config={**SMALL_SEGMENTS,
                                                 "delete.retention.ms": "0"})
    producer = ck_producer(broker)
    keys = [f"k{i}".encode() for i in range(100)]
    ck_produce(producer, "deleting", [b"alive"] * 100, keys=keys)
    ck_produce(producer, "deleting", [None] * 50, keys=keys[:50])
    # Filler with other keys, so the tombstones end up in closed segments.
    filler = [f"f{i}".encode() for i in range(2_000)]
    ck_produce(producer, "deleting", [b"x" * 40] * len(filler), keys=filler)

    def tombstones_gone():
        count, table = read_table(broker, "deleting")
        kept = {k for k in table if k.startswith(b"k")}
        return (count, kept) if count <= 50 + len(filler) else None

    count, kept = wait_for(tombstones_gone, "the tombstones to be removed")
    assert kept == set(keys[50:])


def test_a_record_without_a_key_is_refused_on_a_compacted_topic_only(start_broker):
    broker = start_broker()
    ck_create_topic(broker, "compacted", config={"cleanup.policy": "compact"})
    ck_create_topic(broker, "plain")
    producer = ck_producer(broker, retries=0)
    (err, _, _), = ck_produce(producer, "compacted", [b"no key"])
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    (err, _, _), = ck_produce(producer, "compacted", [b"keyed"], keys=[b"k"])
    assert err is None
    (err, _, _), = ck_produce(producer, "plain", [b"no key"])
    assert err is None
