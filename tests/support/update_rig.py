"""The model-update rig: a real daemon following channel "stable", Mosquitto, loopback artifact servers.

Shared by tests/integration/test_model_update.py, test_model_refusals.py and
test_model_power_loss.py (no test module imports another):

* ``release_files`` writes a real tiny ONNX model and its card (``card_edit`` rewrites card
  lines, e.g. another ``id``); ``tiny_manifest`` is a manifest of those files on an
  :class:`~tests.support.artifact_server.ArtifactServer`;
* ``rig`` is the broker, a persistent subscriber on the device's topics and a publisher; when
  it closes, the whole capture must verify with the protocol's own verifier;
* ``deploy_states`` / ``deploy_reports`` read the device's signed ``deploy`` messages,
  ``own_status`` the status file of the running process, ``rejected`` its refusal counters.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from agent.protocol.capture import verify_capture
from agent.protocol.messages import Manifest
from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import (
    OPERATOR,
    PREFIX,
    DaemonProcess,
    Publisher,
    capture_of,
    collector_for,
    now_ms,
    wait_until,
    write_config,
)
from tests.support.envelopes import coordinator_envelope
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card

MANIFEST_TOPIC = f"{PREFIX}/fleet/manifest/stable"
CONFIGURED_MODEL = "efficientnet-lite0-int8"


def release_files(
    folder: Path,
    seed: int = 0,
    *,
    model: onnx.ModelProto | None = None,
    card_edit: tuple[str, str] | None = None,
    output_shape: str = "[1, 10]",
) -> dict[str, bytes]:
    """tiny.onnx and tiny.toml (id "tiny", version "1.0.0"); ``card_edit`` replaces one card line."""
    folder.mkdir(parents=True, exist_ok=True)
    card = write_model_and_card(
        folder,
        model if model is not None else tiny_classifier(seed=seed),
        name="tiny",
        input_shape="[1, 3, 32, 32]",
        output_shape=output_shape,
    )
    if card_edit is not None:
        text = card.read_text(encoding="utf-8")
        assert text.count(card_edit[0]) == 1, card_edit
        card.write_text(text.replace(card_edit[0], card_edit[1]), encoding="utf-8")
    return {name: (folder / name).read_bytes() for name in ("tiny.onnx", "tiny.toml")}


def sha(files: dict[str, bytes]) -> str:
    return hashlib.sha256(files["tiny.onnx"]).hexdigest()


def tiny_manifest(
    server: ArtifactServer,
    files: dict[str, bytes],
    version: int,
    *,
    expires_ms: int | None = None,
    missing: frozenset[str] = frozenset(),  # artifacts whose URL the server answers with 404
    declared: dict[str, bytes] | None = None,  # the bytes the manifest describes (default: files)
    targets: dict[str, Any] | None = None,
    prefix: str = "",  # the folder the artifacts are served under (``ArtifactServer`` keys "prefix/name")
    model_version: str = "1.0.0",
    rollback: bool = False,
    **sha: str,
) -> Manifest:
    described = files if declared is None else declared
    return Manifest.model_validate(
        {
            "channel": "stable",
            "version": version,
            "model_id": "tiny",
            "model_version": model_version,
            "model": "tiny.onnx",
            "card": "tiny.toml",
            "artifacts": [
                {
                    "name": name,
                    "url": server.url(f"gone/{name}" if name in missing else f"{prefix}{name}"),
                    "sha256": sha.get(name.replace(".", "_"), hashlib.sha256(data).hexdigest()),
                    "length": len(data),
                }
                for name, data in described.items()
            ],
            "expires_ms": now_ms() + 3_600_000 if expires_ms is None else expires_ms,
            "stages": [10_000],
            "stage": 0,
            **({"targets": targets} if targets is not None else {}),
            **({"rollback": True} if rollback else {}),
        }
    )


def deploy_reports(collector: Collector) -> list[dict[str, Any]]:
    """The bodies of the device's deploy messages, in seq order."""
    return [dict(e.raw["body"]) for e in capture_of(collector).of_kind("deploy")]


def deploy_states(collector: Collector) -> list[tuple[str, Any, int]]:
    return [(b["state"], b.get("reason"), b["manifest_version"]) for b in deploy_reports(collector)]


def deploy_shas(collector: Collector) -> set[str]:
    return {b["model_sha256"] for b in deploy_reports(collector)}


def staging_of(tmp_path: Path) -> Path:
    return tmp_path / "device" / "state" / "models" / ".staging"


def partial_bytes(staging: Path) -> int:
    """Bytes the daemon has written to .part files so far."""
    return sum(p.stat().st_size for p in staging.glob("*/*.part")) if staging.is_dir() else 0


def own_status(daemon: DaemonProcess) -> dict[str, Any]:
    """The status file once this process wrote it (the previous process's file is stale)."""
    status = daemon.status()
    return status if status.get("pid") == daemon.pid else {}


def assert_running(daemon: DaemonProcess, digest: str, version: str) -> None:
    """The daemon runs release ``tiny-VERSION`` of sha256 ``digest``, committed (not on trial)."""
    model = own_status(daemon)["model"]
    assert (model["sha256"], model["release"], model["trial"]) == (
        digest,
        f"tiny-{version}-{digest[:12]}",
        False,
    )


def rejected(daemon: DaemonProcess, reason: str) -> int:
    return int(own_status(daemon).get("rejected_inbound", {}).get(reason, 0))


def proof_models(collector: Collector) -> list[str]:
    return [e.raw["body"]["model_id"] for e in capture_of(collector).of_kind("proof")]


@dataclass
class Rig:
    broker: MosquittoBroker
    collector: Collector
    publisher: Publisher
    tmp_path: Path
    daemons: list[DaemonProcess] = field(default_factory=list)
    #: The operator chain's last seq: devices refuse a manifest at or below it (``replay``).
    operator_seq: int = 0

    def daemon(
        self,
        trial_s: float,
        *,
        env: dict[str, str] | None = None,
        source: str = "synthetic:320x240:7",
        source_loop: bool = False,
    ) -> DaemonProcess:
        """Start a daemon (the same device and state every time) following channel "stable"."""
        config = write_config(
            self.tmp_path / "device",
            self.broker,
            max_fps=2.0,
            manifest_channel="stable",
            trial_s=trial_s,
            source=source,
            source_loop=source_loop,
        )
        daemon = DaemonProcess(config, self.tmp_path / f"daemon{len(self.daemons)}.log", env=env)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def reported(
        self, daemon: DaemonProcess, state: str, reason: str | None, version: int, what: str
    ) -> None:
        """Wait for the deploy report (state, reason, manifest version), then for no trial."""
        wait_until(lambda: (state, reason, version) in deploy_states(self.collector), 60, what)
        wait_until(lambda: own_status(daemon).get("model", {}).get("trial") is False, 30, "no trial")

    def push(self, manifest: Manifest) -> None:
        """Sign ``manifest`` as the operator chain's next link and publish it retained."""
        self.operator_seq += 1
        self.push_wire(coordinator_envelope("manifest", manifest, OPERATOR, seq=self.operator_seq).wire)

    def push_wire(self, wire: bytes, *, retain: bool = True) -> None:
        self.publisher.publish(MANIFEST_TOPIC, wire, retain=retain)


@contextlib.contextmanager
def rig(tmp_path: Path, name: str) -> Iterator[Rig]:
    """Broker, device-topic subscriber and publisher; afterwards the whole capture must verify."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, name)
    publisher = Publisher(broker)
    setup = Rig(broker, collector, publisher, tmp_path)
    try:
        yield setup
    finally:
        publisher.close()
        for daemon in setup.daemons:
            daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
