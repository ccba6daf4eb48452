"""fleet publish's manifest builder: the card must be the model's, and a device accepts the result."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.device.manifests import DeviceFacts, check_manifest, rollout_bucket
from agent.errors import ConfigError, FleetError, KeyFileError
from agent.fleet.keys import init_operator_key, load_operator_key
from agent.fleet.publish import check_above_retained, retained_version
from agent.fleet.reach import Device, stage_reach
from agent.fleet.release import build_manifest, parse_duration_ms, parse_stages, parse_targets
from agent.protocol.envelope import GENESIS_PREV, build_envelope
from agent.protocol.messages import Manifest, Targets
from tests.support.manifests import NOW, manifest_body
from tests.support.onnx_models import tiny_classifier, write_model_and_card

DEV = str(Keypair.from_seed(bytes([31]) * 32).pubkey())


def release(tmp_path: Path, **change: str) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    card = write_model_and_card(tmp_path, tiny_classifier(seed=1), name="tiny")
    text = card.read_text()
    for key, value in change.items():
        text = "\n".join(
            f'{key} = "{value}"' if line.startswith(f"{key} =") else line for line in text.splitlines()
        )
    card.write_text(text + "\n")
    return card, tmp_path / "tiny.onnx"


def build(card: Path, model: Path, **change: Any) -> Manifest:
    args: dict[str, Any] = {
        "card_path": card,
        "model_path": model,
        "base_url": "http://127.0.0.1:8000/r/",
        "channel": "stable",
        "version": 4,
        "targets": parse_targets("profile:rpi5,tag:lobby"),
        "stages": parse_stages("5,25,100"),
        "stage": 0,
        "expires_ms": NOW + parse_duration_ms("7d"),
    }
    args.update(change)
    return build_manifest(**args)


def test_the_built_manifest_is_what_a_targeted_device_accepts(tmp_path: Path) -> None:
    card, model = release(tmp_path)
    manifest = build(card, model)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert (manifest.model_id, manifest.model_version, manifest.model_sha256) == ("tiny", "1.0.0", sha)
    assert [a.url for a in manifest.artifacts] == [
        "http://127.0.0.1:8000/r/tiny.onnx",
        "http://127.0.0.1:8000/r/tiny.toml",
    ]
    assert manifest.stages == [500, 2500, 10_000] and manifest.expires_ms == NOW + 7 * 86_400_000
    operator = Keypair.from_seed(bytes([32]) * 32)
    env = build_envelope(operator, "manifest", manifest, seq=1, prev=GENESIS_PREV, ts=NOW)
    decision = check_manifest(
        env,
        topic_channel="stable",
        operators={str(operator.pubkey())},
        facts=DeviceFacts(DEV, "rpi5", frozenset({"lobby"})),
        now_ms=NOW,
        accepted_version=0,
        accepted_manifest=None,
        committed_release=None,
        free_bytes=10**9,
    )
    assert decision.targeted and not decision.duplicate
    assert decision.bucket == rollout_bucket(DEV, "stable", "tiny", "1.0.0")


def test_a_card_that_names_another_file_or_sha256_is_refused(tmp_path: Path) -> None:
    card, model = release(tmp_path / "a", sha256="ab" * 32)
    with pytest.raises(FleetError) as wrong_sha:
        build(card, model)
    assert wrong_sha.value.reason == "card_mismatch"
    assert wrong_sha.value.message.startswith(
        f"card {card} names file 'tiny.onnx' with sha256 abababababab..."
    )
    card, model = release(tmp_path / "b")
    renamed = model.with_name("other.onnx")
    model.rename(renamed)
    with pytest.raises(FleetError, match=r"but the model artifact is 'other\.onnx'") as wrong_file:
        build(card, renamed)
    assert wrong_file.value.reason == "card_mismatch"


def test_a_labels_file_the_card_names_ships_as_the_third_artifact(tmp_path: Path) -> None:
    card = write_model_and_card(
        tmp_path,
        tiny_classifier(seed=1),
        name="tiny",
        decoder='kind = "classification"\ntop_k = 3\nlabels = "labels.txt"',
    )
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    manifest = build(card, tmp_path / "tiny.onnx")
    assert [a.name for a in manifest.artifacts] == ["tiny.onnx", "tiny.toml", "labels.txt"]


def test_parsers_name_what_is_wrong() -> None:
    assert parse_targets("profile:rpi5,tag:lobby,device:" + DEV) == Targets(
        profiles=["rpi5"], tags=["lobby"], devices=[DEV]
    )
    assert parse_targets("") == Targets()
    with pytest.raises(ConfigError, match="'model:x' is not profile:ID, tag:NAME or device:PUBKEY"):
        parse_targets("model:x")
    assert parse_stages("0.5,25,100") == [50, 2500, 10_000]
    for bad in ("5,25", "25,5,100", "0,100", "x"):
        with pytest.raises(ConfigError, match="--stages"):
            parse_stages(bad)
    assert [parse_duration_ms(t) for t in ("90s", "30m", "12h", "7d")] == [
        90_000,
        1_800_000,
        43_200_000,
        604_800_000,
    ]
    with pytest.raises(ConfigError, match="--expires '7w'"):
        parse_duration_ms("7w")


def test_stage_reach_uses_the_device_bucket_function_and_targets() -> None:
    manifest_devices = [
        Device(str(Keypair.from_seed(bytes([i]) * 32).pubkey()), "rpi5") for i in range(1, 201)
    ]
    others = [Device(DEV, "rpi4")]
    manifest = Manifest.model_validate(manifest_body(targets={"profiles": ["rpi5"]}, stage=0))
    reach = stage_reach(manifest, manifest_devices + others)
    assert [s["bp"] for s in reach] == [500, 2500, 10_000] and [s["current"] for s in reach] == [
        True,
        False,
        False,
    ]
    for stage in reach:
        expected = sorted(
            d.dev
            for d in manifest_devices
            if rollout_bucket(d.dev, "stable", manifest.model_id, manifest.model_version) < stage["bp"]
        )
        assert stage["devices"] == expected and stage["targeted"] == 200
    assert 0 < len(reach[0]["devices"]) < len(reach[1]["devices"]) < len(reach[2]["devices"]) == 200


def test_an_operator_key_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "op.json"
    keypair = init_operator_key(path, seed=bytes([33]) * 32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(FleetError) as exists:
        init_operator_key(path)
    assert exists.value.reason == "key_exists"
    assert exists.value.message == f"operator key file {path} already exists; refusing to overwrite it"
    assert path.read_bytes() == before and load_operator_key(path).pubkey() == keypair.pubkey()


def test_the_retained_manifest_bounds_the_next_version() -> None:
    operator = Keypair.from_seed(bytes([34]) * 32)
    wire = build_envelope(operator, "manifest", manifest_body(version=7), seq=3, prev="ab" * 32, ts=NOW).wire
    current = retained_version(wire)
    assert current == (7, str(operator.pubkey()))
    assert retained_version(None) is None and retained_version(b"not an envelope") is None
    check_above_retained("stable", 8, current)  # above: fine
    with pytest.raises(FleetError) as lower:
        check_above_retained("stable", 6, current)
    assert lower.value.reason == "stale_version" and lower.value.hint == "publish with --version 8 or higher"
    with pytest.raises(FleetError) as same:
        check_above_retained("stable", 7, current)
    assert same.value.reason == "version_reused"


def test_a_missing_operator_key_names_the_fleet_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as missing:
        load_operator_key(tmp_path / "nope.json")
    assert missing.value.message == f"operator key file {tmp_path / 'nope.json'} does not exist"
    assert missing.value.hint is not None and "edgeproof fleet keys init" in missing.value.hint
