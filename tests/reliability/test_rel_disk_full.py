"""Disk full: with the data dir on a small tmpfs the test mounts (O_DIRECT works on tmpfs
since Linux 6.6), producers get KAFKA_STORAGE_ERROR, the broker stays up and serves reads,
and writes succeed again once space is freed.

Needs root (mount); skipped otherwise."""

import os
import struct
import subprocess
import time

import pytest

from rel_harness import (RawConnection, auto_create, fetch_v4, fetch_v4_response, parse_batches,
                         produce_v3, record_batch, wait_until)

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


def produce(conn, value, correlation_id):
    conn.send(produce_v3("full", 0, record_batch([value]), acks=-1, correlation_id=correlation_id))
    answer = conn.recv_frame()
    return struct.unpack_from(">hq", answer, 4 + 4 + 2 + len("full") + 4 + 4)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_refuses_writes_keeps_serving_reads_and_recovers(small_fs, rel_broker_factory):
    broker = rel_broker_factory(name="small/data", cores=1,
                                log_path=small_fs.parent / "broker.log",
                                extra_args=["--segment-bytes", str(4 << 20)])
    broker.start()
    auto_create(broker.port, "full")
    # Fill the file system but for ~100 MiB: the log preallocates 64 MiB steps, so it hits
    # the wall within a few segments.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xff" * (1 << 20)
        while free_bytes(small_fs) > 100 << 20:
            f.write(chunk)
            f.flush()
    value = os.urandom(64 << 10)
    conn = RawConnection(broker.port)
    acked = []
    errors = []
    for i in range(2_000):
        error, base = produce(conn, value, i)
        if error == 0:
            acked.append(base)
        else:
            errors.append(error)
            if len(errors) >= 5:
                break
    assert acked, "nothing could be written at all"
    assert errors and set(errors) == {KAFKA_STORAGE_ERROR}, errors
    assert broker.alive()
    print(f"\ndisk full after {len(acked)} acked 64 KiB records "
          f"({len(acked) * 64 >> 10} MiB); errors {errors}")

    # Reads of what was acknowledged still work, CRCs intact.
    reader = RawConnection(broker.port)
    offset = 0
    while offset <= acked[-1]:
        reader.send(fetch_v4("full", 0, offset, max_bytes=1 << 20))
        error, hw, records = fetch_v4_response(reader.recv_frame())
        assert error == 0, error
        batches = [b for b in parse_batches(records) if b[0] >= offset]
        assert batches and all(ok for _, _, ok in batches)
        offset = batches[-1][0] + batches[-1][1]
    reader.close()

    # Free space: writes succeed again (after at most a few refused attempts).
    filler.unlink()
    results = []

    def writes_again():
        error, base = produce(conn, value, 10_000 + len(results))
        results.append(error)
        return error == 0

    wait_until(writes_again, 30, "writes to succeed once space is freed", interval_s=0.2)
    for i in range(20):
        error, _ = produce(conn, value, 20_000 + i)
        assert error == 0, error
    conn.close()
    print(f"after freeing space: {len(results)} attempt(s) until the first success")
    assert "No space left on device" in broker.this_run_log()
