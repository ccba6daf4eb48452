"""Store-and-forward outbox: SQLite in WAL mode, the source of truth until the broker acks.

Contract
--------
* :meth:`Outbox.put` commits (and, with ``synchronous=FULL``, fsyncs) the message before it
  returns; the publisher only ever publishes rows that are committed.
* :meth:`Outbox.pending` returns rows in insertion order (``id`` is AUTOINCREMENT, never reused).
* :meth:`Outbox.ack` deletes a row; it is called only when the broker's PUBACK says success.
* The file survives restarts; a reopened outbox re-sends everything still in it, in order.

Durability
----------
``journal_mode=WAL`` with ``synchronous=FULL`` (default): the WAL is fsynced at every commit,
so a queued envelope survives power loss, not only ``kill -9``.  The rate is low (a proof a
minute, a heartbeat every 30 s) so the fsync costs nothing that matters; acks are deleted in
batches.  ``synchronous=NORMAL`` is available for flash-wear-sensitive devices: it survives
an agent crash but may lose the last commits on power loss (a lost ack only means a
duplicate, which subscribers drop by ``(dev, seq)``).

Bound and overflow
------------------
The outbox holds at most ``max_bytes`` of ``len(payload) + len(topic)``.  A new message that
does not fit is handled by the policy:

* ``drop_oldest_heartbeats`` (default): evict the oldest rows that are heartbeats (priority
  LOW) or of lower priority than the new message, lowest priority first.  So a new heartbeat
  replaces the oldest heartbeat, a proof may evict heartbeats and normal messages, and proofs
  are never evicted.  If that is not enough, the *new* message is refused.
* ``drop_oldest``: evict the oldest rows whatever their kind.
* ``refuse_new``: never evict; refuse the new message.

A message larger than ``max_bytes`` on its own is always refused.  Every eviction and refusal
is counted persistently by ``(kind, reason)`` in the same transaction (see :meth:`stats`).

Full disk
---------
A nearly full disk is handled by :class:`agent.transport.disk_full.DiskFullGuard` (a small WAL,
a ballast file released on ``SQLITE_FULL``, a size cap while the disk stays full).  If nothing
more may be evicted the new message is refused (reason ``disk_full_refused``) and ``put``
returns ``None``.  Only when even that cannot be written is a :class:`StorageError` raised;
then *nothing* was written (neither the message nor the state), so the caller can keep running
and treat the envelope as never created.

Chain state
-----------
The queue knows nothing of chain heads.  ``put(..., seq=n, in_transaction=step)`` stores the
envelope's ``seq`` in its row (so nobody parses payloads to learn it, see :meth:`oldest_seq`)
and runs ``step(connection)`` inside the same transaction as the message: the device state
store (:mod:`agent.device.state_store`, sharing this SQLite file) advances the chain head that
way, so a SIGKILL between signing and queuing cannot fork the hash chain.  The step is
committed even when the policy refuses the message: the envelope then exists (signed, counted
as dropped) and the next one chains to it, so the coordinator sees an honest gap rather than
two envelopes with the same ``seq``.

Schema
------
The tables, row types, migration and statistics are in :mod:`agent.transport.outbox_schema`.
``PRAGMA user_version`` is the file's schema version.  A version 1 file (no ``seq`` column) is
migrated in place when opened: ``ALTER TABLE ... ADD COLUMN seq`` and the seq of each queued
chained envelope copied once from its payload.  :func:`read_stats` opens the file read-only
(``mode=ro``): no reserve file, no migration.

Broker refusals
---------------
A row the broker refuses (PUBACK reason code >= 0x80, e.g. "Not authorized" from an ACL) is
moved by :meth:`park` to a ``parked`` table with the reason, counted as a drop with reason
``rejected:<reason>``, and never re-sent (so it cannot loop).  Only the newest ``max_parked``
parked rows are kept; they can be inspected with :meth:`parked` and put back with
:meth:`requeue_parked` once the cause (e.g. an ACL) is fixed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import StorageError
from agent.protocol.kinds import priority_of
from agent.transport.disk_full import (
    RESERVE_BYTES,
    WAL_AUTOCHECKPOINT_PAGES,
    WAL_SIZE_LIMIT,
    DiskFullGuard,
    is_disk_full,
)
from agent.transport.outbox_schema import (
    COLUMNS,
    NEEDED,
    SCHEMA,
    migrate,
    now_ms,
    row_of,
    stats_of,
)
from agent.transport.outbox_schema import OutboxRow as OutboxRow
from agent.transport.outbox_schema import OutboxStats as OutboxStats
from agent.transport.outbox_schema import ParkedRow as ParkedRow
from agent.transport.outbox_schema import read_stats as read_stats
from agent.transport.settings import OutboxSettings
from agent.transport.sqlite_file import SqliteFile, require_columns, translate

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PRIORITY_LOW = 0
PRIORITY_NORMAL = 1
PRIORITY_HIGH = 2

_LEVEL = {"low": PRIORITY_LOW, "normal": PRIORITY_NORMAL, "high": PRIORITY_HIGH}


def kind_priority(kind: str) -> int:
    """A message kind's default drop priority, from the one kind table (agent/protocol/kinds.py)."""
    return _LEVEL[priority_of(kind)]


#: Runs inside the queue's transaction, on its connection (e.g. a chain head advance).
TxnStep = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class _NewMessage:
    """A message on its way into the outbox (``size`` counts payload and topic bytes)."""

    topic: str
    body: bytes
    qos: int
    retain: bool
    kind: str
    prio: int
    size: int
    seq: int | None
    step: TxnStep | None


class _Refused(Exception):
    """Internal: the policy refuses the new message (reason in args[0])."""


class Outbox:
    """A bounded, durable FIFO of MQTT messages.  Thread-safe (one lock, one connection)."""

    def __init__(
        self,
        settings: OutboxSettings,
        *,
        file: SqliteFile | None = None,
        clock_ms: Any = None,
        max_page_count: int | None = None,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        """Open (or create) the outbox at ``settings.path``, or use its tables in ``file``.

        ``file`` is the state file shared with the device state store (the caller closes it);
        without it the outbox opens ``settings.path`` itself.  ``max_page_count`` caps the
        database file (in pages) as a hard size limit; tests use it to simulate a full disk.
        ``clock_ms`` (a ``() -> int``) replaces the wall clock in tests.  ``reserve_bytes`` is
        the size of the ballast file kept for a full disk (0: none).
        """
        self.settings = settings
        self.path = Path(settings.path)
        self._clock_ms = clock_ms or now_ms
        self._unsaved_drops: Counter[tuple[str, str]] = Counter()
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._owns_file = file is None
        if file is None:
            file = SqliteFile.open(self.path, synchronous=settings.synchronous, max_page_count=max_page_count)
        elif max_page_count is not None:
            file.db.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        self._file = file
        self._db = file.db
        self._lock = file.lock
        try:
            with self._lock:
                self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                for table, needed in NEEDED.items():
                    require_columns(file, table, needed)
                self._db.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                filled = migrate(self._db)
                file.mark_current()
                self._db.execute("COMMIT")
                if filled:
                    log.info("outbox migrated to schema 2", extra={"path": str(self.path), "rows": filled})
                self._bytes = self._sum_bytes()
        except sqlite3.Error as exc:
            file.rollback()
            if self._owns_file:
                file.close()
            raise translate(self.path, exc, "opening the outbox") from exc
        except StorageError:
            if self._owns_file:
                file.close()
            raise
        self._guard = DiskFullGuard(self._db, self.path, reserve_bytes)

    # ------------------------------------------------------------------ helpers

    def _sum_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(
                f"outbox {self.path} is closed", hint="this is a bug: use the outbox before close()"
            )

    def _write(self, why: str, work: Callable[[], _T]) -> _T:
        """Run ``work`` (one whole transaction); on ``SQLITE_FULL`` checkpoint the WAL and retry once."""
        try:
            return work()
        except sqlite3.OperationalError as exc:
            self._rollback()
            if not is_disk_full(exc) or not self._guard.checkpoint(why):
                raise
        return work()

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("outbox rollback failed", extra={"path": str(self.path)}, exc_info=True)

    def _count(self, drops: Counter[tuple[str, str]]) -> None:
        for (kind, reason), count in drops.items():
            self._db.execute(
                "INSERT INTO drops (kind, reason, count) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, reason) DO UPDATE SET count = count + excluded.count",
                (kind, reason, count),
            )

    def _victims(self, priority: int, exclude: set[int]) -> Iterable[tuple[int, str, int]]:
        """Rows the policy may evict for a new message of ``priority``, in eviction order."""
        policy = self.settings.overflow
        if policy == "refuse_new":
            return
        if policy == "drop_oldest":
            query = "SELECT id, kind, size FROM outbox ORDER BY id"
            args: tuple[int, ...] = ()
        else:
            query = (
                "SELECT id, kind, size FROM outbox WHERE priority < ? OR priority = ? ORDER BY priority, id"
            )
            args = (priority, PRIORITY_LOW)
        for row_id, kind, size in self._db.execute(query, args).fetchall():
            if row_id not in exclude:
                yield int(row_id), str(kind), int(size)

    def _plan(
        self, need: int, priority: int, exclude: set[int]
    ) -> tuple[list[tuple[int, str, int]], int] | None:
        """Pick victims freeing at least ``need`` bytes; None if the policy cannot free enough."""
        chosen: list[tuple[int, str, int]] = []
        freed = 0
        if need <= 0:
            return chosen, freed
        for victim in self._victims(priority, exclude):
            chosen.append(victim)
            freed += victim[2]
            if freed >= need:
                return chosen, freed
        return None

    # ------------------------------------------------------------------ public API

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        kind: str = "other",
        priority: int | None = None,
        seq: int | None = None,
        in_transaction: TxnStep | None = None,
    ) -> int | None:
        """Queue a message durably; returns its row id, or None if the overflow policy refused it.

        ``seq`` is stored with the row (a chained envelope's position).  ``in_transaction`` runs
        inside the same transaction, before it commits (and also when the message is refused);
        it may run more than once if a full disk makes the transaction retry.  Raises
        :class:`StorageError` only if nothing at all could be written.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        body = bytes(payload)
        prio = kind_priority(kind) if priority is None else priority
        size = len(body) + len(topic.encode("utf-8"))
        with self._lock:
            self._check_open()
            try:
                row_id = self._put_locked(
                    _NewMessage(topic, body, qos, retain, kind, prio, size, seq, in_transaction)
                )
            except sqlite3.Error as exc:
                self._rollback()
                self._bytes = self._safe_sum()
                self._unsaved_drops[(kind, "storage_error")] += 1
                raise StorageError(
                    f"outbox {self.path}: cannot queue a {kind} message ({size} bytes): {exc}",
                    hint="free disk space on the outbox filesystem or lower outbox.max_bytes; "
                    "the message and its chain state were not written",
                ) from exc
            except BaseException:
                # e.g. the transaction step failed (a StorageError writing the state copy)
                self._rollback()
                self._bytes = self._safe_sum()
                raise
            listeners = list(self._listeners) if row_id is not None else []
        for listener in listeners:
            listener()
        return row_id

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each queued message is committed (e.g. to wake a publisher)."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _safe_sum(self) -> int:
        try:
            return self._sum_bytes()
        except sqlite3.Error:
            return self._bytes

    def _put_locked(self, msg: _NewMessage) -> int | None:
        kind, prio, size = msg.kind, msg.prio, msg.size
        max_bytes = self.settings.max_bytes
        evict: list[tuple[int, str, int]] = []
        refused: str | None = None
        if size > max_bytes:
            refused = "too_large"
        else:
            plan = self._plan(self._bytes + size - max_bytes, prio, set())
            if plan is None:
                refused = "refused_full"
            else:
                evict = plan[0]
        reason_evict = "evicted_full"
        extra_target = 0
        disk_evict: list[tuple[int, str, int]] = []
        checkpointed = False
        while True:
            try:
                return self._commit_put(msg, evict, reason_evict, disk_evict, refused)
            except sqlite3.OperationalError as exc:
                self._rollback()
                if not is_disk_full(exc):
                    raise
                # First give the WAL's space back; escalate (evict, then refuse) only if the same
                # transaction still does not fit right after a checkpoint.
                if not checkpointed and self._guard.checkpoint(f"put {kind}"):
                    checkpointed = True
                    continue
                checkpointed = False
                if refused is not None:
                    # Even the refusal (counter + state) does not fit: give up.
                    raise
                # Disk full: free more room by the same policy, doubling the target each time.
                extra_target = max(2 * extra_target, size + 4096)
                taken = {v[0] for v in evict} | {v[0] for v in disk_evict}
                plan = self._plan(extra_target, prio, taken)
                if plan is None:
                    # Take whatever the policy still allows; if nothing, refuse the new message.
                    rest = list(self._victims(prio, taken))
                    if rest:
                        disk_evict.extend(rest)
                        extra_target = 0
                        log.warning(
                            "outbox disk full: evicting every evictable row",
                            extra={"path": str(self.path), "evicted": len(rest), "kind": kind},
                        )
                        continue
                    refused = "disk_full_refused"
                    evict, disk_evict = [], []
                    log.error(
                        "outbox disk full: refusing new message",
                        extra={"path": str(self.path), "kind": kind, "size": size},
                    )
                    continue
                disk_evict.extend(plan[0])
                log.warning(
                    "outbox disk full: evicting by policy",
                    extra={"path": str(self.path), "evicted": len(plan[0]), "kind": kind},
                )

    def _commit_put(
        self,
        msg: _NewMessage,
        evict: list[tuple[int, str, int]],
        reason_evict: str,
        disk_evict: list[tuple[int, str, int]],
        refused: str | None,
    ) -> int | None:
        kind, size = msg.kind, msg.size
        drops: Counter[tuple[str, str]] = Counter(self._unsaved_drops)
        freed = 0
        self._db.execute("BEGIN IMMEDIATE")
        for victims, reason in ((evict, reason_evict), (disk_evict, "disk_full_evicted")):
            for victim_id, victim_kind, victim_size in victims:
                cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (victim_id,))
                if cur.rowcount:
                    freed += victim_size
                    drops[(victim_kind, reason)] += 1
        row_id: int | None = None
        if refused is None:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, kind, priority, size, created_ms, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    msg.topic,
                    msg.body,
                    msg.qos,
                    int(msg.retain),
                    kind,
                    msg.prio,
                    size,
                    self._clock_ms(),
                    msg.seq,
                ),
            )
            row_id = cur.lastrowid
        else:
            drops[(kind, refused)] += 1
        self._count(drops)
        if msg.step is not None:
            msg.step(self._db)
        self._db.execute("COMMIT")
        self._unsaved_drops.clear()
        self._bytes += (size if row_id is not None else 0) - freed
        if freed or refused:
            log.warning(
                "outbox overflow",
                extra={
                    "path": str(self.path),
                    "policy": self.settings.overflow,
                    "evicted": len(evict) + len(disk_evict),
                    "refused": refused,
                    "kind": kind,
                    "bytes": self._bytes,
                },
            )
        return row_id

    def pending(self, *, after_id: int = 0, limit: int | None = None) -> list[OutboxRow]:
        """Rows not yet acknowledged, oldest first (ids greater than ``after_id``)."""
        with self._lock:
            self._check_open()
            try:
                cur = self._db.execute(
                    f"SELECT {COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, -1 if limit is None else limit),
                )
                return [row_of(v) for v in cur.fetchall()]
            except sqlite3.Error as exc:
                raise StorageError(f"outbox {self.path} cannot be read: {exc}") from exc

    def ack(self, row_id: int) -> bool:
        """Delete an acknowledged row; False if it was no longer there (evicted or acked)."""
        return self.ack_many([row_id]) == 1

    def ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete acknowledged rows in one transaction; returns how many were still there."""
        ids = list(row_ids)
        if not ids:
            return 0

        def delete() -> tuple[int, int]:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = 0
            freed = 0
            for row_id in ids:
                got = self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING size", (row_id,)).fetchone()
                if got is not None:
                    deleted += 1
                    freed += int(got[0])
            self._db.execute("COMMIT")
            return deleted, freed

        with self._lock:
            self._check_open()
            try:
                deleted, freed = self._write("ack", delete)
            except sqlite3.Error as exc:
                self._rollback()
                raise StorageError(
                    f"outbox {self.path}: cannot delete acknowledged rows: {exc}",
                    hint="free disk space; the rows stay queued and will be re-sent (duplicates are harmless)",
                ) from exc
            self._bytes -= freed
            if deleted and self._bytes == 0:
                self._guard.drained()  # a disk-full episode (if any) is over
            return deleted

    def mark_attempt(self, row_ids: Iterable[int]) -> None:
        """Count one more publish attempt for these rows (diagnostics; best effort)."""
        ids = list(row_ids)
        if not ids:
            return

        def update() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids]
            )
            self._db.execute("COMMIT")

        with self._lock:
            self._check_open()
            try:
                self._write("mark_attempt", update)
            except sqlite3.Error:
                self._rollback()
                log.warning(
                    "outbox: cannot record publish attempts", extra={"path": str(self.path)}, exc_info=True
                )

    def park(self, row_id: int, reason: str) -> bool:
        """Move a row the broker refused to the parked table; it is never re-sent automatically."""

        def move() -> OutboxRow | None:
            self._db.execute("BEGIN IMMEDIATE")
            got = self._db.execute(f"SELECT {COLUMNS} FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if got is None:
                self._db.execute("ROLLBACK")
                return None
            row = row_of(got)
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            if self.settings.max_parked > 0:
                self._db.execute(
                    f"INSERT OR REPLACE INTO parked ({COLUMNS}, reason, parked_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.id,
                        row.topic,
                        row.payload,
                        row.qos,
                        int(row.retain),
                        row.kind,
                        row.priority,
                        row.size,
                        row.created_ms,
                        row.attempts,
                        row.seq,
                        reason,
                        self._clock_ms(),
                    ),
                )
            self._db.execute(
                "DELETE FROM parked WHERE id NOT IN (SELECT id FROM parked ORDER BY id DESC LIMIT ?)",
                (self.settings.max_parked,),
            )
            self._count(Counter({(row.kind, f"rejected:{reason}"): 1}))
            self._db.execute("COMMIT")
            return row

        with self._lock:
            self._check_open()
            try:
                moved: OutboxRow | None = self._write("park", move)
            except sqlite3.Error as exc:
                self._rollback()
                raise StorageError(f"outbox {self.path}: cannot park row {row_id}: {exc}") from exc
            if moved is None:
                return False
            self._bytes -= moved.size
            return True

    def parked(self, limit: int = 100) -> list[ParkedRow]:
        """The newest parked rows (refused by the broker), newest first."""
        with self._lock:
            self._check_open()
            cur = self._db.execute(
                f"SELECT {COLUMNS}, reason, parked_ms FROM parked ORDER BY id DESC LIMIT ?", (limit,)
            )
            return [ParkedRow(row_of(v[:11]), str(v[11]), int(v[12])) for v in cur.fetchall()]

    def requeue_parked(self) -> int:
        """Put every parked row back at the end of the outbox (after fixing e.g. the ACL)."""
        with self._lock:
            self._check_open()
            rows = [p.row for p in reversed(self.parked(limit=max(self.settings.max_parked, 1)))]
            for row in rows:
                new_id = self.put(
                    row.topic,
                    row.payload,
                    qos=row.qos,
                    retain=row.retain,
                    kind=row.kind,
                    priority=row.priority,
                    seq=row.seq,
                )
                if new_id is not None:
                    self._db.execute("DELETE FROM parked WHERE id = ?", (row.id,))
            return len(rows)

    def oldest_seq(self) -> int | None:
        """The lowest seq still queued (chained envelopes only); None if none is waiting."""
        with self._lock:
            self._check_open()
            try:
                got = self._db.execute("SELECT MIN(seq) FROM outbox WHERE seq IS NOT NULL").fetchone()
            except sqlite3.Error as exc:
                raise translate(self.path, exc, "reading the outbox") from exc
            return None if got[0] is None else int(got[0])

    def stats(self) -> OutboxStats:
        with self._lock:
            self._check_open()
            return stats_of(self._db, self.settings.max_bytes, self._clock_ms(), self._unsaved_drops)

    def __len__(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._unsaved_drops:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._count(self._unsaved_drops)
                    self._db.execute("COMMIT")
                    self._unsaved_drops.clear()
                except sqlite3.Error:
                    self._rollback()
            if self._owns_file:
                self._file.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
