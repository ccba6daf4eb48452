"""The manifest signing file: fleet publish --out, fleet sign, fleet publish --from (no broker needed).

Every check here runs before ``--from`` connects to a broker, so the config points at a port
nothing listens on: a check that let a file through would fail with a transport error instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.cli import main
from agent.errors import ConfigError, FleetError
from agent.fleet.publish import PublishFromRequest, PublishRequest, publish_from_file, publish_manifest
from agent.fleet.signing import MAX_FILE_BYTES, cosign_file, load_signing_file
from agent.protocol.envelope import verify_envelope
from tests.support.manifests import NOW
from tests.support.onnx_models import tiny_classifier, write_model_and_card

A, B, C = (Keypair.from_seed(bytes([70 + i]) * 32) for i in range(3))
ROGUE = Keypair.from_seed(bytes([79]) * 32)


def key_file(path: Path, keypair: Keypair) -> Path:
    path.write_text(json.dumps(list(bytes(keypair))), encoding="utf-8")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    release = tmp_path / "release"
    release.mkdir()
    card = write_model_and_card(release, tiny_classifier(seed=1), name="tiny", input_shape="[1, 3, 32, 32]")
    config = tmp_path / "agent.toml"
    config.write_text('[mqtt]\nhost = "127.0.0.1"\nport = 9\nconnect_timeout_s = 1\n', encoding="utf-8")
    return {
        "card": card,
        "model": release / "tiny.onnx",
        "config": config,
        "a": key_file(tmp_path / "a.json", A),
        "b": key_file(tmp_path / "b.json", B),
        "c": key_file(tmp_path / "c.json", C),
        "state": tmp_path / "a-state.json",
        "out": tmp_path / "v1.signing.json",
    }


def request(s: dict[str, Path], **change: Any) -> PublishRequest:
    fields: dict[str, Any] = {
        "card": s["card"],
        "model": s["model"],
        "base_url": "http://127.0.0.1:8080",
        "channel": "stable",
        "targets": "",
        "stages": "100",
        "stage": 0,
        "abort_failure_rate": 0.2,
        "expires": "1h",
        "version": None,
        "key": s["a"],
        "state": s["state"],
        "config": str(s["config"]),
        "devices": None,
        "dry_run": False,
        "out": s["out"],
        "threshold": 2,
        **change,
    }
    return PublishRequest(**fields)


def from_request(s: dict[str, Path], **change: Any) -> PublishFromRequest:
    fields: dict[str, Any] = {
        "signing_file": s["out"],
        "key": s["a"],
        "state": s["state"],
        "config": str(s["config"]),
        **change,
    }
    return PublishFromRequest(**fields)


def refused(call: Any, *args: Any, **kw: Any) -> FleetError:
    with pytest.raises(FleetError) as info:
        call(*args, **kw)
    return info.value


def test_out_signs_on_the_chain_writes_the_state_first_and_publishes_nothing(setup: dict[str, Path]) -> None:
    report = publish_manifest(request(setup), now_ms=NOW)
    assert report["out"] == str(setup["out"]) and report["seq"] == 1
    assert report["signers"] == [str(A.pubkey())] and report["threshold"] == 2 and report["ready"] is False
    signing = load_signing_file(setup["out"])
    assert signing.envelope.hash == report["envelope"] and signing.threshold == 2
    state = json.loads(setup["state"].read_text(encoding="utf-8"))
    assert state["seq"] == 1 and state["channels"]["stable"]["envelope"] == report["envelope"]
    # The same file is never overwritten; the next manifest is the next version and seq.
    assert refused(lambda: publish_manifest(request(setup), now_ms=NOW)).reason == "signing_file"
    assert json.loads(setup["state"].read_text(encoding="utf-8")) == state  # refused before signing
    second = publish_manifest(request(setup, out=setup["out"].with_name("v2.json")), now_ms=NOW)
    assert (second["seq"], second["manifest"]["version"]) == (2, 2)


def test_threshold_and_out_go_together(setup: dict[str, Path]) -> None:
    for change, text in (
        ({"out": None}, "--threshold 2 goes with --out"),
        ({"dry_run": True}, "--out and --dry-run exclude each other"),
    ):
        with pytest.raises(ConfigError) as info:
            publish_manifest(request(setup, **change), now_ms=NOW)
        assert info.value.message.startswith(text)
    assert not setup["state"].exists()


def test_sign_adds_each_key_once_and_verifies_what_is_there(setup: dict[str, Path]) -> None:
    publish_manifest(request(setup), now_ms=NOW)
    signed = cosign_file(setup["out"], C, now_ms=NOW)
    assert signed.envelope.signers == (str(A.pubkey()), str(C.pubkey())) and signed.ready
    summary = signed.summary(setup["out"])
    assert summary["signers"] == [str(A.pubkey()), str(C.pubkey())] and summary["threshold"] == 2
    assert refused(cosign_file, setup["out"], C, now_ms=NOW).reason == "duplicate_signer"
    assert refused(cosign_file, setup["out"], A, now_ms=NOW).reason == "duplicate_signer"
    # The file on disk is the verified envelope, co-signature included.
    assert verify_envelope(load_signing_file(setup["out"]).envelope.raw).cosigs == signed.envelope.cosigs


def test_a_file_edited_by_hand_is_refused_by_the_protocols_reason(setup: dict[str, Path]) -> None:
    publish_manifest(request(setup), now_ms=NOW)
    cosign_file(setup["out"], B, now_ms=NOW)
    doc = json.loads(setup["out"].read_text(encoding="utf-8"))
    path = setup["out"]

    def write(d: Any) -> None:
        path.write_text(json.dumps(d), encoding="utf-8")

    good = json.loads(json.dumps(doc))
    doc["envelope"]["body"]["version"] = 9
    write(doc)
    assert refused(load_signing_file, path).reason == "bad_signature"
    doc = json.loads(json.dumps(good))
    doc["envelope"]["cosigs"][0]["key"] = str(C.pubkey())  # B's signature claimed as C's
    write(doc)
    assert refused(load_signing_file, path).reason == "bad_cosignature"
    for bad in (
        {**good, "format": "something-else/1"},
        {**good, "extra": 1},
        {**good, "threshold": 0},
        {**good, "threshold": 9},
        {**good, "envelope": "not an object"},
    ):
        write(bad)
        assert refused(load_signing_file, path).reason == "signing_file"
    path.write_bytes(b"{" + b" " * MAX_FILE_BYTES + b"}")
    assert refused(load_signing_file, path).reason == "signing_file"
    path.write_bytes(b"\xff not json")
    assert refused(load_signing_file, path).reason == "signing_file"


def test_from_refuses_k_minus_one_another_chain_and_a_file_the_record_moved_past(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    publish_manifest(request(setup), now_ms=NOW)
    below = refused(publish_from_file, from_request(setup), now_ms=NOW)
    assert below.reason == "below_threshold"
    assert below.message == f"{setup['out']} carries 1 of the 2 signatures it needs"
    cosign_file(setup["out"], B, now_ms=NOW)
    other = refused(
        publish_from_file, from_request(setup, key=setup["b"], state=tmp_path / "b-state.json"), now_ms=NOW
    )
    assert other.reason == "operator_state"
    assert (
        refused(publish_from_file, from_request(setup, state=tmp_path / "none.json"), now_ms=NOW).reason
        == "operator_state"
    )
    # The operator signed a newer version since: this file is stale.
    publish_manifest(request(setup, out=tmp_path / "v2.json"), now_ms=NOW)
    assert refused(publish_from_file, from_request(setup), now_ms=NOW).reason == "stale_version"


def test_from_checks_the_configs_device_trust_when_it_lists_keys(setup: dict[str, Path]) -> None:
    publish_manifest(request(setup), now_ms=NOW)
    cosign_file(setup["out"], ROGUE, now_ms=NOW)  # the file's own threshold is met: 2 signers
    text = setup["config"].read_text(encoding="utf-8")
    keys = json.dumps([str(k.pubkey()) for k in (A, B, C)])
    setup["config"].write_text(
        text + f'[fleet]\nchannels = ["stable"]\noperator_keys = {keys}\noperator_threshold = 2\n',
        encoding="utf-8",
    )
    untrusted = refused(publish_from_file, from_request(setup), now_ms=NOW)
    assert untrusted.reason == "untrusted_signer"
    assert untrusted.message.startswith(f"{setup['out']}: manifest co-signed by {ROGUE.pubkey()}")


def test_cli_from_refuses_build_options_and_publish_needs_them(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["fleet", "publish", "--key", str(setup["a"]), "--state", str(setup["state"])]
    assert main([*base, "--from", str(setup["out"]), "--channel", "stable"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "edgeproof: error: --from publishes a signing file as it is; --channel cannot change it"
    )
    assert main(base) == 2
    assert capsys.readouterr().err.startswith(
        "edgeproof: error: fleet publish needs --card, --file, --url, --channel (or --from FILE)"
    )
    assert main([*base, "--from", str(setup["out"])]) == 17  # no such file
    assert "refused (signing_file)" in capsys.readouterr().err
    publish_manifest(request(setup), now_ms=NOW)
    assert main(["fleet", "sign", str(setup["out"]), "--key", str(setup["b"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signers"] == [str(A.pubkey()), str(B.pubkey())] and shown["ready"] is True
    assert shown["signed_by"] == str(B.pubkey()) and shown["threshold"] == 2


def test_an_expired_signing_file_is_neither_signed_nor_published(setup: dict[str, Path]) -> None:
    publish_manifest(request(setup), now_ms=NOW)  # --expires 1h
    later = NOW + 3_600_000
    late_sign = refused(cosign_file, setup["out"], B, now_ms=later)
    assert late_sign.reason == "expired"
    assert late_sign.message.startswith(
        f"{setup['out']}: manifest version 1 on 'stable' expired at {later} ms"
    )
    cosign_file(setup["out"], B, now_ms=later - 1)
    assert refused(publish_from_file, from_request(setup), now_ms=later).reason == "expired"
