"""tests/arm64 runs inside the Debian arm64 root (`make test-arm64`), never on the x86 host.

On another machine these files are not collected (they compare aarch64 results with an x86
reference that only tests/arm64/run.sh makes).  Inside the root, run.sh sets
EDGEPROOF_X86_REFERENCE to the directory tests/arm64/reference.py wrote; without it every test
fails (a missing reference is a broken run, not a reason to skip).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest

if platform.machine() not in ("aarch64", "arm64"):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    value = os.environ.get("EDGEPROOF_X86_REFERENCE")
    if not value:
        pytest.fail("EDGEPROOF_X86_REFERENCE is not set: run these tests through `make test-arm64`")
    path = Path(value)
    if not (path / "reference.json").is_file():
        pytest.fail(f"{path}/reference.json is missing: tests/arm64/reference.py did not run")
    return path


@pytest.fixture(scope="session")
def reference(reference_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((reference_dir / "reference.json").read_text(encoding="utf-8"))
    return data
