"""Fixtures for the coordinator tests: a real PostgreSQL server, a store on either backend, a broker."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from agent.coordinator.store import Store  # noqa: E402
from tests.support.mosquitto import MosquittoBroker  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test gets its own database)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh schema of the session's server for one test."""
    return pg_server.create_schema(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """ "" for SQLite, a fresh PostgreSQL database otherwise."""
    if backend == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(database_url=database_url, sqlite_path=tmp_path / "coordinator.sqlite3")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
