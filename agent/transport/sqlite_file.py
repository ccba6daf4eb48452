"""The device's one SQLite file: opened, checked and shared by the outbox and the state store.

The outbox (the message queue, :mod:`agent.transport.outbox`) and the device state store
(:mod:`agent.device.state_store`) keep their tables in one database so that queuing a chained
envelope and advancing the chain head are one transaction.  Each keeps to its own tables and
knows nothing of the other's; this module only opens the file, refuses one that is not usable
and hands out the connection with the lock both must hold.

Opening refuses (:class:`~agent.errors.CorruptStateError`, exit code 12) a file that is empty,
is not a SQLite database, fails ``PRAGMA quick_check`` or holds tables that are not ours, with a
message naming the file and the recovery command.  A file written by a newer agent is a
:class:`~agent.errors.StorageError` (upgrade, do not "recover").  ``read_only=True`` opens with
a ``mode=ro`` URI: nothing is migrated or written (``edgeproof status``).  With no ``-wal``
file beside it (the last writer closed cleanly, everything is in the main file) it adds
``immutable=1``, so SQLite creates no ``-wal``/``-shm`` files either; with a ``-wal`` file
(a writer runs, or died) those exist already and normal read locking applies.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from agent.errors import CorruptStateError, StorageError

#: Version 1: outbox, drops, parked and a key/value ``state`` table.  Version 2: outbox and
#: parked rows carry ``seq``; the state store's own tables replace ``state``.
SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Every table an edgeproof state file may hold (any version).
KNOWN_TABLES = frozenset(
    {"outbox", "drops", "parked", "state", "chain_head", "manifests", "records", "nonces", "signer_seqs"}
)
RECOVER_COMMAND = "edgeproof state recover --config FILE"

# SQLite primary result codes (sqlite3.SQLITE_* exist from Python 3.11 on).
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def corrupt(path: Path, detail: str) -> CorruptStateError:
    return CorruptStateError(
        f"state file {path} is unreadable: {detail}",
        hint=f"stop the agent and run `{RECOVER_COMMAND}`: it moves the file aside (kept, never deleted), "
        "re-queues every envelope it can still read and restores the chain head and manifest versions "
        "from their second copy. Do not delete the file: a fresh one would restart the hash chain at seq 1",
    )


def is_locked(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BUSY_CODES:
        return True
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def translate(path: Path, exc: sqlite3.Error, doing: str) -> StorageError:
    """One clear error for a SQLite failure: locked, corrupt or anything else."""
    if is_corrupt(exc):
        return corrupt(path, f"{doing}: {exc}")
    if is_locked(exc):
        return StorageError(
            f"state file {path} is locked by another process ({doing}): {exc}",
            hint="another agent (or `edgeproof state recover`) holds it; wait, or stop that process",
        )
    return StorageError(f"state file {path}: {doing}: {exc}")


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})").fetchall()}


def tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(row[0]) for row in rows if not str(row[0]).startswith("sqlite_")}


def require_columns(file: SqliteFile, table: str, needed: set[str]) -> None:
    """Refuse a table of ours that lacks columns (a mangled or foreign schema)."""
    present = columns(file.db, table)
    missing = needed - present
    if present and missing:
        raise corrupt(
            file.path, f"table {table} lacks columns {sorted(missing)}: not an edgeproof state file"
        )


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"state file {path} cannot be read: {exc}") from exc
    if not head:
        raise corrupt(path, "the file is empty (zero length): truncated")
    if head != SQLITE_MAGIC:
        raise corrupt(path, "not a SQLite database (wrong header)")


class SqliteFile:
    """One open connection to the state file and the lock every user of it holds."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, read_only: bool) -> None:
        self.path = path
        self.db = db
        self.read_only = read_only
        self.lock = threading.RLock()
        self.closed = False

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        read_only: bool = False,
        busy_timeout_s: float = 10.0,
        max_page_count: int | None = None,
    ) -> SqliteFile:
        path = Path(path)
        if read_only and not path.exists():
            raise StorageError(
                f"state file {path} does not exist", hint="the daemon has not run with this config"
            )
        _check_header(path)
        try:
            if read_only:
                wal = path.with_name(path.name + "-wal")
                db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro" + ("" if wal.exists() else "&immutable=1"),
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=busy_timeout_s,
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
                )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"state file {path} cannot be opened: {exc}",
                hint="check that outbox.path is on a writable filesystem and the agent's user owns it",
            ) from exc
        file = cls(path, db, read_only=read_only)
        try:
            file._configure(synchronous, busy_timeout_s, max_page_count)
        except sqlite3.Error as exc:
            db.close()
            raise translate(path, exc, "opening") from exc
        except StorageError:
            db.close()
            raise
        return file

    def _configure(self, synchronous: str, busy_timeout_s: float, max_page_count: int | None) -> None:
        db, path = self.db, self.path
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if not self.read_only:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(
                    f"state file {path}: SQLite refused WAL mode (got {mode!r})",
                    hint="put outbox.path on a local filesystem (WAL does not work on network shares)",
                )
            db.execute(f"PRAGMA synchronous={synchronous}")
            if max_page_count is not None:
                db.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        check = [str(row[0]) for row in db.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise corrupt(path, "integrity check failed: " + "; ".join(check[:3]))
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"state file {path} has schema version {version}, newer than this agent's ({SCHEMA_VERSION})",
                hint="upgrade the agent (the file is not corrupt; do not recover it)",
            )
        present = tables(db)
        foreign = present - KNOWN_TABLES
        if foreign:
            raise corrupt(path, f"holds tables that are not ours ({', '.join(sorted(foreign))})")

    def mark_current(self) -> None:
        """Record the schema version once this agent's tables are in place."""
        if int(self.db.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; rolled back on any exception."""
        with self.lock:
            self.check_open()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.rollback()
                raise
            self.db.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def check_open(self) -> None:
        if self.closed:
            raise StorageError(
                f"state file {self.path} is closed", hint="this is a bug: use it before close()"
            )

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.db.close()
