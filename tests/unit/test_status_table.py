"""The plain ``edgeproof status`` table names the running release and whether it is on trial."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.device.status import write_status


def status(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_id": "dev1",
        "pid": os.getpid(),
        "running": False,
        "model": {"id": "tiny", "version": "1.0.0", "sha256": "ab" * 32, **model},
        "chain": {"seq": 3, "last_acked_seq": 3},
    }


@pytest.mark.parametrize(
    ("model", "line"),
    [
        ({"release": "tiny-1.0.0-abababababab", "trial": True}, "tiny-1.0.0-abababababab (on trial)"),
        ({"release": "tiny-1.0.0-abababababab", "trial": False}, "tiny-1.0.0-abababababab (committed)"),
        ({"release": None, "trial": False}, "none (the configured [inference] model)"),
    ],
)
def test_the_release_row_says_which_release_runs_and_if_it_is_on_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: dict[str, Any], line: str
) -> None:
    state = tmp_path / "state"
    write_status(state, status(model))
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nstate_dir = "{state}"\n', encoding="utf-8")
    assert main(["status", "--config", str(config)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "release" in r]
    assert len(rows) == 1 and line in rows[0], rows
