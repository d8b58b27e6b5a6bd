"""`--metrics-listen`: Prometheus text at /metrics and readiness at /health, figures gathered
from every shard. Scraped by Python (parsed line by line) and, where Debian's `prometheus`
is installed (scripts/test.sh installs it), by a real Prometheus server queried through its
HTTP API."""

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from broker_process import free_port, wait_until
from clients import ck_create_topic, ck_producer, ck_produce, ck_read

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')


def get(url, timeout_s=10):
    """(status, body) of an HTTP GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text):
    """[(name, {label: value}, float)] of every sample; fails on a malformed line."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def total(samples, name, **labels):
    return sum(v for n, l, v in samples
               if n == name and all(l.get(k) == str(x) for k, x in labels.items()))


@pytest.fixture
def metered(start_broker):
    port = free_port()
    broker = start_broker(cores=2, args=["--metrics-listen", f"127.0.0.1:{port}"])
    broker.metrics_url = f"http://127.0.0.1:{port}"
    return broker


def test_metrics_count_requests_and_partition_offsets_across_shards(metered):
    status, body = get(metered.metrics_url + "/health")
    assert (status, body) == (200, "ok\n")
    topic = "metered"
    ck_create_topic(metered, topic, partitions=4)
    producer = ck_producer(metered)
    ck_produce(producer, topic, [f"m{i}".encode() for i in range(100)], partition=0)
    ck_produce(producer, topic, [f"n{i}".encode() for i in range(30)], partition=3)
    assert len(ck_read(metered, topic, 0, 0, 100)) == 100

    status, body = get(metered.metrics_url + "/metrics")
    assert status == 200
    samples = parse(body)
    ends = {l["partition"]: v for n, l, v in samples
            if n == "shardlog_partition_log_end_offset" and l["topic"] == topic}
    assert ends == {"0": 100, "1": 0, "2": 0, "3": 30}
    shards = {l["shard"] for n, l, v in samples
              if n == "shardlog_partition_log_end_offset" and l["topic"] == topic}
    assert shards == {"0", "1"}, "partitions of both shards are reported"
    assert total(samples, "shardlog_requests_total", api="Produce") >= 2
    assert total(samples, "shardlog_requests_total", api="Fetch") >= 1
    assert total(samples, "shardlog_request_duration_seconds_count", api="Produce") == \
        total(samples, "shardlog_requests_total", api="Produce")
    assert total(samples, "shardlog_connections") >= 1
    assert total(samples, "shardlog_buffered_request_bytes_limit") == 2 * 256 * 2**20
    assert get(metered.metrics_url + "/nothing")[0] == 404


def test_a_metrics_port_already_taken_stops_the_start_naming_it(shardlog_bin, tmp_path):
    port = free_port()
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run([str(shardlog_bin), "--data-dir", str(tmp_path / "d"),
                               "--cores", "1", "--listen", "127.0.0.1:0",
                               "--metrics-listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"metrics_listen: cannot bind 127.0.0.1:{port}" in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus package is not installed (scripts/test.sh)")
def test_a_real_prometheus_scrapes_the_produced_record_counts(metered, tmp_path):
    topic = "scraped"
    ck_create_topic(metered, topic, partitions=2)
    producer = ck_producer(metered)
    ck_produce(producer, topic, [f"r{i}".encode() for i in range(70)], partition=1)
    target = metered.metrics_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: shardlog\n    static_configs: [{{targets: ['{target}']}}]\n")
    port = free_port()
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    try:
        query = (f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.request.quote(
            f'sum(shardlog_partition_log_end_offset{{topic="{topic}"}})'))

        def answered():
            try:
                status, body = get(query, timeout_s=2)
            except OSError:
                return None
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return result[0]["value"][1] if result else None
        assert wait_until(answered, 60, "Prometheus to scrape the broker", interval_s=0.25) == "70"
        up = urllib.request.quote('up{job="shardlog"}')
        status, body = get(f"http://127.0.0.1:{port}/api/v1/query?query={up}")
        assert json.loads(body)["data"]["result"][0]["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(timeout=30)
