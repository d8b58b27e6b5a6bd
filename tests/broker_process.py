"""Run the real `shardlog` binary for a test: a free port, a data dir, stderr to a file.

A broker is ready when it prints `listening on ADDR` to stderr; we wait for that line with
a deadline, never a fixed sleep. It stops with SIGTERM (a clean stop must exit 0) or dies
with SIGKILL (a crash), and starts again on the same data dir and port.
"""

import os
import signal
import socket
import subprocess
import time

READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
BIND_ATTEMPTS_MAX = 5


def free_port():
    """A port the kernel just handed out on 127.0.0.1 (free unless someone races us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s, what, interval_s=0.02):
    """Poll `condition` until it returns a truthy value, which is returned; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class Broker:
    """One shardlog process (and its restarts) on one data dir."""

    def __init__(self, binary, data_dir, log_dir, cores=1, extra_args=(), env=None):
        self.binary = str(binary)
        self.data_dir = str(data_dir)
        self.log_dir = str(log_dir)
        self.cores = cores
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.port = None
        self.proc = None
        self.starts = 0
        self.log_paths = []

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def _args(self):
        return [
            self.binary,
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--cores", str(self.cores),
            "--data-dir", self.data_dir,
            *self.extra_args,
        ]

    def start(self):
        """Start (or restart on the same data dir and port) and wait until it listens."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        first_start = self.port is None
        for _ in range(BIND_ATTEMPTS_MAX):
            if first_start:
                self.port = free_port()
            outcome = self._start_once()
            if outcome == "ready":
                return self
            if not (first_start and outcome == "bind"):
                break
        raise AssertionError(
            f"shardlog did not start ({outcome}); its stderr:\n{self.log_text(last_only=True)}"
        )

    def _start_once(self):
        self.starts += 1
        path = os.path.join(self.log_dir, f"broker-{self.port}-start{self.starts}.log")
        self.log_paths.append(path)
        log = open(path, "wb")
        env = dict(os.environ)
        env.setdefault("SHARDLOG_LOG", "info")
        env["NO_COLOR"] = "1"  # plain log lines in failure reports
        env.update(self.env)
        self.proc = subprocess.Popen(
            self._args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            text = self._read(path)
            if "listening on " in text:
                return "ready"
            if self.proc.poll() is not None:
                return "bind" if "cannot bind" in text else f"exited {self.proc.returncode}"
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait()
        return f"no 'listening on' line within {READY_DEADLINE_S}s"

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self, last_only=False):
        paths = self.log_paths[-1:] if last_only else self.log_paths
        return "\n".join(f"--- {p}\n{self._read(p)}" for p in paths)

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        """SIGTERM; a clean stop must exit 0 within the deadline."""
        assert self.is_running(), f"broker died before stop: exit {self.proc.returncode}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"broker did not exit within {STOP_DEADLINE_S}s of SIGTERM")
        assert code == 0, f"broker exited {code} after SIGTERM"

    def kill(self):
        """SIGKILL: the process gets no chance to flush anything."""
        assert self.is_running(), f"broker died before kill: exit {self.proc.returncode}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_DEADLINE_S)

    def restart(self):
        self.stop()
        return self.start()

    def rss_bytes(self):
        assert self.is_running(), f"the broker died: exit {self.proc.returncode}"
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def shard_cpu_ns(self):
        """CPU time (ns) used so far by each shard's thread: {shard id: ns}."""
        out = {}
        task_dir = f"/proc/{self.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if name.startswith("shard-"):
                # glommio names the thread `shard-<id>-<executor id>`.
                shard = int(name.split("-")[1])
                out[shard] = out.get(shard, 0) + ns
        return out
