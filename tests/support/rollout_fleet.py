"""Simulated devices for rollouts: the real manifest check and downloader, many devices per connection.

Shared by tests/integration/test_fleet_rollout.py and benchmarks/fleet_rollout.py.  Each device
has its own key (``Keypair.from_seed``), chain and accepted-manifest memory, and judges every
manifest with the daemon's own :func:`agent.device.manifests.check_manifest`; an eligible one
is downloaded with :func:`agent.device.download.fetch_artifact` (Range resume, sha256 and length
checked) into the device's staging folder.  With ``smoke_every=N`` every N-th device runs the
daemon's real smoke test (agent/device/smoke.py: load the downloaded card and model with ONNX
Runtime, run it, check the outputs; a DeployError is reported ``failed`` with its reason), the
others stand in for it.  A device listed in ``failing`` then reports ``failed`` with
``inference_failed`` (its model "raises"), the others go ``staged`` -> ``activated`` -> ``committed``.  A halted manifest stops a device mid-download
(``failed``, ``halted``) and keeps one that has not started from starting, as the updater does.
Deploy reports are signed envelopes on ``{prefix}/dev/{dev}/deploy`` (QoS 1).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from solders.keypair import Keypair

from agent.coordinator.store import DeviceRecord, Store
from agent.device.download import fetch_artifact
from agent.device.manifests import DeviceFacts, check_manifest
from agent.device.model_store import release_key
from agent.device.smoke import smoke_test
from agent.errors import DeployError, ProtocolError
from agent.fleet.serve import ArtifactHTTPServer, make_server
from agent.inference.runtime import backend_settings, resolve_profile
from agent.protocol.binding import sign_binding
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Deploy, Manifest
from agent.protocol.topics import Topics

PROFILE = "rpi5"


def serving(root: Path) -> ArtifactHTTPServer:
    """``fleet serve``'s artifact server for ``root`` on a free loopback port, on a thread (its
    ``downloads`` count what the devices fetched); ``shutdown()`` and ``server_close()`` it."""
    server = make_server(root)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def enroll_fleet(store: Store, keys: list[Keypair], owner: str) -> None:
    """Each key enrolled with a signed binding to ``owner``, profile ``PROFILE``, tag ``lobby``."""
    with store.transaction():
        for key in keys:
            b = sign_binding(key, owner, 1_800_000_000_000)
            store.enroll(DeviceRecord(b.device, owner, PROFILE, ("lobby",), b.ts, b.sig, b.ts))


def device_keys(count: int, base: int = 7000) -> list[Keypair]:
    return [
        Keypair.from_seed(i.to_bytes(4, "big") + bytes([base % 256]) * 28) for i in range(base, base + count)
    ]


@dataclass
class SimDevice:
    key: Keypair
    failing: bool
    folder: Path
    smoke: bool = False  # runs the real smoke test
    dev: str = ""
    signer: ChainSigner = field(init=False)
    accepted_version: int = 0
    accepted: Manifest | None = None
    committed: str | None = None
    busy: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dev = str(self.key.pubkey())
        self.signer = ChainSigner(self.key)


class RolloutFleet:
    """``RolloutFleet(...)``, then ``start()``; ``stop()`` when done.  Counters say what happened."""

    def __init__(
        self,
        host: str,
        port: int,
        keys: list[Keypair],
        failing: set[str],
        *,
        operator: str,
        folder: Path,
        channel: str = "stable",
        prefix: str = "edgeproof/v1",
        connections: int = 8,
        workers: int = 16,
        operators: tuple[str, ...] = (),  # more trusted operator keys (k-of-n), besides ``operator``
        threshold: int = 1,
        smoke_every: int = 0,  # every N-th device runs the real smoke test (0: none)
        silent: frozenset[str] = frozenset(),  # devices that never act on a manifest (switched off)
    ) -> None:
        self.silent = silent
        self.topics = Topics(prefix)
        self.channel = channel
        self.operator = operator
        self.operators, self.threshold = [operator, *operators], threshold
        self.devices = [
            SimDevice(
                k,
                str(k.pubkey()) in failing,
                folder / str(i),
                smoke=bool(smoke_every) and i % smoke_every == 0,
            )
            for i, k in enumerate(keys)
        ]
        self.profile = resolve_profile("generic-x86_64")
        self.settings = backend_settings(self.profile, threads=1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-dl")
        self.counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self._host, self._port = host, port
        self._groups = [self.devices[i::connections] for i in range(connections)]
        self._clients: list[paho.Client] = []
        self.done = threading.Condition()

    # ------------------------------------------------------------------ wiring

    def start(self) -> None:
        topic = self.topics.manifest(self.channel)
        for number, group in enumerate(self._groups):
            ready = threading.Event()
            client = paho.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=f"sim-rollout-{number}",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            client.on_connect = lambda c, u, f, rc, p, t=topic: c.subscribe(t, qos=1)
            client.on_subscribe = lambda c, u, mid, rcs, p, e=ready: e.set()
            client.on_message = lambda c, u, msg, g=group: self._on_manifest(
                c, g, msg.topic, bytes(msg.payload)
            )
            client.connect(self._host, self._port, 30)
            client.loop_start()
            if not ready.wait(10):
                raise RuntimeError("simulated devices could not subscribe")
            self._clients.append(client)

    def stop(self) -> None:
        for device in self.devices:
            device.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.disconnect()
            client.loop_stop()

    def count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] += 1

    # ------------------------------------------------------------------ devices

    def _on_manifest(self, client: paho.Client, group: list[SimDevice], topic: str, payload: bytes) -> None:
        try:
            env = verify_envelope(payload)
        except ProtocolError:
            self.count("manifest_refused")
            return
        now = time.time_ns() // 1_000_000
        for device in group:
            if device.dev in self.silent:
                continue
            with device.lock:
                try:
                    decision = check_manifest(
                        env,
                        topic_channel=self.channel,
                        operators=self.operators,
                        facts=DeviceFacts(device.dev, PROFILE, frozenset({"lobby"})),
                        now_ms=now,
                        accepted_version=device.accepted_version,
                        accepted_manifest=device.accepted,
                        committed_release=device.committed,
                        free_bytes=1 << 40,
                        threshold=self.threshold,
                    )
                except ProtocolError as exc:
                    self.count(f"refused_{exc.reason}")
                    continue
                manifest = decision.manifest
                if not decision.duplicate:
                    device.accepted_version, device.accepted = manifest.version, manifest
                key = release_key(manifest.model_id, manifest.model_version, manifest.model_sha256)
                if manifest.halted:
                    if device.busy == key:
                        device.stop.set()
                    continue
                if not decision.eligible or device.busy is not None or device.committed == key:
                    continue
                device.busy = key
                device.stop = threading.Event()
                self.pool.submit(self._install, client, device, manifest, key, device.stop)

    def _report(
        self, client: paho.Client, device: SimDevice, manifest: Manifest, state: str, **extra: object
    ) -> None:
        body = Deploy(
            channel=manifest.channel,
            manifest_version=manifest.version,
            model_id=manifest.model_id,
            model_sha256=manifest.model_sha256,
            state=state,  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
        env = device.signer.next("deploy", body, time.time_ns() // 1_000_000)
        device.states.append(state)
        client.publish(self.topics.for_kind("deploy", device.dev), env.wire, qos=1)

    def _install(
        self, client: paho.Client, device: SimDevice, manifest: Manifest, key: str, stop: threading.Event
    ) -> None:
        staging = device.folder / key
        try:
            if stop.is_set():
                raise DeployError("halted before it started", reason="cancelled")
            self._report(client, device, manifest, "received")
            for artifact in manifest.artifacts:
                fetch_artifact(artifact, staging, timeout_s=30.0, stop=stop, max_attempts=3)
            self._report(client, device, manifest, "downloading", progress_bp=10_000)
            self._report(client, device, manifest, "staged")
            self._report(client, device, manifest, "smoke_test")
            if device.smoke:
                smoke_test(staging / manifest.card, self.profile, self.settings)
                self.count("smoke_tests")
            if device.failing:
                self._report(client, device, manifest, "failed", reason="inference_failed")
                self.count("failed")
                with device.lock:
                    device.busy = None
                return
            self._report(client, device, manifest, "activated")
            self._report(client, device, manifest, "committed")
            self.count("committed")
            with device.lock:
                device.committed, device.busy = key, None
        except DeployError as exc:
            reason = "halted" if exc.reason == "cancelled" else exc.reason
            self._report(client, device, manifest, "failed", reason=reason)
            self.count(f"failed_{reason}")
            with device.lock:
                device.busy = None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self.done:
                self.done.notify_all()
