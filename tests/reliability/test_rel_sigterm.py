"""SIGTERM: stop accepting, finish in-flight requests, flush and sync every log, exit 0; the
next start needs no recovery scan, and even acks=1 data acknowledged before the signal is
all there (the shutdown flushed it)."""

import signal
import struct
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rel_harness import RawConnection, fetch_v4, fetch_v4_response, parse_batches, wait_until

PARTITIONS = 4


def read_partition(port, topic, partition):
    """Every record count of every batch, read with raw Fetch; CRCs checked here."""
    conn = RawConnection(port)
    offset, batches = 0, []
    try:
        while True:
            conn.send(fetch_v4(topic, partition, offset, max_bytes=1 << 20))
            error, hw, records = fetch_v4_response(conn.recv_frame())
            assert error == 0, error
            parsed = [b for b in parse_batches(records) if b[0] + b[1] > offset]
            if not parsed:
                return batches, hw
            for base, count, crc_ok in parsed:
                assert crc_ok and base == offset, (base, offset, crc_ok)
                batches.append((base, count))
                offset = base + count
    finally:
        conn.close()


def test_sigterm_finishes_in_flight_syncs_and_restarts_without_a_scan(rel_broker_factory):
    # A long flush interval: only the shutdown can have made the acks=1 data durable.
    broker = rel_broker_factory(cores=2, extra_args=["--flush-interval-ms", "600000"]).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("t", PARTITIONS, 1)])["t"].result(timeout=30)
    admin.create_topics([NewTopic("idle", 1, 1)])["idle"].result(timeout=30)
    acked = {p: 0 for p in range(PARTITIONS)}
    stop = threading.Event()

    def produce():
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "1",
                             "linger.ms": 1, "message.send.max.retries": 0,
                             "reconnect.backoff.max.ms": 100})

        def on_delivery(err, msg):
            if err is None:
                acked[msg.partition()] = max(acked[msg.partition()], msg.offset() + 1)

        i = 0
        while not stop.is_set():
            try:
                producer.produce("t", b"x" * 200, partition=i % PARTITIONS,
                                 on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            producer.poll(0)
        producer.flush(5)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    wait_until(lambda: sum(acked.values()) > 5000, 60, "acks=1 load")
    # A long poll in flight when the signal arrives must still get its answer.
    poll = RawConnection(broker.port)
    poll.send(fetch_v4("idle", 0, 0, max_wait_ms=1500, min_bytes=1, correlation_id=77))
    time.sleep(0.2)  # let the broker take the poll (it waits 1.5 s for data)
    stopped_at = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    answer = poll.recv_frame()
    assert struct.unpack_from(">i", answer)[0] == 77
    assert fetch_v4_response(answer)[0] == 0
    poll.close()
    code = broker.proc.wait(timeout=30)
    stop_s = time.monotonic() - stopped_at
    broker.log_file.close()
    stop.set()
    thread.join(timeout=30)
    assert code == 0, broker.this_run_log()
    shutdown_log = broker.this_run_log()
    assert "shutting down" in shutdown_log and "stopped cleanly" in shutdown_log

    broker.start()
    log = broker.this_run_log()
    assert "recovered log" not in log, log
    opened = [line for line in log.splitlines() if "opened log" in line]
    assert len(opened) >= PARTITIONS + 1, log  # t, idle, and any internal topics
    assert all("clean shutdown" in line for line in opened), log
    for p in range(PARTITIONS):
        batches, hw = read_partition(broker.port, "t", p)
        assert hw >= acked[p], f"partition {p}: acked up to {acked[p]}, only {hw} after restart"
        assert sum(c for _, c in batches) == hw
    print(f"\nSIGTERM under load: exit 0 after {stop_s * 1000:.0f} ms, "
          f"{sum(acked.values())} acks=1 records all kept, restart ready in "
          f"{broker.ready_s * 1000:.0f} ms with no recovery scan")
