"""Disk full: with the data dir on a small tmpfs the test mounts (O_DIRECT works on tmpfs
since Linux 6.6), producers get KAFKA_STORAGE_ERROR, the broker stays up and serves reads,
and writes succeed again once space is freed.

Needs root (mount); skipped otherwise."""

import os
import subprocess

import pytest

import wire
from broker_process import wait_until

FS_BYTES = 192 << 20
KAFKA_STORAGE_ERROR = 56


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def produce(conn, value):
    """(error_code, base_offset) of one acks=all produce of `value`."""
    return wire.produce(conn, "full", {0: wire.record_batch([value])}, acks=-1)[0]


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_refuses_writes_keeps_serving_reads_and_recovers(small_fs, start_broker):
    # Data on the small file system, logs outside it; the broker's own 64 MiB preallocation.
    broker = start_broker(data_dir=small_fs / "data", args=["--segment-bytes", str(4 << 20)],
                          preallocate_bytes=None)
    wire.auto_create(broker.address, "full")
    # Fill the file system but for ~100 MiB: the log preallocates 64 MiB steps, so it hits
    # the wall within a few segments.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xff" * (1 << 20)
        while free_bytes(small_fs) > 100 << 20:
            f.write(chunk)
            f.flush()
    value = os.urandom(64 << 10)
    conn = wire.Conn(broker.address)
    acked = []
    errors = []
    for _ in range(2_000):
        error, base = produce(conn, value)
        if error == 0:
            acked.append(base)
        else:
            errors.append(error)
            if len(errors) >= 5:
                break
    assert acked, "nothing could be written at all"
    assert errors and set(errors) == {KAFKA_STORAGE_ERROR}, errors
    assert broker.is_running()
    print(f"\ndisk full after {len(acked)} acked 64 KiB records "
          f"({len(acked) * 64 >> 10} MiB); errors {errors}")

    # Reads of what was acknowledged still work, CRCs intact.
    with wire.Conn(broker.address) as reader:
        offset = 0
        while offset <= acked[-1]:
            error, _, batches = wire.fetch(reader, "full", 0, offset, max_bytes=1 << 20)
            assert error == wire.NONE, error
            batches = [b for b in batches if b["base_offset"] >= offset]
            assert batches and all(b["crc_ok"] for b in batches)
            offset = batches[-1]["base_offset"] + batches[-1]["record_count"]

    # Free space: writes succeed again (after at most a few refused attempts).
    filler.unlink()
    results = []

    def writes_again():
        error, _ = produce(conn, value)
        results.append(error)
        return error == wire.NONE

    wait_until(writes_again, 30, "writes to succeed once space is freed", interval_s=0.2)
    for _ in range(20):
        error, _ = produce(conn, value)
        assert error == wire.NONE, error
    conn.close()
    print(f"after freeing space: {len(results)} attempt(s) until the first success")
    assert "No space left on device" in broker.run_log()
