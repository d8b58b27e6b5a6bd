"""A small broker fixture for the consumer-group tests: the real `shardlog` binary on a free
port with a temporary data dir, started and stopped (cleanly, or with kill -9) by the tests.

Waits for the `listening on ADDR` line on stderr with a deadline; never sleeps blindly.
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

# The suite-wide helpers (tests/broker_process.py), re-exported for the group tests.
from broker_process import free_port, wait_until  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE_S = 30


def shardlog_binary():
    """The broker binary: $SHARDLOG_BIN, else the workspace's debug (then release) build."""
    explicit = os.environ.get("SHARDLOG_BIN")
    if explicit:
        return explicit
    for profile in ("debug", "release"):
        path = REPO / "target" / profile / "shardlog"
        if path.exists():
            return str(path)
    pytest.fail("no shardlog binary: run `cargo build` first or set SHARDLOG_BIN")


class Broker:
    """One broker process on a fixed port and data dir, restartable."""

    # Short group timings so rebalances take well under a second.
    GROUP_ARGS = [
        "--group-min-session-timeout-ms", "1000",
        "--group-initial-rebalance-delay-ms", "300",
    ]

    def __init__(self, data_dir, cores=2, extra_args=()):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.cores = cores
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = self.data_dir.parent / f"broker-{self.port}.log"
        self._reader = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        args = [
            shardlog_binary(),
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--cores", str(self.cores),
            "--num-partitions", "1",
            *self.GROUP_ARGS,
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        listening = threading.Event()
        log = open(self.log_path, "a")

        def read_stderr(stream):
            for line in stream:
                log.write(line)
                log.flush()
                if line.startswith("listening on "):
                    listening.set()
            log.close()

        self._reader = threading.Thread(target=read_stderr, args=(self.proc.stderr,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_DEADLINE_S
        while not listening.wait(0.05):
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(f"broker did not listen within {START_DEADLINE_S}s: {self.log_tail()}")
        return self

    def stop(self, timeout_s=30):
        """SIGTERM and wait for a clean exit (status 0)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        self.proc = None
        assert code == 0, f"broker exited with {code}: {self.log_tail()}"

    def kill9(self):
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        self.proc = None

    def restart(self, hard=False):
        self.kill9() if hard else self.stop()
        return self.start()

    def log_tail(self, lines=30):
        try:
            return "".join(open(self.log_path).readlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "data").start()
    yield b
    b.kill9()
