"""The daemon rig: run the real device daemon against a real Mosquitto and read what it did.

Shared by the integration tests that start ``python -m agent run`` in a subprocess
(test_daemon_reliability, test_model_update, test_corrupt_state, test_control_socket,
test_challenge_flood, test_doctor):

* fixed-seed keys: the device (``DEVICE``, its id ``DEV``), the pinned coordinator, an
  operator who signs manifests, and a ``ROGUE`` key nobody trusts;
* ``write_config`` writes an ``agent.toml`` for the shipped EfficientNet-Lite0 int8 model, a
  synthetic source, 5 s windows and 1 s heartbeats; ``DaemonProcess`` runs it (only that
  process is ever signalled, by its pid) and reads its ``status.json`` and JSON log lines;
* ``collector_for`` is a persistent-session subscriber on the device's topics and
  ``capture_of`` turns what it received into a ``Capture`` checked envelope by envelope with
  the protocol's own verifier; ``outbox_facts`` / ``final_chain`` read the outbox with plain
  sqlite3; ``edgeproof_status`` is what an owner sees;
* ``Publisher`` is the coordinator's (or an attacker's) plain MQTT client;
* ``wait_until`` polls with a named timeout, ``now_ms`` is wall-clock milliseconds.

The signed coordinator messages these tests publish are built in tests/support/envelopes.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from solders.keypair import Keypair

from agent.device.status import read_status
from agent.identity import device_id
from agent.protocol.envelope import GENESIS_PREV, Envelope, verify_envelope
from tests.support.mosquitto import Collector, MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
PREFIX = "edgeproof/v1"
DEVICE_SEED = bytes(range(32))
COORDINATOR_SEED = bytes([7] * 32)
ROGUE_SEED = bytes([9] * 32)
OPERATOR_SEED = bytes([11] * 32)
#: Device-to-coordinator topics whose envelopes the daemon signs.
DEVICE_CHANNELS = {"hb", "proof", "response", "status", "deploy"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def write_key(path: Path, seed: bytes) -> Keypair:
    """A Solana CLI keypair file (JSON array of the 64 secret+public bytes), mode 0600."""
    keypair = Keypair.from_seed(seed)
    path.write_text(json.dumps(list(bytes(keypair))), encoding="utf-8")
    os.chmod(path, 0o600)
    return keypair


DEVICE = Keypair.from_seed(DEVICE_SEED)
DEV = device_id(DEVICE)
COORDINATOR = Keypair.from_seed(COORDINATOR_SEED)
ROGUE = Keypair.from_seed(ROGUE_SEED)
OPERATOR = Keypair.from_seed(OPERATOR_SEED)


def write_config(
    workdir: Path,
    broker: MosquittoBroker,
    *,
    source: str = "synthetic:320x240:7",
    source_loop: bool = False,
    max_fps: float = 2.0,
    outbox_path: Path | None = None,
    max_bytes: int | None = None,
    coordinator: str = "",
    metrics_port: int | None = None,
    manifest_channel: str | None = None,
    trial_s: float = 60.0,
    owner_wallet: str = "",
    operator_keys: list[str] | None = None,
    operator_threshold: int = 1,
    extra: str = "",
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "device-key.json"
    if not key.exists():
        write_key(key, DEVICE_SEED)
    outbox = [f'path = "{outbox_path}"'] if outbox_path is not None else []
    if max_bytes is not None:
        outbox.append(f"max_bytes = {max_bytes}")
    metrics = (
        ["[metrics]", "enabled = true", 'host = "127.0.0.1"', f"port = {metrics_port}"]
        if metrics_port is not None
        else []
    )
    fleet = (
        [
            "[fleet]",
            f'channels = ["{manifest_channel}"]',
            f"operator_keys = {json.dumps(operator_keys or [str(OPERATOR.pubkey())])}",
            f"operator_threshold = {operator_threshold}",
            f"trial_s = {trial_s}",
        ]
        if manifest_channel is not None
        else []
    )
    text = "\n".join(
        [
            "[device]",
            f'key = "{key}"',
            f'state_dir = "{workdir / "state"}"',
            'profile = "generic-x86_64"',
            f'owner_wallet = "{owner_wallet}"',
            "[inference]",
            f'model = "{MODEL}"',
            f'source = "{source}"',
            f"max_fps = {max_fps}",
            *(["loop = true"] if source_loop else []),
            "threads = 1",
            "[proofs]",
            "window_s = 5",
            "heartbeat_s = 1",
            "[mqtt]",
            f'host = "{broker.host}"',
            f"port = {broker.port}",
            "reconnect_min_s = 0.2",
            "reconnect_max_s = 1.0",
            "[outbox]",
            *outbox,
            "[coordinator]",
            f'pubkey = "{coordinator}"',
            *metrics,
            *fleet,
            extra,
        ]
    )
    path = workdir / "agent.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def clean_env() -> dict[str, str]:
    """The test's environment without EDGEPROOF_* overrides (the config file is the whole truth)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}


def edgeproof(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` from the checkout, in :func:`clean_env`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class DaemonProcess:
    """``python -m agent run`` in a subprocess; only this process is ever signalled, by its pid."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        # e.g. tests/support/unit_sandbox.py's command(): run the daemon under a unit's filters
        self.command_prefix = command_prefix
        self.state_dir = config.parent / "state"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.command_prefix,
                    sys.executable,
                    "-m",
                    "agent",
                    "--log-level",
                    "info",
                    "--log-format",
                    "json",
                    "run",
                    "--config",
                    str(self.config),
                ],
                cwd=ROOT,
                env={**clean_env(), **self.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM (closes the window, flushes) and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill9()
            raise AssertionError(f"daemon did not exit within {timeout}s of SIGTERM:\n{self.tail()}") from exc

    def kill9(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def ensure_dead(self) -> None:
        if self.alive():
            self.kill9()

    def status(self) -> dict[str, Any]:
        try:
            return read_status(self.state_dir) or {}
        except Exception:
            return {}  # half-written? never: it is replaced atomically; but do not fail a poll

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(
                self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return ""


def edgeproof_status(config: Path) -> dict[str, Any]:
    """``edgeproof status --config FILE --json``: what an owner sees."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config), "--json"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def outbox_facts(path: Path) -> dict[str, Any]:
    """Integrity, chain state and pending rows of an outbox file, read with plain sqlite3."""
    db = sqlite3.connect(str(path))
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        head = db.execute("SELECT seq, prev FROM chain_head WHERE id = 1").fetchone()
        rows = db.execute("SELECT payload, seq FROM outbox ORDER BY id").fetchall()
        drops = {(k, r): c for k, r, c in db.execute("SELECT kind, reason, count FROM drops").fetchall()}
    finally:
        db.close()
    state = {"seq": 0, "prev": GENESIS_PREV} if head is None else {"seq": head[0], "prev": head[1]}
    pending_seqs = {json.loads(p)["seq"] for p, _ in rows if json.loads(p)["kind"] != "status"}
    # The queue's seq column says the same as the payloads (the daemon reads only the column).
    assert {seq for _, seq in rows if seq is not None} == pending_seqs
    return {"integrity": integrity, "state": state, "pending_seqs": pending_seqs, "drops": drops}


@dataclass
class Capture:
    """The device's chained envelopes as delivered, deduplicated by (dev, seq)."""

    lines: list[str] = field(default_factory=list)
    first: dict[int, Envelope] = field(default_factory=dict)  # seq -> first delivery
    raw: dict[int, bytes] = field(default_factory=dict)
    arrival: list[int] = field(default_factory=list)  # seqs in order of first arrival
    duplicates: Counter[int] = field(default_factory=Counter)  # seq -> extra identical deliveries
    forks: list[int] = field(default_factory=list)  # seqs delivered with different bytes

    @property
    def seqs(self) -> set[int]:
        return set(self.first)

    def kinds(self) -> Counter[str]:
        return Counter(env.kind for env in self.first.values())

    def of_kind(self, kind: str) -> list[Envelope]:
        return [self.first[s] for s in sorted(self.first) if self.first[s].kind == kind]


def capture_of(collector: Collector, dev: str = DEV) -> Capture:
    cap = Capture()
    with collector._cond:
        messages = list(collector.messages)
    for topic, payload in messages:
        parts = topic.split("/")
        if parts[-2] != dev or parts[-1] not in DEVICE_CHANNELS:
            continue
        cap.lines.append(f"{topic} {payload.decode('utf-8')}")
        env = verify_envelope(payload)  # every device message must verify on its own
        if env.sideband:
            continue
        if env.seq in cap.raw:
            if cap.raw[env.seq] == payload:
                cap.duplicates[env.seq] += 1
            else:
                cap.forks.append(env.seq)
            continue
        cap.raw[env.seq] = payload
        cap.first[env.seq] = env
        cap.arrival.append(env.seq)
    return cap


def collector_for(broker: MosquittoBroker, name: str) -> Collector:
    """A persistent-session subscriber (clean_start False, session expiry 3600 s, 1 s reconnect)."""
    collector = Collector(broker, f"{PREFIX}/dev/{DEV}/+", client_id=f"reliability-{name}")
    collector.client.reconnect_delay_set(1, 1)
    return collector


def final_chain(outbox_path: Path) -> tuple[int, str]:
    facts = outbox_facts(outbox_path)
    return int(facts["state"]["seq"]), str(facts["state"]["prev"])


def chained_emitted(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.endswith("_emitted") and k != "status_emitted")


class Publisher:
    """The coordinator's (or an attacker's) plain MQTT client."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="reliability-publisher",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
