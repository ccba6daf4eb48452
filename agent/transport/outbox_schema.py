"""The outbox's tables, row types, schema migration and statistics (used by :mod:`outbox`).

Schema version 2 (``PRAGMA user_version``, :data:`agent.transport.sqlite_file.SCHEMA_VERSION`):
``outbox`` and ``parked`` rows carry the envelope's ``seq`` (NULL for side-band envelopes).  A
version 1 file is migrated in place by :func:`migrate`.  :func:`read_stats` reads an outbox
file read-only (``edgeproof status``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.transport.settings import OutboxSettings
from agent.transport.sqlite_file import SqliteFile, columns, require_columns, translate

#: Kinds whose envelopes do not advance the chain (their rows carry no seq).
SIDEBAND_KINDS = frozenset({"status"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS drops (
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (kind, reason)
);
CREATE TABLE IF NOT EXISTS parked (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    parked_ms INTEGER NOT NULL,
    seq INTEGER
);
"""

COLUMNS = "id, topic, payload, qos, retain, kind, priority, size, created_ms, attempts, seq"
NEEDED = {
    "outbox": {
        "id",
        "topic",
        "payload",
        "qos",
        "retain",
        "kind",
        "priority",
        "size",
        "created_ms",
        "attempts",
    },
    "drops": {"kind", "reason", "count"},
    "parked": {"id", "topic", "payload", "kind", "size", "reason", "parked_ms"},
}


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    priority: int
    size: int
    created_ms: int
    attempts: int
    #: The envelope's chain position; None for side-band envelopes and non-envelope payloads.
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ParkedRow:
    row: OutboxRow
    reason: str
    parked_ms: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    max_bytes: int
    oldest_age_ms: int | None
    # kind -> reason -> count, persistent across restarts.
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    parked: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_ms": self.oldest_age_ms,
            "drops": {kind: dict(reasons) for kind, reasons in self.drops.items()},
            "dropped_total": self.dropped_total,
            "parked": self.parked,
        }


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def row_of(values: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        id=values[0],
        topic=values[1],
        payload=bytes(values[2]),
        qos=values[3],
        retain=bool(values[4]),
        kind=values[5],
        priority=values[6],
        size=values[7],
        created_ms=values[8],
        attempts=values[9],
        seq=None if values[10] is None else int(values[10]),
    )


def _legacy_seq(kind: str, payload: bytes) -> int | None:
    """The seq of a version 1 row, read once from its payload by the migration."""
    if kind in SIDEBAND_KINDS:
        return None
    try:
        seq = json.loads(payload)["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def migrate(db: sqlite3.Connection) -> int:
    """Version 1 -> 2: add the ``seq`` columns; returns how many queued rows got their seq."""
    filled = 0
    for table in ("outbox", "parked"):
        if "seq" in columns(db, table):
            continue
        db.execute(f"ALTER TABLE {table} ADD COLUMN seq INTEGER")
        for row_id, kind, payload in db.execute(f"SELECT id, kind, payload FROM {table}").fetchall():
            seq = _legacy_seq(str(kind), bytes(payload))
            if seq is not None:
                db.execute(f"UPDATE {table} SET seq = ? WHERE id = ?", (seq, row_id))
                filled += 1
    return filled


def stats_of(
    db: sqlite3.Connection, max_bytes: int, now_ms: int, unsaved: Counter[tuple[str, str]]
) -> OutboxStats:
    depth, total, oldest = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_ms) FROM outbox"
    ).fetchone()
    drops: dict[str, dict[str, int]] = {}
    counted: Counter[tuple[str, str]] = Counter(unsaved)
    for kind, reason, count in db.execute("SELECT kind, reason, count FROM drops").fetchall():
        counted[(kind, reason)] += count
    for (kind, reason), count in sorted(counted.items()):
        drops.setdefault(kind, {})[reason] = count
    parked = db.execute("SELECT COUNT(*) FROM parked").fetchone()[0]
    age = None if oldest is None else max(0, now_ms - int(oldest))
    return OutboxStats(
        depth=int(depth),
        bytes=int(total),
        max_bytes=max_bytes,
        oldest_age_ms=age,
        drops=drops,
        parked=int(parked),
    )


def read_stats(settings: OutboxSettings, *, busy_timeout_s: float = 2.0) -> OutboxStats:
    """The stats of an outbox file, opened read-only (``edgeproof status``).

    Creates nothing (no reserve file, no migration, no schema).  Every SQLite failure becomes
    one :class:`StorageError` (locked) or :class:`~agent.errors.CorruptStateError` (unreadable).
    """
    path = Path(settings.path)
    file = SqliteFile.open(path, read_only=True, busy_timeout_s=busy_timeout_s)
    try:
        for table, needed in NEEDED.items():
            require_columns(file, table, needed)
        return stats_of(file.db, settings.max_bytes, now_ms(), Counter())
    except sqlite3.Error as exc:
        raise translate(path, exc, "reading the outbox") from exc
    finally:
        file.close()
