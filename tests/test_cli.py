"""Starting the binary: invalid settings are refused naming the setting, a data dir is used by
one broker at a time, and settings also come from environment variables and a TOML file."""

import os
import subprocess

import pytest

import wire
from broker_process import free_port
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
