"""A consumer process for the group tests (run as a subprocess so a test can kill -9 it).

    python3 groups_consumer.py CLIENT BOOTSTRAP GROUP TOPIC OUT_PREFIX [GROUP_INSTANCE_ID]

CLIENT is `confluent` (librdkafka) or `kafka-python`. Writes `OUT_PREFIX.msgs` (one line
"partition offset value" per message, flushed after each batch) and `OUT_PREFIX.assign`
(the current assignment, "p1,p2,...", rewritten at each rebalance; every change is also
appended to `OUT_PREFIX.assign.log`). With GROUP_INSTANCE_ID it is a static member. Commits synchronously
after each batch; on SIGTERM finishes the batch, commits, leaves the group and exits.
"""

import os
import signal
import sys

client, bootstrap, group, topic, prefix = sys.argv[1:6]
instance_id = sys.argv[6] if len(sys.argv) > 6 else None
# librdkafka assignor: "range" (eager) or "cooperative-sticky" (incremental rebalances).
strategy = os.environ.get("GROUPS_TEST_ASSIGNOR", "range")
SESSION_TIMEOUT_MS = 3000
HEARTBEAT_INTERVAL_MS = 500

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
out = open(prefix + ".msgs", "a")


def write_assignment(partitions):
    with open(prefix + ".assign.tmp", "w") as f:
        f.write(",".join(str(p) for p in sorted(partitions)))
    os.replace(prefix + ".assign.tmp", prefix + ".assign")
    with open(prefix + ".assign.log", "a") as f:
        f.write(",".join(str(p) for p in sorted(partitions)) + "\n")


def run_confluent():
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": prefix.rsplit("/", 1)[-1],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "partition.assignment.strategy": strategy,
            **({"group.instance.id": instance_id} if instance_id else {}),
        }
    )
    # Eager assignors hand out the whole assignment, cooperative ones the changes only:
    # keeping a set of what was added and removed serves both.
    owned = set()

    def on_assign(c, parts):
        owned.update(p.partition for p in parts)
        write_assignment(owned)

    def on_revoke(c, parts):
        owned.difference_update(p.partition for p in parts)
        write_assignment(owned)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    while not stop:
        batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
        for m in batch:
            out.write(f"{m.partition()} {m.offset()} {m.value().decode()}\n")
        out.flush()
        if batch:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                # During a rebalance a commit may be refused; the batch is then redelivered.
                print(f"commit failed: {e}", file=sys.stderr)
    consumer.close()


def run_kafka_python():
    from kafka import ConsumerRebalanceListener, KafkaConsumer
    from kafka.errors import KafkaConnectionError, KafkaError

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            write_assignment([])

        def on_partitions_assigned(self, assigned):
            write_assignment(tp.partition for tp in assigned)

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=prefix.rsplit("/", 1)[-1],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        **({"group_instance_id": instance_id} if instance_id else {}),
    )
    consumer.subscribe([topic], listener=Listener())
    while not stop:
        try:
            records = consumer.poll(timeout_ms=200, max_records=500)
        except KafkaConnectionError as e:
            # kafka-python 3.0 raises from poll() when its coordinator lookup finds the
            # broker down (a test restarting it); librdkafka retries by itself. Poll again.
            print(f"poll: {e}", file=sys.stderr)
            continue
        for tp, messages in records.items():
            for m in messages:
                out.write(f"{tp.partition} {m.offset} {m.value.decode()}\n")
        out.flush()
        if records:
            try:
                consumer.commit()
            except KafkaError as e:
                print(f"commit failed: {e}", file=sys.stderr)
    consumer.close()


if client == "confluent":
    run_confluent()
elif client == "kafka-python":
    run_kafka_python()
else:
    sys.exit(f"unknown client {client}")
