"""Bounded under load: each limit pushes back as documented in broker/src/net/mod.rs.

- `--max-frame-bytes`: a larger frame closes the connection; one of exactly that size is served.
- `--max-inflight-requests`: once that many requests of a connection are queued, the broker
  stops reading the connection (later requests are not even seen) until responses go out.
- `--max-buffered-bytes-per-shard`: request bytes held by a shard, counted from the moment a
  frame's size is read; when the budget is taken, the shard stops reading every connection.
- `--max-connections-per-shard`: further connections are closed at accept.
- `--idle-timeout-ms`: a connection silent for that long is closed.
- `--tail-cache-bytes`: what cached batches may pin, whatever the reads they came in.
- `--max-partitions`: a CreateTopics or CreatePartitions beyond it is refused.
"""

import struct
import threading
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewPartitions, NewTopic

import wire
from broker_process import wait_until
from clients import ck_admin


def produce_error(answer):
    """The error code of the single partition of a Produce v3 answer frame."""
    [(error, _)] = wire.produce_answer(answer).values()
    return error


def test_max_frame_bytes_closes_larger_frames_and_serves_one_at_the_limit(start_broker):
    limit = 64 << 10
    broker = start_broker(args=["--max-frame-bytes", str(limit),
                                "--max-message-bytes", str(60 << 10)])
    request = wire.produce_request("f", 0, wire.record_batch([b"v" * 1000]))
    # Pad the record batch's value so that the frame is exactly `limit` bytes.
    pad = limit + 4 - len(request)
    at_limit = wire.produce_request("f", 0, wire.record_batch([b"v" * (1000 + pad)]))
    assert len(at_limit) > limit  # varint growth: trim to exactly limit + 4
    at_limit = wire.produce_request(
        "f", 0, wire.record_batch([b"v" * (1000 + pad - (len(at_limit) - limit - 4))]))
    assert len(at_limit) == limit + 4, len(at_limit)
    wire.auto_create(broker.address, "f")
    with wire.Conn(broker.address) as conn:
        conn.send_raw(at_limit)
        assert produce_error(conn.recv_frame()) in (wire.NONE, wire.MESSAGE_TOO_LARGE)
    with wire.Conn(broker.address) as conn:
        conn.send_raw(struct.pack(">i", limit + 1) + b"\x00" * 100)
        assert conn.closed_by_peer(5)
    assert "frame size 65537 outside 0..=65536" in broker.run_log()


def test_max_inflight_requests_stops_reading_the_connection(start_broker):
    inflight = 2
    broker = start_broker(args=["--max-inflight-requests", str(inflight)])
    # "q-empty" stays empty, so a fetch of it with min_bytes 1 waits (long poll).
    wire.auto_create(broker.address, "q", "q-empty")
    hw_before = wire.high_watermark(broker.address, "q")
    long_poll = wire.fetch_request("q-empty", 0, 0, max_wait_ms=30_000, min_bytes=1)
    conn = wire.Conn(broker.address)
    # Two long polls, then six produces pipelined behind them on the same connection.
    conn.send_raw(long_poll + long_poll + b"".join(
        wire.produce_request("q", 0, wire.record_batch([f"p{i}".encode()]), acks=1,
                             correlation_id=10 + i)
        for i in range(6)))
    # The writer awaits the first poll, the queue holds `inflight` requests (the second
    # poll and one produce), and one more produce is being handed over: those two are
    # appended, and everything after them is not even taken from the connection.
    def appended():
        return wire.high_watermark(broker.address, "q") - hw_before

    appended_while_polls_wait = wait_until(lambda: appended() >= inflight and appended(), 10,
                                           f"{inflight} of the pipelined produces to be appended")
    assert appended_while_polls_wait == inflight
    # A further round trip through the shard: the connection's reader still waits.
    assert appended() == inflight
    assert not conn.readable(), "a long poll was answered although its partition is empty"

    # Data for the polls: they answer, and the rest of the connection's requests follow.
    with wire.Conn(broker.address) as other:
        wire.produce(other, "q-empty", {0: wire.record_batch([b"wake"])})
    answers = [conn.recv_frame() for _ in range(8)]
    conn.close()
    for poll in answers[:2]:
        error, _, batches = wire.fetch_answer(poll)
        assert error == wire.NONE and batches[0]["values"] == [b"wake"]
    assert [wire.correlation_id(a) for a in answers[2:]] == list(range(10, 16))
    assert all(produce_error(a) == wire.NONE for a in answers[2:])
    assert wire.high_watermark(broker.address, "q") - hw_before == 6


def test_max_buffered_bytes_per_shard_stops_reading_when_taken(start_broker):
    """A request holds its frame's size of the shard's budget until its response is
    written: one long poll padded to exactly the budget (1 MiB) takes it all for 3 s, and
    the shard takes no other request, even a 20-byte one, until the poll answers."""
    budget = 1 << 20
    broker = start_broker(args=[
        "--max-frame-bytes", str(budget), "--max-message-bytes", str(budget - 4096),
        "--max-buffered-bytes-per-shard", str(budget)])
    wire.auto_create(broker.address, "empty")
    poll = wire.fetch_request("empty", 0, 0, max_wait_ms=3000, min_bytes=1, correlation_id=9)
    poll = struct.pack(">i", budget) + poll[4:] + b"\x00" * (budget + 4 - len(poll))
    assert len(poll) == budget + 4
    hog = wire.Conn(broker.address)
    hog.send_raw(poll)
    wait_until(hog.broker_read_everything_sent, 10, "the broker to read the whole 1 MiB frame")
    other = wire.Conn(broker.address)
    other.send_raw(wire.api_versions_request(correlation_id=5))
    first = wire.first_to_answer([hog, other], timeout_s=10)
    assert first is hog, "served although the shard's budget was taken"
    assert wire.correlation_id(hog.recv_frame()) == 9
    answer = other.recv_frame(timeout_s=10)
    assert answer is not None and wire.correlation_id(answer) == 5
    hog.close()
    other.close()


def test_max_connections_per_shard_closes_extra_connections(start_broker):
    limit = 5
    broker = start_broker(args=["--max-connections-per-shard", str(limit)])
    conns = [wire.Conn(broker.address) for _ in range(limit)]
    for i, conn in enumerate(conns):
        conn.send_raw(wire.api_versions_request(correlation_id=i))
        assert wire.correlation_id(conn.recv_frame()) == i
    extra = wire.Conn(broker.address)
    try:
        extra.send_raw(wire.api_versions_request(correlation_id=99))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert extra.closed_by_peer(5), "connection over the limit was served"
    extra.close()
    conns.pop().close()

    def one_more_is_served():
        try:
            with wire.Conn(broker.address) as c:
                c.send_raw(wire.api_versions_request(correlation_id=7))
                return c.recv_frame(timeout_s=1.0) is not None
        except OSError:  # closed at accept (the slot is not free yet), or timed out
            return False

    wait_until(one_more_is_served, 10, "a slot to free up after a close")
    for conn in conns:
        conn.close()
    assert "connection limit reached" in broker.run_log()


def test_idle_timeout_closes_silent_connections_only(start_broker):
    idle_ms = 600
    broker = start_broker(args=["--idle-timeout-ms", str(idle_ms)])
    silent = wire.Conn(broker.address)
    busy = wire.Conn(broker.address)
    opened = time.monotonic()
    # The busy connection sends a request every quarter of the idle timeout until the
    # silent one is closed; it must stay open throughout.
    while not silent.readable(timeout_s=idle_ms / 4000):
        assert time.monotonic() - opened < idle_ms / 1000 + 5, \
            "a silent connection outlived the idle timeout"
        busy.send_raw(wire.api_versions_request(correlation_id=1))
        assert wire.correlation_id(busy.recv_frame()) == 1
    silent_for_s = time.monotonic() - opened
    assert silent.closed_by_peer(1), "the broker sent something to the silent connection"
    assert silent_for_s >= idle_ms / 1000, f"closed after {silent_for_s:.2f}s of silence"
    busy.send_raw(wire.api_versions_request(correlation_id=2))
    assert wire.correlation_id(busy.recv_frame()) == 2
    silent.close()
    busy.close()
    assert f"idle for {idle_ms} ms" in broker.run_log()


def test_small_produces_pin_no_more_than_the_tail_cache(start_broker):
    """Cached batches may hold `--tail-cache-bytes` per partition, not the read buffers they
    arrived in: 10,000 produces of ~1 KiB, one per read, on 20 connections."""
    cache_bytes = 8 << 20
    broker = start_broker(args=["--tail-cache-bytes", str(cache_bytes)])
    wire.auto_create(broker.address, "small")
    before = broker.rss_bytes()
    request = wire.produce_request("small", 0, wire.record_batch([b"s" * 1000]), acks=1)

    def run():
        with wire.Conn(broker.address) as conn:
            for _ in range(500):
                conn.send_raw(request)
                assert produce_error(conn.recv_frame()) == wire.NONE

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown = broker.rss_bytes() - before
    print(f"\n10,000 produces of 1 KiB: RSS grew {grown >> 20} MiB (tail cache {cache_bytes >> 20} MiB)")
    assert grown < 2 * cache_bytes + (16 << 20), f"RSS grew {grown >> 20} MiB"


def test_creating_more_partitions_than_max_partitions_is_refused(start_broker):
    """One CreateTopics for more partitions than the broker has file descriptors for used
    them all up (100,000 partitions are allowed per request; this machine allows 20,000 open
    files): the broker then accepted no connection and could not open its catalog again at
    start. `--max-partitions` bounds the total; here 64 partitions with 256 open files."""
    broker = start_broker(open_files_max=256, args=["--max-partitions", "64"])
    admin = ck_admin(broker)
    with pytest.raises(KafkaException, match="max_partitions"):
        admin.create_topics([NewTopic("wide", 400, 1)])["wide"].result(timeout=60)
    admin.create_topics([NewTopic("fits", 60, 1)])["fits"].result(timeout=60)
    with pytest.raises(KafkaException, match="max_partitions"):
        admin.create_partitions([NewPartitions("fits", 65)])["fits"].result(timeout=60)
    assert broker.is_running(), broker.run_log()[-2000:]
    wire.auto_create(broker.address, "after")
    with wire.Conn(broker.address) as conn:
        assert wire.produce(conn, "after", {0: wire.record_batch([b"still here"])}) == \
            {0: (wire.NONE, 0)}
    broker.restart()
    assert "recovered log" not in broker.run_log()
