"""`--cores 2`: connections land on either shard (SO_REUSEPORT), partitions are spread over
both shards, and every partition is served over a connection on every shard (local calls
and calls forwarded over the mesh).

Which shard does what is observed from outside, by the CPU time of each shard thread
(/proc/PID/task/TID/schedstat; glommio names the threads `shard-<id>-...`). An idle shard
uses no CPU, so work sent to a connection or partition shows up on the shard that does it.
"""

import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING

import wire
from clients import ck_create_topic, ck_produce, ck_producer, ck_read

SHARDS = 2


def busy_shards(broker, work):
    """Run `work()` and return {shard: CPU ns it used meanwhile}."""
    before = broker.shard_cpu_ns()
    work()
    after = broker.shard_cpu_ns()
    assert sorted(after) == list(range(SHARDS)), f"shard threads: {sorted(after)}"
    return {s: after[s] - before[s] for s in after}


def shard_of_connection(broker, conn):
    """The shard serving `conn`: the one that works while it answers 3,000 pipelined
    ApiVersions requests (about 5 ms of CPU; an idle shard wakes for well under 1 ms)."""
    requests = b"".join(wire.frame(wire.API_API_VERSIONS, 0, i, b"") for i in range(3000))

    def work():
        conn.send_raw(requests)
        for _ in range(3000):
            assert conn.recv_frame() is not None
    # Background work (a topic's logs being opened, a flush) can blur one measurement:
    # measure again then, a few times at most.
    measured = []
    for _ in range(5):
        used = busy_shards(broker, work)
        serving = max(used, key=used.get)
        if used[serving] > 2 * max(used[s] for s in used if s != serving):
            return serving
        measured.append(used)
    raise AssertionError(f"no clear serving shard; CPU ns per shard: {measured}")


def connections_by_shard(broker, wanted_per_shard=1, tries_max=40):
    """Open connections until each shard serves at least `wanted_per_shard` of them."""
    by_shard = {s: [] for s in range(SHARDS)}
    for _ in range(tries_max):
        conn = wire.Conn(broker.address)
        shard = shard_of_connection(broker, conn)
        if len(by_shard[shard]) < wanted_per_shard:
            by_shard[shard].append(conn)
        else:
            conn.close()
        if all(len(c) >= wanted_per_shard for c in by_shard.values()):
            return by_shard
    raise AssertionError(f"after {tries_max} connections, per shard: "
                         f"{ {s: len(c) for s, c in by_shard.items()} }")


def owner_of_partition(broker, conn, conn_shard, topic, partition):
    """The shard owning a partition: produce 4 MB to it over a connection on `conn_shard`;
    the other shard works only when it owns the partition (validates and appends)."""
    batch = wire.record_batch([b"w" * 1000] * 200)

    def work():
        for _ in range(20):
            answer = wire.produce(conn, topic, {partition: batch})
            assert answer[partition][0] == wire.NONE
    other = 1 - conn_shard
    # Two measurements must agree, so background work on a shard cannot decide alone.
    verdicts = []
    for _ in range(4):
        used = busy_shards(broker, work)
        verdicts.append(other if used[other] > 0.3 * used[conn_shard] else conn_shard)
        if len(verdicts) >= 2 and verdicts[-1] == verdicts[-2]:
            return verdicts[-1]
    raise AssertionError(f"owner of {topic}/{partition} unclear: {verdicts}")


def test_connections_land_on_both_shards(broker2):
    conns = [wire.Conn(broker2.address) for _ in range(12)]
    try:
        shards = [shard_of_connection(broker2, c) for c in conns]
    finally:
        for c in conns:
            c.close()
    assert set(shards) == {0, 1}, f"12 connections all served by shard {shards[0]}"


@pytest.mark.parametrize("partitions", [2, 4, 5])
def test_partitions_of_a_topic_are_spread_evenly_over_both_shards(broker2, partitions):
    ck_create_topic(broker2, "spread", partitions=partitions)
    by_shard = connections_by_shard(broker2)
    conn = by_shard[0][0]

    owners = [owner_of_partition(broker2, conn, 0, "spread", p) for p in range(partitions)]

    counts = [owners.count(s) for s in range(SHARDS)]
    assert max(counts) - min(counts) <= 1, f"owners by partition: {owners}"
    for conns in by_shard.values():
        for c in conns:
            c.close()


def test_every_partition_is_served_over_a_connection_on_every_shard(broker2):
    ck_create_topic(broker2, "mesh", partitions=4)
    by_shard = connections_by_shard(broker2)
    expected = {p: [] for p in range(4)}

    for shard, [conn] in sorted(by_shard.items()):
        for p in range(4):
            value = f"via-shard-{shard}-to-p{p}".encode()
            answer = wire.produce(conn, "mesh", {p: wire.record_batch([value])}, acks=-1)
            assert answer == {p: (wire.NONE, len(expected[p]))}
            expected[p].append(value)

    for shard, [conn] in sorted(by_shard.items()):
        for p in range(4):
            error, high_watermark, batches = wire.fetch(conn, "mesh", p, 0)
            assert (error, high_watermark) == (wire.NONE, 2)
            assert [v for b in batches for v in b["values"]] == expected[p]
        conn.close()


def test_many_clients_produce_to_all_partitions_and_read_everything_back(broker2):
    ck_create_topic(broker2, "busy", partitions=6)
    producers = 6
    per_partition = 50
    results = {}

    def produce_all(n):
        producer = ck_producer(broker2, acks="all")
        results[n] = {p: ck_produce(producer, "busy",
                                    [f"c{n}-p{p}-{i}".encode() for i in range(per_partition)],
                                    partition=p)
                      for p in range(6)}

    threads = [threading.Thread(target=produce_all, args=(n,)) for n in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(producers))

    for p in range(6):
        got = ck_read(broker2, "busy", p, OFFSET_BEGINNING, producers * per_partition)
        assert [o for o, _, _, _ in got] == list(range(producers * per_partition))
        values = [v for _, _, v, _ in got]
        for n in range(producers):
            mine = [v for v in values if v.startswith(f"c{n}-p{p}-".encode())]
            # Each producer's messages arrive complete and in the order it sent them.
            assert mine == [f"c{n}-p{p}-{i}".encode() for i in range(per_partition)]
            offsets = [r[2] for r in results[n][p]]
            assert sorted(offsets) == offsets and all(r[0] is None for r in results[n][p])


def test_long_poll_fetch_on_one_shard_wakes_when_another_shard_appends(broker2):
    ck_create_topic(broker2, "waiting", partitions=2)
    by_shard = connections_by_shard(broker2)
    waiter, writer = by_shard[0][0], by_shard[1][0]

    for p in range(2):  # one partition owned by each shard
        # One write: an ApiVersions request, then the long poll. The broker hands every
        # complete frame of a read to its handler before it writes any answer, so the
        # ApiVersions answer means the poll is under way.
        waiter.send_raw(wire.api_versions_request(correlation_id=100 + p)
                        + wire.fetch_request("waiting", p, 0, max_wait_ms=10_000, min_bytes=1,
                                             correlation_id=200 + p))
        assert wire.correlation_id(waiter.recv_frame()) == 100 + p
        assert not waiter.readable(), "the fetch returned before there was data"
        appended_at = time.monotonic()
        wire.produce(writer, "waiting", {p: wire.record_batch([b"wake up"])})
        answer = waiter.recv_frame(timeout_s=15)
        waited_s = time.monotonic() - appended_at
        assert wire.correlation_id(answer) == 200 + p
        error, high_watermark, batches = wire.fetch_answer(answer)
        assert (error, high_watermark) == (wire.NONE, 1)
        assert [v for b in batches for v in b["values"]] == [b"wake up"]
        assert waited_s < 5.0, f"the fetch waited {waited_s:.1f}s after the append"
    for conns in by_shard.values():
        conns[0].close()


def test_pipelined_produce_requests_are_appended_in_request_order_on_both_paths(broker2):
    """Kafka handles one request per connection at a time, so pipelined produce requests to a
    partition are appended in the order sent (clients with several requests in flight and
    no idempotence rely on it). Checked for a partition owned by the connection's shard and
    for one owned by the other shard."""
    ck_create_topic(broker2, "ordered", partitions=2)
    by_shard = connections_by_shard(broker2)
    conn = by_shard[0][0]
    requests = 300

    for p in range(2):
        frames = [wire.frame(wire.API_PRODUCE, 3, i, wire.produce_body(
            "ordered", {p: wire.record_batch([f"p{p}-{i}".encode()])}, acks=1))
            for i in range(requests)]
        conn.send_raw(b"".join(frames))
        base_offsets = []
        for i in range(requests):
            r = wire.Reader(conn.recv_frame())
            assert r.i32() == i
            [(_, [(_, error, base_offset, _)])] = r.array(lambda r: (r.string(), r.array(
                lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
            assert error == wire.NONE
            base_offsets.append(base_offset)
        assert base_offsets == list(range(requests))
        _, high_watermark, batches = wire.fetch(conn, "ordered", p, 0, max_bytes=1 << 20)
        assert high_watermark == requests
        assert [v for b in batches for v in b["values"]] == \
            [f"p{p}-{i}".encode() for i in range(requests)]
    for conns in by_shard.values():
        conns[0].close()


def test_fetch_of_partitions_on_both_shards_answers_in_request_order_within_max_bytes(broker2):
    ck_create_topic(broker2, "fanout", partitions=4)
    value = b"f" * 10_000
    with wire.Conn(broker2.address) as conn:
        for p in range(4):
            for _ in range(3):
                assert wire.produce(conn, "fanout", {p: wire.record_batch([value])})[p][0] == 0

        order = {3: 0, 0: 1, 2: 0, 1: 2}
        everything = wire.fetch_many(conn, "fanout", order)
        limited = wire.fetch_many(conn, "fanout", order, max_bytes=25_000)

    assert [(p, e, hw) for p, e, hw, _ in everything] == [(p, wire.NONE, 3) for p in order]
    assert [[b["base_offset"] for b in batches] for *_, batches in everything] == \
        [[0, 1, 2], [1, 2], [0, 1, 2], [2]]
    # max_bytes bounds the whole response (the first batch always goes, so a consumer
    # never gets stuck on a batch larger than its limit).
    limited_bytes = sum(b["length"] + 12 for *_, batches in limited for b in batches)
    assert [p for p, *_ in limited] == list(order)
    assert 0 < limited_bytes <= 25_000
    assert limited[0][3] and limited[0][3][0]["base_offset"] == 0
