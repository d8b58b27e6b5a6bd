"""Fetch and ListOffsets at the wire level: offsets out of range, long poll bounds, byte
limits (a first batch larger than the limit is still returned whole, as in KIP-74)."""

import time

import wire
from broker_process import wait_until
from clients import ck_create_topic

OFFSET_OUT_OF_RANGE = 1


def fill(conn, topic, batches, values_per_batch=1, value_bytes=10):
    for i in range(batches):
        values = [f"b{i}-{j}".encode().ljust(value_bytes, b".") for j in range(values_per_batch)]
        [(error, _)] = wire.produce(conn, topic, {0: wire.record_batch(values)}).values()
        assert error == wire.NONE


def test_list_offsets_earliest_and_latest(broker):
    ck_create_topic(broker, "offsets")
    with wire.Conn(broker.address) as conn:
        assert wire.list_offset(conn, "offsets", 0, -2) == (wire.NONE, 0)
        assert wire.list_offset(conn, "offsets", 0, -1) == (wire.NONE, 0)
        fill(conn, "offsets", 3, values_per_batch=4)
        assert wire.list_offset(conn, "offsets", 0, -2) == (wire.NONE, 0)
        assert wire.list_offset(conn, "offsets", 0, -1) == (wire.NONE, 12)
        assert wire.list_offset(conn, "offsets", 5, -1)[0] == wire.UNKNOWN_TOPIC_OR_PARTITION


def test_fetch_past_the_log_end_gets_offset_out_of_range(broker):
    ck_create_topic(broker, "short")
    with wire.Conn(broker.address) as conn:
        fill(conn, "short", 2)
        at_end = wire.fetch(conn, "short", 0, 2)
        past_end = wire.fetch(conn, "short", 0, 3)
        negative = wire.fetch(conn, "short", 0, -5)
    assert at_end == (wire.NONE, 2, [])
    assert past_end[0] == OFFSET_OUT_OF_RANGE
    assert negative[0] == OFFSET_OUT_OF_RANGE


def test_fetch_from_the_middle_of_a_batch_returns_that_whole_batch(broker):
    ck_create_topic(broker, "batched")
    with wire.Conn(broker.address) as conn:
        fill(conn, "batched", 2, values_per_batch=5)
        _, _, batches = wire.fetch(conn, "batched", 0, 7)
    # Batches are served as stored; the client skips the records before its offset.
    assert [b["base_offset"] for b in batches] == [5]
    assert batches[0]["values"][2] == b"b1-2......"


def test_long_poll_without_data_returns_empty_after_max_wait(broker):
    ck_create_topic(broker, "quiet")
    with wire.Conn(broker.address) as conn:
        started = time.monotonic()
        answer = wire.fetch(conn, "quiet", 0, 0, max_wait_ms=600, min_bytes=1)
        waited_s = time.monotonic() - started
    assert answer == (wire.NONE, 0, [])
    assert 0.5 <= waited_s < 3.0, f"waited {waited_s:.2f}s for max_wait_ms=600"


def test_fetch_stops_at_max_bytes_but_always_returns_one_whole_batch(broker):
    ck_create_topic(broker, "sized")
    with wire.Conn(broker.address) as conn:
        fill(conn, "sized", 10, value_bytes=10_000)
        tiny = wire.fetch(conn, "sized", 0, 0, max_bytes=100)
        some = wire.fetch(conn, "sized", 0, 0, max_bytes=35_000)
        everything = wire.fetch(conn, "sized", 0, 0, max_bytes=1 << 20)
    batch_bytes = tiny[2][0]["length"] + 12
    assert [b["base_offset"] for b in tiny[2]] == [0]
    assert [b["base_offset"] for b in some[2]] == list(range(35_000 // batch_bytes))
    assert [b["base_offset"] for b in everything[2]] == list(range(10))
    assert all(b["crc_ok"] for b in everything[2])


def test_produce_with_acks_0_gets_no_response_but_is_appended(broker):
    ck_create_topic(broker, "fire-and-forget")
    with wire.Conn(broker.address) as conn:
        conn.send(wire.API_PRODUCE, 3, wire.produce_body(
            "fire-and-forget", {0: wire.record_batch([b"a", b"b"])}, acks=0))
        # The next response on the connection answers the next request.
        error, _ = wire.api_versions(conn)
        assert error == wire.NONE
        # Handlers of pipelined requests run concurrently: wait for the append.
        answer = wait_until(lambda: (lambda a: a if a[1] == 2 else None)(
            wire.fetch(conn, "fire-and-forget", 0, 0)), 10, "the acks=0 batch to be appended")
    assert answer[:2] == (wire.NONE, 2)
    assert [v for b in answer[2] for v in b["values"]] == [b"a", b"b"]
