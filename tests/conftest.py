"""Fixtures that run the real `shardlog` binary for each test.

The binary comes from $SHARDLOG_BIN (scripts/test.sh sets it), else target/release, else
target/debug of this checkout. Each broker gets a free port and its own temporary data dir;
its stderr goes to a file that is attached to the report of a failing test.
"""

import os
import pathlib
import shutil

import pytest

from broker_process import Broker

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _binary():
    explicit = os.environ.get("SHARDLOG_BIN")
    if explicit:
        return pathlib.Path(explicit)
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "shardlog"
        if path.exists():
            return path
    return None


@pytest.fixture(scope="session")
def shardlog_bin():
    path = _binary()
    if path is None or not path.exists():
        pytest.fail(
            "shardlog binary not found: build it (cargo build --release -p shardlog) "
            "or set SHARDLOG_BIN"
        )
    return path


@pytest.fixture
def start_broker(shardlog_bin, tmp_path, request):
    """Factory: start_broker(cores=1, args=[...], data_dir=None) -> a running Broker.

    Log files grow in 1 MiB steps (`--preallocate-bytes`) instead of the default 64 MiB, so
    a run needs little disk and the growth path is exercised; preallocate_bytes=None keeps
    the broker's default.

    At teardown each broker must still be running (a crash fails the test) and must stop
    cleanly with SIGTERM (exit 0), unless the test stopped or killed it itself.
    """
    brokers = []
    request.node.shardlog_brokers = brokers

    def start(cores=1, args=(), data_dir=None, preallocate_bytes=1 << 20, env=None):
        n = len(brokers)
        data_dir = data_dir or tmp_path / f"data{n}"
        if preallocate_bytes is not None:
            args = ["--preallocate-bytes", str(preallocate_bytes), *args]
        broker = Broker(shardlog_bin, data_dir, tmp_path, cores=cores, extra_args=args, env=env)
        brokers.append(broker)
        return broker.start()

    yield start
    problems = []
    for broker in brokers:
        if broker.proc is None:
            continue
        if broker.proc.poll() is not None:
            if broker.proc.returncode not in (0, -9):
                problems.append(f"broker on {broker.bootstrap} exited {broker.proc.returncode}")
            continue
        try:
            broker.stop()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("; ".join(problems))
    # Every partition preallocates disk space (64 MiB each): drop the data of a test that
    # passed now, so a full run never holds more than one test's data. A failed test keeps
    # its data dir for a look.
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        for broker in brokers:
            shutil.rmtree(broker.data_dir, ignore_errors=True)


@pytest.fixture
def broker(start_broker):
    """One broker with one shard and default settings (auto-create on, 1 partition)."""
    return start_broker()


@pytest.fixture
def broker2(start_broker):
    """One broker with two shards."""
    return start_broker(cores=2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    brokers = getattr(item, "shardlog_brokers", None)
    if report.failed and brokers and report.when in ("call", "teardown"):
        for broker in brokers:
            text = broker.log_text()
            if len(text) > 20000:
                text = "... (cut) ...\n" + text[-20000:]
            report.sections.append((f"shardlog log {broker.bootstrap}", text))
