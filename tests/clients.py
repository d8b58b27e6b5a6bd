"""Small helpers around the real client libraries, so tests read as specifications.

No consumer groups here: consumers are assigned partitions with explicit offsets.
"""

import logging
import subprocess
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CLIENT_TIMEOUT_S = 20.0
# librdkafka's own log lines go through Python logging: pytest shows them with a failing
# test instead of printing them whenever a background thread of a leftover client logs.
RDKAFKA_LOGGER = logging.getLogger("librdkafka")


def _dotted(config):
    """Python keyword names to librdkafka property names (`linger_ms` -> `linger.ms`);
    callbacks (`stats_cb`) keep their names."""
    return {k if k.endswith("_cb") else k.replace("_", "."): v for k, v in config.items()}


# --- confluent-kafka (librdkafka) -----------------------------------------------------------
def ck_admin(broker):
    """The broker's admin client. It is kept on the broker object because librdkafka fails
    the futures of an AdminClient that is garbage collected before they resolve."""
    admin = getattr(broker, "ck_admin", None)
    if admin is None:
        admin = broker.ck_admin = AdminClient({"bootstrap.servers": broker.bootstrap,
                                               "logger": RDKAFKA_LOGGER})
    return admin


def ck_create_topic(broker, name, partitions=1, config=None):
    futures = ck_admin(broker).create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
    )
    futures[name].result(timeout=CLIENT_TIMEOUT_S)


def ck_producer(broker, **config):
    conf = {"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "logger": RDKAFKA_LOGGER}
    conf.update(_dotted(config))
    return Producer(conf)


def ck_produce(producer, topic, values, partition=0, keys=None, timestamps=None):
    """Produce every value, flush, and return the delivery reports in production order:
    a list of (error or None, partition, offset)."""
    reports = [None] * len(values)

    def on_delivery(i):
        def callback(err, msg):
            reports[i] = (err, msg.partition(), msg.offset())
        return callback

    for i, value in enumerate(values):
        kwargs = {"partition": partition, "on_delivery": on_delivery(i)}
        if keys is not None:
            kwargs["key"] = keys[i]
        if timestamps is not None:
            kwargs["timestamp"] = timestamps[i]
        producer.produce(topic, value, **kwargs)
        producer.poll(0)
    left = producer.flush(CLIENT_TIMEOUT_S)
    assert left == 0, f"{left} messages still undelivered after {CLIENT_TIMEOUT_S}s"
    assert all(r is not None for r in reports), "a delivery report is missing"
    return reports


def ck_consumer(broker, **config):
    conf = {
        "bootstrap.servers": broker.bootstrap,
        # librdkafka needs a group id to construct a consumer; with assign() and no commits
        # it never talks to a group coordinator.
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.wait.max.ms": 100,
        "logger": RDKAFKA_LOGGER,
    }
    conf.update(_dotted(config))
    return Consumer(conf)


def ck_read(broker, topic, partition, offset, count, timeout_s=CLIENT_TIMEOUT_S, fields=None,
            **config):
    """Assign (topic, partition) at `offset` (a number or OFFSET_BEGINNING/END) and return the
    first `count` messages as (offset, key, value, timestamp_ms), or as `fields(message)`
    when given. Fails on any error."""
    consumer = ck_consumer(broker, **config)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"read {len(out)} of {count} messages from {topic}/{partition}"
            msg = consumer.poll(min(left, 1.0))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            if fields is None:
                out.append((msg.offset(), msg.key(), msg.value(), msg.timestamp()[1]))
            else:
                out.append(fields(msg))
        return out
    finally:
        consumer.close()


def ck_read_nothing_more(consumer, wait_s=1.0):
    """Assert that an assigned consumer gets no message during `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is not None and not msg.error():
            raise AssertionError(f"unexpected message at offset {msg.offset()}: {msg.value()!r}")


def ck_offsets(broker, topic, partition):
    """(low, high) watermarks as the broker reports them (ListOffsets)."""
    consumer = ck_consumer(broker)
    try:
        return consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=CLIENT_TIMEOUT_S, cached=False)
    finally:
        consumer.close()


def ck_partition_count(broker, topic):
    md = ck_admin(broker).list_topics(topic=topic, timeout=CLIENT_TIMEOUT_S)
    t = md.topics[topic]
    assert t.error is None, f"metadata error for {topic}: {t.error}"
    return len(t.partitions)


# --- kcat (librdkafka 2.0.2, from Debian) ---------------------------------------------------
def kcat(broker, *args, stdin=None, timeout_s=CLIENT_TIMEOUT_S):
    """Run kcat against the broker; return stdout, failing with stderr on a non-zero exit."""
    proc = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin, capture_output=True, timeout=timeout_s,
    )
    assert proc.returncode == 0, (
        f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout


def confluent_version():
    return confluent_kafka.version(), confluent_kafka.libversion()
