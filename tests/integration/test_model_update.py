"""Fleet model push, device side, end to end: a real daemon, Mosquitto and a loopback HTTP server.

An operator-signed manifest on ``fleet/manifest/stable`` makes the running daemon download the
release (resuming a dropped transfer with HTTP Range), install it, smoke-test it, swap to it
between two work windows, and commit it after its trial; every step arrives as a signed
``deploy`` message, and the proofs switch to the new model's sha256.  A release whose bytes do
not match the manifest fails without touching the running model and is not retried on
re-delivery; a daemon killed while a new model is on trial rolls it back when it starts again.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from agent.protocol.capture import verify_capture
from agent.protocol.messages import Manifest
from tests.integration.test_daemon_reliability import (
    MODEL,
    OPERATOR,
    PREFIX,
    DaemonProcess,
    Publisher,
    capture_of,
    collector_for,
    coordinator_envelope,
    now_ms,
    wait_until,
    write_config,
)
from tests.support.artifact_server import ArtifactServer
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card

pytestmark = pytest.mark.integration

MANIFEST_TOPIC = f"{PREFIX}/fleet/manifest/stable"


def release_files(folder: Path, seed: int = 0) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    write_model_and_card(folder, tiny_classifier(seed=seed), name="tiny", input_shape="[1, 3, 32, 32]")
    return {name: (folder / name).read_bytes() for name in ("tiny.onnx", "tiny.toml")}


def tiny_manifest(server: ArtifactServer, files: dict[str, bytes], version: int, **sha: str) -> Manifest:
    return Manifest.model_validate(
        {
            "channel": "stable",
            "version": version,
            "model_id": "tiny",
            "model_version": "1.0.0",
            "model": "tiny.onnx",
            "card": "tiny.toml",
            "artifacts": [
                {
                    "name": name,
                    "url": server.url(name),
                    "sha256": sha.get(name.replace(".", "_"), hashlib.sha256(data).hexdigest()),
                    "length": len(data),
                }
                for name, data in files.items()
            ],
            "expires_ms": now_ms() + 3_600_000,
            "stages": [10_000],
            "stage": 0,
        }
    )


def deploy_states(collector: Collector) -> list[tuple[str, Any, int]]:
    return [
        (e.raw["body"]["state"], e.raw["body"].get("reason"), e.raw["body"]["manifest_version"])
        for e in capture_of(collector).of_kind("deploy")
    ]


def proof_models(collector: Collector) -> list[str]:
    return [e.raw["body"]["model_id"] for e in capture_of(collector).of_kind("proof")]


def own_status(daemon: DaemonProcess) -> dict[str, Any]:
    """The status file once this process wrote it (the previous process's file is stale)."""
    status = daemon.status()
    return status if status.get("pid") == daemon.pid else {}


def start(tmp_path: Path, broker: MosquittoBroker, trial_s: float) -> tuple[Path, DaemonProcess]:
    config = write_config(
        tmp_path / "device", broker, max_fps=2.0, manifest_channel="stable", trial_s=trial_s
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    return config, daemon


def test_a_pushed_model_is_downloaded_smoke_tested_swapped_and_committed(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "update")
    publisher = Publisher(broker)
    files = release_files(tmp_path / "release")
    tiny_sha = hashlib.sha256(files["tiny.onnx"]).hexdigest()
    daemon: DaemonProcess | None = None
    try:
        with ArtifactServer(files) as server:
            server.drop_after = 300  # the first response breaks off: the daemon resumes with Range
            _, daemon = start(tmp_path, broker, trial_s=3.0)
            wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
            manifest = tiny_manifest(server, files, version=1)
            publisher.publish(
                MANIFEST_TOPIC, coordinator_envelope("manifest", manifest, OPERATOR).wire, retain=True
            )
            wait_until(
                lambda: ("committed", None, 1) in deploy_states(collector), 90, "the release to be committed"
            )
            wait_until(lambda: "tiny" in proof_models(collector), 30, "a proof made with the new model")
            status = daemon.status()
            assert any(r is not None and r.startswith("bytes=") for r in server.requests), server.requests
        code = daemon.terminate()
        assert code == 0, daemon.tail()

        states = [s for s, _, _ in deploy_states(collector)]
        assert states[0] == "received" and states[-1] == "committed"
        assert [s for s in states if s != "downloading"] == [
            "received",
            "staged",
            "smoke_test",
            "activated",
            "committed",
        ]
        assert "downloading" in states
        models = proof_models(collector)
        first_tiny = models.index("tiny")
        assert set(models[:first_tiny]) == {"efficientnet-lite0-int8"} and set(models[first_tiny:]) == {
            "tiny"
        }
        tiny_proofs = [
            e for e in capture_of(collector).of_kind("proof") if e.raw["body"]["model_id"] == "tiny"
        ]
        assert {e.raw["body"]["model_sha256"] for e in tiny_proofs} == {tiny_sha}
        assert status["model"]["id"] == "tiny" and status["model"]["release"] == f"tiny-1.0.0-{tiny_sha[:12]}"

        # A restart runs the committed release; the retained manifest is a duplicate: no new deploy.
        before = len(deploy_states(collector))
        restarted = DaemonProcess(daemon.config, tmp_path / "daemon2.log")
        daemon = restarted
        restarted.start()
        wait_until(
            lambda: own_status(restarted).get("model", {}).get("id") == "tiny", 60, "the restart on tiny"
        )
        wait_until(
            lambda: own_status(restarted).get("manifests", {}).get("stable"), 30, "the stored manifest"
        )
        time.sleep(1.0)
        assert len(deploy_states(collector)) == before
        assert restarted.terminate() == 0, restarted.tail()
    finally:
        publisher.close()
        if daemon is not None:
            daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]


def test_bad_bytes_fail_and_a_crash_on_trial_rolls_back(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "update-fail")
    publisher = Publisher(broker)
    files = release_files(tmp_path / "release")
    daemon: DaemonProcess | None = None
    try:
        with ArtifactServer(files) as server:
            config, daemon = start(tmp_path, broker, trial_s=600.0)
            wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
            # v1 names a sha256 the served bytes do not have.
            bad = tiny_manifest(server, files, version=1, tiny_onnx="ab" * 32)
            publisher.publish(
                MANIFEST_TOPIC, coordinator_envelope("manifest", bad, OPERATOR).wire, retain=True
            )
            wait_until(
                lambda: ("failed", "hash_mismatch", 1) in deploy_states(collector), 60, "hash_mismatch"
            )
            assert daemon.status()["model"]["id"] == "efficientnet-lite0-int8"

            # v2 is good; the daemon is killed while it is on trial (trial_s = 600).
            good = tiny_manifest(server, files, version=2)
            publisher.publish(
                MANIFEST_TOPIC, coordinator_envelope("manifest", good, OPERATOR).wire, retain=True
            )
            wait_until(lambda: ("activated", None, 2) in deploy_states(collector), 60, "activation of v2")
            wait_until(lambda: daemon.status().get("model", {}).get("trial") is True, 30, "v2 on trial")
            daemon.kill9()
            restarted = DaemonProcess(config, tmp_path / "daemon2.log")
            daemon = restarted
            restarted.start()
            wait_until(
                lambda: ("rolled_back", "crashed_in_trial", 2) in deploy_states(collector),
                60,
                "the rollback of the release that was on trial",
            )
            wait_until(lambda: own_status(restarted).get("model"), 60, "the restarted daemon's status")
            assert own_status(restarted)["model"]["id"] == "efficientnet-lite0-int8"
            # The retained v2 comes again on reconnect: a rolled-back version is not retried.
            wait_until(
                lambda: own_status(restarted).get("manifests", {}).get("stable"), 30, "the retained manifest"
            )
            failed_again = [s for s in deploy_states(collector) if s[2] == 2 and s[0] == "received"]
            assert len(failed_again) == 1
            assert restarted.terminate() == 0, restarted.tail()
    finally:
        publisher.close()
        if daemon is not None:
            daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    assert MODEL.exists()
