"""Corruption on disk while the broker is stopped.

A truncated segment, flipped bytes in a segment, a damaged or missing index: the broker
starts, says in its log what it found and did, cuts the log back to the last valid batch
where the damage is in the tail it scans, and never serves a batch that fails its CRC.
A damaged catalog is refused with a clear message and a non-zero exit.

Batches are written and read with raw Produce/Fetch so the test knows every batch's bytes
and checks every CRC itself.
"""

import os
import struct

import pytest

import wire

TOPIC = "c"
BATCHES = 240
RECORDS_PER_BATCH = 4
SEGMENT_BYTES = 64 << 10


def values(batch: int):
    return [f"b{batch:05d}r{r}".encode().ljust(250, b".") for r in range(RECORDS_PER_BATCH)]


def produce_batches(broker, first, count):
    with wire.Conn(broker.address) as conn:
        for i in range(first, first + count):
            answer = wire.produce(conn, TOPIC, {0: wire.record_batch(values(i))}, acks=-1)
            assert answer == {0: (wire.NONE, i * RECORDS_PER_BATCH)}, f"batch {i}: {answer}"


def read_all(broker):
    """(batches [(base, count, crc_ok)], error code that stopped the read, high watermark)."""
    out = []
    offset = 0
    with wire.Conn(broker.address) as conn:
        while True:
            error, hw, batches = wire.fetch(conn, TOPIC, 0, offset, max_bytes=256 << 10)
            if error != wire.NONE:
                return out, error, hw
            if not batches:
                assert offset >= hw, f"empty answer at {offset} below the high watermark {hw}"
                return out, wire.NONE, hw
            for b in batches:
                base, count = b["base_offset"], b["record_count"]
                if base + count <= offset:
                    continue
                assert base == offset, f"expected a batch at {offset}, got one at {base}"
                out.append((base, count, b["crc_ok"]))
                offset = base + count


def partition_dir(broker):
    return broker.data_dir / "topics" / f"{TOPIC}-0"


def segments(broker):
    return sorted(p for p in partition_dir(broker).iterdir() if p.suffix == ".log")


def batch_positions(path, data_bytes):
    """File positions of the batches in the first `data_bytes` of a segment file."""
    raw = path.read_bytes()[:data_bytes]
    pos, out = 0, []
    while pos + 12 <= len(raw):
        base, length = struct.unpack_from(">qi", raw, pos)
        if length <= 0:
            break
        out.append((pos, base, 12 + length))
        pos += 12 + length
    return out


def data_end(path):
    """Bytes of batches at the start of a segment (the rest is preallocated zeros)."""
    return sum(size for _, _, size in batch_positions(path, path.stat().st_size))


@pytest.fixture
def filled(start_broker):
    # The broker's own preallocation (not the suite's 1 MiB): the on-disk layout it recovers.
    broker = start_broker(args=["--segment-bytes", str(SEGMENT_BYTES)], preallocate_bytes=None)
    wire.auto_create(broker.address, TOPIC)
    produce_batches(broker, 0, BATCHES)
    return broker


def assert_all_crcs_ok_and_prefix(batches, expect_count=None):
    assert all(ok for _, _, ok in batches), "a batch failing its CRC was served"
    assert [b for b, _, _ in batches] == [i * RECORDS_PER_BATCH for i in range(len(batches))]
    if expect_count is not None:
        assert len(batches) == expect_count, (len(batches), expect_count)


def test_clean_restart_serves_everything_without_a_scan(filled):
    filled.stop()
    filled.start()
    log = filled.run_log()
    assert "opened log" in log and "clean shutdown" in log, log
    assert "recovered log" not in log, log
    batches, error, hw = read_all(filled)
    assert error == 0
    assert_all_crcs_ok_and_prefix(batches, BATCHES)
    assert len(segments(filled)) >= 3, "the test needs several segments"


def test_truncated_active_segment_is_cut_to_the_last_whole_batch(filled):
    filled.kill()
    last = segments(filled)[-1]
    positions = batch_positions(last, last.stat().st_size)
    cut_pos, cut_base, cut_size = positions[-3]
    os.truncate(last, cut_pos + cut_size // 2)
    filled.start()
    log = filled.run_log()
    assert "recovered log" in log and "torn" in log, log
    batches, error, hw = read_all(filled)
    assert error == 0
    assert hw == cut_base, (hw, cut_base)
    assert_all_crcs_ok_and_prefix(batches, cut_base // RECORDS_PER_BATCH)
    # The log goes on from the cut, with contiguous offsets.
    produce_first = cut_base // RECORDS_PER_BATCH
    produce_batches(filled, produce_first, 5)
    batches, error, hw = read_all(filled)
    assert error == 0
    assert_all_crcs_ok_and_prefix(batches, produce_first + 5)


def test_truncated_active_segment_after_clean_stop_is_noticed(filled):
    """The clean-shutdown marker records the active segment's size; a shorter file than
    that must not be trusted."""
    filled.stop()
    last = segments(filled)[-1]
    positions = batch_positions(last, last.stat().st_size)
    cut_pos, cut_base, cut_size = positions[-2]
    os.truncate(last, cut_pos + cut_size // 2)
    filled.start()
    log = filled.run_log()
    assert "torn" in log, log
    batches, error, hw = read_all(filled)
    assert error == 0
    assert hw == cut_base, (hw, cut_base)
    assert_all_crcs_ok_and_prefix(batches, cut_base // RECORDS_PER_BATCH)
    produce_batches(filled, cut_base // RECORDS_PER_BATCH, 3)
    batches, error, _ = read_all(filled)
    assert error == 0
    assert_all_crcs_ok_and_prefix(batches, cut_base // RECORDS_PER_BATCH + 3)


def test_flipped_byte_in_active_segment_truncates_at_that_batch(filled):
    filled.kill()
    last = segments(filled)[-1]
    positions = batch_positions(last, last.stat().st_size)
    pos, base, size = positions[len(positions) // 2]
    with open(last, "r+b") as f:
        f.seek(pos + size - 10)  # inside the records: only the CRC can tell
        byte = f.read(1)
        f.seek(pos + size - 10)
        f.write(bytes([byte[0] ^ 0x5A]))
    filled.start()
    log = filled.run_log()
    assert "fails its CRC-32C" in log and "truncat" in log, log
    batches, error, hw = read_all(filled)
    assert error == 0
    assert hw == base
    assert_all_crcs_ok_and_prefix(batches, base // RECORDS_PER_BATCH)


def test_flipped_byte_in_older_segment_is_never_served(filled):
    """An old segment is not scanned at start (that would cost a read of the whole log);
    its damage is found by the CRC check on read, and the fetch fails instead of serving it."""
    filled.stop()
    first = segments(filled)[0]
    positions = batch_positions(first, first.stat().st_size)
    pos, base, size = positions[len(positions) // 2]
    with open(first, "r+b") as f:
        f.seek(pos + size - 10)
        byte = f.read(1)
        f.seek(pos + size - 10)
        f.write(bytes([byte[0] ^ 0x01]))
    filled.start()
    batches, error, hw = read_all(filled)
    assert error == 2, f"expected CORRUPT_MESSAGE (2), got {error}"
    assert hw == BATCHES * RECORDS_PER_BATCH
    assert_all_crcs_ok_and_prefix(batches, base // RECORDS_PER_BATCH)
    # Reads past the damaged batch still work.
    with wire.Conn(filled.address) as conn:
        error, _, batches = wire.fetch(conn, TOPIC, 0, base + RECORDS_PER_BATCH)
    assert error == wire.NONE and batches[0]["base_offset"] == base + RECORDS_PER_BATCH
    assert all(b["crc_ok"] for b in batches)


@pytest.mark.parametrize("damage", ["missing", "garbage", "shuffled"])
def test_damaged_index_is_rebuilt(filled, damage):
    filled.stop()
    target = segments(filled)[1].with_suffix(".index")
    raw = target.read_bytes()
    assert len(raw) >= 16, "the test needs an index with several entries"
    if damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(os.urandom(len(raw) - 3))
    else:
        entries = [raw[i:i + 8] for i in range(0, len(raw), 8)]
        target.write_bytes(b"".join(reversed(entries)))
    filled.start()
    log = filled.run_log()
    assert "rebuilt" in log, log
    batches, error, _ = read_all(filled)
    assert error == 0
    assert_all_crcs_ok_and_prefix(batches, BATCHES)


def test_index_pointing_at_wrong_positions_is_never_trusted_blindly(filled):
    """An index that is well-formed but wrong (a flipped position byte): reads must not
    serve garbage, and every batch must stay readable."""
    filled.stop()
    target = segments(filled)[1].with_suffix(".index")
    raw = bytearray(target.read_bytes())
    entries = len(raw) // 8
    assert entries >= 3
    i = entries // 2
    # Move one entry's position by 100 bytes, keeping the index ordered.
    pos = struct.unpack_from(">I", raw, i * 8 + 4)[0]
    struct.pack_into(">I", raw, i * 8 + 4, pos + 100)
    target.write_bytes(bytes(raw))
    filled.start()
    batches, error, _ = read_all(filled)
    assert error == 0, f"fetch failed with {error}"
    assert_all_crcs_ok_and_prefix(batches, BATCHES)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_damaged_metadata_log_is_refused(filled, damage):
    """The catalog (topics, their placement and configs) lives in the metadata quorum's raft
    log: damage to a committed record refuses the start; it never silently forgets topics."""
    filled.stop()
    catalog = filled.data_dir / "metadata" / "log" / "log"
    raw = bytearray(catalog.read_bytes())
    if damage == "flipped":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray()
    catalog.write_bytes(bytes(raw))
    filled.expect_refused_start()  # a non-zero exit, never `listening on`
    log = filled.run_log()
    assert "raft log" in log and "damaged" in log and "refusing to start" in log, log
    assert catalog.read_bytes() == bytes(raw), "the damaged log must be left as it was"
