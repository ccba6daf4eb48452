"""Connections to the coordinator's database: SQLite files and PostgreSQL URLs.

One place imports psycopg (an optional dependency: the ``coordinator`` extra) and says what to
install when it is missing; :mod:`agent.coordinator.store` and the read-only
:mod:`agent.coordinator.read_store` both connect through here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from agent.errors import StorageError


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{tail}"


def import_psycopg() -> Any:
    """psycopg 3, or a StorageError that says how to install it."""
    try:
        import psycopg
    except ImportError as exc:
        raise StorageError(
            "database_url is set but psycopg is not installed",
            hint="pip install 'edgeproof[coordinator]' (psycopg[binary])",
        ) from exc
    return psycopg


def sqlite_connector(path: Path, synchronous: str) -> Any:
    def connect() -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    return connect


def postgres_connector(url: str) -> Any:
    psycopg = import_psycopg()

    def connect() -> Any:
        # autocommit: transactions are the explicit BEGIN ... COMMIT of Store.transaction.
        return psycopg.connect(url, autocommit=True, connect_timeout=5)

    return connect
