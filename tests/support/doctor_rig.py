"""Shared parts of the doctor tests: a config writer, a fake /sys root, and the report readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.identity import init_keypair

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
COORDINATOR = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
# A wallet on the ed25519 curve (Keypair.from_seed(bytes([23]) * 32)): someone holds its key.
WALLET = "4MfyR4G3NWfVRDWo6iNAHDBZqWMgwZX6FNtMqEW3a9JT"


def fake_root(tmp_path: Path, temp_mc: int = 45_000) -> Path:
    root = tmp_path / "root"
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(f"{temp_mc}\n")
    return root


def write_config(
    tmp_path: Path, port: int, coordinator: str = COORDINATOR, extra: str = "", **inference: Any
) -> Path:
    key = tmp_path / "device-key.json"
    if not key.exists():
        init_keypair(key, seed=bytes([5]) * 32)
    source = inference.get("source", "synthetic:320x240")
    model = inference.get("model", str(MODEL))
    text = f"""
[device]
key = "{key}"
state_dir = "{tmp_path / "state"}"
profile = "generic-x86_64"
owner_wallet = "{WALLET}"
[inference]
model = "{model}"
source = "{source}"
threads = 1
[mqtt]
host = "127.0.0.1"
port = {port}
[coordinator]
pubkey = "{coordinator}"
{extra}"""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def doctor(capsys: pytest.CaptureFixture[str], config: Path, root: Path) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--config", str(config), "--root", str(root), "--json", "--broker-timeout", "5"])
    report = json.loads(capsys.readouterr().out)
    return code, report


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def details(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"]}
