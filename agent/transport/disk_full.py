"""Keeping the SQLite outbox writable on a nearly full disk.

On a real filesystem the first thing to fill up is usually the write-ahead log, not the rows:
the WAL only shrinks when a checkpoint copies it into the database file, and a checkpoint
itself needs room for the pages the database file has not materialised yet.  With SQLite's
default (checkpoint after 1000 pages, 4 MB) a nearly full disk used to wedge the outbox for
good: every write and every ack failed with ``SQLITE_FULL``, and so did the checkpoint that
would have freed the space.  So:

* the WAL is checkpointed every :data:`WAL_AUTOCHECKPOINT_PAGES` pages and kept at most
  :data:`WAL_SIZE_LIMIT` bytes, so little is ever pending (the outbox sets both pragmas);
* a ballast file ``<path>-reserve`` of ``reserve_bytes`` is kept beside the database;
* every write answers ``SQLITE_FULL`` first with :meth:`DiskFullGuard.checkpoint`
  (``PRAGMA wal_checkpoint(TRUNCATE)``, handing the log's space back) and a retry; if the
  checkpoint itself has no room, the reserve is deleted (logged) and the checkpoint retried;
* after a real ENOSPC the database file is capped just above its size, so growth becomes an
  ordinary ``SQLITE_FULL`` the overflow policy handles by evicting rows;
* once the outbox has drained, :meth:`DiskFullGuard.drained` lifts the cap and re-creates the
  reserve.

The guard shares the outbox's connection and runs under the outbox's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("agent.transport.outbox")

#: Checkpoint the WAL into the database after this many pages (SQLite's default is 1000).
WAL_AUTOCHECKPOINT_PAGES = 16
#: After a checkpoint the WAL file is truncated to at most this many bytes.
WAL_SIZE_LIMIT = 1024 * 1024
#: Default size of the ballast file released when the disk is full .
RESERVE_BYTES = 128 * 1024
#: Seconds between attempts to re-create the reserve after it was released.
_RESERVE_RETRY_S = 60.0
#: Pages the database may still grow by once a full disk capped its size.
_PIN_SLACK_PAGES = 4


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's ``SQLITE_FULL`` ("database or disk is full")."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code == getattr(sqlite3, "SQLITE_FULL", 13):
        return True
    return "database or disk is full" in str(exc)


class DiskFullGuard:
    """The reserve file, WAL checkpoints and the size cap of one outbox database."""

    def __init__(self, db: sqlite3.Connection, path: Path, reserve_bytes: int = RESERVE_BYTES) -> None:
        self._db = db
        self.path = path
        self._page_cap = int(db.execute("PRAGMA max_page_count").fetchone()[0])
        self._pinned = False
        self._reserve_retry_at = 0.0
        self._reserve_bytes = max(0, reserve_bytes)
        self._reserve_path = path.with_name(path.name + "-reserve")
        self.ensure_reserve()

    def ensure_reserve(self) -> None:
        """Create the ballast file if it is missing (best effort: never fails the caller)."""
        if self._reserve_bytes <= 0:
            return
        try:
            if self._reserve_path.stat().st_size >= self._reserve_bytes:
                return
        except OSError:
            pass
        try:
            with open(self._reserve_path, "wb") as handle:
                handle.write(b"\0" * self._reserve_bytes)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()
            log.warning(
                "outbox: no room for the disk-full reserve",
                extra={"path": str(self._reserve_path), "bytes": self._reserve_bytes, "error": str(exc)},
            )
            return
        log.debug("outbox reserve in place", extra={"path": str(self._reserve_path)})

    def _release_reserve(self) -> bool:
        try:
            self._reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error(
                "outbox disk full: cannot delete the reserve",
                extra={"path": str(self._reserve_path), "error": str(exc)},
            )
            return False
        log.warning(
            "outbox disk full: released the reserve so the WAL can be checkpointed",
            extra={"path": str(self._reserve_path), "bytes": self._reserve_bytes},
        )
        return True

    def checkpoint(self, why: str) -> bool:
        """Copy the WAL into the database and truncate it, giving its disk space back.

        Called when a write fails with ``SQLITE_FULL``; True if the checkpoint completed (so a
        retry may succeed), False if it could not run (then nothing more can be freed this way).
        If the checkpoint itself has no room, the reserve is released and it is tried again.
        """
        while True:
            try:
                busy, frames, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                break
            except sqlite3.Error as exc:
                if is_disk_full(exc) and self._release_reserve():
                    continue
                log.error(
                    "outbox disk full: WAL checkpoint failed",
                    extra={"path": str(self.path), "during": why, "error": str(exc)},
                )
                return False
        log.log(
            logging.WARNING if frames else logging.DEBUG,
            "outbox disk full: WAL checkpointed and truncated to free space",
            extra={"path": str(self.path), "during": why, "wal_frames": frames, "busy": bool(busy)},
        )
        if not busy:
            self._pin_size(why)
        return not busy

    def _pin_size(self, why: str) -> None:
        """After a real ENOSPC, stop the database file from growing any further.

        Growth is what made the disk full, and every page the file grows by must later be
        written by a checkpoint, which then has no room either.  Capping ``max_page_count`` just
        above the current size turns growth into an ordinary ``SQLITE_FULL`` *before* anything is
        written, which the overflow policy handles by evicting rows (their pages are reused); the
        space the checkpoint freed stays for the WAL.  Lifted once the outbox has drained.
        """
        if self._pinned:
            return
        try:
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            cap = int(self._db.execute("PRAGMA max_page_count").fetchone()[0])
            if pages >= cap:
                return  # the configured cap, not the disk, is what is full
            pinned = int(self._db.execute(f"PRAGMA max_page_count={pages + _PIN_SLACK_PAGES}").fetchone()[0])
            page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as exc:
            log.error("outbox disk full: cannot cap the database size", extra={"error": str(exc)})
            return
        self._pinned = True
        log.warning(
            "outbox disk full: database size capped; the overflow policy now makes room within it",
            extra={"path": str(self.path), "during": why, "max_bytes_on_disk": pinned * page_size},
        )

    def drained(self) -> None:
        """The outbox drained: lift the size cap and put the reserve back (a full-disk episode is over)."""
        if self._pinned:
            try:
                self._db.execute(f"PRAGMA max_page_count={self._page_cap}")
            except sqlite3.Error as exc:
                log.warning("outbox: cannot lift the database size cap", extra={"error": str(exc)})
                return
            self._pinned = False
            log.info(
                "outbox drained after a full disk: database size cap lifted", extra={"path": str(self.path)}
            )
        if self._reserve_bytes and not self._reserve_path.exists():
            now = time.monotonic()
            if now >= self._reserve_retry_at:  # at most once a minute while the disk stays full
                self._reserve_retry_at = now + _RESERVE_RETRY_S
                self.ensure_reserve()
