"""Fixtures of the reliability tests: a restartable broker on a fresh data dir."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rel_harness import Broker  # noqa: E402


@pytest.fixture
def rel_broker_factory(tmp_path):
    """Makes brokers on data dirs under tmp_path; kills whatever is still running at the end
    and prints the broker log of a failed test."""
    made = []

    def make(name="data", **kwargs):
        broker = Broker(tmp_path / name, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()
