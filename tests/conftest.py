"""The fixtures every end-to-end suite uses (tests/ and tests/reliability/): the real
`shardlog` binary, started through `broker_process.Fleet`.

- `shardlog_bin`: the binary (`$SHARDLOG_BIN`, else `<CARGO_TARGET_DIR or target>/release/
  shardlog`); a missing binary fails the test with how to build it.
- `start_broker(...)`: a factory, callable many times in one test; each broker has its own
  name, free port and data dir under the test's tmp_path. Arguments: `name`, `cores`, `args`
  (extra flags), `env` (extra environment), `data_dir`, `port`, `preallocate_bytes` (1 MiB
  unless given; None keeps the broker's 64 MiB default), `open_files_max`. The returned
  `Broker` restarts (`restart()`, `kill()` + `start()`) on the same port and data dir, and
  can be paused (`pause()` / `resume()`: SIGSTOP / SIGCONT).
- `broker`, `broker2`: one broker with one shard, or with two.
- `start_module_broker(...)`: the same factory for a broker that the tests of one module
  share (started once, stopped after the module's last test).
- `start_cluster(voters=3, extra_args=(), name="", ...)`: a factory of serving clusters
  (cluster.py): all voters spawned, then waited for; `add_broker()` adds a broker-only node.
  Nodes are named n1, n2, ... (`name`-n1, ... for a second cluster of the same test); each
  keeps its two ports and data dir across restarts. At the end every node still running
  gets SIGTERM at once and must exit 0. `start_module_cluster(...)`: the same, shared by
  the tests of one module.

Teardown rule, for every broker: one the test did not kill (SIGKILL) or expect to fail must
exit 0 on SIGTERM; a crash, a non-zero exit or a hang fails the test. A failing test's report
holds the logs of every broker it used; its tmp_path (data dirs and logs) is kept under
/tmp/pytest-of-$USER/, those of passing tests are removed (pytest.ini).
"""

import shutil

import pytest

from broker_process import Fleet, shardlog_binary
from cluster import Cluster


@pytest.fixture(scope="session")
def shardlog_bin():
    path = shardlog_binary()
    if not path.is_file():
        pytest.fail(
            f"shardlog binary not found at {path}: build it (cargo build --release -p shardlog, "
            "honouring CARGO_TARGET_DIR) or set SHARDLOG_BIN"
        )
    return path


def _fail_on_problems(problems):
    if problems:
        pytest.fail("teardown rule: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def start_broker(shardlog_bin, tmp_path, request):
    """Factory: start_broker(name=None, cores=1, args=(), env=None, ...) -> a running Broker."""
    fleet = Fleet(shardlog_bin, tmp_path)
    request.node.shardlog_fleets = getattr(request.node, "shardlog_fleets", []) + [fleet]
    yield fleet.start
    _fail_on_problems(fleet.close())


@pytest.fixture
def broker(start_broker):
    """One broker with one shard and default settings (auto-create on, 1 partition)."""
    return start_broker()


@pytest.fixture
def broker2(start_broker):
    """One broker with two shards."""
    return start_broker(cores=2)


@pytest.fixture(scope="module")
def start_module_broker(shardlog_bin, tmp_path_factory, request):
    """Factory for brokers shared by the tests of one module; the teardown rule applies at
    the end of the module (a problem is reported as an error of its last test)."""
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    fleet = Fleet(shardlog_bin, base)
    request.node.shardlog_fleets = getattr(request.node, "shardlog_fleets", []) + [fleet]
    failed_before = request.session.testsfailed
    yield fleet.start
    problems = fleet.close()
    if not problems and request.session.testsfailed == failed_before:
        # Brokers preallocate their logs: keep the data of a module only when it failed.
        for broker in fleet.brokers:
            shutil.rmtree(broker.data_dir, ignore_errors=True)
    _fail_on_problems(problems)


def _cluster_factory(fleet):
    def start(voters=3, extra_args=(), name="", **kwargs):
        """Start a cluster of `voters` voters with `extra_args` on every node; keyword
        arguments as for cluster.Cluster (cores, env, session_timeout_ms, ...)."""
        return Cluster(fleet, voters=voters, name=name, args=extra_args, **kwargs).start()
    return start


@pytest.fixture
def start_cluster(shardlog_bin, tmp_path, request):
    """Factory: start_cluster(voters=3, extra_args=(), name="", ...) -> a serving Cluster."""
    fleet = Fleet(shardlog_bin, tmp_path)
    request.node.shardlog_fleets = getattr(request.node, "shardlog_fleets", []) + [fleet]
    yield _cluster_factory(fleet)
    _fail_on_problems(fleet.close(together=True))


@pytest.fixture(scope="module")
def start_module_cluster(shardlog_bin, tmp_path_factory, request):
    """start_cluster for a cluster shared by the tests of one module (stopped after the
    module's last test; a teardown problem is reported as an error of that test)."""
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-cluster")
    fleet = Fleet(shardlog_bin, base)
    request.node.shardlog_fleets = getattr(request.node, "shardlog_fleets", []) + [fleet]
    failed_before = request.session.testsfailed
    yield _cluster_factory(fleet)
    problems = fleet.close(together=True)
    if not problems and request.session.testsfailed == failed_before:
        for broker in fleet.brokers:
            shutil.rmtree(broker.data_dir, ignore_errors=True)
    _fail_on_problems(problems)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when not in ("call", "teardown"):
        return
    fleets = list(getattr(item, "shardlog_fleets", []))
    module = item.getparent(pytest.Module)
    fleets += getattr(module, "shardlog_fleets", []) if module is not None else []
    for fleet in fleets:
        for broker in fleet.brokers:
            text = broker.log_text()
            if len(text) > 20000:
                text = "... (cut) ...\n" + text[-20000:]
            report.sections.append((f"shardlog log {broker.name} {broker.bootstrap}", text))


@pytest.fixture
def report(capsys, request):
    """Print a measurement even without -s (pytest would capture it), labelled with the
    module's REPORT_PREFIX (else its name)."""
    prefix = getattr(request.module, "REPORT_PREFIX", request.module.__name__)

    def say(text):
        with capsys.disabled():
            print(f"\n[{prefix}] {text}", flush=True)
    return say
