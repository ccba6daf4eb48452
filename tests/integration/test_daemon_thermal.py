"""The daemon applies the firmware profile's thermal policy and says so in what it signs.

The daemon runs in-process against a fake /sys tree (``root``) whose thermal zone reads a
fixed temperature, with the real shipped model and no broker (everything stays in the outbox,
which is then read back and verified).  generic-x86_64's policy: throttle at 90 °C to 50 % of
``max_fps``, pause at 100 °C.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.config import load_config
from agent.device.daemon import Daemon
from agent.device.status import read_status
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Heartbeat, Proof
from agent.transport.outbox import Outbox
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
MAX_FPS = 20.0
RUN_S = 7.0


def fake_root(path: Path, temp_mc: int) -> Path:
    zone = path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(f"{temp_mc}\n", encoding="utf-8")
    return path


def run_daemon_at(tmp_path: Path, temp_mc: int) -> tuple[dict[str, Any], list[Proof], list[Heartbeat]]:
    key = tmp_path / "device-key.json"
    key.write_text(json.dumps(list(bytes(Keypair.from_seed(bytes([3] * 32))))), encoding="utf-8")
    os.chmod(key, 0o600)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        "\n".join(
            [
                "[device]",
                f'key = "{key}"',
                f'state_dir = "{tmp_path / "state"}"',
                'profile = "generic-x86_64"',
                "[inference]",
                f'model = "{MODEL}"',
                'source = "synthetic:320x240:5"',
                f"max_fps = {MAX_FPS}",
                "threads = 1",
                "[proofs]",
                "window_s = 5",
                "heartbeat_s = 1",
                "[mqtt]",
                'host = "127.0.0.1"',
                f"port = {free_port()}",  # nobody listens: the outbox keeps everything
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    config = load_config(config_path, env={})
    daemon = Daemon(config, root=fake_root(tmp_path / "root", temp_mc))
    assert daemon.run(duration_s=RUN_S) == 0
    snapshot = read_status(Path(config.device.state_dir))  # written at shutdown
    assert snapshot is not None
    outbox = Outbox(config.outbox)
    try:
        envelopes = [verify_envelope(row.payload) for row in outbox.pending()]
    finally:
        outbox.close()
    proofs = [e.body for e in envelopes if isinstance(e.body, Proof)]
    heartbeats = [e.body for e in envelopes if isinstance(e.body, Heartbeat)]
    return snapshot, proofs, heartbeats


def test_hot_device_halves_its_rate_and_its_proofs_say_why(tmp_path: Path) -> None:
    snapshot, proofs, heartbeats = run_daemon_at(tmp_path, 95_000)
    assert snapshot["thermal"] == {"level": "throttled", "rate_bp": 5000}
    assert proofs and heartbeats
    for body in [*proofs, *heartbeats]:
        assert body.health.temp_mc == 95_000
        assert body.health.rate_limited is True and body.health.throttle_reason == "thermal"
    # The rate cap is 50 % of max_fps: whatever the machine's speed, no more than that ran.
    inferences = sum(p.inferences for p in proofs)
    assert 0 < inferences <= MAX_FPS * 0.5 * RUN_S + 2


def test_critical_temperature_pauses_inference_but_not_heartbeats(tmp_path: Path) -> None:
    snapshot, proofs, heartbeats = run_daemon_at(tmp_path, 101_000)
    assert snapshot["thermal"] == {"level": "paused", "rate_bp": 0}
    assert proofs == []  # no inference, so no window to prove
    assert snapshot["counters"].get("inferences", 0) == 0
    assert len(heartbeats) >= 3
    assert all(h.health.rate_limited and h.health.throttle_reason == "thermal" for h in heartbeats)


def test_cool_device_runs_unthrottled(tmp_path: Path) -> None:
    snapshot, proofs, heartbeats = run_daemon_at(tmp_path, 45_000)
    assert snapshot["thermal"] == {"level": "normal", "rate_bp": 10_000}
    assert proofs and all(p.health.rate_limited is False and p.health.throttle_reason is None for p in proofs)
    assert all(h.health.rate_limited is False for h in heartbeats)
