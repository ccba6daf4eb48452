"""``fleet publish --dry-run --coordinator-config``: which enrolled devices each stage would reach.

Also ``--rollback``: the same manifest with ``rollback: true``.

A real coordinator SQLite database (migrated by Store.open) with 40 devices enrolled under signed
bindings, of two profiles and two tags; ``edgeproof fleet publish`` runs as a child process and
reads it read-only.  The expected reach is computed here from the protocol's bucket function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.coordinator.store import DeviceRecord, Store
from agent.protocol.binding import sign_binding
from agent.protocol.rollout import rollout_bucket
from tests.support.daemon_rig import OPERATOR, OPERATOR_SEED, edgeproof, write_key
from tests.support.onnx_models import tiny_classifier, write_model_and_card

pytestmark = pytest.mark.integration


def enrolled(tmp_path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    store = Store.open(sqlite_path=tmp_path / "coordinator.sqlite3")
    owner = str(OPERATOR.pubkey())
    devices = []
    with store.transaction():
        for n in range(40):
            b = sign_binding(Keypair.from_seed(bytes([60, n]) + bytes(30)), owner, 1_800_000_000_000)
            profile, tags = ("rpi5" if n % 2 else "rpi4"), (("lobby",) if n % 3 else ("garage",))
            store.enroll(DeviceRecord(b.device, owner, profile, tags, b.ts, b.sig, b.ts))
            devices.append((b.device, profile, tags))
    store.close()
    return devices


def test_dry_run_shows_the_enrolled_devices_each_stage_reaches(tmp_path: Path) -> None:
    devices = enrolled(tmp_path)
    coord = tmp_path / "coordinator.toml"
    coord.write_text('[storage]\nsqlite_path = "coordinator.sqlite3"\n', encoding="utf-8")
    write_key(tmp_path / "operator.json", OPERATOR_SEED)
    card = write_model_and_card(tmp_path, tiny_classifier(seed=0), name="tiny", input_shape="[1, 3, 32, 32]")
    state = tmp_path / "operator-state.json"
    common = ["fleet", "publish", "--card", str(card), "--file", str(tmp_path / "tiny.onnx")]
    common += ["--url", "http://127.0.0.1:9/models", "--channel", "stable", "--stages", "10,50,100"]
    common += ["--targets", "profile:rpi5,tag:lobby", "--key", str(tmp_path / "operator.json")]
    common += ["--state", str(state), "--dry-run"]

    done = edgeproof(*common, "--coordinator-config", str(coord), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    manifest = report["manifest"]
    buckets = {
        dev: rollout_bucket(dev, "stable", manifest["model_id"], manifest["model_version"])
        for dev, profile, tags in devices
        if profile == "rpi5" and "lobby" in tags
    }
    assert len(buckets) == 13  # odd n, not a multiple of 3
    expected = [sorted(d for d, b in buckets.items() if b < bp) for bp in (1000, 5000, 10_000)]
    assert [s["devices"] for s in report["reach"]] == expected
    assert [(s["stage"], s["bp"], s["current"], s["targeted"]) for s in report["reach"]] == [
        (0, 1000, True, 13),
        (1, 5000, False, 13),
        (2, 10_000, False, 13),
    ]
    assert expected[-1] == sorted(buckets) and report["dry_run"] is True
    assert report["devices_from"] == f"coordinator database {tmp_path / 'coordinator.sqlite3'}"
    assert not state.exists()  # a dry run changes nothing
    assert "rollback" not in manifest

    (tmp_path / "none.json").write_text("[]", encoding="utf-8")
    rollback = edgeproof(*common, "--devices", str(tmp_path / "none.json"), "--rollback", "--json")
    assert rollback.returncode == 0, rollback.stderr
    body = json.loads(rollback.stdout)["manifest"]
    assert body["rollback"] is True and {
        k: v for k, v in body.items() if k not in ("rollback", "expires_ms")
    } == {k: v for k, v in manifest.items() if k != "expires_ms"}
    assert [s["devices"] for s in json.loads(rollback.stdout)["reach"]] == [[], [], []]

    table = edgeproof(*common, "--coordinator-config", str(coord))
    assert table.returncode == 0, table.stderr
    assert "stage 2: 100% -> 13 of 13 targeted devices" in table.stdout
    assert all(f"  {dev}" in table.stdout for dev in buckets)

    # Refusals by name, no traceback: not a dry run, with --devices too, no database.
    (tmp_path / "devices.json").write_text("[]", encoding="utf-8")
    refused = [
        edgeproof(*[a for a in common if a != "--dry-run"], "--coordinator-config", str(coord)),
        edgeproof(*common, "--coordinator-config", str(coord), "--devices", str(tmp_path / "devices.json")),
    ]
    for run in refused:
        assert run.returncode != 0 and "Traceback" not in run.stderr
        assert "--coordinator-config goes with --dry-run, instead of --devices" in run.stderr
    missing = tmp_path / "nowhere.toml"
    missing.write_text('[storage]\nsqlite_path = "absent.sqlite3"\n', encoding="utf-8")
    gone = edgeproof(*common, "--coordinator-config", str(missing))
    assert gone.returncode != 0 and "Traceback" not in gone.stderr
    assert f"database {tmp_path / 'absent.sqlite3'} does not exist" in gone.stderr
    assert not state.exists()
