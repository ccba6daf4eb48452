"""The small shim between SQLite and PostgreSQL: placeholders, a few type words, row locks.

Everything else -- the schema, every query, the upsert (``INSERT ... ON CONFLICT (...) DO
UPDATE SET x = excluded.x`` is the same in both) -- is one text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    #: ``{id}``: an auto-increment integer primary key.
    id_type: str
    #: ``{blob}``: raw bytes.
    blob_type: str
    #: Appended to a SELECT that must lock its rows until commit.
    for_update: str
    #: Starts a write transaction.
    begin: str

    def sql(self, text: str) -> str:
        """A query written with ``?`` placeholders, in this engine's words."""
        if self.name == "postgresql":
            text = text.replace("?", "%s")
        return text.replace("{for_update}", self.for_update)

    def ddl(self, text: str) -> str:
        return text.replace("{id}", self.id_type).replace("{blob}", self.blob_type)


SQLITE = Dialect(
    name="sqlite",
    id_type="INTEGER PRIMARY KEY",
    blob_type="BLOB",
    for_update="",
    # IMMEDIATE takes the write lock at the start: a batch never fails half-way on SQLITE_BUSY.
    begin="BEGIN IMMEDIATE",
)
POSTGRESQL = Dialect(
    name="postgresql",
    id_type="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    blob_type="BYTEA",
    for_update=" FOR UPDATE",
    begin="BEGIN",
)
