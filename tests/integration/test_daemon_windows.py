"""Consecutive proof windows of the daemon touch but never overlap, however the clock moves.

The daemon runs in-process with the shipped model and no broker (the outbox keeps what it
signs), on a clock that moves 3 ms at every reading: closing a window and starting the next
with two readings would make the closed window end after the next one began, which the
coordinator refuses as ``window_overlap`` (seen in `make demo` under load).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from solders.keypair import Keypair

from agent.config import load_config
from agent.device.daemon import Daemon
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Proof
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
START_MS = 1_800_000_000_000


def test_closed_window_ends_where_the_next_one_starts(tmp_path: Path) -> None:
    key = tmp_path / "device-key.json"
    key.write_text(json.dumps(list(bytes(Keypair.from_seed(bytes([4] * 32))))), encoding="utf-8")
    os.chmod(key, 0o600)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f"""[device]
key = "{key}"
state_dir = "{tmp_path / "state"}"
profile = "generic-x86_64"
[inference]
model = "{MODEL}"
source = "synthetic:64x48:1"
threads = 1
[mqtt]
port = {free_port()}
""",
        encoding="utf-8",
    )
    ticks = itertools.count()
    daemon = Daemon(load_config(config_path, env={}), clock_ms=lambda: START_MS + 3 * next(ticks))
    try:
        for _ in range(3):
            daemon.window.add(np.zeros((4, 4, 3), np.uint8), [np.zeros(5, np.float32)], 1000, ["cat"])
            daemon.close_window()
        envelopes = [verify_envelope(row.payload) for row in daemon.outbox.pending()]
    finally:
        daemon.hasher.close()
        daemon.outbox.close()
        daemon.db.close()
    windows = [(e.body.window_start_ms, e.body.window_end_ms) for e in envelopes if isinstance(e.body, Proof)]
    assert len(windows) == 3
    assert all(start < end for start, end in windows)
    assert [windows[i + 1][0] for i in range(2)] == [windows[i][1] for i in range(2)]
