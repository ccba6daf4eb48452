"""The second copy of what must never roll back: chain head, manifest versions, signer seqs.

A small JSON file beside (not inside) the state database, replaced atomically: written to a
temporary file, fsynced, renamed over the old copy, and the directory fsynced.  The state store
writes it *before* it commits the same values to SQLite, so after a crash the copy is equal to
the database or one step ahead, never behind.  Ahead means the next envelope skips a seq (an
honest gap: the envelope that seq belonged to was never queued); behind would mean reusing a
seq, which the coordinator sees as a fork.  Losing or corrupting the database therefore cannot
roll the chain back, nor the anti-rollback manifest versions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StorageError
from agent.protocol.envelope import GENESIS_PREV

log = logging.getLogger(__name__)

COPY_FORMAT = 1
#: The copy's file name in the device's state directory (not beside the queue file, which an
#: operator may move away as a whole).
COPY_FILE = "state-copy.json"


@dataclass
class CopyData:
    seq: int = 0
    prev: str = GENESIS_PREV
    manifests: dict[str, int] = field(default_factory=dict)
    signers: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": COPY_FORMAT,
            "seq": self.seq,
            "prev": self.prev,
            "manifests": dict(sorted(self.manifests.items())),
            "signers": dict(sorted(self.signers.items())),
        }


def copy_path(state_dir: Path) -> Path:
    return state_dir / COPY_FILE


def _ints(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    out: dict[str, int] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, int) or isinstance(item, bool) or item < 0:
            raise ValueError(f"{what}[{key!r}] is not a non-negative integer")
        out[key] = item
    return out


def parse_copy(text: str) -> CopyData:
    """Parse a copy; ValueError names what is wrong."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != COPY_FORMAT:
        raise ValueError(f"not a format {COPY_FORMAT} state copy")
    seq, prev = doc.get("seq"), doc.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq is not a non-negative integer")
    if not isinstance(prev, str) or len(prev) != 64 or any(c not in "0123456789abcdef" for c in prev):
        raise ValueError("prev is not a 64-digit lowercase hex hash")
    return CopyData(
        seq, prev, _ints(doc.get("manifests", {}), "manifests"), _ints(doc.get("signers", {}), "signers")
    )


def read_copy(path: Path) -> tuple[CopyData | None, str | None]:
    """The copy at ``path`` and, if it could not be used, why (missing is not a problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc}"
    try:
        return parse_copy(text), None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return None, f"{path} is not a usable state copy: {exc}"


def write_copy(path: Path, data: CopyData) -> None:
    """Replace the copy atomically and durably (temp file + fsync + rename + fsync of the folder)."""
    text = json.dumps(data.to_json(), sort_keys=True, separators=(",", ":"))
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(
            f"cannot write the state copy {path}: {exc}", hint="free disk space on the state directory"
        ) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
