"""The device state store: what must survive restarts and must never roll back.

It holds the chain head (``seq`` and hash of the last chained envelope), the accepted manifest
version per channel (and the accepted manifest envelope, so a restart resumes its work), the
updater's records (e.g. a failed release version), the challenge nonce memory and the highest
seq accepted from each trusted signer (coordinator / operator keys).

Its tables live in the same SQLite file as the message queue (:mod:`agent.transport.outbox`),
behind their own class, so that queuing a chained envelope and advancing the head are one
transaction: :meth:`StateStore.chain_step` is handed to :meth:`Outbox.put` and runs inside the
queue's transaction.  The chain head, manifest versions and signer seqs are also kept in a
second copy outside that file (:mod:`agent.device.state_copy`), written before each commit; on
open the effective value is the larger of the two, so losing the queue file rolls nothing back
(ADR 0012).

Every method is thread-safe (one lock shared with the queue).  A storage failure raises
:class:`~agent.errors.StorageError`; an unreadable file :class:`~agent.errors.CorruptStateError`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.device.state_copy import CopyData, read_copy, write_copy
from agent.errors import CorruptStateError, StorageError
from agent.protocol.envelope import GENESIS_PREV
from agent.transport.sqlite_file import SqliteFile, require_columns, tables, translate

log = logging.getLogger(__name__)

_T = TypeVar("_T")

RecordValue = int | str | None
#: Runs inside the queue's transaction (see :meth:`agent.transport.outbox.Outbox.put`).
TxnStep = Callable[[sqlite3.Connection], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    prev TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    channel TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    envelope TEXT
);
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nonces_until ON nonces (until_ms);
CREATE TABLE IF NOT EXISTS signer_seqs (
    signer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

_COLUMNS = {
    "chain_head": {"id", "seq", "prev"},
    "manifests": {"channel", "version", "envelope"},
    "records": {"key", "value"},
    "nonces": {"nonce", "until_ms"},
    "signer_seqs": {"signer", "seq"},
}


def _upsert_manifest(db: sqlite3.Connection, channel: str, version: int, envelope: str | None) -> None:
    db.execute(
        "INSERT INTO manifests (channel, version, envelope) VALUES (?, ?, ?) "
        "ON CONFLICT (channel) DO UPDATE SET version = excluded.version, envelope = excluded.envelope "
        "WHERE excluded.version >= manifests.version",
        (channel, version, envelope),
    )


def _migrate_v1(db: sqlite3.Connection) -> int:
    """Move version 1's key/value ``state`` table into the store's tables; returns the keys moved."""
    rows = db.execute("SELECT key, value FROM state").fetchall()
    values: dict[str, Any] = {}
    for key, raw in rows:
        try:
            values[str(key)] = json.loads(raw)
        except ValueError:
            values[str(key)] = None
    seq, prev = values.pop("seq", None), values.pop("prev", None)
    if isinstance(seq, int) and seq > 0 and isinstance(prev, str):
        db.execute("INSERT OR REPLACE INTO chain_head (id, seq, prev) VALUES (1, ?, ?)", (seq, prev))
    for key in sorted(k for k in values if k.startswith("manifest.") and k.endswith(".version")):
        channel = key[len("manifest.") : -len(".version")]
        version = values.pop(key)
        envelope = values.pop(f"manifest.{channel}.envelope", None)
        if isinstance(version, int):
            _upsert_manifest(db, channel, version, envelope if isinstance(envelope, str) else None)
    for key, value in values.items():
        if value is not None and not key.startswith("manifest."):
            db.execute("INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)", (key, json.dumps(value)))
    db.execute("DROP TABLE state")
    return len(rows)


class StateStore:
    """Chain head, manifest versions, updater records, nonce memory and signer seqs of one device."""

    def __init__(self, file: SqliteFile, *, copy_path: Path | None = None, owns_file: bool = False) -> None:
        """Use the state tables of an open :class:`SqliteFile` (created or migrated here).

        ``copy_path`` is the second copy (``None``: none, e.g. in unit tests).  With
        ``owns_file`` :meth:`close` closes the file too.
        """
        self.file = file
        self.path = file.path
        self.copy_path = copy_path
        self._owns_file = owns_file
        self._lock = file.lock
        #: Problems met on open (an unusable copy, a head taken from the copy); shown by status.
        self.notes: list[str] = []
        with self._lock:
            try:
                self._create()
                self._copy = self._reconcile()
            except sqlite3.Error as exc:
                file.rollback()
                raise translate(self.path, exc, "opening the state store") from exc

    @classmethod
    def open(
        cls, path: Path | str, *, copy_path: Path | None = None, synchronous: str = "FULL"
    ) -> StateStore:
        """Open (or create) a state file of its own (the daemon shares one with its outbox instead)."""
        file = SqliteFile.open(path, synchronous=synchronous)
        try:
            return cls(file, copy_path=copy_path, owns_file=True)
        except BaseException:
            file.close()
            raise

    # ------------------------------------------------------------------ opening

    def _create(self) -> None:
        db = self.file.db
        for table, needed in _COLUMNS.items():
            require_columns(self.file, table, needed)
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if "state" in tables(db):
            moved = _migrate_v1(db)
            log.info(
                "state store: migrated the version 1 state table",
                extra={"path": str(self.path), "keys": moved},
            )
        self.file.mark_current()
        db.execute("COMMIT")

    def _db_view(self) -> CopyData:
        db = self.file.db
        head = db.execute("SELECT seq, prev FROM chain_head WHERE id = 1").fetchone()
        data = CopyData() if head is None else CopyData(int(head[0]), str(head[1]))
        data.manifests = {str(c): int(v) for c, v in db.execute("SELECT channel, version FROM manifests")}
        data.signers = {str(s): int(q) for s, q in db.execute("SELECT signer, seq FROM signer_seqs")}
        return data

    def _reconcile(self) -> CopyData:
        """The effective state: the larger of the database and the copy, written back to both."""
        mine = self._db_view()
        if self.copy_path is None:
            return mine
        copy, problem = read_copy(self.copy_path)
        if problem is not None:
            if mine.seq == 0:
                # The copy existed (so the device has signed before) and the database knows no
                # head: starting at seq 1 would fork the chain.  An operator must decide.
                raise CorruptStateError(
                    f"{problem}, and the state file {self.path} holds no chain head",
                    hint=f"restore {self.copy_path} from a backup; only if this device never sent an envelope, "
                    "delete it (the chain then starts at seq 1)",
                )
            self.notes.append(problem)
            log.error("state copy unusable; using the database alone", extra={"problem": problem})
        if copy is None:
            copy = CopyData()
        merged = CopyData(mine.seq, mine.prev)
        if copy.seq > mine.seq:
            merged = CopyData(copy.seq, copy.prev)
            note = f"chain head taken from the state copy (seq {copy.seq}; the database had seq {mine.seq})"
            self.notes.append(note)
            log.warning("state store: " + note, extra={"path": str(self.path)})
        elif copy.seq == mine.seq and copy.prev != mine.prev and mine.seq > 0:
            log.error(
                "state store: the copy and the database disagree on the head's hash; using the database's",
                extra={"seq": mine.seq},
            )
        for name in ("manifests", "signers"):
            ours, theirs = getattr(mine, name), getattr(copy, name)
            getattr(merged, name).update({k: max(ours.get(k, 0), theirs.get(k, 0)) for k in {*ours, *theirs}})
        db = self.file.db
        db.execute("BEGIN IMMEDIATE")
        if merged.seq > mine.seq:
            db.execute(
                "INSERT OR REPLACE INTO chain_head (id, seq, prev) VALUES (1, ?, ?)",
                (merged.seq, merged.prev),
            )
        for channel, version in merged.manifests.items():
            if version > mine.manifests.get(channel, 0):
                _upsert_manifest(db, channel, version, None)
        for signer, seq in merged.signers.items():
            if seq > mine.signers.get(signer, 0):
                db.execute("INSERT OR REPLACE INTO signer_seqs (signer, seq) VALUES (?, ?)", (signer, seq))
        db.execute("COMMIT")
        if merged.to_json() != copy.to_json():
            write_copy(self.copy_path, merged)
        return merged

    # ------------------------------------------------------------------ helpers

    def _read(self, doing: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            self.file.check_open()
            try:
                return work(self.file.db)
            except sqlite3.Error as exc:
                raise translate(self.path, exc, doing) from exc

    def _write(self, doing: str, work: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            try:
                with self.file.transaction() as db:
                    work(db)
            except sqlite3.Error as exc:
                raise translate(self.path, exc, doing) from exc

    def _save_copy(self, data: CopyData) -> None:
        """Write the copy ahead of the database (see agent/device/state_copy.py)."""
        if self.copy_path is not None:
            write_copy(self.copy_path, data)
        self._copy = data

    def _next_copy(self) -> CopyData:
        c = self._copy
        return CopyData(c.seq, c.prev, dict(c.manifests), dict(c.signers))

    # ------------------------------------------------------------------ chain head

    def chain_head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last chained envelope; ``(0, 64 zeros)`` before the first."""
        with self._lock:
            return self._copy.seq, self._copy.prev

    def chain_step(self, seq: int, prev: str) -> TxnStep:
        """The head advance to ``(seq, prev)`` as a step of the queue's transaction.

        The copy is written first (so a crash leaves it ahead: a gap, never a reused seq); a head
        that would go backwards raises :class:`StorageError` and so aborts the transaction.
        """

        def step(db: sqlite3.Connection) -> None:
            with self._lock:
                if seq < self._copy.seq:
                    raise StorageError(
                        f"chain head would go backwards (seq {seq} after seq {self._copy.seq})",
                        hint="this is a bug: one signer per device chain",
                    )
                data = self._next_copy()
                data.seq, data.prev = seq, prev
                self._save_copy(data)
                db.execute("INSERT OR REPLACE INTO chain_head (id, seq, prev) VALUES (1, ?, ?)", (seq, prev))

        return step

    def set_chain_head(self, seq: int, prev: str) -> None:
        """Advance the head on its own (``state recover``); never moves it backwards."""
        with self._lock:
            if seq <= self._copy.seq:
                return
            self._write("writing the chain head", self.chain_step(seq, prev))

    # ------------------------------------------------------------------ manifests

    def manifest_version(self, channel: str) -> int:
        """The highest manifest version accepted on ``channel``; 0 if none."""
        with self._lock:
            return self._copy.manifests.get(channel, 0)

    def manifest_versions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._copy.manifests)

    def manifest_envelope(self, channel: str) -> str | None:
        """The accepted manifest envelope of ``channel`` (wire text), if it was stored."""
        got = self._read(
            "reading a manifest",
            lambda db: db.execute("SELECT envelope FROM manifests WHERE channel = ?", (channel,)).fetchone(),
        )
        return None if got is None or got[0] is None else str(got[0])

    def accept_manifest(
        self, channel: str, version: int, envelope: str | None, *, signer_seq: tuple[str, int] | None = None
    ) -> None:
        """Record an accepted manifest; a version below the stored one is ignored (never rolls back).

        ``signer_seq`` ``(key, seq)`` raises that signer seq in the same transaction (the operator
        chain's floor on the channel, agent/device/manifests.py).
        """
        with self._lock:
            if version < self._copy.manifests.get(channel, 0):
                log.warning("state store: refusing to lower a manifest version", extra={"channel": channel})
                return

            def work(db: sqlite3.Connection) -> None:
                data = self._next_copy()
                data.manifests[channel] = version
                if signer_seq is not None and signer_seq[1] > data.signers.get(signer_seq[0], 0):
                    data.signers[signer_seq[0]] = signer_seq[1]
                self._save_copy(data)
                _upsert_manifest(db, channel, version, envelope)
                if signer_seq is not None:
                    db.execute(
                        "INSERT INTO signer_seqs (signer, seq) VALUES (?, ?) "
                        "ON CONFLICT (signer) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                        signer_seq,
                    )

            self._write("writing a manifest version", work)

    # ------------------------------------------------------------------ updater records

    def record(self, key: str, default: RecordValue = None) -> RecordValue:
        got = self._read(
            "reading a record",
            lambda db: db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone(),
        )
        if got is None:
            return default
        value: RecordValue = json.loads(got[0])
        return value

    def set_record(self, key: str, value: RecordValue) -> None:
        def work(db: sqlite3.Connection) -> None:
            if value is None:
                db.execute("DELETE FROM records WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)", (key, json.dumps(value))
                )

        self._write("writing a record", work)

    def set_records(self, values: dict[str, RecordValue]) -> None:
        """Write several records in one transaction (None deletes): all or none of them."""

        def work(db: sqlite3.Connection) -> None:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM records WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)", (key, json.dumps(value))
                    )

        self._write("writing records", work)

    def records(self) -> dict[str, RecordValue]:
        rows = self._read(
            "reading records", lambda db: db.execute("SELECT key, value FROM records").fetchall()
        )
        return {str(k): json.loads(v) for k, v in rows}

    # ------------------------------------------------------------------ challenge nonce memory

    def nonce_seen(self, nonce: str) -> bool:
        got = self._read(
            "reading the nonce memory",
            lambda db: db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone(),
        )
        return got is not None

    def remember_nonce(self, nonce: str, until_ms: int) -> None:
        """Remember an accepted challenge nonce until its deadline (`until_ms`, unix ms) has passed."""
        self._write(
            "writing the nonce memory",
            lambda db: db.execute(
                "INSERT INTO nonces (nonce, until_ms) VALUES (?, ?) "
                "ON CONFLICT (nonce) DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)",
                (nonce, int(until_ms)),
            ),
        )

    def forget_nonces(self, before_ms: int) -> int:
        """Drop nonces whose until_ms < before_ms; returns how many were dropped."""
        dropped = [0]

        def work(db: sqlite3.Connection) -> None:
            dropped[0] = db.execute("DELETE FROM nonces WHERE until_ms < ?", (int(before_ms),)).rowcount

        self._write("pruning the nonce memory", work)
        return dropped[0]

    # ------------------------------------------------------------------ trusted signers' seqs

    def signer_seq(self, signer: str) -> int:
        """Highest seq accepted from this base58 key; 0 if none."""
        with self._lock:
            return self._copy.signers.get(signer, 0)

    def set_signer_seq(self, signer: str, seq: int) -> None:
        """Record seq as the highest accepted (never lowers a stored value)."""
        with self._lock:
            if seq <= self._copy.signers.get(signer, 0):
                return

            def work(db: sqlite3.Connection) -> None:
                data = self._next_copy()
                data.signers[signer] = seq
                self._save_copy(data)
                db.execute(
                    "INSERT INTO signer_seqs (signer, seq) VALUES (?, ?) "
                    "ON CONFLICT (signer) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                    (signer, seq),
                )

            self._write("writing a signer seq", work)

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """What ``status`` and ``state recover`` show."""
        with self._lock:
            count = self._read(
                "counting nonces", lambda db: db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
            )
            return {
                "chain": {"seq": self._copy.seq, "head": self._copy.prev},
                "manifest_versions": dict(sorted(self._copy.manifests.items())),
                "signer_seqs": dict(sorted(self._copy.signers.items())),
                "nonces": int(count),
                "copy": None if self.copy_path is None else str(self.copy_path),
                "notes": list(self.notes),
            }

    def close(self) -> None:
        if self._owns_file:
            self.file.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["GENESIS_PREV", "RecordValue", "StateStore", "TxnStep"]
