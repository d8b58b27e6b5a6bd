"""The operator's command line against real brokers: `shardlog topics | cluster | produce |
consume | groups`, both output formats, `--bootstrap` before or after the action, and the
error paths (unreachable broker, refusals), each exiting 1 with the broker and the Kafka error
named. One single-node broker is shared by the module; the cluster tests start three nodes.

Run: SHARDLOG_BIN=... python3 -m pytest tests/test_tools.py -q -p no:cacheprovider
"""

import json
import os
import subprocess

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka.partitioner.default import murmur2

from broker_process import free_port, wait_until
from clients import ck_create_topic

CLI_TIMEOUT_S = 60


def run(binary, *args, stdin=None, env=None):
    """`shardlog ARGS`: the finished process (text mode)."""
    return subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env={**os.environ, **(env or {})})


def ok(binary, *args, stdin=None, env=None):
    result = run(binary, *args, stdin=stdin, env=env)
    assert result.returncode == 0, f"shardlog {args}: {result.stderr}"
    assert "panicked" not in result.stderr, result.stderr
    return result.stdout


def fails(binary, *args, stdin=None):
    """Runs a command that must fail: exit status 1, no panic; returns stderr."""
    result = run(binary, *args, stdin=stdin)
    assert result.returncode == 1, f"shardlog {args}: status {result.returncode}, {result.stdout}"
    assert "panicked" not in result.stderr, result.stderr
    return result.stderr


def as_json(binary, bootstrap, *args):
    return json.loads(ok(binary, *args, "--bootstrap", bootstrap, "--format", "json"))


@pytest.fixture(scope="module")
def single(start_module_broker):
    return start_module_broker(name="tools", cores=2, args=["--num-partitions", "1"])


def topic_names(binary, bootstrap):
    return [t["topic"] for t in as_json(binary, bootstrap, "topics", "list")["topics"]]


def test_topics_create_list_describe_alter_delete_in_both_formats(single):
    b, addr = single.binary, single.bootstrap
    out = ok(b, "topics", "create", "orders", "--partitions", "3", "--replication-factor", "1",
             "--config", "retention.ms=3600000", "--config", "cleanup.policy=delete",
             "--bootstrap", addr)
    assert "created topic orders" in out

    table = ok(b, "topics", "--bootstrap", addr, "list")
    header, *rows = table.splitlines()
    assert header.split() == ["TOPIC", "PARTITIONS", "REPLICATION-FACTOR"]
    assert ["orders", "3", "1"] in [r.split() for r in rows]
    listed = as_json(b, addr, "topics", "list")["topics"]
    assert {"topic": "orders", "partitions": 3, "replication_factor": 1} in listed

    ok(b, "produce", "orders", "--partition", "1", "--bootstrap", addr, stdin="a\nb\nc\n")
    described = as_json(b, addr, "topics", "describe", "orders")
    assert described["topic"] == "orders"
    parts = {p["partition"]: p for p in described["partitions"]}
    assert sorted(parts) == [0, 1, 2]
    assert [parts[p]["log_end_offset"] for p in range(3)] == [0, 3, 0]
    assert all(p["log_start_offset"] == 0 for p in parts.values())
    assert all(p["replicas"] == [p["leader"]] == p["isr"] for p in parts.values())
    assert {c["config"]: c["value"] for c in described["configs"]} == {
        "retention.ms": "3600000", "cleanup.policy": "delete"}
    text = ok(b, "topics", "describe", "orders", "--bootstrap", addr)
    assert "LOG-END-OFFSET" in text and "retention.ms" in text and "size on disk" in text

    ok(b, "topics", "alter", "orders", "--config", "retention.ms=60000",
       "--delete-config", "cleanup.policy", "--bootstrap", addr)
    described = as_json(b, addr, "topics", "describe", "orders")
    assert {c["config"]: c["value"] for c in described["configs"]} == {"retention.ms": "60000"}

    assert "deleted topic orders" in ok(b, "topics", "delete", "orders", "--bootstrap", addr)
    wait_until(lambda: "orders" not in topic_names(b, addr), 10, "orders to be gone")


def test_bootstrap_comes_from_the_environment_and_either_side_of_the_action(single):
    b, addr = single.binary, single.bootstrap
    ck_create_topic(single, "placed")
    env = {"SHARDLOG_BOOTSTRAP": addr}
    assert "placed" in ok(b, "topics", "list", env=env)
    assert "placed" in ok(b, "topics", "--bootstrap", addr, "list")
    assert "placed" in ok(b, "topics", "list", "--bootstrap", addr)
    # The flag wins over the environment.
    assert "placed" in ok(b, "topics", "list", "--bootstrap", addr,
                          env={"SHARDLOG_BOOTSTRAP": "127.0.0.1:1"})


def test_an_unreachable_broker_fails_with_exit_1_naming_it(single):
    address = f"127.0.0.1:{free_port()}"
    for args in (["topics", "list"], ["cluster", "describe"], ["groups", "list"],
                 ["consume", "t", "--max-messages", "1"]):
        stderr = fails(single.binary, *args, "--bootstrap", address)
        assert address in stderr and "cannot connect" in stderr, stderr


def test_refusals_name_the_kafka_error_and_nothing_is_created(single):
    b, addr = single.binary, single.bootstrap
    stderr = fails(b, "topics", "describe", "nosuch", "--bootstrap", addr)
    assert "nosuch" in stderr and "UNKNOWN_TOPIC_OR_PARTITION" in stderr, stderr
    stderr = fails(b, "produce", "nosuch2", "--bootstrap", addr, stdin="x\n")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in stderr, stderr
    stderr = fails(b, "consume", "nosuch3", "--bootstrap", addr, "--max-messages", "1")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in stderr, stderr
    names = topic_names(b, addr)
    assert not {"nosuch", "nosuch2", "nosuch3"} & set(names), names

    ok(b, "topics", "create", "twice", "--partitions", "1", "--bootstrap", addr)
    stderr = fails(b, "topics", "create", "twice", "--partitions", "1", "--bootstrap", addr)
    assert "TOPIC_ALREADY_EXISTS" in stderr, stderr
    stderr = fails(b, "topics", "create", "badconf", "--config", "retention.ms=soon",
                   "--bootstrap", addr)
    assert "INVALID_CONFIG" in stderr, stderr
    stderr = fails(b, "topics", "alter", "twice", "--config", "no.such.config=1",
                   "--bootstrap", addr)
    assert "twice" in stderr and "INVALID" in stderr, stderr
    stderr = fails(b, "topics", "delete", "nosuch4", "--bootstrap", addr)
    assert "nosuch4: UNKNOWN_TOPIC_OR_PARTITION" in stderr, stderr


def test_produce_keyed_lines_and_consume_them_back_in_order_per_partition(single):
    b, addr = single.binary, single.bootstrap
    ok(b, "topics", "create", "keyed", "--partitions", "4", "--bootstrap", addr)
    lines = [f"k{i % 7}:v{i}" for i in range(2500)]  # more than one produce chunk
    summary = json.loads(ok(b, "produce", "keyed", "--key-separator", ":", "--format", "json",
                            "--bootstrap", addr, stdin="\n".join(lines) + "\n"))
    assert summary == {"topic": "keyed", "records": 2500}

    out = ok(b, "consume", "keyed", "--from-beginning", "--exit-at-end", "--format", "json",
             "--bootstrap", addr)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2500
    for r in records:
        # Kafka's default partitioner (murmur2, as kafka-python and the Java client hash).
        assert r["partition"] == (murmur2(r["key"].encode()) & 0x7FFFFFFF) % 4, r
    for p in range(4):
        mine = [r for r in records if r["partition"] == p]
        assert [r["offset"] for r in mine] == list(range(len(mine)))
    by_key = {}
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        by_key.setdefault(r["key"], []).append(int(r["value"][1:]))
    assert all(values == sorted(values) for values in by_key.values()), "order per key"

    text = ok(b, "consume", "keyed", "--from-beginning", "--max-messages", "5",
              "--partition", "0", "--key-separator", "=", "--bootstrap", addr)
    assert len(text.splitlines()) == 5 and all("=v" in line for line in text.splitlines())


def test_consume_without_from_beginning_waits_for_new_records(single):
    b, addr = single.binary, single.bootstrap
    ok(b, "topics", "create", "tail", "--partitions", "1", "--bootstrap", addr)
    ok(b, "produce", "tail", "--bootstrap", addr, stdin="old\n")
    consumer = subprocess.Popen([str(b), "consume", "tail", "--max-messages", "1",
                                 "--bootstrap", addr], stdout=subprocess.PIPE, text=True)
    try:
        # It starts at the log end (1): produce until it has printed something.
        def printed():
            ok(b, "produce", "tail", "--bootstrap", addr, stdin="new\n")
            return consumer.poll() is not None
        wait_until(printed, 30, "the consumer to print a new record", interval_s=0.2)
        assert consumer.stdout.read() == "new\n"
        assert consumer.returncode == 0
    finally:
        consumer.kill()
        consumer.wait()


def test_groups_describe_shows_lag_per_partition_and_an_unknown_group_fails(single):
    b, addr = single.binary, single.bootstrap
    ok(b, "topics", "create", "lagging", "--partitions", "2", "--bootstrap", addr)
    ok(b, "produce", "lagging", "--partition", "0", "--bootstrap", addr,
       stdin="".join(f"{i}\n" for i in range(10)))
    ok(b, "produce", "lagging", "--partition", "1", "--bootstrap", addr, stdin="a\nb\n")
    consumer = Consumer({"bootstrap.servers": addr, "group.id": "laggards"})
    try:
        consumer.commit(offsets=[TopicPartition("lagging", 0, 4), TopicPartition("lagging", 1, 2)],
                        asynchronous=False)
    finally:
        consumer.close()
    described = as_json(b, addr, "groups", "describe", "laggards")
    rows = {r["partition"]: r for r in described["offsets"]}
    assert [(rows[p]["committed"], rows[p]["log_end"], rows[p]["lag"]) for p in (0, 1)] == [
        (4, 10, 6), (2, 2, 0)]
    assert described["state"] == "Empty" and described["members"] == []
    text = ok(b, "groups", "describe", "laggards", "--bootstrap", addr)
    assert "LAG" in text.splitlines()[-3] or any("LAG" in line for line in text.splitlines())

    stderr = fails(b, "groups", "describe", "nosuchgroup", "--bootstrap", addr)
    assert "nosuchgroup" in stderr and "GROUP_ID_NOT_FOUND" in stderr, stderr


def test_reset_offsets_previews_without_execute_and_commits_with_it(single):
    b, addr = single.binary, single.bootstrap
    ok(b, "topics", "create", "resettable", "--partitions", "1", "--bootstrap", addr)
    ok(b, "produce", "resettable", "--bootstrap", addr, stdin="1\n2\n3\n")
    preview = run(b, "groups", "reset-offsets", "resetters", "--topic", "resettable",
                  "--to-latest", "--bootstrap", addr)
    assert preview.returncode == 0 and "--execute" in preview.stderr, preview.stderr
    assert "3" in preview.stdout.splitlines()[-1]
    fails(b, "groups", "describe", "resetters", "--bootstrap", addr)  # nothing committed
    ok(b, "groups", "reset-offsets", "resetters", "--topic", "resettable", "--to-latest",
       "--execute", "--bootstrap", addr)
    rows = as_json(b, addr, "groups", "describe", "resetters")["offsets"]
    assert [(r["committed"], r["lag"]) for r in rows] == [(3, 0)]


def test_cluster_describe_and_tools_route_to_each_partitions_leader(start_cluster):
    cluster = start_cluster(voters=3)
    node = cluster.running()[0]
    b, addr = node.binary, node.bootstrap
    described = as_json(b, addr, "cluster", "describe")
    assert [br["broker"] for br in described["brokers"]] == [1, 2, 3]
    assert described["controller"] == cluster.controller_id()
    assert described["cluster_id"]
    assert {br["address"] for br in described["brokers"]} == {n.bootstrap for n in cluster.nodes}
    assert [br["controller"] for br in described["brokers"]].count(True) == 1
    text = ok(b, "cluster", "describe", "--bootstrap", addr)
    assert "BROKER" in text and described["cluster_id"] in text

    ok(b, "topics", "create", "spread", "--partitions", "6", "--replication-factor", "1",
       "--bootstrap", addr)
    cluster.wait_topic("spread", 6)
    leaders = {p["leader"] for p in as_json(b, addr, "topics", "describe", "spread")["partitions"]}
    assert leaders == {1, 2, 3}, "placement spreads leaders, so routing is exercised"

    lines = [f"key{i}:{i}" for i in range(600)]
    ok(b, "produce", "spread", "--key-separator", ":", "--bootstrap", addr,
       stdin="\n".join(lines) + "\n")
    parts = as_json(b, addr, "topics", "describe", "spread")["partitions"]
    assert sum(p["log_end_offset"] for p in parts) == 600
    out = ok(b, "consume", "spread", "--from-beginning", "--exit-at-end", "--key-separator", ":",
             "--bootstrap", addr)
    assert sorted(out.splitlines()) == sorted(lines)

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "spreaders"})
    try:
        consumer.commit(offsets=[TopicPartition("spread", p["partition"], 1) for p in parts],
                        asynchronous=False)
    finally:
        consumer.close()
    described = as_json(b, addr, "groups", "describe", "spreaders")
    ends = {p["partition"]: p["log_end_offset"] for p in parts}
    assert {r["partition"]: r["lag"] for r in described["offsets"]} == {
        p: e - 1 for p, e in ends.items()}
    assert "spreaders" in [g["group"] for g in as_json(b, addr, "groups", "list")["groups"]]
