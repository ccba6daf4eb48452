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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.device.model_store import ModelStore
from agent.device.state_store import StateStore
from agent.device.updater import ModelUpdater, failed_key
from agent.inference.runtime import backend_settings, resolve_profile
from agent.protocol.messages import Deploy, Manifest
from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import capture_of, now_ms, wait_until
from tests.support.update_rig import (
    deploy_reports,
    deploy_states,
    own_status,
    partial_bytes,
    proof_models,
    rejected,
    release_files,
    rig,
    staging_of,
    tiny_manifest,
)

pytestmark = pytest.mark.integration


def test_a_pushed_model_is_downloaded_smoke_tested_swapped_and_committed(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    tiny_sha = hashlib.sha256(files["tiny.onnx"]).hexdigest()
    with rig(tmp_path, "update") as r, ArtifactServer(files) as server:
        collector = r.collector
        server.drop_after = 300  # the first response breaks off: the daemon resumes with Range
        daemon = r.daemon(trial_s=3.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        r.push(tiny_manifest(server, files, version=1))
        wait_until(
            lambda: ("committed", None, 1) in deploy_states(collector), 90, "the release to be committed"
        )
        wait_until(lambda: "tiny" in proof_models(collector), 30, "a proof made with the new model")
        status = own_status(daemon)
        assert any(r is not None and r.startswith("bytes=") for r in server.requests), server.requests
        assert daemon.terminate() == 0, daemon.tail()

        states = [s for s, _, _ in deploy_states(collector)]
        assert states[0] == "received" and states[-1] == "committed" and "downloading" in states
        assert [s for s in states if s != "downloading"] == [
            "received",
            "staged",
            "smoke_test",
            "activated",
            "committed",
        ]
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

        # A restart runs the committed release; the stored manifest is a duplicate: no new deploy.
        before = len(deploy_states(collector))
        restarted = r.daemon(trial_s=3.0)
        wait_until(
            lambda: own_status(restarted).get("model", {}).get("id") == "tiny", 60, "the restart on tiny"
        )
        wait_until(
            lambda: own_status(restarted).get("manifests", {}).get("stable"), 30, "the stored manifest"
        )
        time.sleep(1.0)
        assert len(deploy_states(collector)) == before
        assert restarted.terminate() == 0, restarted.tail()


def test_bad_bytes_fail_and_a_crash_on_trial_rolls_back(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    with rig(tmp_path, "update-fail") as r, ArtifactServer(files) as server:
        collector = r.collector
        daemon = r.daemon(trial_s=600.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        # v1 names a sha256 the served bytes do not have.
        r.push(tiny_manifest(server, files, version=1, tiny_onnx="ab" * 32))
        wait_until(lambda: ("failed", "hash_mismatch", 1) in deploy_states(collector), 60, "hash_mismatch")
        assert own_status(daemon)["model"]["id"] == "efficientnet-lite0-int8"

        # v2 is good; the daemon is killed while it is on trial (trial_s = 600).
        r.push(tiny_manifest(server, files, version=2))
        wait_until(lambda: ("activated", None, 2) in deploy_states(collector), 60, "activation of v2")
        wait_until(lambda: own_status(daemon).get("model", {}).get("trial") is True, 30, "v2 on trial")
        daemon.kill9()
        restarted = r.daemon(trial_s=600.0)
        wait_until(
            lambda: ("rolled_back", "crashed_in_trial", 2) in deploy_states(collector),
            60,
            "the rollback of the release that was on trial",
        )
        wait_until(
            lambda: own_status(restarted).get("manifests", {}).get("stable"), 60, "the stored manifest"
        )
        assert own_status(restarted)["model"]["id"] == "efficientnet-lite0-int8"
        time.sleep(1.0)
        # The stored v2 is judged again at start: a rolled-back version is not tried again.
        assert [s for s in deploy_states(collector) if s[2] == 2 and s[0] == "received"] == [
            ("received", None, 2)
        ]
        assert restarted.terminate() == 0, restarted.tail()


def test_staging_is_cleaned_after_a_failure_and_a_partial_download_survives_a_restart(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    staging = staging_of(tmp_path)
    with rig(tmp_path, "update-staging") as r, ArtifactServer(files) as server:
        collector = r.collector
        daemon = r.daemon(trial_s=2.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        # v1: the model downloads completely, then the card's URL answers 404.
        r.push(tiny_manifest(server, files, version=1, missing=frozenset({"tiny.toml"})))
        wait_until(lambda: ("failed", "http_404", 1) in deploy_states(collector), 60, "v1 to fail")
        assert server.paths[-2:] == ["http /tiny.onnx", "http /gone/tiny.toml"]
        assert list(staging.iterdir()) == []  # the downloaded tiny.onnx of the failed release is gone

        # v2 trickles; the daemon dies mid-download and starts again with the server at full speed.
        server.trickle_s = 0.4
        r.push(tiny_manifest(server, files, version=2))
        wait_until(lambda: partial_bytes(staging) >= 2, 60, "v2's download to be under way")
        daemon.kill9()
        kept = partial_bytes(staging)
        server.trickle_s = None
        stale = staging / "old-9.9.9-0123456789ab"
        stale.mkdir()
        (stale / "old.onnx.part").write_bytes(b"left by a release nobody offers any more")
        served = len(server.requests)
        restarted = r.daemon(trial_s=2.0)
        wait_until(lambda: ("committed", None, 2) in deploy_states(collector), 90, "v2 to be committed")
        # The restart resumed the partial download of the pending release and deleted the stale files.
        assert server.requests[served] == f"bytes={kept}-", server.requests[served:]
        assert server.paths[served] == "http /tiny.onnx"
        assert list(staging.iterdir()) == []
        assert restarted.terminate() == 0, restarted.tail()


def test_an_expired_accepted_manifest_is_not_resumed_after_a_restart(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    staging = staging_of(tmp_path)
    with rig(tmp_path, "update-expired") as r, ArtifactServer(files) as server:
        collector = r.collector
        server.trickle_s = 0.4
        daemon = r.daemon(trial_s=2.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        expires = now_ms() + 15_000
        r.push(tiny_manifest(server, files, version=1, expires_ms=expires))
        wait_until(
            lambda: "http /tiny.onnx" in server.paths, 14, "the download to be under way before the expiry"
        )
        time.sleep(1.0)  # a few bytes trickle in
        daemon.kill9()
        server.trickle_s = None
        time.sleep(max(0.0, (expires - now_ms()) / 1000 + 0.5))
        served = list(server.paths)
        restarted = r.daemon(trial_s=2.0)
        # The stored manifest is judged again at start: expired, refused, counted.
        wait_until(lambda: rejected(restarted, "expired") >= 1, 60, "the refusal of the expired manifest")
        time.sleep(2.0)
        status = own_status(restarted)
        assert server.paths == served  # no download request reached the artifact server
        assert [s for s in deploy_states(collector) if s[0] == "received"] == [("received", None, 1)]
        assert status["model"]["id"] == "efficientnet-lite0-int8" and status["model"]["release"] is None
        assert "stable" not in status["manifests"]
        assert list(staging.iterdir()) == []  # its partial download belongs to no pending release
        assert restarted.terminate() == 0, restarted.tail()


def test_a_committed_release_outlives_its_manifest_and_a_reused_version_is_refused(tmp_path: Path) -> None:
    files_a = release_files(tmp_path / "release-a")
    files_b = release_files(tmp_path / "release-b", seed=1)  # another model
    sha_a = hashlib.sha256(files_a["tiny.onnx"]).hexdigest()
    sha_b = hashlib.sha256(files_b["tiny.onnx"]).hexdigest()
    assert sha_a != sha_b
    with (
        rig(tmp_path, "update-reuse") as r,
        ArtifactServer(files_a) as server_a,
        ArtifactServer(files_b) as server_b,
    ):
        collector = r.collector
        daemon = r.daemon(trial_s=2.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        expires = now_ms() + 45_000
        r.push(tiny_manifest(server_a, files_a, version=1, expires_ms=expires))
        wait_until(lambda: ("committed", None, 1) in deploy_states(collector), 40, "v1 to be committed")
        assert now_ms() < expires, "the rig was too slow: v1 expired before its release committed"

        # v1 again with another model: refused by name, never downloaded.
        r.push(tiny_manifest(server_b, files_b, version=1))
        wait_until(lambda: rejected(daemon, "version_reused") >= 1, 30, "the refusal of the reused version")
        # ... and reported to the operator, naming the refused content.
        wait_until(
            lambda: ("rejected", "version_reused", 1) in deploy_states(collector), 30, "the rejected report"
        )
        time.sleep(1.0)
        assert server_b.paths == []
        assert [
            (b["state"], b["reason"]) for b in deploy_reports(collector) if b["model_sha256"] == sha_b
        ] == [("rejected", "version_reused")]
        assert own_status(daemon)["model"]["sha256"] == sha_a
        assert daemon.terminate() == 0, daemon.tail()

        # v1 expires; after a restart its committed release still runs and nothing is installed.
        time.sleep(max(0.0, (expires - now_ms()) / 1000 + 0.5))
        before, served_a = len(deploy_states(collector)), len(server_a.paths)
        restarted = r.daemon(trial_s=2.0)
        wait_until(
            lambda: own_status(restarted).get("manifests", {}).get("stable"), 60, "the stored manifest"
        )
        time.sleep(2.0)
        status = own_status(restarted)
        assert status["model"]["sha256"] == sha_a and status["model"]["release"] == f"tiny-1.0.0-{sha_a[:12]}"
        assert status["manifests"]["stable"]["model_sha256"] == sha_a
        assert "expired" not in status["rejected_inbound"]
        assert len(deploy_states(collector)) == before
        assert (len(server_a.paths), server_b.paths) == (served_a, [])
        assert restarted.terminate() == 0, restarted.tail()


# ------------------------------------------------- the updater in-process, with real servers and models


@dataclass
class Updater:
    """A ModelUpdater on a real store, recording its deploy reports and its state."""

    updater: ModelUpdater
    reports: list[Deploy]
    state: StateStore

    def states(self) -> list[tuple[str, Any, int]]:
        return [(d.state, d.reason, d.manifest_version) for d in list(self.reports)]

    def wait_ready(self, what: str) -> None:
        swap = wait_until(self.updater.poll, 60, what)
        assert swap.release is not None


def in_process_updater(models: Path) -> Updater:
    profile = resolve_profile("generic-x86_64")
    reports: list[Deploy] = []
    models.mkdir(parents=True, exist_ok=True)
    state = StateStore.open(models.parent / f"{models.name}-state.sqlite3")

    def no_trial_failure(card: Path) -> Any:
        raise AssertionError(f"no trial runs here ({card})")

    updater = ModelUpdater(
        ModelStore(models),
        profile,
        backend_settings(profile, threads=1),
        reports.append,
        state,
        fallback_card=models / "unused.toml",
        open_pipeline=no_trial_failure,
        trial_s=1.0,
    )
    updater.start()
    return Updater(updater, reports, state)


def test_a_newer_release_supersedes_a_download_and_a_stop_keeps_the_partial(tmp_path: Path) -> None:
    files_a = release_files(tmp_path / "release-a")
    files_b = release_files(tmp_path / "release-b", seed=1)
    staging = tmp_path / "models" / ".staging"
    with ArtifactServer(files_a) as server_a, ArtifactServer(files_b) as server_b:
        server_a.trickle_s = 0.4
        first = in_process_updater(tmp_path / "models")
        try:
            first.updater.offer(tiny_manifest(server_a, files_a, version=1))
            wait_until(lambda: partial_bytes(staging) >= 1, 30, "v1's download to be under way")
            # v2 on the same channel supersedes v1 mid-download: v1 stops, its files go, v2 installs.
            first.updater.offer(tiny_manifest(server_b, files_b, version=2))
            first.wait_ready("v2 to be ready")
            assert ("failed", "superseded", 1) in first.states()
            assert first.states()[-1] == ("activated", None, 2)
            assert first.state.record(failed_key("stable")) is None  # superseded is not a failure
            assert list(staging.iterdir()) == []
        finally:
            first.updater.stop()

        # A stop mid-download is not a failure: the partial stays and the next updater resumes it.
        second = in_process_updater(tmp_path / "models2")
        staging2 = tmp_path / "models2" / ".staging"
        second.updater.offer(tiny_manifest(server_a, files_a, version=3))
        wait_until(lambda: partial_bytes(staging2) >= 2, 30, "v3's download to be under way")
        started = time.monotonic()
        second.updater.stop(timeout=10.0)
        assert time.monotonic() - started < 1.5
        kept = partial_bytes(staging2)
        assert second.states() == [("received", None, 3)] and second.state.records() == {}
        server_a.trickle_s = None
        served = len(server_a.requests)
        third = in_process_updater(tmp_path / "models2")
        try:
            third.updater.offer(tiny_manifest(server_a, files_a, version=3))
            third.wait_ready("v3 to be ready after the resume")
            assert server_a.requests[served] == f"bytes={kept}-"
            assert list(staging2.iterdir()) == []
        finally:
            third.updater.stop()


def test_a_committed_version_is_never_installed_again_over_a_newer_release(tmp_path: Path) -> None:
    """Issue 9 defect 2: the stored first manifest, re-delivered or judged again after a restart,
    never replaces the newer release the device runs."""
    files_a = release_files(tmp_path / "release-a")
    files_b = release_files(tmp_path / "release-b", seed=1)
    sha_b = hashlib.sha256(files_b["tiny.onnx"]).hexdigest()

    def commit(u: Updater, version: int) -> None:
        u.wait_ready(f"v{version} to be ready")
        wait_until(
            lambda: u.updater.poll() is None and ("committed", None, version) in u.states(), 30, "the commit"
        )

    with ArtifactServer(files_a) as server_a, ArtifactServer(files_b) as server_b:
        v1 = tiny_manifest(server_a, files_a, version=1)
        first = in_process_updater(tmp_path / "models")
        try:
            first.updater.offer(v1)
            commit(first, 1)
            first.updater.offer(tiny_manifest(server_b, files_b, version=2))
            commit(first, 2)
            served, reported = len(server_a.paths), len(first.reports)
            first.updater.offer(v1)  # the broker re-delivers the first version
            time.sleep(1.0)
            assert len(first.reports) == reported and first.updater.poll() is None
        finally:
            first.updater.stop()
        second = in_process_updater(tmp_path / "models")  # a restart on the same store and state
        try:
            second.updater.offer(v1)  # the stored first manifest, judged again
            time.sleep(1.0)
            assert second.reports == [] and second.updater.poll() is None
            assert len(server_a.paths) == served
            active = second.updater.store.active()
            assert active is not None and (active.current.model_sha256, active.state) == (sha_b, "committed")
        finally:
            second.updater.stop()


def halted(manifest: Manifest, version: int, *, halt: bool = True) -> Manifest:
    body = manifest.model_dump(exclude_none=True) | {"version": version}
    if halt:
        body["halted"] = True
    return Manifest.model_validate(body)


def test_a_halt_stops_a_download_and_drops_its_files(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    staging = tmp_path / "models" / ".staging"
    with ArtifactServer(files) as server:
        server.trickle_s = 0.4
        device = in_process_updater(tmp_path / "models")
        try:
            v1 = tiny_manifest(server, files, version=1)
            assert device.updater.halt(halted(v1, 2)) is False  # nothing of it is under way
            assert device.states() == []
            device.updater.offer(v1)
            wait_until(lambda: partial_bytes(staging) >= 1, 30, "v1's download to be under way")
            assert device.updater.halt(halted(v1, 2)) is True
            wait_until(lambda: ("failed", "halted", 1) in device.states(), 30, "the halted report")
            assert device.updater.poll() is None  # nothing was made ready
            assert [s for s, _, _ in device.states() if s != "downloading"] == ["received", "failed"]
            assert device.state.record(failed_key("stable")) is None  # a halt is not a failure
            wait_until(lambda: list(staging.iterdir()) == [], 10, "the partial download to be deleted")
        finally:
            device.updater.stop()


def test_a_daemon_never_starts_a_halted_release_and_keeps_a_committed_one(tmp_path: Path) -> None:
    files = release_files(tmp_path / "release")
    tiny_sha = hashlib.sha256(files["tiny.onnx"]).hexdigest()
    with rig(tmp_path, "halt") as r, ArtifactServer(files) as server:
        collector = r.collector
        daemon = r.daemon(trial_s=2.0)
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")
        v1 = tiny_manifest(server, files, version=1)
        r.push(halted(v1, 1))  # a device that had not started it: accepted, never started
        wait_until(
            lambda: own_status(daemon).get("manifests", {}).get("stable", {}).get("version") == 1,
            30,
            "the halted manifest to be accepted",
        )
        time.sleep(2.0)
        assert deploy_states(collector) == [] and server.requests == []
        r.push(halted(v1, 2, halt=False))  # resumed: the release installs
        wait_until(lambda: ("committed", None, 2) in deploy_states(collector), 90, "the resumed release")
        served = len(server.requests)
        r.push(halted(v1, 3))  # a halt after commit: the device keeps the release
        wait_until(
            lambda: own_status(daemon).get("manifests", {}).get("stable", {}).get("version") == 3,
            30,
            "the second halt to be accepted",
        )
        time.sleep(2.0)
        assert own_status(daemon)["model"]["sha256"] == tiny_sha
        assert [s for s, _, _ in deploy_states(collector)][-1] == "committed"
        assert len(server.requests) == served
        assert daemon.terminate() == 0, daemon.tail()
