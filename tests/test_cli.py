"""Starting the binary: invalid settings are refused naming the setting, a data dir is used by
one broker at a time, and settings also come from environment variables and a TOML file."""

import os
import signal
import subprocess

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

import wire
from broker_process import free_port, wait_until
from clients import ck_create_topic
from test_confluent_kafka import describe_topic


def run_briefly(shardlog_bin, *args, env=None):
    return subprocess.run([str(shardlog_bin), *args], capture_output=True, timeout=30,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("flag, value, setting", [
    ("--num-partitions", "0", "num_partitions"),
    ("--listen", "nowhere", "listen"),
    ("--cores", "4096", "cores"),
    ("--max-message-bytes", "10", "max_message_bytes"),
    ("--segment-bytes", "100", "segment_bytes"),
    # The offsets log stores commit metadata with a 16-bit length.
    ("--offset-metadata-max-bytes", "100000", "offset_metadata_max_bytes"),
])
def test_invalid_setting_is_refused_at_start_naming_the_setting(shardlog_bin, tmp_path, flag,
                                                                value, setting):
    proc = run_briefly(shardlog_bin, "--data-dir", str(tmp_path), "--cores", "1", flag, value)
    stderr = proc.stderr.decode()
    assert proc.returncode != 0
    assert setting in stderr, stderr
    assert "listening on" not in stderr


def test_second_broker_on_the_same_data_dir_is_refused(broker, shardlog_bin):
    port = free_port()
    proc = run_briefly(shardlog_bin, "--data-dir", str(broker.data_dir), "--cores", "1",
                       "--listen", f"127.0.0.1:{port}")
    assert proc.returncode != 0
    assert "in use" in proc.stderr.decode(), proc.stderr.decode()
    assert broker.is_running()


def test_settings_come_from_flags_then_environment_then_toml_file(start_broker, tmp_path):
    config = tmp_path / "shardlog.toml"
    config.write_text('num_partitions = 3\nmax_message_bytes = 50000\n')
    broker = start_broker(args=["--config", str(config)],
                          env={"SHARDLOG_NUM_PARTITIONS": "2"})
    with wire.Conn(broker.address) as conn:
        # Metadata for an unknown topic auto-creates it with the default partition count.
        wire.metadata(conn, ["auto"])
        answer = wire.metadata(conn, ["auto"])
    ck_create_topic(broker, "explicit")
    max_message_bytes = describe_topic(broker, "explicit")["max.message.bytes"].value
    assert answer["auto"][0] == wire.NONE
    assert sorted(answer["auto"][1]) == [0, 1], "the environment wins over the file"
    assert max_message_bytes == "50000"


def test_second_broker_on_an_address_already_served_is_refused(broker, shardlog_bin, tmp_path):
    """Shards share their port with SO_REUSEPORT; another broker must not join that group,
    or the kernel would split new connections between two brokers."""
    proc = run_briefly(shardlog_bin, "--data-dir", str(tmp_path / "other"), "--cores", "1",
                       "--listen", broker.bootstrap)
    stderr = proc.stderr.decode()
    assert proc.returncode != 0
    assert broker.bootstrap in stderr and "in use" in stderr, stderr
    assert "listening on" not in stderr
    ck_create_topic(broker, "still-served")
    assert broker.is_running()


def test_a_panic_on_a_shard_ends_the_process_at_once_with_the_panic_logged(start_broker):
    """A shard thread that panics must not leave a live process that answers nobody: the
    process exits non-zero at once, so a supervisor restarts it."""
    broker = start_broker(cores=2, env={"SHARDLOG_TEST_PANIC_ON_TOPIC": "boom"})
    with wire.Conn(broker.address) as conn:
        try:
            wire.metadata(conn, ["boom"])  # auto-creates the topic: its owner shard panics
        except (OSError, AssertionError):
            pass  # the connection may die with the process
    code = broker.wait_exit(timeout_s=20)  # the test owns the exit code from here
    assert code == 101, f"exit status {code}"
    assert "panicked" in broker.run_log() and "boom" in broker.run_log()


def test_a_commit_with_metadata_past_the_limit_is_refused_and_the_broker_stays_up(broker):
    topic = "meta-limit"
    ck_create_topic(broker, topic)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "meta-limit",
                         "enable.auto.commit": False})
    try:
        huge = TopicPartition(topic, 0, 1, metadata="m" * 40_000)
        with pytest.raises(KafkaException) as raised:
            consumer.commit(offsets=[huge], asynchronous=False)
        assert "METADATA_TOO_LARGE" in str(raised.value), raised.value
        small = TopicPartition(topic, 0, 1, metadata="ok")
        consumer.commit(offsets=[small], asynchronous=False)
    finally:
        consumer.close()
    assert broker.is_running()


def test_groups_tool_exits_quietly_when_its_output_pipe_closes(broker, shardlog_bin):
    """`shardlog groups list | head -0` must not print a panic."""
    proc = subprocess.Popen([str(shardlog_bin), "groups", "--bootstrap", broker.bootstrap,
                             "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    proc.stdout.close()  # the reader is gone before the tool writes anything
    _, stderr = proc.communicate(timeout=30)
    assert "panicked" not in stderr.decode(), stderr.decode()
    assert proc.returncode in (0, -signal.SIGPIPE), proc.returncode


def _memlock_64k():
    import resource
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))


def test_a_low_memlock_limit_is_refused_naming_the_limit_and_the_fix(shardlog_bin, tmp_path):
    """With RLIMIT_MEMLOCK at 64 KiB the only output used to be "a shard stopped during
    start"."""
    proc = subprocess.run([str(shardlog_bin), "--data-dir", str(tmp_path), "--cores", "1",
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, preexec_fn=_memlock_64k)
    assert proc.returncode == 1
    assert "RLIMIT_MEMLOCK" in proc.stderr and "64 KiB" in proc.stderr, proc.stderr
    assert "ulimit -l" in proc.stderr and "LimitMEMLOCK" in proc.stderr, proc.stderr
    assert "listening on" not in proc.stderr


def _as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_an_unwritable_data_dir_is_refused_naming_the_path_and_the_fix(shardlog_bin, tmp_path):
    data_dir = tmp_path / "not-yours"
    data_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(data_dir, 0o555)
    proc = subprocess.run([str(shardlog_bin), "--data-dir", str(data_dir), "--cores", "1",
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, preexec_fn=_as_nobody)
    assert proc.returncode == 1
    assert str(data_dir) in proc.stderr and "Permission denied" in proc.stderr, proc.stderr
    assert "chown" in proc.stderr and "--data-dir" in proc.stderr, proc.stderr


def test_logs_written_to_a_file_carry_no_colour_codes(broker):
    ck_create_topic(broker, "plain")
    log = broker.log_text()
    assert "listening on" in log
    assert "\x1b[" not in log, log[:500]
