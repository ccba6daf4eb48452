"""The local ledger's snapshot file: JSON, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import CorruptStateError, StorageError


def save(path: Path, doc: dict[str, Any]) -> None:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot write the localnet snapshot {path}: {exc.strerror or exc}") from None


def load(path: Path) -> Any | None:
    """The snapshot document, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read the localnet snapshot {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptStateError(
            f"{path}: the localnet snapshot is not JSON", hint="move the file away to start an empty ledger"
        ) from None
