"""A small, self-contained harness for the reliability tests: start, kill and restart the
real `shardlog` binary on a data dir of our choosing, read what it logged, and talk raw
Kafka protocol to it.

The binary is `$SHARDLOG_BIN`, else target/release/shardlog, else target/debug/shardlog.
Every wait has a deadline; nothing sleeps for a fixed time hoping the broker is ready.
"""

import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The suite-wide helpers in tests/ (process polling, Kafka wire encoding) are shared, not
# copied; scripts that import this module from tests/reliability need tests/ on the path.
sys.path.insert(0, str(REPO / "tests"))
from broker_process import free_port, wait_until  # noqa: E402,F401
from wire import crc32c, varint as _varint  # noqa: E402,F401

READY_TIMEOUT_S = 60.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def broker_binary() -> str:
    explicit = os.environ.get("SHARDLOG_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "shardlog"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no shardlog binary: build it or set SHARDLOG_BIN")


class Broker:
    """One shardlog process at a time on a fixed data dir and port; restartable."""

    def __init__(self, data_dir, cores=1, port=None, extra_args=(), log_path=None,
                 open_files_max=None):
        self.data_dir = Path(data_dir)
        self.cores = cores
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path or (self.data_dir.parent / f"{self.data_dir.name}.log"))
        self.open_files_max = open_files_max
        self.proc = None
        self.starts = 0
        self._log_offset = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self):
        return [
            broker_binary(),
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--cores", str(self.cores),
            *self.extra_args,
        ]

    def spawn(self):
        """Starts the process without waiting for it to be ready."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"\n===== start {self.starts} =====\n")
            self._log_offset = log.tell()
        self.log_file = open(self.log_path, "a")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        limit = self.open_files_max

        def limit_open_files():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=self.log_file, env=env,
            preexec_fn=limit_open_files,
        )
        self.starts += 1
        return self.proc

    def start(self, timeout_s=READY_TIMEOUT_S):
        """Starts the broker and returns once it printed `listening on`."""
        started = time.monotonic()
        self.spawn()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with {self.proc.returncode} during start:\n{self.this_run_log()}"
                )
            return "listening on " in self.this_run_log()

        wait_until(ready, timeout_s, "the broker to print 'listening on'")
        self.ready_s = time.monotonic() - started
        return self

    def this_run_log(self) -> str:
        """What the current (or last) process wrote to stderr."""
        with open(self.log_path, errors="replace") as f:
            f.seek(self._log_offset)
            return ANSI.sub("", f.read())

    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout_s=30.0) -> int:
        """Sends `sig` and waits for the process to exit; returns its exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        self.log_file.close()
        return code

    def stop(self):
        if self.alive():
            self.kill(signal.SIGKILL)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def recovery_reports(self):
        """{partition dir name: report text} from this run's 'opened/recovered log' lines."""
        reports = {}
        for line in self.this_run_log().splitlines():
            if "opened log" not in line and "recovered log" not in line:
                continue
            d = re.search(r"dir=(\S+)", line)
            r = re.search(r"report=(.*?)(?: \w+=|$)", line)
            if d and r:
                reports[Path(d.group(1)).name] = (line, r.group(1))
        return reports


def recovered_end_offsets(broker):
    """{partition dir name: log end offset} parsed from the recovery reports of this run."""
    ends = {}
    for name, (line, _) in broker.recovery_reports().items():
        m = re.search(r"offsets \[(\d+), (\d+)\)", line)
        if m:
            ends[name] = int(m.group(2))
    return ends


# ---------------------------------------------------------------------------------------
# Raw Kafka protocol, just enough to send what well-behaved clients never send.

def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def request_header(api_key, version, correlation_id, client_id=b"rel"):
    """Request header v1 (non-flexible): key, version, correlation id, client id."""
    return struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id


def kstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def api_versions_v0(correlation_id=1) -> bytes:
    return frame(request_header(18, 0, correlation_id))


def metadata_v1(topics, correlation_id=1) -> bytes:
    body = struct.pack(">i", len(topics)) + b"".join(kstring(t) for t in topics)
    return frame(request_header(3, 1, correlation_id) + body)


def auto_create(port, topic):
    """Creates `topic` through Metadata (the broker's auto-creation) and waits for it."""
    conn = RawConnection(port)
    try:
        conn.send(metadata_v1([topic]))
        conn.recv_frame()
    finally:
        conn.close()


def produce_v3(topic, partition, records: bytes, acks=-1, correlation_id=1) -> bytes:
    body = struct.pack(">h", -1)  # transactional id: null
    body += struct.pack(">hi", acks, 10_000)
    body += struct.pack(">i", 1) + kstring(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition)
    body += struct.pack(">i", len(records)) + records
    return frame(request_header(0, 3, correlation_id) + body)


def fetch_v4(topic, partition, offset, max_bytes=1 << 20, correlation_id=1, max_wait_ms=0,
             min_bytes=0):
    body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
    body += struct.pack(">i", 1) + kstring(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    return frame(request_header(1, 4, correlation_id) + body)


def record_batch(values, base_timestamp_ms=None) -> bytes:
    """An uncompressed RecordBatch v2 holding `values` (no keys, no headers)."""
    ts = base_timestamp_ms if base_timestamp_ms is not None else int(time.time() * 1000)
    records = b""
    for i, v in enumerate(values):
        rec = b"\x00" + _varint(0) + _varint(i) + _varint(-1) + _varint(len(v)) + v + _varint(0)
        records += _varint(len(rec)) + rec
    after_crc = struct.pack(
        ">hiqqqhii", 0, len(values) - 1, ts, ts, -1, -1, -1, len(values)
    ) + records
    crc = crc32c(after_crc)
    after_length = struct.pack(">ibI", 0, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def parse_batches(records: bytes):
    """[(base_offset, record_count, crc_ok)] of the whole batches in `records`."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        if pos + 12 + length > len(records):
            break
        crc = struct.unpack_from(">I", records, pos + 17)[0]
        body = records[pos + 21 : pos + 12 + length]
        count = struct.unpack_from(">i", records, pos + 57)[0]
        out.append((base, count, crc32c(body) == crc))
        pos += 12 + length
    return out


class RawConnection:
    """A blocking socket speaking length-prefixed frames."""

    def __init__(self, port, timeout_s=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the broker")
            out += chunk
        return bytes(out)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        return self.recv_exact(size)

    def closed_by_peer(self, timeout_s=10.0) -> bool:
        """True if the broker closes (EOF or reset) within the timeout, reading and dropping
        anything it sends first."""
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False

    def close(self):
        self.sock.close()


def fetch_v4_response(payload: bytes):
    """(error_code, high_watermark, records) of the single partition of a Fetch v4 answer."""
    pos = 4  # correlation id
    pos += 4  # throttle
    (topics,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    assert topics == 1, topics
    (name_len,) = struct.unpack_from(">h", payload, pos)
    pos += 2 + name_len
    (parts,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    assert parts == 1, parts
    _partition, error, hw, _lso = struct.unpack_from(">ihqq", payload, pos)
    pos += 4 + 2 + 8 + 8
    (aborted,) = struct.unpack_from(">i", payload, pos)
    pos += 4 + max(aborted, 0) * 16
    (size,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    records = payload[pos : pos + max(size, 0)]
    return error, hw, records
