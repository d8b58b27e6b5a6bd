"""The files in deploy/: the example config names real settings with their real defaults, and
the systemd unit carries the limits glommio and a clean stop need."""

import re
from pathlib import Path

import pytest

import wire

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# Set by the harness's own flags, or needing a cluster: left commented.
NOT_UNCOMMENTED = {"listen", "advertise", "cores", "controller_listen",
                   "controller_quorum_voters", "metrics_listen"}
SETTING = re.compile(r"^# ?(\w+) = (\S+)")


def example_settings():
    """(key, value text) of every commented-out setting line of deploy/shardlog.toml."""
    return [m.groups() for line in (DEPLOY / "shardlog.toml").read_text().splitlines()
            if (m := SETTING.match(line))]


def test_the_example_config_lists_every_setting_of_the_help(shardlog_bin):
    import subprocess
    help_text = subprocess.run([str(shardlog_bin), "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    flags = {f.replace("-", "_") for f in re.findall(r"^\s+--([a-z-]+) <", help_text, re.M)}
    listed = {k for k, _ in example_settings()} | {"data_dir"}
    assert flags - {"config"} == listed, (flags - listed, listed - flags)


def test_a_broker_starts_with_every_example_setting_uncommented(start_broker, tmp_path):
    lines = []
    for line in (DEPLOY / "shardlog.toml").read_text().splitlines():
        m = SETTING.match(line)
        if m and m.group(1) not in NOT_UNCOMMENTED:
            line = line[1:].lstrip()
        if line.startswith("data_dir"):
            continue  # the harness gives its own --data-dir
        lines.append(line)
    config = tmp_path / "every.toml"
    config.write_text("\n".join(lines) + "\n")
    broker = start_broker(args=["--config", str(config)])
    with wire.Conn(broker.address) as conn:
        answer = wire.metadata(conn, ["from-defaults"])  # auto_create_topics = true
    assert answer["from-defaults"][0] == wire.NONE
    assert sorted(answer["from-defaults"][1]) == [0], "num_partitions = 1"


def test_the_systemd_unit_raises_memlock_and_files_and_waits_for_a_clean_stop():
    unit = (DEPLOY / "shardlog.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["LimitMEMLOCK"] == "infinity"
    assert int(settings["LimitNOFILE"]) >= 65536
    assert int(settings["TimeoutStopSec"]) >= 60
    assert settings["KillSignal"] == "SIGTERM"
    assert "--config /etc/shardlog/shardlog.toml" in settings["ExecStart"]
