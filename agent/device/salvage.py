"""Reading what is still readable out of a damaged state file (for ``edgeproof state recover``).

Nothing here trusts the file: every query may fail on a mangled page, so rows are read with
an ascending and a descending scan (each stops at the first bad page) and then, for ids in
between that neither scan reached, one lookup per id (a b-tree search touches other pages
than a scan).  State values (chain head, manifest versions and envelopes, signer seqs,
records) are read table by table, each on its own; a table that cannot be read is skipped.
Queued payloads are returned as they are: the caller verifies each one before re-queueing it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

#: At most this many single-id lookups for ids the scans did not reach.
MAX_PROBES = 200_000
_ROW = "id, topic, payload, qos, retain, kind, priority"


@dataclass(frozen=True)
class SalvagedRow:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    priority: int


@dataclass
class Salvage:
    rows: list[SalvagedRow] = field(default_factory=list)
    #: Queries that failed on the damaged file (each may hide several rows).
    read_errors: int = 0
    #: Ids of rows that were read but whose columns are not what a queued row holds.
    malformed_ids: set[int] = field(default_factory=set)
    chain_head: tuple[int, str] | None = None
    manifests: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    signers: dict[str, int] = field(default_factory=dict)
    records: dict[str, int | str] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    #: Why nothing could be read at all (the file is not a database), if so.
    unreadable: str | None = None


def _row(values: tuple[object, ...]) -> SalvagedRow | None:
    try:
        row_id, topic, payload, qos, retain, kind, priority = values
        return SalvagedRow(
            int(row_id),  # type: ignore[call-overload]
            str(topic),
            bytes(payload),  # type: ignore[call-overload]
            int(qos),  # type: ignore[call-overload]
            bool(retain),
            str(kind),
            int(priority),  # type: ignore[call-overload]
        )
    except (TypeError, ValueError):
        return None


class _Reader:
    def __init__(self, db: sqlite3.Connection, out: Salvage) -> None:
        self.db = db
        self.out = out

    def attempt(self, work: Callable[[], _T]) -> _T | None:
        try:
            return work()
        except (sqlite3.Error, ValueError, TypeError, OverflowError):
            self.out.read_errors += 1
            return None

    def keep(self, values: tuple[object, ...], found: dict[int, SalvagedRow]) -> None:
        row = _row(values)
        if row is not None:
            found.setdefault(row.id, row)
        elif isinstance(values[0], int):
            self.out.malformed_ids.add(values[0])

    def scan(self, order: str, found: dict[int, SalvagedRow]) -> None:
        try:
            for values in self.db.execute(f"SELECT {_ROW} FROM outbox ORDER BY id {order}"):
                self.keep(tuple(values), found)
        except (sqlite3.Error, ValueError, OverflowError):
            self.out.read_errors += 1

    def probe(self, found: dict[int, SalvagedRow]) -> None:
        if not found:
            return
        low, high = min(found), max(found)
        missing = [i for i in range(low + 1, high) if i not in found and i not in self.out.malformed_ids]
        missing = missing[:MAX_PROBES]
        for row_id in missing:
            try:
                values = self.db.execute(f"SELECT {_ROW} FROM outbox WHERE id = ?", (row_id,)).fetchone()
            except sqlite3.Error:
                self.out.read_errors += 1
                continue
            if values is not None:
                self.keep(tuple(values), found)


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"not an integer: {value!r}")


def _refit(path: Path, target: Path) -> bool:
    """Copy a truncated database to ``target`` with its header's page count fitted to its length.

    SQLite refuses a file shorter than its header says ("malformed"); the pages that are there
    are readable once the header agrees and the schema names no page beyond the end.  The
    damaged file itself is never changed.
    """
    data = bytearray(path.read_bytes())
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return False
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65_536 if page_size == 1 else page_size
    if page_size < 512:
        return False
    pages = len(data) // page_size
    if pages < 1:
        return False
    del data[pages * page_size :]
    data[28:32] = pages.to_bytes(4, "big")
    data[18] = data[19] = 1  # rollback-journal mode: the copy has no WAL of its own
    target.write_bytes(bytes(data))
    # Tables and indexes whose root page was cut off are forgotten (in the copy only), so the
    # schema parses and the others can be read.
    try:
        db = sqlite3.connect(str(target), isolation_level=None)
        try:
            db.execute("PRAGMA writable_schema=ON")
            db.execute("DELETE FROM sqlite_master WHERE rootpage > ?", (pages,))
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return True


def salvage(path: Path) -> Salvage:
    """Everything still readable in ``path`` (opened read-only; its ``-wal`` is read if present).

    A file SQLite refuses outright (e.g. truncated) is read from a refitted temporary copy.
    """
    out = _salvage(path)
    if out.unreadable is None:
        return out
    refit = path.with_name(path.name + ".refit")
    try:
        if not _refit(path, refit):
            return out
        second = _salvage(refit)
    finally:
        refit.unlink(missing_ok=True)
    if second.unreadable is not None:
        return out
    second.read_errors += 1  # the refused open
    return second


def _salvage(path: Path) -> Salvage:
    out = Salvage()
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        out.unreadable = str(exc)
        return out
    try:
        reader = _Reader(db, out)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            out.unreadable = str(exc)
            return out
        found: dict[int, SalvagedRow] = {}
        reader.scan("ASC", found)
        reader.scan("DESC", found)
        if out.read_errors:
            reader.probe(found)
        out.rows = [found[i] for i in sorted(found)]
        try:
            _read_state(reader)
        except (TypeError, ValueError):
            out.read_errors += 1
    finally:
        db.close()
    return out


def _read_state(reader: _Reader) -> None:
    db, out = reader.db, reader.out
    names = reader.attempt(lambda: {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}) or set()

    def query(table: str, sql: str) -> list[tuple[object, ...]]:
        if table not in names:
            return []
        return reader.attempt(lambda: [tuple(r) for r in db.execute(sql).fetchall()]) or []

    head = next(iter(query("chain_head", "SELECT seq, prev FROM chain_head WHERE id = 1")), None)
    if head is not None:
        out.chain_head = (_int(head[0]), str(head[1]))
    for channel, version, envelope in query("manifests", "SELECT channel, version, envelope FROM manifests"):
        out.manifests[str(channel)] = (_int(version), None if envelope is None else str(envelope))
    out.signers.update(
        {str(s): _int(q) for s, q in query("signer_seqs", "SELECT signer, seq FROM signer_seqs")}
    )
    out.nonces.update({str(n): _int(u) for n, u in query("nonces", "SELECT nonce, until_ms FROM nonces")})
    for key, value in query("records", "SELECT key, value FROM records"):
        with contextlib.suppress(ValueError, TypeError):
            decoded = json.loads(str(value))
            if isinstance(decoded, int | str):
                out.records[str(key)] = decoded
    # A version 1 file: one key/value table.
    values: dict[str, object] = {}
    for key, value in query("state", "SELECT key, value FROM state"):
        with contextlib.suppress(ValueError, TypeError):
            values[str(key)] = json.loads(str(value))
    seq, prev = values.get("seq"), values.get("prev")
    if isinstance(seq, int) and isinstance(prev, str) and (out.chain_head is None or seq > out.chain_head[0]):
        out.chain_head = (seq, prev)
    for key, value in values.items():
        if key.startswith("manifest.") and key.endswith(".version") and isinstance(value, int):
            channel = key[len("manifest.") : -len(".version")]
            envelope = values.get(f"manifest.{channel}.envelope")
            out.manifests[channel] = (value, envelope if isinstance(envelope, str) else None)
        elif key.startswith("deploy.") and isinstance(value, int | str):
            out.records[key] = value
