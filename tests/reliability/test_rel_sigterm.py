"""SIGTERM: the broker stops taking requests, finishes those it took and writes their
answers, flushes and syncs every log, and exits 0. The next start needs no recovery scan,
and even acks=1 data acknowledged before the signal is all there (the shutdown flushed it).
A client that left with requests in flight does not hold the shutdown up."""

import signal
import threading

import wire
from broker_process import wait_until
from clients import ck_create_topic, ck_producer

PARTITIONS = 4


def read_partition(broker, topic, partition):
    """{offset: value} of every record of a partition, read with raw Fetch; every batch's
    CRC and the offsets' contiguity checked here."""
    records = {}
    with wire.Conn(broker.address) as conn:
        _, high_watermark, _ = wire.fetch(conn, topic, partition, 0, max_bytes=1)
        while len(records) < high_watermark:
            error, _, batches = wire.fetch(conn, topic, partition, len(records))
            assert error == wire.NONE and batches, f"fetch at {len(records)}: error {error}"
            for b in batches:
                assert b["crc_ok"], f"batch at {b['base_offset']} fails its CRC"
                assert b["base_offset"] == len(records), (b["base_offset"], len(records))
                for i, value in enumerate(b["values"]):
                    records[b["base_offset"] + i] = value
    return high_watermark, records


def test_sigterm_under_load_exits_0_keeps_every_acked_record_and_restarts_without_a_scan(
        start_broker):
    # A long flush interval: only the shutdown can have made the acks=1 data durable.
    broker = start_broker(cores=2, args=["--flush-interval-ms", "600000"])
    ck_create_topic(broker, "t", partitions=PARTITIONS)
    ck_create_topic(broker, "idle")
    delivered = []  # (partition, offset, value)
    stop = threading.Event()

    def produce():
        producer = ck_producer(broker, acks="1", linger_ms=1, message_send_max_retries=0,
                               reconnect_backoff_max_ms=100)

        def on_delivery(err, msg):
            if err is None:
                delivered.append((msg.partition(), msg.offset(), msg.value()))

        i = 0
        while not stop.is_set():
            try:
                producer.produce("t", f"v{i}".encode().ljust(200, b"."),
                                 partition=i % PARTITIONS, on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            producer.poll(0)
        producer.purge()  # what was not acknowledged by the signal is given up
        producer.flush(5)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    wait_until(lambda: len(delivered) > 5000, 60, "acks=1 load")

    stop_s = broker.stop()  # while the producer still sends; asserts exit 0
    stop.set()
    thread.join(timeout=30)
    shutdown_log = broker.run_log()
    assert "shutting down" in shutdown_log and "stopped cleanly" in shutdown_log

    broker.start()
    log = broker.run_log()
    assert "recovered log" not in log and "unclean" not in log, log
    opened = [line for line in log.splitlines() if "opened log" in line]
    assert len(opened) >= PARTITIONS + 1, log  # t, idle, and any internal topics
    assert all("clean shutdown" in line for line in opened), log
    for p in range(PARTITIONS):
        high_watermark, records = read_partition(broker, "t", p)
        mine = sorted((o, v) for part, o, v in delivered if part == p)
        assert high_watermark >= len(mine)
        lost = [(o, v) for o, v in mine if records.get(o) != v]
        assert not lost, f"partition {p}: {len(lost)} acknowledged records lost, e.g. {lost[:3]}"
    print(f"\nSIGTERM under load: exit 0 after {stop_s * 1000:.0f} ms, "
          f"{len(delivered)} acks=1 records all kept, restart ready in "
          f"{broker.ready_s * 1000:.0f} ms with no recovery scan")


def test_sigterm_answers_a_long_poll_the_broker_took_before_the_signal(start_broker):
    broker = start_broker(cores=2)
    wire.auto_create(broker.address, "idle")
    conn = wire.Conn(broker.address)
    # One write: an ApiVersions request, then a long poll on the empty partition. The
    # broker hands every complete frame of a read to its handler before it writes any
    # answer, so the ApiVersions answer means it took the poll too.
    conn.send_raw(wire.api_versions_request(correlation_id=76)
                  + wire.fetch_request("idle", 0, 0, max_wait_ms=1500, min_bytes=1,
                                       correlation_id=77))
    assert wire.correlation_id(conn.recv_frame()) == 76

    broker.send_signal(signal.SIGTERM)

    answer = conn.recv_frame()
    assert answer is not None, "the broker closed the connection instead of answering the poll"
    assert wire.correlation_id(answer) == 77
    assert wire.fetch_answer(answer)[:2] == (wire.NONE, 0)
    conn.close()
    assert broker.wait_exit() == 0, broker.run_log()


def test_sigterm_stops_promptly_after_a_client_left_with_requests_in_flight(broker):
    wire.auto_create(broker.address, "quiet")
    conn = wire.Conn(broker.address)
    # Pipelined long polls on an empty partition, ending one after the other.
    for max_wait_ms in (100, 300, 3000):
        conn.send(wire.API_FETCH, 4, wire.fetch_v4_body("quiet", {0: 0}, max_wait_ms=max_wait_ms,
                                                        min_bytes=1))
    conn.close()
    # The first answers reach a closed connection while the last long poll still waits;
    # the broker then drops the connection and every request it took from it.
    wait_until(lambda: "closing connection" in broker.run_log(), 10,
               "the broker to notice the client left")
    wait_until(conn.broker_closed_its_end, 10, "the broker to close its end of the connection")

    stop_s = broker.stop()

    assert "requests still running" not in broker.run_log(), broker.run_log()
    assert stop_s < 2.0, f"SIGTERM took {stop_s:.1f}s with no client connected"
