"""The harness itself (broker_process.py, the fixtures in conftest.py): several brokers run
side by side, each on its own port and data dir; a restart keeps both; a paused broker
holds its clients' requests until it runs again; and the teardown rule catches a broker that
died behind the test's back."""

import os
import signal

import wire
from broker_process import Fleet


def produce_and_read_back(broker, topic, value):
    wire.auto_create(broker.address, topic)
    with wire.Conn(broker.address) as conn:
        [(error, offset)] = wire.produce(conn, topic, {0: wire.record_batch([value])},
                                         acks=-1).values()
        assert error == wire.NONE
        _, _, batches = wire.fetch(conn, topic, 0, 0)
    return offset, [v for b in batches for v in b["values"]]


def test_two_brokers_run_side_by_side_with_separate_ports_and_data(start_broker):
    a = start_broker(name="a")
    b = start_broker(name="b", cores=2, env={"SHARDLOG_NUM_PARTITIONS": "3"})

    assert a.port != b.port and a.data_dir != b.data_dir
    assert produce_and_read_back(a, "t", b"only in a") == (0, [b"only in a"])
    assert produce_and_read_back(b, "t", b"only in b") == (0, [b"only in b"])
    with wire.Conn(a.address) as conn:
        assert sorted(wire.metadata(conn, ["t"])["t"][1]) == [0]
    with wire.Conn(b.address) as conn:  # b's own environment: auto-created with 3
        assert sorted(wire.metadata(conn, ["t"])["t"][1]) == [0, 1, 2]
    assert (a.data_dir / "topics" / "t-0").is_dir() and not (a.data_dir / "topics" / "t-2").exists()
    assert (b.data_dir / "topics" / "t-2").is_dir()


def test_a_restart_keeps_the_port_and_the_data_dir(start_broker):
    a = start_broker(name="a")
    b = start_broker(name="b")
    port, data_dir = a.port, a.data_dir
    produce_and_read_back(a, "kept", b"first")

    a.restart()  # SIGTERM, exit 0, start again
    assert (a.port, a.data_dir) == (port, data_dir)
    assert produce_and_read_back(a, "kept", b"second") == (1, [b"first", b"second"])

    a.kill()  # SIGKILL: a crash
    assert not a.is_running()
    a.start()
    assert (a.port, a.data_dir) == (port, data_dir)
    assert produce_and_read_back(a, "kept", b"third") == (2, [b"first", b"second", b"third"])
    # The other broker never noticed.
    assert b.is_running() and produce_and_read_back(b, "kept", b"b") == (0, [b"b"])


def test_a_paused_broker_answers_once_resumed_while_another_keeps_serving(start_broker):
    a = start_broker(name="a")
    b = start_broker(name="b")
    with wire.Conn(a.address) as conn:
        a.pause()  # SIGSTOP
        assert a.is_paused()
        conn.send_raw(wire.api_versions_request(correlation_id=5))
        assert produce_and_read_back(b, "t", b"b serves") == (0, [b"b serves"])
        assert not conn.readable(), "a stopped process answered"
        a.resume()  # SIGCONT
        assert wire.correlation_id(conn.recv_frame(timeout_s=10)) == 5
    assert not a.is_paused()


def test_teardown_rule_fails_a_broker_that_died_behind_the_tests_back(shardlog_bin, tmp_path):
    fleet = Fleet(shardlog_bin, tmp_path)
    killed, crashed, paused, running = (fleet.start(name=n)
                                        for n in ("killed", "crashed", "paused", "running"))
    killed.kill()  # the test's own SIGKILL: accounted for
    os.kill(crashed.pid, signal.SIGKILL)  # not through the harness: a crash
    crashed.proc.wait()
    paused.pause()  # resumed, then stopped with SIGTERM

    problems = fleet.close()

    assert problems == ["crashed was killed by signal 9 before the end of the test"]
    assert not paused.is_running() and paused.proc.returncode == 0
    assert not running.is_running() and running.proc.returncode == 0
