"""Helpers for the coordinator tests: keys, signed device messages, an enrolled registry, a config."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from solders.keypair import Keypair

from agent.coordinator.ingest import Policy
from agent.coordinator.registry import model_classes
from agent.coordinator.store import DeviceRecord, Store
from agent.identity import write_keypair
from agent.profiles import load_profiles
from agent.protocol.binding import sign_binding
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import Envelope

ROOT = Path(__file__).resolve().parents[2]
COORD = Keypair.from_seed(bytes([70]) * 32)
OWNER = str(Keypair.from_seed(bytes([71]) * 32).pubkey())
#: Ingest time of the unit tests (the coordinator's clock).
NOW = 1_760_000_000_000
SLOT_MS = 60_000


def _card_sha(name: str) -> str:
    for line in (ROOT / "models" / f"{name}.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("sha256"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"no sha256 in {name}.toml")


#: The shipped efficientnet card's model (classifier-small: rpi4 allows 60 inferences/s).
EFFICIENTNET_SHA = _card_sha("efficientnet-lite0-int8")


def ingest_policy(late_window_seqs: int = 8, beacon_max_age_slots: int = 2) -> Policy:
    """The ingest policy of the in-process tests: 30 s clock skew, the shipped profiles and cards."""
    return Policy(
        clock_skew_ms=30_000,
        beacon_max_age_slots=beacon_max_age_slots,
        late_window_seqs=late_window_seqs,
        profiles=load_profiles(),
        model_classes=model_classes(ROOT / "models"),
    )


def device_key(n: int) -> Keypair:
    return Keypair.from_seed(bytes([n]) * 32)


def dev_id(keypair: Keypair) -> str:
    return str(keypair.pubkey())


def beacon_nonce(slot: int) -> str:
    return hashlib.sha256(b"beacon%d" % slot).hexdigest()


def health() -> dict[str, Any]:
    return {"cpu_bp": 1200, "mem_bp": 3000, "throttled": False, "rate_limited": False}


def heartbeat_body(slot: int, nonce: str | None = None) -> dict[str, Any]:
    return {
        "beacon_slot": slot,
        "beacon_nonce": nonce or beacon_nonce(slot),
        "uptime_s": 60,
        "health": health(),
    }


def proof_body(
    start_ms: int, end_ms: int, inferences: int, model_sha256: str = EFFICIENTNET_SHA
) -> dict[str, Any]:
    return {
        "window_start_ms": start_ms,
        "window_end_ms": end_ms,
        "model_id": "efficientnet-lite0-int8",
        "model_sha256": model_sha256,
        "inferences": inferences,
        "leaf_hash": "blake3",
        "input_root": hashlib.sha256(b"in").hexdigest(),
        "output_root": hashlib.sha256(b"out").hexdigest(),
        "summary": {"cat": 3},
        "latency_us": {"p50": 8000, "p95": 9000, "p99": 9500},
        "health": health(),
        "agent_version": "0.1.0",
    }


def enroll_direct(store: Store, keypair: Keypair, profile: str = "rpi4", tags: tuple[str, ...] = ()) -> None:
    binding = sign_binding(keypair, OWNER, NOW - 1000)
    with store.transaction():
        store.enroll(DeviceRecord(binding.device, OWNER, profile, tags, binding.ts, binding.sig, NOW - 1000))


def add_beacons(store: Store, slots: range, issued: Callable[[int], int] | None = None) -> None:
    with store.transaction():
        for slot in slots:
            at = issued(slot) if issued else slot * SLOT_MS
            store.add_beacon(slot, beacon_nonce(slot), slot * SLOT_MS, SLOT_MS, at)


class Device:
    """A device-like signer: consecutive envelopes on one chain."""

    def __init__(self, keypair: Keypair) -> None:
        self.keypair = keypair
        self.chain = ChainSigner(keypair)

    @property
    def id(self) -> str:
        return dev_id(self.keypair)

    def heartbeat(self, slot: int, ts: int, nonce: str | None = None) -> Envelope:
        return self.chain.next("heartbeat", heartbeat_body(slot, nonce), ts)

    def proof(self, start_ms: int, end_ms: int, inferences: int, ts: int | None = None) -> Envelope:
        return self.chain.next(
            "proof", proof_body(start_ms, end_ms, inferences), ts if ts is not None else end_ms
        )


def write_config(
    folder: Path,
    *,
    broker_port: int,
    database_url: str = "",
    client_id: str = "coord-test",
    beacon_max_age_slots: int = 1_000_000,
    late_window_seqs: int = 1024,
    batch_max: int = 50,
    slot_ms: int = 60_000,
    challenge_probability: float = 0.0,
    deadline_ms: int = 30_000,
    active_within_slots: int = 3,
    models_dir: str = "",
    liveness_s: float = 5.0,
    epoch_ms: int = 3_600_000,
    http_listen: str = "",
) -> Path:
    """A coordinator config + key in ``folder``; returns the config path.

    Challenges are off unless ``challenge_probability`` is given (the ingest tests count
    verdicts exactly); beacons are always issued, every ``slot_ms``.  No dashboard unless
    ``http_listen`` is given (the default 127.0.0.1:8480 would collide between processes).
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "coordinator-key.json"
    if not key.exists():
        write_keypair(key, COORD)
    config = folder / "coordinator.toml"
    config.write_text(
        f"""[coordinator]
key = "coordinator-key.json"
shared_group = "coord"

[storage]
database_url = {json.dumps(database_url)}
sqlite_path = "coordinator.sqlite3"
sqlite_synchronous = "NORMAL"

[ingest]
batch_max = {batch_max}
batch_ms = 20
beacon_max_age_slots = {beacon_max_age_slots}
late_window_seqs = {late_window_seqs}
retry_max_s = 1.0
liveness_s = {liveness_s}

[registry]
models_dir = {json.dumps(models_dir)}

[beacons]
slot_ms = {slot_ms}

[challenges]
probability_per_slot = {challenge_probability}
deadline_ms = {deadline_ms}
active_within_slots = {active_within_slots}

[epochs]
epoch_ms = {epoch_ms}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "{client_id}"
keepalive_s = 10

[http]
listen = {json.dumps(http_listen)}
""",
        encoding="utf-8",
    )
    return config


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


class CoordinatorProcess:
    """``python -m agent coordinator run`` as a child process, stopped or killed by its pid."""

    def __init__(self, config: Path, log: Path, command_prefix: tuple[str, ...] = ()) -> None:
        self.config = config
        self.log_path = log
        self.command_prefix = command_prefix  # e.g. unit_sandbox.command(): under a unit's filters
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                *agent_cmd("--log-level", "info", "coordinator", "run", "--config", str(self.config)),
            ],
            cwd=ROOT,
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        handle.close()
        marks = self.log().count("mqtt_subscribed")
        deadline = time.monotonic() + timeout
        while self.log().count("mqtt_subscribed") <= marks:
            if self.proc.poll() is not None:
                raise AssertionError(f"coordinator exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"coordinator did not subscribe within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Publisher:
    """A device-like MQTT v5 publisher (QoS 1, waits for each PUBACK)."""

    def __init__(self, host: str, port: int, client_id: str = "test-devices") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(100)
        self.client.connect(host, port, 30)
        self.client.loop_start()

    def publish(self, items: list[tuple[str, bytes]], timeout: float = 30) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published(), "the broker did not acknowledge a publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}" + (f"\n{log()}" if log else "")
            )
        time.sleep(0.05)
