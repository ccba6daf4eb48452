"""The coordinator's storage: SQLite (embedded default, WAL) or PostgreSQL, one code path.

``Store.open(database_url=None, sqlite_path=...)`` opens SQLite in WAL mode;
``Store.open(database_url="postgresql://...")`` opens PostgreSQL through psycopg 3.
Both get the same schema from :mod:`agent.coordinator.migrations` and the same queries;
:mod:`agent.coordinator.dialect` translates placeholders and the few type words.

Writes happen in :meth:`Store.transaction` blocks (the service commits a whole batch of
messages at once).  A lost connection or a locked database raises
:class:`StorageUnavailableError`; the caller rolls back, calls :meth:`Store.reconnect` and
retries the batch (it has not acknowledged anything yet).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.coordinator import challenge_rows
from agent.coordinator.challenge_rows import ChallengeRow
from agent.coordinator.connect import postgres_connector, redact, sqlite_connector
from agent.coordinator.dialect import POSTGRESQL, SQLITE, Dialect
from agent.coordinator.migrations import LATEST, MIGRATIONS
from agent.errors import StorageError


class StorageUnavailableError(StorageError):
    """The database cannot take the batch right now (connection lost, locked, a conflict): retry it."""


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    owner: str
    profile: str
    tags: tuple[str, ...]
    binding_ts: int
    binding_sig: str
    enrolled_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "profile": self.profile,
            "tags": list(self.tags),
            "binding_ts": self.binding_ts,
            "binding_sig": self.binding_sig,
            "enrolled_ms": self.enrolled_ms,
        }


@dataclass(frozen=True)
class Head:
    """A device's chain head as stored: highest linked seq, its hash, open gaps."""

    seq: int
    hash: str
    missing: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MessageRow:
    """One received message as recorded (accepted or rejected)."""

    dev: str | None
    topic: str
    kind: str | None
    seq: int | None
    chain_seq: int | None
    hash: str
    ts: int | None
    ingest_ms: int
    accepted: bool
    reason: str | None
    detail: str | None
    raw: bytes
    win_start_ms: int | None = None
    win_end_ms: int | None = None
    inferences: int | None = None
    beacon_slot: int | None = None


_MESSAGE_COLUMNS = (
    "dev, topic, kind, seq, chain_seq, hash, ts, ingest_ms, accepted, reason, detail, raw, "
    "win_start_ms, win_end_ms, inferences, beacon_slot"
)


@dataclass
class _TxCache:
    """What one write transaction has read or written of the hot rows (dropped when it ends).

    ``heads`` only holds heads read with their row lock (or written) in this transaction, so
    a cached head is the one the transaction owns; ``dirty`` heads are written at commit, all
    in one ``executemany`` (one round trip on PostgreSQL, in the transaction).
    """

    devices: dict[str, DeviceRecord | None] = field(default_factory=dict)
    heads: dict[str, Head] = field(default_factory=dict)
    dirty: dict[str, tuple[Head, int]] = field(default_factory=dict)
    #: The newest beacons ``(slot, issued_ms)``, highest slot first (read once per transaction).
    newest_beacons: list[tuple[int, int]] | None = None


#: How many devices one prefetch query names (well under SQLite's 32,766 parameters).
PREFETCH_CHUNK = 500
#: Newest beacons read once per transaction for ``newest_beacon_slot``.
NEWEST_BEACONS = 8
#: Beacon nonces remembered per process (a stored beacon's nonce never changes).
BEACON_CACHE = 4096


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which the same batch is retried: lost connection, lock, deadlock, conflict.

    A unique-key conflict is among them: another process committed the same link first, and
    the retry classifies the message again against what it stored (a ``duplicate``).
    """
    errors: list[type[BaseException]] = [sqlite3.OperationalError, sqlite3.IntegrityError]
    try:
        import psycopg
    except ImportError:  # PostgreSQL support not installed: SQLite only
        return tuple(errors)
    errors += [psycopg.OperationalError, psycopg.InterfaceError, psycopg.IntegrityError]
    return tuple(errors)


_TRANSIENT = _transient_errors()


class Store:
    """One connection to the coordinator database (not shared between threads)."""

    def __init__(self, dialect: Dialect, connect: Any, where: str) -> None:
        self.dialect = dialect
        self.where = where
        self._connect = connect
        self._conn: Any = None
        self._in_tx = False
        self._tx: _TxCache | None = None
        self._beacon_nonces: dict[int, str] = {}
        self.reconnect()

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        database_url: str = "",
        sqlite_path: Path | str = "coordinator.sqlite3",
        synchronous: str = "FULL",
        migrate: bool = True,
    ) -> Store:
        if database_url:
            store = cls(POSTGRESQL, postgres_connector(database_url), redact(database_url))
        else:
            store = cls(SQLITE, sqlite_connector(Path(sqlite_path), synchronous), str(sqlite_path))
        if migrate:
            store.migrate()
        return store

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one."""
        self.close()
        try:
            self._conn = self._connect()
        except _TRANSIENT as exc:
            raise StorageUnavailableError(f"database {self.where} is unavailable: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self._in_tx = False
        self._tx = None

    # --- queries -------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._conn is None:
            raise StorageUnavailableError(f"database {self.where} is not connected")
        try:
            return self._conn.execute(self.dialect.sql(sql), tuple(params))
        except _TRANSIENT as exc:
            raise StorageUnavailableError(f"database {self.where} is unavailable: {exc}") from exc

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """One statement over many parameter rows (pipelined by psycopg: one round trip)."""
        if self._conn is None:
            raise StorageUnavailableError(f"database {self.where} is not connected")
        try:
            cursor = self._conn.cursor()
            try:
                cursor.executemany(self.dialect.sql(sql), [tuple(p) for p in params])
            finally:
                cursor.close()
        except _TRANSIENT as exc:
            raise StorageUnavailableError(f"database {self.where} is unavailable: {exc}") from exc

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.execute(sql, params)
        return [tuple(r) for r in self._fetch(cursor.fetchall)]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        cursor = self.execute(sql, params)
        row = self._fetch(cursor.fetchone)
        return None if row is None else tuple(row)

    def _fetch(self, fetch: Any) -> Any:
        """A fetch; in a PostgreSQL pipeline it waits for the queued statements, whose errors surface here."""
        try:
            return fetch()
        except _TRANSIENT as exc:
            raise StorageUnavailableError(f"database {self.where} is unavailable: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        if self._in_tx:
            raise StorageError("transactions do not nest")
        self.execute(self.dialect.begin)
        self._in_tx = True
        self._tx = _TxCache()
        # PostgreSQL: statements are pipelined (sent without waiting for each reply); a reply is
        # awaited only where a result is read, so a batch's INSERTs cost no round trip each.
        pipeline = self._conn.pipeline() if self.dialect.name == "postgresql" else None
        try:
            if pipeline is not None:
                pipeline.__enter__()
            yield self
            self._flush_heads()
            if pipeline is not None:
                active, pipeline = pipeline, None
                self._fetch(lambda: active.__exit__(None, None, None))
        except BaseException as exc:
            self._end_tx(rolled_back=True)
            with contextlib.suppress(Exception):
                if pipeline is not None:
                    pipeline.__exit__(type(exc), exc, exc.__traceback__)
            with contextlib.suppress(Exception):
                if self._conn is not None:
                    self._conn.execute("ROLLBACK")
            if isinstance(exc, _TRANSIENT):  # e.g. a pipelined statement's error, raised outside Store
                raise StorageUnavailableError(f"database {self.where} is unavailable: {exc}") from exc
            raise
        self._end_tx(rolled_back=False)
        try:
            self.execute("COMMIT")
        except StorageUnavailableError:
            self._beacon_nonces.clear()
            with contextlib.suppress(Exception):
                self._conn.execute("ROLLBACK")
            raise

    def _end_tx(self, *, rolled_back: bool) -> None:
        self._in_tx = False
        self._tx = None
        if rolled_back:
            self._beacon_nonces.clear()  # it may hold a beacon this transaction inserted

    # --- schema --------------------------------------------------------------------------------

    def schema_version(self) -> int:
        if self.dialect.name == "sqlite":
            exists = self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        else:
            # to_regclass follows the search_path: a schema_version table elsewhere does not count.
            found = self.one("SELECT to_regclass('schema_version')")
            exists = found if found is not None and found[0] is not None else None
        if exists is None:
            return 0
        row = self.one("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row is not None and row[0] is not None else 0

    def migrate(self) -> int:
        """Apply every migration not recorded in ``schema_version``; returns the version reached."""
        with self.transaction():
            if self.dialect.name == "postgresql":
                # Several coordinator processes may start at once: one migrates, the others wait.
                self.execute("SELECT pg_advisory_xact_lock(7305)")
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
            )
            current = self.schema_version()
            if current > LATEST:
                raise StorageError(
                    f"database {self.where} has schema version {current}, newer than this coordinator "
                    f"understands ({LATEST})",
                    hint="run a coordinator at least as new as the one that last wrote this database",
                )
            # Every migration not recorded yet, in order: also one numbered below the newest that
            # another branch's release applied first (migration 6 shipped before 5).
            applied = {int(v) for (v,) in self.rows("SELECT version FROM schema_version")}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    self.execute(self.dialect.ddl(statement))
                self.execute(
                    "INSERT INTO schema_version (version, name, applied_ms) VALUES (?, ?, ?)",
                    (migration.version, migration.name, now_ms()),
                )
        return LATEST

    # --- registry ------------------------------------------------------------------------------

    def enroll(self, device: DeviceRecord) -> None:
        """Add or update a device (a new binding replaces the old one; the chain head is kept)."""
        if self._tx is not None:
            self._tx.devices.pop(device.id, None)
        self.execute(
            "INSERT INTO devices (id, owner, profile, tags, binding_ts, binding_sig, enrolled_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, "
            "profile = excluded.profile, tags = excluded.tags, binding_ts = excluded.binding_ts, "
            "binding_sig = excluded.binding_sig",
            (
                device.id,
                device.owner,
                device.profile,
                json.dumps(list(device.tags)),
                device.binding_ts,
                device.binding_sig,
                device.enrolled_ms,
            ),
        )
        self.execute(
            "INSERT INTO chain_heads (dev, seq, hash, missing, updated_ms) VALUES (?, 0, ?, '[]', ?) "
            "ON CONFLICT (dev) DO NOTHING",
            (device.id, "0" * 64, device.enrolled_ms),
        )

    def devices(self) -> list[DeviceRecord]:
        return [
            _device(r) for r in self.rows(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY enrolled_ms, id")
        ]

    def device(self, dev: str) -> DeviceRecord | None:
        tx = self._tx
        if tx is not None and dev in tx.devices:
            return tx.devices[dev]
        row = self.one(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?", (dev,))
        record = None if row is None else _device(row)
        if tx is not None:
            tx.devices[dev] = record
        return record

    def prefetch(self, devs: Sequence[str]) -> None:
        """Inside a transaction: read the registry rows and chain heads of ``devs`` in a few queries.

        The heads are locked (PostgreSQL), in device order, so two coordinator processes taking
        overlapping batches lock them in the same order.  Later :meth:`device` and :meth:`head`
        calls of this transaction are answered from what was read (a device or head not found
        is looked up again on its own).
        """
        tx = self._tx
        if tx is None:
            return
        todo = sorted(set(devs) - tx.devices.keys())
        for lo in range(0, len(todo), PREFETCH_CHUNK):
            chunk = todo[lo : lo + PREFETCH_CHUNK]
            marks = ", ".join("?" * len(chunk))
            found = {
                str(r[0]): _device(r)
                for r in self.rows(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id IN ({marks})", chunk)
            }
            for dev in chunk:
                tx.devices[dev] = found.get(dev)
            heads = self.rows(
                f"SELECT dev, seq, hash, missing FROM chain_heads WHERE dev IN ({marks}) ORDER BY dev"
                "{for_update}",
                chunk,
            )
            for dev, seq, digest, missing in heads:
                if str(dev) not in tx.heads:
                    tx.heads[str(dev)] = _head(seq, digest, missing)

    # --- chain heads ---------------------------------------------------------------------------

    def head(self, dev: str, *, lock: bool = False) -> Head | None:
        tx = self._tx
        if tx is not None and dev in tx.heads:
            return tx.heads[dev]  # read locked (or written) by this transaction
        row = self.one(
            "SELECT seq, hash, missing FROM chain_heads WHERE dev = ?" + ("{for_update}" if lock else ""),
            (dev,),
        )
        if row is None:
            return None
        head = _head(*row)
        if tx is not None and lock:
            tx.heads[dev] = head
        return head

    def set_head(self, dev: str, head: Head, at_ms: int) -> None:
        """Move ``dev``'s head; inside a transaction the row is written when it commits."""
        if self._tx is not None:
            self._tx.heads[dev] = head
            self._tx.dirty[dev] = (head, at_ms)
            return
        self.execute(_SET_HEAD, _head_params(dev, head, at_ms))

    def _flush_heads(self) -> None:
        tx = self._tx
        if tx is not None and tx.dirty:
            self.execute_many(_SET_HEAD, [_head_params(dev, h, at) for dev, (h, at) in tx.dirty.items()])
            tx.dirty.clear()

    # --- messages ------------------------------------------------------------------------------

    def linked(self, dev: str, seq: int) -> tuple[str, str] | None:
        """``(hash, prev)`` of the envelope stored at ``seq`` of ``dev``'s chain, if any."""
        row = self.one("SELECT hash, raw FROM messages WHERE dev = ? AND chain_seq = ?", (dev, seq))
        if row is None:
            return None
        prev = json.loads(bytes(row[1]))["prev"]
        return str(row[0]), str(prev)

    def accepted_hash(self, dev: str, digest: str) -> bool:
        """An accepted envelope with this hash from ``dev`` is already stored."""
        return (
            self.one("SELECT 1 FROM messages WHERE dev = ? AND hash = ? AND accepted = 1", (dev, digest))
            is not None
        )

    def overlapping_window(self, dev: str, start_ms: int, end_ms: int) -> tuple[int, int] | None:
        """An accepted proof window of ``dev`` that overlaps ``[start_ms, end_ms)``."""
        row = self.one(
            "SELECT win_start_ms, win_end_ms FROM messages WHERE dev = ? AND kind = 'proof' "
            "AND accepted = 1 AND win_start_ms < ? AND win_end_ms > ? ORDER BY win_start_ms LIMIT 1",
            (dev, end_ms, start_ms),
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def insert_message(self, row: MessageRow) -> int:
        return self.insert_message_later(row)()

    def insert_message_later(self, row: MessageRow) -> Callable[[], int]:
        """Insert ``row``; the returned call gives its id (on PostgreSQL it waits for the reply)."""
        cursor = self.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                row.dev,
                row.topic,
                row.kind,
                row.seq,
                row.chain_seq,
                row.hash,
                row.ts,
                row.ingest_ms,
                int(row.accepted),
                row.reason,
                row.detail,
                row.raw,
                row.win_start_ms,
                row.win_end_ms,
                row.inferences,
                row.beacon_slot,
            ),
        )
        if self.dialect.name != "postgresql":
            message_id = int(cursor.fetchone()[0])
            return lambda: message_id
        fetched: list[int] = []

        def message_id_when_replied() -> int:
            if not fetched:
                fetched.append(int(self._fetch(cursor.fetchone)[0]))
            return fetched[0]

        return message_id_when_replied

    def messages(self, dev: str | None = None) -> list[MessageRow]:
        where, params = ("WHERE dev = ?", (dev,)) if dev is not None else ("", ())
        return [
            _message(r)
            for r in self.rows(f"SELECT {_MESSAGE_COLUMNS} FROM messages {where} ORDER BY id", params)
        ]

    # --- beacons -------------------------------------------------------------------------------

    def add_beacon(self, slot: int, nonce: str, time_ms: int, slot_ms: int, issued_ms: int) -> None:
        if self._tx is not None:
            self._tx.newest_beacons = None
        self.execute(
            "INSERT INTO beacons (slot, nonce, time_ms, slot_ms, issued_ms) VALUES (?, ?, ?, ?, ?)",
            (slot, nonce, time_ms, slot_ms, issued_ms),
        )

    def beacon_nonce(self, slot: int) -> str | None:
        """The nonce of the beacon stored for ``slot`` (remembered: it never changes once stored)."""
        known = self._beacon_nonces.get(slot)
        if known is not None:
            return known
        row = self.one("SELECT nonce FROM beacons WHERE slot = ?", (slot,))
        if row is None:
            return None
        if len(self._beacon_nonces) >= BEACON_CACHE:
            self._beacon_nonces.clear()
        self._beacon_nonces[slot] = str(row[0])
        return str(row[0])

    def newest_beacon_slot(self, at_ms: int) -> int | None:
        """The highest slot issued at or before ``at_ms``.

        Inside a transaction the newest few beacons are read once: when one of them was issued
        by ``at_ms`` the highest such slot is the answer (every other beacon has a lower slot);
        otherwise the full query runs.
        """
        tx = self._tx
        if tx is not None:
            if tx.newest_beacons is None:
                tx.newest_beacons = [
                    (int(slot), int(issued))
                    for slot, issued in self.rows(
                        "SELECT slot, issued_ms FROM beacons ORDER BY slot DESC LIMIT ?", (NEWEST_BEACONS,)
                    )
                ]
            issued = [slot for slot, at in tx.newest_beacons if at <= at_ms]
            if issued:
                return max(issued)
        row = self.one("SELECT MAX(slot) FROM beacons WHERE issued_ms <= ?", (at_ms,))
        return None if row is None or row[0] is None else int(row[0])

    def challenge_by_nonce(self, dev: str, nonce: str) -> ChallengeRow | None:
        """The challenge issued to ``dev`` with ``nonce`` (row locked until commit), if any."""
        return challenge_rows.challenge_by_nonce(self, dev, nonce)

    # --- the coordinator's own chain and its verdicts -------------------------------------------

    def coordinator_head(self, signer: str) -> tuple[int, str]:
        """The coordinator key's chain head, locked until commit (several processes share it)."""
        self.execute(
            "INSERT INTO coordinator_chain (signer, seq, hash) VALUES (?, 0, ?) ON CONFLICT (signer) DO NOTHING",
            (signer, "0" * 64),
        )
        row = self.one("SELECT seq, hash FROM coordinator_chain WHERE signer = ?{for_update}", (signer,))
        assert row is not None
        return int(row[0]), str(row[1])

    def set_coordinator_head(self, signer: str, seq: int, digest: str) -> None:
        self.execute("UPDATE coordinator_chain SET seq = ?, hash = ? WHERE signer = ?", (seq, digest, signer))

    def insert_verdict(
        self, signer: str, seq: int, dev: str, message_id: int, topic: str, raw: bytes, at_ms: int
    ) -> None:
        self.execute(
            "INSERT INTO verdicts (signer, seq, dev, message_id, topic, raw, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (signer, seq, dev, message_id, topic, raw, at_ms),
        )

    def insert_verdicts(self, rows: Sequence[tuple[str, int, str, int, str, bytes, int]]) -> None:
        """:meth:`insert_verdict` of many ``(signer, seq, dev, message_id, topic, raw, at_ms)`` at once."""
        if rows:
            self.execute_many(
                "INSERT INTO verdicts (signer, seq, dev, message_id, topic, raw, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def unpublished_verdicts(self, signer: str) -> list[tuple[int, str, bytes]]:
        """``(seq, topic, raw)`` of verdicts not yet acknowledged by the broker, oldest first."""
        return [
            (int(seq), str(topic), bytes(raw))
            for seq, topic, raw in self.rows(
                "SELECT seq, topic, raw FROM verdicts WHERE signer = ? AND published_ms IS NULL ORDER BY seq",
                (signer,),
            )
        ]

    def mark_published(self, signer: str, seqs: Sequence[int], at_ms: int) -> None:
        for seq in seqs:
            self.execute(
                "UPDATE verdicts SET published_ms = ? WHERE signer = ? AND seq = ?", (at_ms, signer, seq)
            )

    # --- liveness ------------------------------------------------------------------------------

    def start_run(self, run_id: str, signer: str, host: str, pid: int, at_ms: int) -> None:
        self.execute(
            "INSERT INTO liveness (run_id, signer, host, pid, started_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, signer, host, pid, at_ms, at_ms),
        )

    def touch_run(self, run_id: str, at_ms: int) -> None:
        self.execute("UPDATE liveness SET last_ms = ? WHERE run_id = ?", (at_ms, run_id))

    def stop_run(self, run_id: str, at_ms: int) -> None:
        self.execute(
            "UPDATE liveness SET last_ms = ?, stopped_ms = ? WHERE run_id = ?", (at_ms, at_ms, run_id)
        )

    def runs(self) -> list[tuple[str, int, int, int | None]]:
        """``(run_id, started_ms, last_ms, stopped_ms)`` of every run, oldest first."""
        return [
            (str(r[0]), int(r[1]), int(r[2]), None if r[3] is None else int(r[3]))
            for r in self.rows(
                "SELECT run_id, started_ms, last_ms, stopped_ms FROM liveness ORDER BY started_ms"
            )
        ]


_DEVICE_COLUMNS = "id, owner, profile, tags, binding_ts, binding_sig, enrolled_ms"
_SET_HEAD = "UPDATE chain_heads SET seq = ?, hash = ?, missing = ?, updated_ms = ? WHERE dev = ?"


def _head(seq: Any, digest: Any, missing: Any) -> Head:
    return Head(int(seq), str(digest), tuple((int(lo), int(hi)) for lo, hi in json.loads(missing)))


def _head_params(dev: str, head: Head, at_ms: int) -> tuple[Any, ...]:
    return (head.seq, head.hash, json.dumps([list(r) for r in head.missing]), at_ms, dev)


def _device(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        tuple(json.loads(row[3])),
        int(row[4]),
        str(row[5]),
        int(row[6]),
    )


def _message(row: tuple[Any, ...]) -> MessageRow:
    values = list(row)
    values[8] = bool(values[8])
    values[11] = bytes(values[11])
    return MessageRow(*values)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
