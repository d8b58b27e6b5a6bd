"""Topic configs and the admin corners a Kafka client's own integration suite reaches, driven
with confluent-kafka (librdkafka 2.16): every Kafka 3.9 topic config accepted, checked,
stored and described; message.timestamp.type=LogAppendTime stamped by the broker;
IncrementalAlterConfigs APPEND / SUBTRACT; CreateTopics with a manual replica assignment;
and a transactional producer failing fast instead of timing out."""

import time

import pytest
from confluent_kafka import (TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, KafkaError,
                             KafkaException)
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewTopic)

from clients import (CLIENT_TIMEOUT_S, ck_admin, ck_create_topic,
                     ck_partition_count, ck_produce, ck_producer, ck_read)

# Kafka 3.9's topic configs and their defaults (its LogConfig), which a broker started with
# default settings describes for a topic without overrides.
KAFKA_3_9_DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.type": "producer",
    "compression.zstd.level": "3",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588",
    "message.downconversion.enable": "true",
    "message.format.version": "3.0-IV1",
    "message.timestamp.after.max.ms": "9223372036854775807",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.difference.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}

# The configs the broker has its own setting for (Kafka's log.* synonyms).
BROKER_BACKED = {"retention.ms", "retention.bytes", "segment.bytes", "segment.ms",
                 "max.message.bytes", "index.interval.bytes", "min.insync.replicas"}

# A valid value other than the default for each config (remote.storage.enable can only be
# false: there is no tiered storage).
NON_DEFAULTS = {
    "cleanup.policy": "compact,delete",
    "compression.gzip.level": "5",
    "compression.lz4.level": "10",
    "compression.type": "zstd",
    "compression.zstd.level": "7",
    "delete.retention.ms": "1000",
    "file.delete.delay.ms": "1001",
    "flush.messages": "1002",
    "flush.ms": "1003",
    "follower.replication.throttled.replicas": "*",
    "index.interval.bytes": "2048",
    "leader.replication.throttled.replicas": "0:0,1:0",
    "local.retention.bytes": "1004",
    "local.retention.ms": "1005",
    "max.compaction.lag.ms": "1006",
    "max.message.bytes": "100000",
    "message.downconversion.enable": "false",
    "message.format.version": "2.8",
    "message.timestamp.after.max.ms": "1007",
    "message.timestamp.before.max.ms": "1008",
    "message.timestamp.difference.max.ms": "1009",
    "message.timestamp.type": "LogAppendTime",
    "min.cleanable.dirty.ratio": "0.25",
    "min.compaction.lag.ms": "10",
    "min.insync.replicas": "2",
    "preallocate": "true",
    "remote.log.copy.disable": "true",
    "remote.log.delete.on.disable": "true",
    "remote.storage.enable": "false",
    "retention.bytes": "1073741824",
    "retention.ms": "3600000",
    "segment.bytes": "1048576",
    "segment.index.bytes": "4096",
    "segment.jitter.ms": "1010",
    "segment.ms": "3600001",
    "unclean.leader.election.enable": "true",
}


def describe_topic(broker, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    futures = ck_admin(broker).describe_configs([resource])
    return futures[resource].result(timeout=CLIENT_TIMEOUT_S)


def create_error(broker, topic):
    """Create `topic` (a NewTopic) and return the KafkaError it fails with."""
    futures = ck_admin(broker).create_topics([topic], operation_timeout=10)
    with pytest.raises(KafkaException) as failure:
        futures[topic.topic].result(timeout=CLIENT_TIMEOUT_S)
    return failure.value.args[0]


def alter(broker, topic, *entries):
    """IncrementalAlterConfigs on `topic` with (name, value, op) entries; returns the future."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=op) for name, value, op in entries])
    return ck_admin(broker).incremental_alter_configs([resource])[resource]


def now_ms():
    return int(time.time() * 1000)


def read_timestamps(broker, topic, count, timeout_s=CLIENT_TIMEOUT_S):
    """The first `count` messages of partition 0 as (value, (timestamp type, timestamp))."""
    return ck_read(broker, topic, 0, 0, count, timeout_s=timeout_s,
                   fields=lambda msg: (msg.value(), msg.timestamp()))


# --- 1. every Kafka 3.9 topic config ---------------------------------------------------------

def test_a_topic_without_overrides_describes_every_kafka_3_9_config_with_its_default(broker):
    ck_create_topic(broker, "plain")

    configs = describe_topic(broker, "plain")

    assert {name: entry.value for name, entry in configs.items()} == KAFKA_3_9_DEFAULTS
    for name, entry in configs.items():
        want = (ConfigSource.STATIC_BROKER_CONFIG if name in BROKER_BACKED
                else ConfigSource.DEFAULT_CONFIG)
        assert entry.source == want.value, name


def test_every_kafka_3_9_config_is_accepted_at_creation_stored_and_described(broker):
    ck_create_topic(broker, "everything", config=NON_DEFAULTS)

    configs = describe_topic(broker, "everything")

    assert {name: entry.value for name, entry in configs.items()} == NON_DEFAULTS
    for name, entry in configs.items():
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name


def test_stored_configs_survive_a_restart(broker):
    ck_create_topic(broker, "kept", config={"min.insync.replicas": "2",
                                            "compression.type": "lz4"})
    broker.restart()

    configs = describe_topic(broker, "kept")

    assert (configs["min.insync.replicas"].value, configs["compression.type"].value) == \
        ("2", "lz4")


@pytest.mark.parametrize("name,value", [
    ("min.cleanable.dirty.ratio", "1.5"),
    ("compression.type", "brotli"),
    ("flush.messages", "0"),
    ("local.retention.ms", "-3"),
    ("message.timestamp.type", "WallClock"),
    ("message.format.version", "9.9"),
    ("preallocate", "maybe"),
    ("leader.replication.throttled.replicas", "0-1"),
    ("remote.storage.enable", "true"),
    ("no.such.config", "1"),
])
def test_a_bad_value_or_unknown_name_is_refused_with_invalid_config(broker, name, value):
    error = create_error(broker, NewTopic("refused", num_partitions=1, replication_factor=1,
                                          config={name: value}))

    assert error.code() == KafkaError.INVALID_CONFIG, error
    assert "refused" not in ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_min_compaction_lag_above_max_compaction_lag_is_invalid_config(broker):
    error = create_error(broker, NewTopic("lagging", num_partitions=1, replication_factor=1,
                                          config={"min.compaction.lag.ms": "2000",
                                                  "max.compaction.lag.ms": "1000"}))
    assert error.code() == KafkaError.INVALID_CONFIG, error

    ck_create_topic(broker, "lagging", config={"max.compaction.lag.ms": "1000"})
    with pytest.raises(KafkaException) as failure:
        alter(broker, "lagging", ("min.compaction.lag.ms", "2000", AlterConfigOpType.SET)) \
            .result(timeout=CLIENT_TIMEOUT_S)
    assert failure.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic(broker, "lagging")["min.compaction.lag.ms"].value == "0"


# --- 2. message.timestamp.type=LogAppendTime ---------------------------------------------------

@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_log_append_time_topics_stamp_the_broker_time_over_the_producers(broker, codec):
    ck_create_topic(broker, "stamped", config={"message.timestamp.type": "LogAppendTime"})
    supplied = 1_000_000_000_000  # 2001: far from now
    producer = ck_producer(broker, compression_type=codec)
    reports = []

    before = now_ms()
    producer.produce("stamped", b"a", timestamp=supplied,
                     on_delivery=lambda err, msg: reports.append((err, msg.timestamp())))
    producer.produce("stamped", b"b", timestamp=supplied + 1,
                     on_delivery=lambda err, msg: reports.append((err, msg.timestamp())))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    messages = read_timestamps(broker, "stamped", 2)
    after = now_ms()

    # The produce response carries the append time, which librdkafka reports on delivery.
    for err, (kind, stamp) in reports:
        assert err is None
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= stamp <= after + 1000
    # A consumer reads every record's timestamp as the batch's append time.
    assert [value for value, _ in messages] == [b"a", b"b"]
    for _, (kind, stamp) in messages:
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= stamp <= after + 1000, (stamp, before, after)


def test_switching_a_topic_to_log_append_time_stamps_only_later_batches(broker):
    ck_create_topic(broker, "switched")
    producer = ck_producer(broker)
    ck_produce(producer, "switched", [b"early"], timestamps=[1_000_000_000_000])

    alter(broker, "switched",
          ("message.timestamp.type", "LogAppendTime", AlterConfigOpType.SET)) \
        .result(timeout=CLIENT_TIMEOUT_S)
    before = now_ms()
    ck_produce(producer, "switched", [b"late"], timestamps=[1_000_000_000_000])

    (_, early), (_, late) = read_timestamps(broker, "switched", 2)
    assert early == (TIMESTAMP_CREATE_TIME, 1_000_000_000_000)
    assert late[0] == TIMESTAMP_LOG_APPEND_TIME and late[1] >= before - 1000


# --- 3. IncrementalAlterConfigs APPEND / SUBTRACT ----------------------------------------------

def test_append_and_subtract_change_list_configs_item_by_item(broker):
    ck_create_topic(broker, "listed")

    alter(broker, "listed",
          ("cleanup.policy", "compact", AlterConfigOpType.APPEND),
          ("leader.replication.throttled.replicas", "0:0,1:0", AlterConfigOpType.APPEND)) \
        .result(timeout=CLIENT_TIMEOUT_S)
    appended = describe_topic(broker, "listed")
    alter(broker, "listed",
          ("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT),
          ("leader.replication.throttled.replicas", "0:0", AlterConfigOpType.SUBTRACT)) \
        .result(timeout=CLIENT_TIMEOUT_S)
    subtracted = describe_topic(broker, "listed")

    assert appended["cleanup.policy"].value == "delete,compact", "appended to the default"
    assert appended["leader.replication.throttled.replicas"].value == "0:0,1:0"
    assert subtracted["cleanup.policy"].value == "compact"
    assert subtracted["leader.replication.throttled.replicas"].value == "1:0"
    assert subtracted["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_append_an_item_already_present_changes_nothing(broker):
    ck_create_topic(broker, "present", config={"cleanup.policy": "compact"})

    alter(broker, "present", ("cleanup.policy", "compact", AlterConfigOpType.APPEND)) \
        .result(timeout=CLIENT_TIMEOUT_S)

    assert describe_topic(broker, "present")["cleanup.policy"].value == "compact"


@pytest.mark.parametrize("op", [AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT])
def test_append_or_subtract_on_a_config_that_is_not_a_list_is_invalid_config(broker, op):
    ck_create_topic(broker, "scalar", config={"retention.ms": "3600000"})

    with pytest.raises(KafkaException) as failure:
        alter(broker, "scalar", ("retention.ms", "1000", op)).result(timeout=CLIENT_TIMEOUT_S)

    assert failure.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic(broker, "scalar")["retention.ms"].value == "3600000"


def test_an_append_that_makes_an_invalid_list_is_refused(broker):
    ck_create_topic(broker, "guarded")

    with pytest.raises(KafkaException) as failure:
        alter(broker, "guarded", ("cleanup.policy", "shred", AlterConfigOpType.APPEND)) \
            .result(timeout=CLIENT_TIMEOUT_S)

    assert failure.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic(broker, "guarded")["cleanup.policy"].value == "delete"


# --- 4. CreateTopics with a manual replica assignment ------------------------------------------

def node_id(broker):
    [node] = ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).brokers
    return node


def test_a_replica_assignment_naming_this_node_creates_one_partition_per_entry(broker):
    node = node_id(broker)
    futures = ck_admin(broker).create_topics(
        [NewTopic("assigned", num_partitions=2, replica_assignment=[[node], [node]])],
        operation_timeout=10)

    futures["assigned"].result(timeout=CLIENT_TIMEOUT_S)

    assert ck_partition_count(broker, "assigned") == 2
    ck_produce(ck_producer(broker), "assigned", [b"on-1"], partition=1)
    assert [m[2] for m in ck_read(broker, "assigned", 1, 0, 1)] == [b"on-1"]


# Replica lists per partition, as offsets from this node's id (0: this node). An empty
# list or a gap in the numbering cannot be sent through librdkafka; the broker's unit tests
# cover those.
@pytest.mark.parametrize("offsets", [
    pytest.param([[1]], id="unknown-broker"),
    pytest.param([[0], [7]], id="unknown-broker-for-a-later-partition"),
    pytest.param([[0, 1]], id="two-replicas"),
    pytest.param([[0, 0]], id="same-broker-twice"),
])
def test_a_replica_assignment_this_node_cannot_hold_is_invalid_replica_assignment(
        broker, offsets):
    node = node_id(broker)
    replicas = [[node + k for k in brokers] for brokers in offsets]
    # librdkafka wants the count locally, and sends -1 in its place with the assignment.
    error = create_error(broker, NewTopic("misassigned", num_partitions=len(replicas),
                                          replica_assignment=replicas))

    assert error.code() == KafkaError.INVALID_REPLICA_ASSIGNMENT, error
    assert "misassigned" not in ck_admin(broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


# --- 5. a transactional producer without transactions ------------------------------------------

def test_init_transactions_fails_fast_with_a_fatal_error_and_the_broker_stays_up(broker):
    producer = ck_producer(broker, transactional_id="tx-1")
    timeout_s = 10

    started = time.monotonic()
    with pytest.raises(KafkaException) as failure:
        producer.init_transactions(timeout_s)
    elapsed = time.monotonic() - started

    error = failure.value.args[0]
    assert error.code() != KafkaError._TIMED_OUT, error
    assert error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, error
    assert error.fatal() and not error.retriable(), error
    assert elapsed < timeout_s / 2, f"took {elapsed:.1f}s: the client retried"
    # The broker serves others as before.
    assert broker.is_running()
    ck_create_topic(broker, "after")
    [(err, _, offset)] = ck_produce(ck_producer(broker), "after", [b"x"])
    assert (err, offset) == (None, 0)
