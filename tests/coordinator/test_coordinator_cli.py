"""`edgeproof keys bind`, `edgeproof coordinator enroll|devices` as a user runs them (real processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.keypair import Keypair

from tests.support.coordinator import run_cli, write_config

pytestmark = pytest.mark.integration
OWNER = str(Keypair.from_seed(bytes([81]) * 32).pubkey())
OTHER_OWNER = str(Keypair.from_seed(bytes([82]) * 32).pubkey())


def test_bind_enroll_list_and_every_refusal(tmp_path: Path) -> None:
    config = write_config(tmp_path / "coord", broker_port=1883)
    key, other_key = tmp_path / "device-key.json", tmp_path / "other-key.json"
    device = json.loads(run_cli("keys", "init", "--key", str(key), "--json").stdout)["device_id"]
    other = json.loads(run_cli("keys", "init", "--key", str(other_key), "--json").stdout)["device_id"]
    binding = tmp_path / "binding.json"
    made = run_cli("keys", "bind", "--owner", OWNER, "--key", str(key), "--out", str(binding))
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"wrote {binding}: device {device} bound to owner {OWNER}\n"
    again = run_cli("keys", "bind", "--owner", OWNER, "--key", str(key), "--out", str(binding))
    assert again.returncode == 2 and f"{binding} already exists; refusing to overwrite it" in again.stderr

    enroll = ("coordinator", "enroll", "--config", str(config), "--binding")
    ok = run_cli(
        *enroll, str(binding), device, "--owner", OWNER, "--profile", "rpi4", "--tags", "lab,eu", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tags"] == ["lab", "eu"]

    # a forged binding: same document, another owner, the device's signature kept
    forged = tmp_path / "forged.json"
    doc = json.loads(binding.read_text())
    forged.write_text(json.dumps({**doc, "owner": OTHER_OWNER}))
    refused = run_cli(*enroll, str(forged), device, "--owner", OTHER_OWNER, "--profile", "rpi4")
    assert refused.returncode == 8
    assert refused.stderr.startswith(
        f"edgeproof: error: binding {forged} refused: binding signature does not verify for device {device}\n"
    )
    # a valid binding of one device presented for another
    wrong = run_cli(*enroll, str(binding), other, "--owner", OWNER, "--profile", "rpi4")
    assert wrong.returncode == 8
    assert (
        f"edgeproof: error: binding {binding} refused: it binds device {device}, not {other}" in wrong.stderr
    )
    # an unknown profile, with the near names
    typo = run_cli(*enroll, str(binding), device, "--owner", OWNER, "--profile", "rpi")
    assert typo.returncode == 2
    assert "unknown firmware profile 'rpi'" in typo.stderr and "did you mean 'rpi4' or 'rpi5'?" in typo.stderr

    listed = run_cli("coordinator", "devices", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert (entry["id"], entry["owner"], entry["profile"], entry["tags"]) == (
        device,
        OWNER,
        "rpi4",
        ["lab", "eu"],
    )
    table = run_cli("coordinator", "devices", "--config", str(config))
    assert "1 registered device(s)" in table.stdout and device in table.stdout
