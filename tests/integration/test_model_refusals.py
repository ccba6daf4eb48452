"""Refused or rolled back, the reason reported, the device still on its previous model (issue 9).

One real daemon (Mosquitto, loopback artifact servers, real tiny ONNX models, a folder of white
frames as its camera) commits release A, then is offered one bad release after another.  Each
is refused or fails by name and the device reports it on its deploy topic: ``rejected`` for a
manifest it refuses (reused version, older version, tampered, expired), ``failed`` for a
release that breaks while it is prepared (card id or version not the manifest's, a download
longer than declared, a truncated download, a model that fails its smoke test), ``rolled_back``
for a model that raises during its trial.  After each one the device runs A.  A manifest whose
only mismatch is its profile list is refused and reported (``wrong_profile``); one whose tags
name other devices is accepted, not installed and never reported.  A flood of
forged manifests, each under a new version, yields a bounded number of reports and a counter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from agent.device.manifest_refusals import BURST
from agent.protocol.canonical import canonical
from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import OPERATOR, ROGUE, ROOT, clean_env, now_ms, wait_until
from tests.support.envelopes import coordinator_envelope
from tests.support.onnx_models import fails_on_bright_frames, tiny_classifier
from tests.support.update_rig import (
    Rig,
    assert_running,
    deploy_reports,
    own_status,
    rejected,
    release_files,
    rig,
    sha,
    tiny_manifest,
)

pytestmark = pytest.mark.integration

FLOOD = 300


def white_frames(folder: Path) -> str:
    folder.mkdir(parents=True)
    assert cv2.imwrite(str(folder / "white.png"), np.full((240, 320, 3), 255, np.uint8))
    return str(folder)


def dynamic_batch_classifier() -> onnx.ModelProto:
    model = tiny_classifier(seed=4)
    for value in (model.graph.input[0], model.graph.output[0]):  # checked only when run
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def tampered(wire: bytes) -> bytes:
    """The envelope with one body field changed after it was signed."""
    raw = json.loads(wire)
    raw["body"]["expires_ms"] += 1
    return canonical(raw)


def reports_of(r: Rig, version: int) -> list[tuple[str, object]]:
    return [
        (b["state"], b.get("reason")) for b in deploy_reports(r.collector) if b["manifest_version"] == version
    ]


def test_every_refusal_is_reported_by_name_and_the_device_keeps_its_model(tmp_path: Path) -> None:
    files_a = release_files(tmp_path / "a")
    files_b = release_files(tmp_path / "b", seed=1)
    files_id = release_files(tmp_path / "id", seed=2, card_edit=('id = "tiny"', 'id = "other-model-id"'))
    files_ver = release_files(tmp_path / "ver", seed=3, card_edit=('version = "1.0.0"', 'version = "9.9.9"'))
    files_smoke = release_files(tmp_path / "smoke", model=dynamic_batch_classifier(), output_shape="[2, 10]")
    files_trial = release_files(tmp_path / "trial", model=fails_on_bright_frames(seed=5))
    short = {**files_b, "tiny.onnx": files_b["tiny.onnx"][: len(files_b["tiny.onnx"]) // 2]}
    sha_a = sha(files_a)
    with (
        rig(tmp_path, "refusals") as r,
        ArtifactServer(files_a) as server_a,
        ArtifactServer(files_b) as server_b,
        ArtifactServer({**files_id, **{f"v/{k}": v for k, v in files_ver.items()}}) as server_cards,
        ArtifactServer(short) as server_short,
        ArtifactServer({**files_smoke, **{f"t/{k}": v for k, v in files_trial.items()}}) as server_models,
    ):
        started = time.monotonic()
        daemon = r.daemon(trial_s=3.0, source=white_frames(tmp_path / "frames"), source_loop=True)
        wait_until(lambda: own_status(daemon).get("model"), 90, "the daemon's first status")

        def on_a() -> None:
            assert_running(daemon, sha_a, "1.0.0")

        def reported(state: str, reason: str | None, version: int, what: str) -> None:
            r.reported(daemon, state, reason, version, what)

        r.push(tiny_manifest(server_a, files_a, version=2))
        reported("committed", None, 2, "release A to be committed")
        on_a()

        # -- refused manifests: deploy `rejected` with the reason, nothing downloaded
        r.push(tiny_manifest(server_b, files_b, version=2))
        reported("rejected", "version_reused", 2, "a reused version with other content")
        r.push(tiny_manifest(server_b, files_b, version=2, expires_ms=now_ms() - 3_600_000))
        wait_until(lambda: rejected(daemon, "version_reused") == 2, 30, "the expired reuse to be refused too")
        r.push(tiny_manifest(server_b, files_b, version=1))
        reported("rejected", "stale_version", 1, "an older version")
        r.push_wire(
            tampered(coordinator_envelope("manifest", tiny_manifest(server_b, files_b, 3), OPERATOR).wire)
        )
        reported("rejected", "bad_signature", 3, "a tampered manifest")
        r.push(tiny_manifest(server_b, files_b, version=3, expires_ms=now_ms() - 1))
        reported("rejected", "expired", 3, "an expired manifest")
        # Refused too, but for another profile: not this device's business, not reported.
        r.push(tiny_manifest(server_b, files_b, 50, expires_ms=now_ms() - 1, targets={"profiles": ["rpi5"]}))
        wait_until(lambda: rejected(daemon, "expired") == 2, 30, "the other profile's expired manifest")
        assert server_b.paths == []
        assert reports_of(r, 2)[-1:] == [("rejected", "version_reused")]  # the second reuse: not again
        assert reports_of(r, 50) == []
        assert own_status(daemon)["counters"]["refusal_reports_repeated"] == 1
        on_a()

        # -- releases that fail while prepared: deploy `failed` with the reason
        r.push(tiny_manifest(server_cards, files_id, version=3))
        reported("failed", "card_mismatch", 3, "a card whose id is not the manifest's")
        r.push(tiny_manifest(server_cards, files_ver, version=4, prefix="v/"))
        reported("failed", "card_mismatch", 4, "a card whose version is not the manifest's")
        server_b.extra_bytes = 3
        r.push(tiny_manifest(server_b, files_b, version=5))
        reported("failed", "too_long", 5, "a download longer than declared")
        server_b.extra_bytes = 0
        r.push(tiny_manifest(server_short, short, version=6, declared=files_b))
        reported("failed", "unreachable", 6, "a truncated download")
        r.push(tiny_manifest(server_models, files_smoke, version=7))
        reported("failed", "output_shape", 7, "a model that fails its smoke test")
        on_a()

        # -- a model that raises during its trial (on the white frames): rolled back to A
        r.push(tiny_manifest(server_models, files_trial, version=8, prefix="t/"))
        reported("rolled_back", "trial_failed", 8, "the rollback of a model that raises on trial")
        assert ("activated", None) in reports_of(r, 8)
        on_a()

        # -- another profile: refused and reported (wrong_profile), nothing downloaded, still on A
        served_b = len(server_b.paths)
        r.push(tiny_manifest(server_b, files_b, version=9, targets={"profiles": ["rpi5"]}))
        reported("rejected", "wrong_profile", 9, "a manifest for another profile")
        wait_until(lambda: rejected(daemon, "wrong_profile") == 1, 30, "the wrong profile counted")
        assert own_status(daemon)["manifests"]["stable"]["version"] == 8  # the last accepted one
        assert reports_of(r, 9) == [("rejected", "wrong_profile")] and len(server_b.paths) == served_b
        on_a()
        # -- tags naming other devices (whatever the profile): accepted, not installed, silent
        r.push(
            tiny_manifest(server_b, files_b, version=10, targets={"profiles": ["rpi5"], "tags": ["garage"]})
        )
        wait_until(lambda: own_status(daemon)["manifests"]["stable"]["version"] == 10, 30, "v10 accepted")
        assert own_status(daemon)["manifests"]["stable"]["targeted"] is False
        assert reports_of(r, 10) == [] and len(server_b.paths) == served_b
        on_a()

        # -- a flood of forged manifests, each under a new version: bounded reports, counted
        before = len(deploy_reports(r.collector))
        sent_before = own_status(daemon)["counters"]["refusal_reports_sent"]
        assert sent_before == 5  # reuse, stale, tampered, expired, wrong profile
        for version in range(100, 100 + FLOOD):
            forged = coordinator_envelope(
                "manifest", tiny_manifest(server_b, files_b, version), ROGUE, seq=version
            )
            r.push_wire(forged.wire, retain=False)

        def judged() -> dict[str, int] | None:
            status = own_status(daemon)
            c = status.get("counters", {})
            done = c.get("refusal_reports_sent", 0) + c.get("refusal_reports_rate_limited", 0)
            return c if done == sent_before + FLOOD else None

        counters = wait_until(judged, 60, "every forged manifest refused and judged for a report")
        assert rejected(daemon, "untrusted_operator") == FLOOD
        flood_sent = counters["refusal_reports_sent"] - sent_before
        # BURST tokens, sent_before of them spent above, one more a minute.
        minutes = int((time.monotonic() - started) / 60)
        assert BURST - sent_before <= flood_sent <= BURST - sent_before + minutes + 1, flood_sent
        assert counters["refusal_reports_rate_limited"] == FLOOD - flood_sent

        def flood_reports() -> list[dict[str, object]]:
            later = deploy_reports(r.collector)[before:]
            return [b for b in later if b["reason"] == "untrusted_operator"]

        wait_until(lambda: len(flood_reports()) == flood_sent, 30, "the flood's reports to arrive")
        assert {b["manifest_version"] for b in flood_reports()} <= set(range(100, 100 + FLOOD))
        time.sleep(1.0)
        assert len(deploy_reports(r.collector)) == before + flood_sent
        on_a()

        # The plain status table says which release runs and that it is not on trial.
        table = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--config", str(daemon.config)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"tiny-1.0.0-{sha_a[:12]} (committed)" in table, table
        assert daemon.terminate() == 0, daemon.tail()
