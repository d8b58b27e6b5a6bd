"""Idempotent producers at the wire level: the broker keeps per-partition producer state,
drops a retried batch and refuses a gap in sequence numbers (what a client's retry after a
lost response relies on)."""

import wire
from clients import ck_create_topic


def batch(values, producer_id, epoch, sequence):
    return wire.record_batch(values, producer_id=producer_id, producer_epoch=epoch,
                             base_sequence=sequence)


def test_init_producer_id_hands_out_a_distinct_id_to_each_producer(broker):
    with wire.Conn(broker.address) as conn:
        answers = [wire.init_producer_id(conn) for _ in range(5)]
    assert all(error == wire.NONE and pid >= 0 and epoch >= 0 for error, pid, epoch in answers)
    assert len({pid for _, pid, _ in answers}) == 5


def test_a_retried_batch_is_not_appended_twice(broker):
    ck_create_topic(broker, "idem")
    with wire.Conn(broker.address) as conn:
        _, pid, epoch = wire.init_producer_id(conn)
        first = batch([b"a", b"b"], pid, epoch, 0)
        second = batch([b"c"], pid, epoch, 2)
        assert wire.produce(conn, "idem", {0: first}, acks=-1) == {0: (wire.NONE, 0)}
        assert wire.produce(conn, "idem", {0: second}, acks=-1) == {0: (wire.NONE, 2)}

        # The response to `second` was "lost": the client sends it again.
        [(error, base_offset)] = wire.produce(conn, "idem", {0: second}, acks=-1).values()

        assert (error, base_offset) in ((wire.NONE, 2), (wire.DUPLICATE_SEQUENCE_NUMBER, -1))
        error, high_watermark, batches = wire.fetch(conn, "idem", 0, 0)
    assert (error, high_watermark) == (wire.NONE, 3)
    assert [v for b in batches for v in b["values"]] == [b"a", b"b", b"c"]


def test_a_gap_in_sequence_numbers_is_refused_with_out_of_order_sequence(broker):
    ck_create_topic(broker, "idem")
    with wire.Conn(broker.address) as conn:
        _, pid, epoch = wire.init_producer_id(conn)
        assert wire.produce(conn, "idem", {0: batch([b"a"], pid, epoch, 0)}, acks=-1) == \
            {0: (wire.NONE, 0)}

        answer = wire.produce(conn, "idem", {0: batch([b"skipped-ahead"], pid, epoch, 5)}, acks=-1)

        assert answer[0][0] == wire.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert wire.fetch(conn, "idem", 0, 0)[1] == 1
        assert wire.produce(conn, "idem", {0: batch([b"b"], pid, epoch, 1)}, acks=-1) == \
            {0: (wire.NONE, 1)}


def test_sequences_are_tracked_per_partition_and_per_producer(broker):
    ck_create_topic(broker, "idem", partitions=2)
    with wire.Conn(broker.address) as conn:
        _, pid_a, epoch_a = wire.init_producer_id(conn)
        _, pid_b, epoch_b = wire.init_producer_id(conn)

        answers = [
            wire.produce(conn, "idem", {0: batch([b"a0"], pid_a, epoch_a, 0)}, acks=-1),
            wire.produce(conn, "idem", {1: batch([b"a1"], pid_a, epoch_a, 0)}, acks=-1),
            wire.produce(conn, "idem", {0: batch([b"b0"], pid_b, epoch_b, 0)}, acks=-1),
        ]

        assert answers == [{0: (wire.NONE, 0)}, {1: (wire.NONE, 0)}, {0: (wire.NONE, 1)}]
        assert wire.fetch(conn, "idem", 0, 0)[1] == 2
        assert wire.fetch(conn, "idem", 1, 0)[1] == 1
