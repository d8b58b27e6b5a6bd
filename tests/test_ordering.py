"""Kafka's per-partition ordering promise: the messages one producer sends to one partition
are stored in the order it sent them, even with many requests in flight on one connection.

librdkafka (confluent-kafka) and kafka-python pipeline requests: without idempotence they
keep several Produce requests in flight on one connection, so a broker that handles a
connection's requests concurrently must still append them in request order. Each value
starts with its index, so offset k must hold message k; a reordered log shows up as an
offset holding another index (nothing lost or duplicated, just out of place).
"""

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clients import CLIENT_TIMEOUT_S, ck_create_topic, ck_produce, ck_producer, ck_read

# Small messages first, then large ones: large batches make appends wait for write-buffer
# space, which is where a later request could overtake an earlier one.
SMALL_COUNT, SMALL_BYTES = 400, 10_000
LARGE_COUNT, LARGE_BYTES = 400, 500_000
MAX_MESSAGE_BYTES = 2_000_000
KP_LARGE_BYTES = 300_000


def indexed_values(count, size, start=0):
    """`count` values of `size` bytes, each starting with its index (`000123|`)."""
    return [f"{start + i:06d}|".encode().ljust(size, b"x") for i in range(count)]


def mixed_values():
    return (indexed_values(SMALL_COUNT, SMALL_BYTES)
            + indexed_values(LARGE_COUNT, LARGE_BYTES, start=SMALL_COUNT))


def misplaced(indices):
    """Offsets (from 0) whose message index is not the offset."""
    return [(offset, index) for offset, index in enumerate(indices) if offset != index]


def index_of(value):
    return int(value.split(b"|", 1)[0])


def assert_in_order(indices, total):
    assert len(indices) == total, f"read {len(indices)} of {total} messages"
    wrong = misplaced(indices)
    assert not wrong, (
        f"{len(wrong)} of {total} messages stored out of order; first (offset, index): "
        f"{wrong[:5]}"
    )


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("batch_size", [None, 600_000], ids=["default-batch", "one-large-per-request"])
def test_librdkafka_pipelined_messages_are_stored_in_send_order(start_broker, cores, batch_size):
    broker = start_broker(cores=cores, args=["--max-message-bytes", str(MAX_MESSAGE_BYTES)])
    topic = f"order-{cores}-{batch_size or 'default'}"
    ck_create_topic(broker, topic, partitions=2 * cores,
                    config={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    config = {"linger_ms": 5, "message.max.bytes": MAX_MESSAGE_BYTES}
    if batch_size is not None:
        config["batch.size"] = batch_size
    producer = ck_producer(broker, **config)
    values = mixed_values()
    reports = ck_produce(producer, topic, values, partition=0)
    errors = [r[0] for r in reports if r[0] is not None]
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[0]}"
    read = ck_read(broker, topic, 0, 0, len(values), timeout_s=60,
                   fetch_max_bytes=MAX_MESSAGE_BYTES * 4,
                   max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    assert [offset for offset, *_ in read] == list(range(len(values)))
    assert_in_order([index_of(value) for _, _, value, _ in read], len(values))
    # The delivery reports agree with the log: message i was told offset i.
    assert [offset for _, _, offset in reports] == list(range(len(values)))


@pytest.mark.parametrize("cores", [1, 2])
def test_kafka_python_pipelined_messages_are_stored_in_send_order(start_broker, cores):
    """kafka-python puts every ready partition's batch into one request: with large
    requests of several partitions in flight, each partition must still keep send order."""
    broker = start_broker(cores=cores, args=["--max-message-bytes", str(MAX_MESSAGE_BYTES)])
    topic, partitions = f"order-kp-{cores}", 4
    ck_create_topic(broker, topic, partitions=partitions,
                    config={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    # One in three messages large, the rest small; partitions take turns.
    count = 1200
    sizes = [KP_LARGE_BYTES if (i // partitions) % 3 == 0 else SMALL_BYTES for i in range(count)]
    sent = {p: [] for p in range(partitions)}
    # Idempotence off (kafka-python turns it on by default against a modern broker), so
    # ordering rests on the broker alone, with several requests in flight.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             enable_idempotence=False, acks=1, batch_size=1_000_000,
                             max_in_flight_requests_per_connection=8,
                             max_request_size=MAX_MESSAGE_BYTES * partitions)
    try:
        futures = []
        for i, size in enumerate(sizes):
            partition = i % partitions
            value = f"{len(sent[partition]):06d}|".encode().ljust(size, b"x")
            sent[partition].append(value)
            futures.append((partition, producer.send(topic, value, partition=partition)))
        producer.flush(timeout=60)
        for partition, future in futures:
            future.get(timeout=CLIENT_TIMEOUT_S)
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_S)
    for partition in range(partitions):
        indices = [index_of(value) for value in kp_read(broker, topic, partition,
                                                        len(sent[partition]))]
        assert_in_order(indices, len(sent[partition]))


def kp_read(broker, topic, partition, count):
    """The first `count` values of a partition, read with kafka-python."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                             fetch_max_bytes=MAX_MESSAGE_BYTES * 4,
                             consumer_timeout_ms=int(CLIENT_TIMEOUT_S * 1000))
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        values = []
        for message in consumer:
            values.append(message.value)
            if len(values) == count:
                break
        return values
    finally:
        consumer.close()


def test_the_order_check_itself_finds_a_swapped_pair():
    """The checker is tested on a history that is out of order."""
    assert misplaced([0, 1, 2, 3]) == []
    assert misplaced([0, 2, 1, 3]) == [(1, 2), (2, 1)]
    with pytest.raises(AssertionError, match="2 of 4 messages stored out of order"):
        assert_in_order([0, 2, 1, 3], 4)
    with pytest.raises(AssertionError, match="read 3 of 4"):
        assert_in_order([0, 1, 2], 4)
