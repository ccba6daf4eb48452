"""A read-only connection to the coordinator database, for the dashboard and /metrics.

The database itself refuses writes: SQLite is opened ``mode=ro`` with ``query_only``,
PostgreSQL with ``default_transaction_read_only``.  Its :meth:`Store.transaction` is a read
snapshot (``BEGIN`` deferred on SQLite, ``REPEATABLE READ READ ONLY`` on PostgreSQL), so one
summary sees one consistent state while the service keeps committing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from agent.coordinator.config import StorageSection
from agent.coordinator.connect import import_psycopg, redact
from agent.coordinator.dialect import POSTGRESQL, SQLITE
from agent.coordinator.migrations import LATEST
from agent.coordinator.store import Store
from agent.errors import StorageError

READ_SQLITE = dataclasses.replace(SQLITE, begin="BEGIN")
READ_POSTGRESQL = dataclasses.replace(POSTGRESQL, begin="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


def open_read_store(storage: StorageSection) -> Store:
    """A read-only :class:`Store` on the configured database (which must exist and be current)."""
    if storage.database_url:
        store = Store(READ_POSTGRESQL, _postgres(storage.database_url), redact(storage.database_url))
    else:
        path = Path(storage.sqlite_path)
        if not path.is_file():
            raise StorageError(
                f"database {path} does not exist",
                hint="run `edgeproof coordinator run` once (it creates and migrates the database)",
            )
        store = Store(READ_SQLITE, _sqlite(path), str(path))
    version = store.schema_version()
    if version != LATEST:
        store.close()
        raise StorageError(
            f"database {store.where} has schema version {version}, this coordinator reads version {LATEST}",
            hint="run `edgeproof coordinator run` of this version once to migrate it"
            if version < LATEST
            else "run a dashboard at least as new as the coordinator that wrote this database",
        )
    return store


def _sqlite(path: Path) -> Any:
    uri = f"{path.resolve().as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn

    return connect


def _postgres(url: str) -> Any:
    psycopg = import_psycopg()

    # Keep the URL's own options (e.g. a search_path) and add the read-only default to them.
    options = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
    options = f"{options} -c default_transaction_read_only=on".strip()

    def connect() -> Any:
        return psycopg.connect(url, autocommit=True, connect_timeout=5, options=options)

    return connect
