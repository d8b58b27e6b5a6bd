"""The one way the end-to-end tests run the real `shardlog` binary.

Which binary: `$SHARDLOG_BIN`, else `<target>/release/shardlog`, where `<target>` is
`$CARGO_TARGET_DIR` (taken relative to the repository root when relative) or the
repository's `target/`. There is no debug fallback: a stale debug build must never be what a
test runs.

A `Broker` is one broker identity: a name, a port and a data dir that stay the same across
its restarts. Any number of them run side by side (each has its own port and data dir), and
each start can carry its own extra flags and environment. A broker is ready when it prints
`listening on ADDR` to stderr; every wait has a deadline, nothing sleeps hoping the broker is
ready.

The teardown rule (`Fleet.close`, which the pytest fixtures in conftest.py call): a broker
the test did not kill (SIGKILL) or expect to fail must exit 0 on SIGTERM within a deadline;
one that crashed, exited by itself with a non-zero code, or hangs on SIGTERM fails the test.
A paused broker (SIGSTOP) is resumed first.

Usage outside pytest (a script, a REPL):

    fleet = Fleet(shardlog_binary(), Path("/tmp/t"))
    a = fleet.start(name="a", cores=2)
    b = fleet.start(name="b", args=["--num-partitions", "3"])
    a.restart()                 # SIGTERM (must exit 0), then the same port and data dir
    b.kill(); b.start()         # SIGKILL: a crash
    assert fleet.close() == []  # every broker still running exits 0 on SIGTERM
"""

import ctypes
import os
import random
import re
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
BIND_ATTEMPTS_MAX = 5
# `preallocate_bytes` not given: the fleet's default (None means the broker's own default).
FLEET_DEFAULT = object()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Inherited settings that reach the broker: its log level (a developer may want debug).
# Every other SHARDLOG_* variable of the caller's environment is dropped, so a stray
# `SHARDLOG_CORES` in a shell cannot change what a test runs; tests pass theirs in `env`.
INHERITED_SETTINGS = {"SHARDLOG_LOG"}


def shardlog_binary():
    """The broker binary to test (see the module doc); it may not exist yet."""
    explicit = os.environ.get("SHARDLOG_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "shardlog"


def _ephemeral_port_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port on 127.0.0.1 that nothing is bound to, chosen below the kernel's ephemeral
    range: no client socket can then take it while its broker is down for a restart."""
    low = _ephemeral_port_low()
    if low > 20000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(20000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
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


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies (a client library
    that aborts the interpreter must not leave brokers holding their ports). Linux only;
    the teardown rule still stops every broker of a test that ends normally."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _describe_exit(code):
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


class Broker:
    """One broker identity (name, port, data dir) and its successive processes."""

    def __init__(self, binary, data_dir, log_dir, name="broker", cores=1, args=(), env=None,
                 port=None, open_files_max=None):
        self.binary = Path(binary)
        self.name = name
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        # Mutable between starts: a restart may change the shard count or the flags.
        self.cores = cores
        self.args = list(args)
        self.env = dict(env or {})
        self.open_files_max = open_files_max
        self.port = port
        self.proc = None
        self.starts = 0
        self.log_paths = []
        self.ready_s = None
        # Whether the current process's end is accounted for by the test (SIGKILL, a start
        # that had to fail, or an exit code the test looked at).
        self._exit_expected = False
        # When SIGTERM was sent to the current process (`terminate`), else None.
        self._terminated_at = None

    # --- identity -------------------------------------------------------------------------
    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    @property
    def pid(self):
        return self.proc.pid

    def command(self):
        return [
            str(self.binary),
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--cores", str(self.cores),
            *self.args,
        ]

    # --- starting -------------------------------------------------------------------------
    def spawn(self):
        """Start a process without waiting for it to be ready; returns the Popen."""
        assert not self.is_running(), f"{self.name} is already running"
        if self.port is None:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        path = self.log_dir / f"{self.name}-start{self.starts}.log"
        self.log_paths.append(path)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SHARDLOG_") or k in INHERITED_SETTINGS}
        env.setdefault("SHARDLOG_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"  # plain log lines in failure reports
        env.update(self.env)
        limit = self.open_files_max

        def before_exec():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            _die_with_parent()

        with open(path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=before_exec,
            )
        self._exit_expected = False
        self._terminated_at = None
        return self.proc

    def start(self, timeout_s=READY_DEADLINE_S):
        """Start (or restart on the same data dir and port) and wait until it listens. A
        first start whose port was taken meanwhile retries on another one."""
        first_start = self.port is None
        for _ in range(BIND_ATTEMPTS_MAX):
            started = time.monotonic()
            self.spawn()
            outcome = self._wait_ready(timeout_s)
            if outcome == "ready":
                self.ready_s = time.monotonic() - started
                return self
            if not (first_start and outcome == "bind"):
                break
            self.port = None
        raise AssertionError(
            f"{self.name} did not start ({outcome}); its log:\n{self.run_log()}")

    def _wait_ready(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.run_log()
            if "listening on " in text:
                return "ready"
            if self.proc.poll() is not None:
                self._exit_expected = True  # reported by start() instead
                return "bind" if "cannot bind" in text else _describe_exit(self.proc.returncode)
            time.sleep(0.01)
        self.kill()
        return f"no 'listening on' line within {timeout_s}s"

    def expect_refused_start(self, timeout_s=STOP_DEADLINE_S):
        """Start a process that must refuse to start: returns its (non-zero) exit code."""
        self.spawn()
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout_s}s:\n{self.run_log()}")
        self._exit_expected = True
        assert code != 0, f"{self.name} exited 0 where its start had to fail:\n{self.run_log()}"
        assert "listening on " not in self.run_log(), self.run_log()
        return code

    # --- stopping -------------------------------------------------------------------------
    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self):
        """Send SIGTERM (resuming a paused process first) and return at once; `stop` then
        waits for the exit without signalling again. Several brokers stop together this
        way (a cluster shutting down)."""
        assert self.is_running(), f"{self.name} died before stop: {self._exit_text()}"
        if self.is_paused():
            self.resume()
        if self._terminated_at is None:
            self._terminated_at = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s=STOP_DEADLINE_S):
        """SIGTERM; the process must exit 0 within the deadline. Returns the seconds it took
        (since the SIGTERM, when `terminate` sent it earlier)."""
        if self._terminated_at is None:  # else `terminate` sent SIGTERM: it may be gone
            assert self.is_running(), f"{self.name} died before stop: {self._exit_text()}"
            self.terminate()
        code = self.wait_exit(timeout_s)
        assert code == 0, f"{self.name} {_describe_exit(code)} after SIGTERM:\n{self.run_log()}"
        return time.monotonic() - self._terminated_at

    def kill(self, timeout_s=STOP_DEADLINE_S):
        """SIGKILL: the process gets no chance to flush anything (a crash)."""
        assert self.is_running(), f"{self.name} died before kill: {self._exit_text()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=timeout_s)
        self._exit_expected = True

    def send_signal(self, sig):
        """Send `sig` and return at once; `wait_exit` then collects the exit code."""
        assert self.is_running(), f"{self.name} is not running: {self._exit_text()}"
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s=STOP_DEADLINE_S):
        """Wait for the process to exit and return its code, which the caller now owns (it
        is not checked again at teardown). A process that does not exit in time is killed."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if self.is_paused():
                os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self._exit_expected = True
            raise AssertionError(f"{self.name} did not exit within {timeout_s}s:\n{self.run_log()}")
        self._exit_expected = True
        return code

    def restart(self, hard=False):
        """Stop (SIGTERM, must exit 0) or kill (`hard`: SIGKILL), then start again on the same
        port and data dir."""
        self.kill() if hard else self.stop()
        return self.start()

    # --- pausing --------------------------------------------------------------------------
    def pause(self):
        """SIGSTOP: the process keeps its sockets but runs no more (a hung machine)."""
        self.send_signal(signal.SIGSTOP)
        wait_until(self.is_paused, 10, f"{self.name} to stop running (SIGSTOP)", interval_s=0.005)

    def resume(self):
        """SIGCONT after `pause`."""
        self.send_signal(signal.SIGCONT)
        wait_until(lambda: not self.is_paused(), 10, f"{self.name} to run again (SIGCONT)",
                   interval_s=0.005)

    def is_paused(self):
        """True while the process is stopped by a signal (state T in /proc)."""
        if not self.is_running():
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                # The command name, in parentheses, may hold spaces: the state follows it.
                return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except (FileNotFoundError, ProcessLookupError):
            return False

    # --- the teardown rule ----------------------------------------------------------------
    def close(self, timeout_s=STOP_DEADLINE_S):
        """End of the test: None if the broker ended as the rule says, else what went wrong."""
        if self.proc is None:
            return None
        if self.is_running():
            try:
                self.stop(timeout_s)
            except AssertionError as e:
                return str(e).split("\n", 1)[0]
            return None
        if self._exit_expected or self.proc.returncode == 0:
            return None
        if self._terminated_at is not None:  # `terminate` sent SIGTERM and it exited since
            return f"{self.name} {self._exit_text()} after SIGTERM"
        return f"{self.name} {self._exit_text()} before the end of the test"

    def _exit_text(self):
        if self.proc is None:
            return "never started"
        code = self.proc.poll()
        return "still running" if code is None else _describe_exit(code)

    # --- what it logged -------------------------------------------------------------------
    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return ANSI.sub("", f.read().decode("utf-8", "replace"))
        except FileNotFoundError:
            return ""

    def run_log(self):
        """What the current (or last) process wrote to stderr."""
        return self._read(self.log_paths[-1]) if self.log_paths else ""

    def log_text(self):
        """Every process's log, each under a header naming its file."""
        return "\n".join(f"--- {p}\n{self._read(p)}" for p in self.log_paths)

    def recovery_reports(self):
        """{partition dir name: (log line, report)} of this run's 'opened/recovered log' lines."""
        reports = {}
        for line in self.run_log().splitlines():
            if "opened log" not in line and "recovered log" not in line:
                continue
            d = re.search(r"dir=(\S+)", line)
            r = re.search(r"report=(.*?)(?: \w+=|$)", line)
            if d and r:
                reports[Path(d.group(1)).name] = (line, r.group(1))
        return reports

    def recovered_end_offsets(self):
        """{partition dir name: log end offset} from this run's recovery reports."""
        ends = {}
        for name, (line, _) in self.recovery_reports().items():
            m = re.search(r"offsets \[(\d+), (\d+)\)", line)
            if m:
                ends[name] = int(m.group(2))
        return ends

    # --- what it uses ---------------------------------------------------------------------
    def rss_bytes(self):
        assert self.is_running(), f"{self.name} died: {self._exit_text()}"
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


class Fleet:
    """The brokers of one test (or one test module), each with its own name, port and data
    dir under `base_dir`, and the teardown rule for all of them."""

    def __init__(self, binary, base_dir, preallocate_bytes=1 << 20):
        self.binary = Path(binary)
        self.base_dir = Path(base_dir)
        self.preallocate_bytes = preallocate_bytes
        self.brokers = []

    def new(self, name=None, cores=1, args=(), env=None, data_dir=None, port=None,
            preallocate_bytes=FLEET_DEFAULT, open_files_max=None, broker_class=None, **extra):
        """A broker that is not started yet (see `start`). `broker_class` (a subclass of
        Broker, e.g. cluster.Node) is built with the `extra` keyword arguments too."""
        name = name or f"broker{len(self.brokers)}"
        assert all(b.name != name for b in self.brokers), f"two brokers named {name}"
        if preallocate_bytes is FLEET_DEFAULT:
            preallocate_bytes = self.preallocate_bytes
        if preallocate_bytes is not None:
            args = ["--preallocate-bytes", str(preallocate_bytes), *args]
        broker = (broker_class or Broker)(
            self.binary, data_dir or self.base_dir / name, self.base_dir, name=name,
            cores=cores, args=args, env=env, port=port, open_files_max=open_files_max, **extra)
        self.brokers.append(broker)
        return broker

    def start(self, **kwargs):
        """A new broker, started and listening. Keyword arguments as for `new`."""
        return self.new(**kwargs).start()

    def close(self, together=False):
        """Apply the teardown rule to every broker; returns the problems found (none: []).
        `together`: SIGTERM every running broker first, then wait for each (the nodes of a
        cluster stop at once, none waits for the others to go)."""
        if together:
            for broker in self.brokers:
                if broker.is_running():
                    broker.terminate()
        problems = []
        for broker in self.brokers:
            problem = broker.close()
            if problem:
                problems.append(problem)
        return problems
