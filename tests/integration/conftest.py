"""Fixtures for integration tests: a real Mosquitto broker on a free 127.0.0.1 port."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.support.mosquitto import MosquittoBroker  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A started anonymous broker (no TLS); stopped after the test."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Build brokers with extra config (TLS, password_file, acl_file): ``factory(extra_conf=..., anonymous=False)``."""
    brokers: list[MosquittoBroker] = []

    def factory(**kwargs: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker{len(brokers)}", **kwargs)
        brokers.append(broker)
        return broker

    try:
        yield factory
    finally:
        for broker in brokers:
            broker.kill()
