"""An operator pushes a model with the CLI alone: `fleet serve` + `fleet publish` -> a real daemon commits it.

Real parts: Mosquitto, a daemon process following channel "stable", `edgeproof fleet serve`
serving the release folder, `edgeproof fleet publish` signing with an operator key file.  The
retained manifest on the broker is the envelope the operator's state file records; republishing
the same version is refused by name (from the operator's state file, and from the retained slot
for a state file that does not know it) and leaves the retained slot alone.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.protocol.capture import verify_capture
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Manifest
from tests.support.daemon_rig import (
    OPERATOR,
    OPERATOR_SEED,
    PREFIX,
    ROOT,
    DaemonProcess,
    capture_of,
    clean_env,
    collector_for,
    edgeproof,
    wait_until,
    write_config,
    write_key,
)
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card
from tests.support.update_rig import deploy_states

pytestmark = pytest.mark.integration

MANIFEST_TOPIC = f"{PREFIX}/fleet/manifest/stable"


def proof_models(collector: Collector) -> list[str]:
    return [e.raw["body"]["model_id"] for e in capture_of(collector).of_kind("proof")]


def retained_manifests(broker: MosquittoBroker) -> list[bytes]:
    reader = Collector(broker, MANIFEST_TOPIC, client_id="fleet-retained-reader")
    try:
        reader.wait_for(lambda messages: bool(messages), 10)
        return reader.payloads()
    finally:
        reader.close()


def test_fleet_publish_and_serve_push_a_model_that_a_real_daemon_commits(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    card = write_model_and_card(release, tiny_classifier(seed=3), name="tiny", input_shape="[1, 3, 32, 32]")
    tiny_sha = hashlib.sha256((release / "tiny.onnx").read_bytes()).hexdigest()
    key, state = tmp_path / "operator.json", tmp_path / "operator-state.json"
    write_key(key, OPERATOR_SEED)

    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "fleet-publish")
    config = write_config(tmp_path / "device", broker, max_fps=2.0, manifest_channel="stable", trial_s=2.0)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    serve_log = (tmp_path / "serve.err").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "serve", str(release), "--port", "0", "--json"],
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=serve_log,
        text=True,
    )
    try:
        assert serve.stdout is not None
        url = json.loads(serve.stdout.readline())["url"]
        assert url.startswith("http://127.0.0.1:")
        daemon.start()
        wait_until(lambda: proof_models(collector), 90, "a first proof with the configured model")

        published = edgeproof(
            "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"), "--url", url,
            "--channel", "stable", "--targets", "profile:generic-x86_64", "--stages", "100",
            "--abort-failure-rate", "0.2", "--expires", "1h", "--key", str(key), "--state", str(state),
            "--config", str(config), "--json",
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        report = json.loads(published.stdout)
        assert report["operator"] == str(OPERATOR.pubkey()) and report["seq"] == 1
        assert report["manifest"]["version"] == 1 and report["manifest"]["model"] == "tiny.onnx"

        wait_until(
            lambda: ("committed", None, 1) in deploy_states(collector), 90, "the release to be committed"
        )
        wait_until(lambda: "tiny" in proof_models(collector), 30, "a proof made with the pushed model")
        states = [s for s, _, _ in deploy_states(collector) if s != "downloading"]
        assert states == ["received", "staged", "smoke_test", "activated", "committed"]
        tiny_proofs = [
            e for e in capture_of(collector).of_kind("proof") if e.raw["body"]["model_id"] == "tiny"
        ]
        assert {e.raw["body"]["model_sha256"] for e in tiny_proofs} == {tiny_sha}

        # The retained slot holds exactly the envelope the operator's state file recorded.
        record = json.loads(state.read_text(encoding="utf-8"))
        assert record["seq"] == 1 and record["channels"]["stable"]["version"] == 1
        assert record["channels"]["stable"]["abort_failure_rate"] == 0.2
        retained = retained_manifests(broker)
        assert len(retained) == 1
        env = verify_envelope(retained[0])
        assert env.hash == report["envelope"] == record["head"] == record["channels"]["stable"]["envelope"]
        assert env.dev == str(OPERATOR.pubkey()) and env.seq == 1
        assert isinstance(env.body, Manifest) and env.body.model_sha256 == tiny_sha

        # The same version again is refused by name, before anything is signed or published.
        again = edgeproof(
            "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"), "--url", url,
            "--channel", "stable", "--version", "1", "--key", str(key), "--state", str(state),
            "--config", str(config),
        )  # fmt: skip
        assert again.returncode == 17
        assert again.stderr.startswith(
            "edgeproof: error: refused (version_reused): version 1 on channel 'stable'"
        )
        assert json.loads(state.read_text(encoding="utf-8")) == record
        # A state file that does not know v1 (lost, or another operator's) is stopped by the
        # retained slot: version 1 again would replace what a new device installs.
        fresh = tmp_path / "fresh-state.json"
        blind = edgeproof(
            "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"), "--url", url,
            "--channel", "stable", "--key", str(key), "--state", str(fresh), "--config", str(config),
        )  # fmt: skip
        assert blind.returncode == 17
        assert blind.stderr.startswith(
            "edgeproof: error: refused (version_reused): the retained manifest on channel 'stable' is version 1"
        )
        assert not fresh.exists()
        assert [verify_envelope(p).hash for p in retained_manifests(broker)] == [env.hash]
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        if serve.poll() is None:
            serve.terminate()
        serve_rc = serve.wait(10)
        serve_log.close()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    assert serve_rc == 0, (tmp_path / "serve.err").read_text()
    report_cap = verify_capture(cap.lines, prefix=PREFIX)
    assert report_cap.ok, [p.to_dict() for p in report_cap.problems]
