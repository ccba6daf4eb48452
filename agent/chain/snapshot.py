"""JSON state files of the chain code (the ledger's snapshot, the bootstrap state), written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.atomic_file import write_atomic
from agent.errors import CorruptStateError, StorageError


def save(path: Path, doc: dict[str, Any], *, what: str = "localnet snapshot") -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: the old or the new file, never half."""
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise StorageError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None


def load(path: Path, *, what: str = "localnet snapshot") -> Any | None:
    """The document, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptStateError(
            f"{path}: the {what} is not JSON", hint="move the file away to start afresh"
        ) from None
