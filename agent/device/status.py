"""The daemon's local status file (``state_dir/status.json``), written atomically.

``edgeproof status`` reads it (plus the outbox itself) without talking to the
daemon, so it works while the daemon runs, after it stopped, and offline.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import StorageError

STATUS_FILE = "status.json"


def write_status(state_dir: Path, data: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / STATUS_FILE
    try:
        fd, tmp = tempfile.mkstemp(prefix=".status-", dir=state_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True, default=str)
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}") from exc


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise StorageError(f"cannot read {state_dir / STATUS_FILE}: {exc}") from exc
    return data


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
