"""Bounded under load: each limit pushes back as documented in broker/src/net/mod.rs.

- `--max-frame-bytes`: a larger frame closes the connection; one of exactly that size is served.
- `--max-inflight-requests`: once that many requests of a connection are queued, the broker
  stops reading the connection (later requests are not even seen) until responses go out.
- `--max-buffered-bytes-per-shard`: request bytes held by a shard, counted from the moment a
  frame's size is read; when the budget is taken, the shard stops reading every connection.
- `--max-connections-per-shard`: further connections are closed at accept.
- `--idle-timeout-ms`: a connection silent for that long is closed.
"""

import socket
import threading
import struct
import time

from rel_harness import (RawConnection, auto_create, api_versions_v0, fetch_v4, fetch_v4_response, frame,
                         metadata_v1,
                         produce_v3, record_batch, request_header, wait_until)


def answered(conn, timeout_s):
    """The next frame on `conn`, or None if nothing arrives within the timeout."""
    conn.sock.settimeout(timeout_s)
    try:
        return conn.recv_frame()
    except socket.timeout:
        return None
    finally:
        conn.sock.settimeout(10)


def high_watermark(port, topic, partition=0):
    conn = RawConnection(port)
    try:
        conn.send(fetch_v4(topic, partition, 0, max_bytes=1))
        error, hw, _ = fetch_v4_response(conn.recv_frame())
        assert error == 0, error
        return hw
    finally:
        conn.close()


def produce_answer_error(answer, topic):
    return struct.unpack_from(">h", answer, 4 + 4 + 2 + len(topic) + 4 + 4)[0]


def test_max_frame_bytes_closes_larger_frames_and_serves_one_at_the_limit(rel_broker_factory):
    limit = 64 << 10
    broker = rel_broker_factory(cores=1, extra_args=[
        "--max-frame-bytes", str(limit), "--max-message-bytes", str(60 << 10)]).start()
    request = produce_v3("f", 0, record_batch([b"v" * 1000]))
    # Pad the record batch's value so that the frame is exactly `limit` bytes.
    pad = limit + 4 - len(request)
    at_limit = produce_v3("f", 0, record_batch([b"v" * (1000 + pad)]))
    assert len(at_limit) > limit  # varint growth: trim to exactly limit + 4
    at_limit = produce_v3("f", 0, record_batch([b"v" * (1000 + pad - (len(at_limit) - limit - 4))]))
    assert len(at_limit) == limit + 4, len(at_limit)
    auto_create(broker.port, "f")
    conn = RawConnection(broker.port)
    conn.send(at_limit)
    assert produce_answer_error(conn.recv_frame(), "f") in (0, 10)
    conn.close()
    conn = RawConnection(broker.port)
    conn.send(struct.pack(">i", limit + 1) + b"\x00" * 100)
    assert conn.closed_by_peer(5)
    conn.close()
    assert "frame size 65537 outside 0..=65536" in broker.this_run_log()


def test_max_inflight_requests_stops_reading_the_connection(rel_broker_factory):
    inflight = 2
    broker = rel_broker_factory(cores=1, extra_args=[
        "--max-inflight-requests", str(inflight)]).start()
    auto_create(broker.port, "q")
    conn = RawConnection(broker.port)
    conn.send(produce_v3("q", 0, record_batch([b"first"]), correlation_id=0))
    conn.recv_frame()
    # Two long polls that wait 2 s for data on an empty partition (min_bytes 1)...
    conn.send(metadata_v1(["q-empty"], correlation_id=1))  # auto-creates it
    conn.recv_frame()
    long_poll = fetch_v4("q-empty", 0, 0, max_wait_ms=2000, min_bytes=1)
    hw_before = high_watermark(broker.port, "q")
    sent_at = time.monotonic()
    # ... then six produces pipelined behind them on the same connection.
    conn.send(long_poll + long_poll + b"".join(
        produce_v3("q", 0, record_batch([f"p{i}".encode()]), acks=1, correlation_id=10 + i)
        for i in range(6)))
    time.sleep(0.5)  # well inside the 2 s long polls
    appended_during_poll = high_watermark(broker.port, "q") - hw_before
    assert time.monotonic() - sent_at < 1.5, "the check must run while the polls wait"
    # The writer awaits the first poll, the queue holds `inflight` requests, and one more is
    # being handed over: everything after that was never read from the socket.
    assert appended_during_poll <= inflight, appended_during_poll
    answers = [conn.recv_frame() for _ in range(8)]
    assert [struct.unpack_from(">i", a)[0] for a in answers][2:] == list(range(10, 16))
    assert high_watermark(broker.port, "q") - hw_before == 6
    print(f"\nmax_inflight_requests={inflight}: {appended_during_poll} of 6 pipelined produces "
          "were handled while two long polls held the connection")
    conn.close()


def test_max_buffered_bytes_per_shard_stops_reading_when_taken(rel_broker_factory):
    """A request holds its frame's size of the shard's budget until its response is
    written: one long poll padded to exactly the budget (1 MiB) takes it all for 3 s, and
    the shard takes no other request, even a 20-byte one, until the poll answers."""
    budget = 1 << 20
    broker = rel_broker_factory(cores=1, extra_args=[
        "--max-frame-bytes", str(budget), "--max-message-bytes", str(budget - 4096),
        "--max-buffered-bytes-per-shard", str(budget)]).start()
    auto_create(broker.port, "empty")
    poll = fetch_v4("empty", 0, 0, max_wait_ms=3000, min_bytes=1, correlation_id=9)
    poll = struct.pack(">i", budget) + poll[4:] + b"\x00" * (budget + 4 - len(poll))
    assert len(poll) == budget + 4
    hog = RawConnection(broker.port)
    hog.send(poll)
    time.sleep(0.3)  # let the broker read the whole frame (it holds the budget 3 s)
    other = RawConnection(broker.port)
    other.send(api_versions_v0(5))
    assert answered(other, 1.0) is None, "served although the shard's budget was taken"
    assert struct.unpack_from(">i", hog.recv_frame())[0] == 9
    answer = answered(other, 10.0)
    assert answer is not None and struct.unpack_from(">i", answer)[0] == 5
    hog.close()
    other.close()


def test_max_connections_per_shard_closes_extra_connections(rel_broker_factory):
    limit = 5
    broker = rel_broker_factory(cores=1, extra_args=[
        "--max-connections-per-shard", str(limit)]).start()
    conns = [RawConnection(broker.port) for _ in range(limit)]
    for i, conn in enumerate(conns):
        conn.send(api_versions_v0(i))
        assert struct.unpack_from(">i", conn.recv_frame())[0] == i
    extra = RawConnection(broker.port)
    try:
        extra.send(api_versions_v0(99))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert extra.closed_by_peer(5), "connection over the limit was served"
    extra.close()
    conns.pop().close()

    def one_more_is_served():
        c = RawConnection(broker.port)
        try:
            c.send(api_versions_v0(7))
            return answered(c, 1.0) is not None
        except (ConnectionError, OSError):
            return False
        finally:
            c.close()

    wait_until(one_more_is_served, 10, "a slot to free up after a close")
    for conn in conns:
        conn.close()
    assert "connection limit reached" in broker.this_run_log()


def test_idle_timeout_closes_silent_connections_only(rel_broker_factory):
    idle_ms = 600
    broker = rel_broker_factory(cores=1, extra_args=["--idle-timeout-ms", str(idle_ms)]).start()
    silent = RawConnection(broker.port)
    busy = RawConnection(broker.port)
    started = time.monotonic()
    while time.monotonic() - started < 2 * idle_ms / 1000 + 0.5:
        busy.send(api_versions_v0(1))
        busy.recv_frame()
        time.sleep(idle_ms / 4000)
    assert silent.closed_by_peer(0.1), "a silent connection outlived the idle timeout"
    busy.send(api_versions_v0(2))
    assert struct.unpack_from(">i", busy.recv_frame())[0] == 2
    silent.close()
    busy.close()
    assert f"idle for {idle_ms} ms" in broker.this_run_log()


def test_small_produces_pin_no_more_than_the_tail_cache(rel_broker_factory):
    """Cached batches may hold `--tail-cache-bytes` per partition, not the read buffers they
    arrived in: 10,000 produces of ~1 KiB, one per read, on 20 connections."""
    cache_bytes = 8 << 20
    broker = rel_broker_factory(cores=1, extra_args=[
        "--tail-cache-bytes", str(cache_bytes)]).start()
    auto_create(broker.port, "small")
    before = broker.rss_bytes()
    request = produce_v3("small", 0, record_batch([b"s" * 1000]), acks=1)

    def run():
        conn = RawConnection(broker.port)
        for _ in range(500):
            conn.send(request)
            assert produce_answer_error(conn.recv_frame(), "small") == 0
        conn.close()

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown = broker.rss_bytes() - before
    print(f"\n10,000 produces of 1 KiB: RSS grew {grown >> 20} MiB (tail cache {cache_bytes >> 20} MiB)")
    assert grown < 2 * cache_bytes + (16 << 20), f"RSS grew {grown >> 20} MiB"
