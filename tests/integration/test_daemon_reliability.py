"""The device daemon's reliability, proven against a real Mosquitto.

Every test runs the real daemon (``python -m agent run`` in a subprocess) with the shipped
EfficientNet-Lite0 int8 model, a synthetic source, 5 s windows and 1 s heartbeats, and a
device key made from a fixed seed.  A persistent-session subscriber records what the broker
delivers on the device's topics; the capture is checked with the protocol's own verifier.
The daemon's own account (its outbox state, ``status.json``, ``edgeproof status --json``,
its log lines, ``/metrics``) is compared with what arrived.

* outage: the broker is down for 30 s; nothing is lost, nothing forks, order is kept;
* kill -9 mid-window and restart: the chain continues from the last committed envelope;
  only rows that were still unacknowledged in the outbox may arrive twice (same bytes);
* hostile inbound: garbage, oversized, forged, misrouted and foreign-key envelopes on every
  inbound topic are rejected one by one, counted by reason, and the daemon keeps working;
* full outbox: the byte bound and a real ENOSPC on a small tmpfs apply the overflow policy;
  every gap in the chain is a heartbeat the policy dropped and counted;
* heartbeats-only mode and the Prometheus endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families
from solders.keypair import Keypair

from agent.device.state_store import StateStore
from agent.device.status import read_status
from agent.identity import device_id
from agent.inference.cards import load_card
from agent.protocol.capture import verify_capture
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope, envelope_hash, verify_envelope
from agent.protocol.messages import Beacon, Challenge, Heartbeat, Manifest, Verdict, Voucher
from agent.transport.outbox import RESERVE_BYTES
from tests.support.mosquitto import Collector, MosquittoBroker, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
PREFIX = "edgeproof/v1"
DEVICE_SEED = bytes(range(32))
COORDINATOR_SEED = bytes([7] * 32)
ROGUE_SEED = bytes([9] * 32)
OPERATOR_SEED = bytes([11] * 32)
#: Device-to-coordinator topics whose envelopes the daemon signs.
DEVICE_CHANNELS = {"hb", "proof", "response", "status", "deploy"}
OUTAGE_S = 30.0


# ---------------------------------------------------------------------------------------- helpers


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
    max_fps: float = 2.0,
    outbox_path: Path | None = None,
    max_bytes: int | None = None,
    coordinator: str = "",
    metrics_port: int | None = None,
    manifest_channel: str | None = None,
    trial_s: float = 60.0,
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
            f'operator_keys = ["{OPERATOR.pubkey()}"]',
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
            "[inference]",
            f'model = "{MODEL}"',
            f'source = "{source}"',
            f"max_fps = {max_fps}",
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


class DaemonProcess:
    """``python -m agent run`` in a subprocess; only this process is ever signalled, by its pid."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.state_dir = config.parent / "state"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems; unmounted in teardown.  Failing to mount FAILS the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"cannot mount a {size} tmpfs on {target} (needs root or CAP_SYS_ADMIN): "
                f"{done.stderr.decode(errors='replace').strip()}; the full-disk test needs a real small file system",
                pytrace=False,
            )
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


# ---------------------------------------------------------------------------------------- 1. outage


def test_broker_outage_30s_every_envelope_arrives_once_in_order_and_verifies(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)  # sessions survive the restart
    broker.start()
    collector = collector_for(broker, "outage")
    config = write_config(tmp_path / "device", broker)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(
            lambda: (
                capture_of(collector).kinds()["proof"] >= 1
                and capture_of(collector).kinds()["heartbeat"] >= 3
            ),
            90,
            "a first proof and three heartbeats through the broker",
        )
        broker.stop()
        down_at, down_ms = time.monotonic(), now_ms()
        wait_until(
            lambda: (
                (s := daemon.status()).get("outbox", {}).get("depth", 0) >= 5
                and not s["transport"]["connected"]
            ),
            OUTAGE_S,
            "the daemon to queue messages in its outbox while the broker is down",
        )
        assert daemon.alive(), daemon.tail()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself, not a check
        up_ms = now_ms()
        broker.start()  # same port, same persistence file
        wait_until(
            lambda: (
                (s := daemon.status()).get("transport", {}).get("connected")
                and s["transport"]["reconnects"] >= 1
                and s["outbox"]["depth"] == 0
            ),
            60,
            "the daemon to reconnect and drain its outbox",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()

    try:
        status = read_status(daemon.state_dir)
        assert status is not None
        seq, head = final_chain(daemon.state_dir / "outbox.sqlite3")
        facts = outbox_facts(daemon.state_dir / "outbox.sqlite3")
        assert facts["integrity"] == "ok"
        assert facts["pending_seqs"] == set(), "SIGTERM flushed everything to the broker"
        # The daemon's own count: every chained envelope it made is in its chain (fresh state).
        assert chained_emitted(status["counters"]) == seq, status["counters"]
        assert status["outbox"]["dropped_total"] == 0

        wait_until(
            lambda: capture_of(collector).seqs >= set(range(1, seq + 1)),
            30,
            f"seq 1..{seq} at the subscriber",
        )
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert cap.seqs == set(range(1, seq + 1)), f"missing {sorted(set(range(1, seq + 1)) - cap.seqs)}"
    assert cap.forks == []
    assert cap.arrival == sorted(cap.arrival), "first deliveries out of seq order"
    assert cap.first[seq].hash == head
    during = [e for e in cap.first.values() if down_ms < e.ts < up_ms]
    kinds_during = Counter(e.kind for e in during)
    assert kinds_during["heartbeat"] >= 20 and kinds_during["proof"] >= 4, (
        f"envelopes made during the {OUTAGE_S:g}s outage: {dict(kinds_during)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.first_seq == 1 and signer.last_seq == seq and signer.missing == []
    assert signer.counts["duplicates"] == sum(cap.duplicates.values())


# ---------------------------------------------------------------------------------------- 2. kill -9


def test_sigkill_mid_window_then_restart_continues_the_chain_without_fork(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "sigkill")
    config = write_config(tmp_path / "device", broker)
    outbox_path = tmp_path / "device" / "state" / "outbox.sqlite3"
    first = DaemonProcess(config, tmp_path / "daemon1.log")
    second = DaemonProcess(config, tmp_path / "daemon2.log")
    first.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["proof"] >= 1, 90, "a first proof")
        proofs_before = first.status().get("counters", {}).get("proof_emitted", 0)
        # Mid-window: the open window already holds inferences, and no proof closed it since.
        wait_until(
            lambda: (
                (s := first.status()).get("window", {}).get("inferences", 0) >= 2
                and s["counters"].get("proof_emitted", 0) == proofs_before
            ),
            20,
            "inferences in the open window",
            every=0.1,
        )
        killed_status = first.status()
        assert first.kill9() == -signal.SIGKILL
        delivered_at_kill = capture_of(collector).seqs

        facts = outbox_facts(outbox_path)
        assert facts["integrity"] == "ok", "the outbox survived kill -9 intact"
        kill_seq, kill_head = int(facts["state"]["seq"]), str(facts["state"]["prev"])
        unacked_at_kill = facts["pending_seqs"]
        assert kill_seq >= killed_status["chain"]["seq"]  # nothing the daemon reported was lost
        assert delivered_at_kill <= set(range(1, kill_seq + 1)), "the broker saw no seq the outbox forgot"
        assert unacked_at_kill <= set(range(1, kill_seq + 1))

        second.start()
        wait_until(
            lambda: (
                any(e.seq > kill_seq for e in capture_of(collector).of_kind("proof"))
                and max(capture_of(collector).seqs) >= kill_seq + 4
            ),
            90,
            "new proofs and heartbeats from the restarted daemon",
        )
        assert second.terminate() == 0, second.tail()
    finally:
        first.ensure_dead()
        second.ensure_dead()

    try:
        seq, head = final_chain(outbox_path)
        wait_until(lambda: capture_of(collector).seqs >= set(range(1, seq + 1)), 30, f"seq 1..{seq}")
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert cap.seqs == set(range(1, seq + 1)), f"missing {sorted(set(range(1, seq + 1)) - cap.seqs)}"
    assert cap.forks == [], f"seqs delivered twice with different content: {cap.forks}"
    # The restarted daemon chained onto the last committed envelope: same seq, same hash.
    assert cap.first[kill_seq].hash == kill_head
    assert cap.first[kill_seq + 1].prev == envelope_hash(cap.first[kill_seq])
    assert cap.first[seq].hash == head
    # Re-sent after the restart: only rows still unacknowledged in the outbox at the kill,
    # byte for byte (a PUBACK lost with the process); never an acknowledged one, never new content.
    resent = set(cap.duplicates)
    assert resent <= unacked_at_kill, (
        f"re-sent seqs {sorted(resent)} not all among the unacknowledged rows {sorted(unacked_at_kill)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.counts["forks"] == 0 and signer.counts["replays"] == 0 and signer.missing == []
    assert signer.counts["duplicates"] == sum(cap.duplicates.values())
    logs = second.logs()
    configured = [r for r in logs if r.get("msg") == "daemon configured"]
    assert configured and configured[0]["chain_seq"] == kill_seq


# ---------------------------------------------------------------------------------------- 3. hostile


def coordinator_envelope(kind: str, body: Any, signer: Keypair = COORDINATOR, seq: int = 1) -> Envelope:
    prev = GENESIS_PREV if seq == 1 else "ab" * 32
    return build_envelope(signer, kind, body, seq=seq, prev=prev, ts=now_ms())


def bodies(dev: str, model_sha: str) -> dict[str, Any]:
    """A valid body of each coordinator kind addressed to ``dev``."""
    now = now_ms()
    return {
        "beacon": Beacon(slot=5, nonce="11" * 32, time_ms=now, slot_ms=30_000),
        "challenge": Challenge(
            device=dev, nonce="22" * 32, model_sha256=model_sha, deadline_ms=now + 120_000
        ),
        "verdict": Verdict(device=dev, ref_kind="proof", ref_seq=1, ref_hash="33" * 32, accepted=True),
        "voucher": Voucher(
            device=dev,
            claim_id="44" * 16,
            owner=str(ROGUE.pubkey()),
            mint=str(COORDINATOR.pubkey()),
            amount=1,
            decimals=6,
            transaction=base64.b64encode(b"\x01" * 64).decode(),
            blockhash=str(ROGUE.pubkey()),
            last_valid_block_height=1,
        ),
    }


def manifest(version: int, *, channel: str = "stable", expires_ms: int | None = None) -> Manifest:
    """A release of the shipped model on ``channel``, for every device (not installed: no updater yet)."""
    card = load_card(str(MODEL)).card
    return Manifest.model_validate(
        {
            "channel": channel,
            "version": version,
            "model_id": card.id,
            "model_version": card.version,
            "model": "model.onnx",
            "card": "model.toml",
            "artifacts": [
                {
                    "name": "model.onnx",
                    "url": "https://127.0.0.1/m.onnx",
                    "sha256": card.sha256,
                    "length": 10,
                },
                {"name": "model.toml", "url": "https://127.0.0.1/m.toml", "sha256": "cd" * 32, "length": 10},
            ],
            "expires_ms": now_ms() + 3_600_000 if expires_ms is None else expires_ms,
            "stages": [10_000],
            "stage": 0,
        }
    )


def forged(env: Envelope) -> bytes:
    """The envelope with a valid-looking signature over other bytes."""
    raw = dict(env.raw)
    raw["sig"] = str(COORDINATOR.sign_message(b"something else"))
    return json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()


def test_hostile_inbound_is_rejected_by_reason_and_the_daemon_keeps_working(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "hostile")
    metrics_port = free_port()
    config = write_config(
        tmp_path / "device",
        broker,
        max_fps=1.0,
        coordinator=str(COORDINATOR.pubkey()),
        metrics_port=metrics_port,
        manifest_channel="stable",
    )
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()
    topics = {
        "beacon": f"{PREFIX}/beacon",
        "challenge": f"{PREFIX}/dev/{DEV}/challenge",
        "verdict": f"{PREFIX}/dev/{DEV}/verdict",
        "voucher": f"{PREFIX}/dev/{DEV}/voucher",
    }
    try:
        # Subscribed (one SUBSCRIBE carries all filters): a heartbeat quotes our beacon's nonce.
        beacon = coordinator_envelope(
            "beacon", Beacon(slot=3, nonce="aa" * 32, time_ms=now_ms(), slot_ms=30_000)
        )
        publisher.publish(topics["beacon"], beacon.wire, retain=True)  # as a coordinator does
        wait_until(
            lambda: any(
                e.raw["body"]["beacon_nonce"] == "aa" * 32 for e in capture_of(collector).of_kind("heartbeat")
            ),
            90,
            "a heartbeat quoting the coordinator's beacon",
        )

        good = bodies(DEV, card.sha256)
        other = bodies(str(ROGUE.pubkey()), card.sha256)
        wrong_kind_for = {
            "beacon": "verdict",
            "challenge": "beacon",
            "verdict": "voucher",
            "voucher": "challenge",
        }
        device_heartbeat = build_envelope(
            ROGUE,
            "heartbeat",
            Heartbeat.model_validate(
                {
                    "beacon_slot": 1,
                    "beacon_nonce": "00" * 32,
                    "uptime_s": 1,
                    "health": {"cpu_bp": 1, "mem_bp": 1},
                }
            ),
            seq=1,
            prev=GENESIS_PREV,
            ts=now_ms(),
        )
        hostile: list[tuple[str, bytes, str]] = []
        for kind, topic in topics.items():
            hostile += [
                (topic, b'{"v":1,"kind":', "malformed"),
                (topic, b"\xff\xfe\x00 not utf-8", "malformed"),
                (topic, b"[]", "malformed"),
                (topic, b'{"v":1.5}', "malformed"),
                (topic, b"[" * 5000 + b"]" * 5000, "oversized"),  # 10000 bytes: over every bound
                (topic, b"{" + b" " * 8200 + b"}", "oversized"),  # just above the 8192-byte bound
                (topic, forged(coordinator_envelope(kind, good[kind])), "bad_signature"),
                (
                    topic,
                    coordinator_envelope(wrong_kind_for[kind], good[wrong_kind_for[kind]]).wire,
                    "wrong_kind",
                ),
                (topic, device_heartbeat.wire, "wrong_kind"),
                # Another key than the pinned coordinator (was `unknown_device` before issue 6).
                (topic, coordinator_envelope(kind, good[kind], signer=ROGUE).wire, "untrusted_coordinator"),
            ]
            if kind != "beacon":
                # Addressed to another device, on ours: refused by the topic check, before the signature.
                hostile.append((topic, coordinator_envelope(kind, other[kind]).wire, "topic"))
        hostile.append((topics["challenge"], b"\x00" * 1_000_000, "oversized"))
        # Fleet manifests: v5 is accepted first (retained, as an operator publishes it), then
        # everything that must not replace it.
        manifest_topic = f"{PREFIX}/fleet/manifest/stable"
        publisher.publish(
            manifest_topic, coordinator_envelope("manifest", manifest(5), OPERATOR).wire, retain=True
        )
        wait_until(
            lambda: daemon.status().get("manifests", {}).get("stable", {}).get("version") == 5,
            30,
            "the daemon to accept manifest v5",
        )
        hostile += [
            (manifest_topic, b'{"v":1,"kind":', "malformed"),
            (manifest_topic, b"{" + b" " * 8200 + b"}", "oversized"),
            (
                manifest_topic,
                forged(coordinator_envelope("manifest", manifest(6), OPERATOR)),
                "bad_signature",
            ),
            (manifest_topic, coordinator_envelope("beacon", good["beacon"]).wire, "wrong_kind"),
            (manifest_topic, coordinator_envelope("manifest", manifest(6), ROGUE).wire, "untrusted_operator"),
            # The coordinator's key is trusted for beacons and challenges, not for models.
            (manifest_topic, coordinator_envelope("manifest", manifest(6)).wire, "untrusted_operator"),
            (
                manifest_topic,
                coordinator_envelope("manifest", manifest(6, channel="beta"), OPERATOR).wire,
                "wrong_channel",
            ),
            (manifest_topic, coordinator_envelope("manifest", manifest(4), OPERATOR).wire, "stale_version"),
            (
                manifest_topic,
                coordinator_envelope("manifest", manifest(6, expires_ms=now_ms() - 1), OPERATOR).wire,
                "expired",
            ),
        ]
        # A genuine but older beacon (a replay) must not roll the heartbeats' beacon back.
        old_beacon = Beacon(slot=2, nonce="bb" * 32, time_ms=now_ms(), slot_ms=30_000)
        hostile.append((topics["beacon"], coordinator_envelope("beacon", old_beacon).wire, "replay"))
        # Valid envelopes the daemon must still refuse to act on (answer_challenges):
        expired = Challenge(device=DEV, nonce="55" * 32, model_sha256=card.sha256, deadline_ms=now_ms() - 1)
        wrong_model = Challenge(
            device=DEV, nonce="66" * 32, model_sha256="77" * 32, deadline_ms=now_ms() + 60_000
        )
        refused = [
            (topics["challenge"], coordinator_envelope("challenge", expired).wire, "expired"),
            (topics["challenge"], coordinator_envelope("challenge", wrong_model).wire, "wrong_model"),
        ]
        # Nothing the daemon can act on may be in the hostile list (a regression guard on this test).
        assert all(reason != "ok" for _, _, reason in hostile)

        for topic, payload, _ in hostile + refused:
            publisher.publish(topic, payload)
        after_garbage_ms = now_ms()

        nonce = os.urandom(32).hex()
        challenge = Challenge(
            device=DEV, nonce=nonce, model_sha256=card.sha256, deadline_ms=now_ms() + 60_000
        )
        publisher.publish(topics["challenge"], coordinator_envelope("challenge", challenge, seq=9).wire)
        responses = wait_until(
            lambda: [
                e
                for e in capture_of(collector).of_kind("challenge_response")
                if e.raw["body"]["nonce"] == nonce
            ],
            60,
            "the answer to the valid challenge sent after the garbage",
        )
        wait_until(
            lambda: any(e.ts > after_garbage_ms + 1500 for e in capture_of(collector).of_kind("heartbeat")),
            30,
            "heartbeats after the garbage",
        )
        late = [e for e in capture_of(collector).of_kind("heartbeat") if e.ts > after_garbage_ms]
        assert {e.raw["body"]["beacon_nonce"] for e in late} == {"aa" * 32}, (
            "the beacon replay rolled it back"
        )
        assert daemon.alive(), daemon.tail()

        expected = Counter(reason for _, _, reason in hostile + refused)
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == dict(expected),
            15,
            f"status.json to count the rejections {dict(expected)}",
        )
        owner_view = edgeproof_status(config)
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
    finally:
        publisher.close()
        code = daemon.terminate() if daemon.alive() else None
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()

    assert code == 0, daemon.tail()
    assert owner_view["running"] is True
    assert owner_view["rejected_inbound"] == dict(expected)
    assert owner_view["counters"]["challenges_answered"] == 1
    # Only v5 was accepted; nothing hostile replaced it.
    assert owner_view["counters"]["manifests_accepted"] == 1
    stable = owner_view["manifests"]["stable"]
    assert (stable["version"], stable["operator"], stable["eligible"]) == (5, str(OPERATOR.pubkey()), True)
    # The accepted version is kept beside the chain head (and in the state copy), so a restart
    # still refuses v4.
    state_dir = tmp_path / "device" / "state"
    with StateStore.open(state_dir / "outbox.sqlite3") as kept:
        assert kept.manifest_version("stable") == 5
    assert json.loads((state_dir / "state-copy.json").read_text())["manifests"] == {"stable": 5}

    # Every rejection is logged naming its reason: one line each, up to 5 per reason per 10 s;
    # beyond that one summary line per reason carries the count (a flood does not flood journald).
    logs = daemon.logs()
    logged = Counter(
        r["reason"] for r in logs if r.get("msg") in ("inbound message rejected", "challenge refused")
    )
    assert all(n <= 5 * 3 for n in logged.values()), logged
    held: Counter[str] = Counter()
    for r in logs:
        if r.get("msg") == "inbound rejections not logged one by one":
            held[r["reason"]] += r["count"]
    assert logged + held == expected
    assert not [r for r in logs if r.get("msg", "").startswith("inbound handler failed")]

    # The answer is right: the same sketch as the model run here on the nonce's synthetic input.
    from agent.challenge_run import expected_sketch
    from agent.inference.pipeline import Pipeline
    from agent.inference.runtime import backend_settings, resolve_profile
    from agent.protocol.challenge import sketch_matches

    local = Pipeline.open(
        str(MODEL), backend_settings(resolve_profile("generic-x86_64", Path("/")), threads=1)
    )
    want, _ = expected_sketch(local, nonce)
    assert len(responses) == 1
    assert sketch_matches(responses[0].raw["body"]["sketch"], want)

    # Still a clean chain, and no answer to any of the refused challenges.
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    answered = {e.raw["body"]["nonce"] for e in cap.of_kind("challenge_response")}
    assert answered == {nonce}

    # /metrics counts the same rejections.
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    by_reason = {
        s.labels["reason"]: s.value
        for s in families["edgeproof_inbound_rejected"].samples
        if s.name.endswith("_total")
    }
    assert by_reason == {k: float(v) for k, v in expected.items()}
    inferences = [s.value for s in families["edgeproof_inferences"].samples if s.name.endswith("_total")]
    assert inferences and inferences[0] > 0
    accepted = [
        s.value for s in families["edgeproof_manifests_accepted"].samples if s.name.endswith("_total")
    ]
    assert accepted == [1.0]


def heartbeats_quoting(collector: Collector, nonce: str) -> list[Envelope]:
    return [e for e in capture_of(collector).of_kind("heartbeat") if e.raw["body"]["beacon_nonce"] == nonce]


def test_a_beacon_from_the_future_is_refused_and_the_next_genuine_beacon_is_quoted(tmp_path: Path) -> None:
    """Issue 6, beacon lockout: on main a signed beacon with a huge slot was taken, and every
    genuine beacon after it was refused as a replay until a restart."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "beacons")
    config = write_config(
        tmp_path / "device",
        broker,
        coordinator=str(COORDINATOR.pubkey()),
        extra="[beacons]\ntolerance_s = 60",
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    topic = f"{PREFIX}/beacon"
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        now = now_ms()
        # First beacon after the start: its time is an hour ahead (no earlier beacon to compare with).
        ahead = Beacon(slot=100, nonce="a1" * 32, time_ms=now + 3_600_000, slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", ahead, seq=10).wire)
        genuine = Beacon(slot=100, nonce="a2" * 32, time_ms=now - 10_000, slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", genuine, seq=11).wire)
        wait_until(lambda: heartbeats_quoting(collector, "a2" * 32), 30, "a heartbeat quoting slot 100")
        # A genuinely signed beacon with a huge slot and a plausible time: the lockout attempt.
        huge = Beacon(slot=10**12, nonce="a3" * 32, time_ms=now_ms(), slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", huge, seq=12).wire)
        following = Beacon(slot=101, nonce="a4" * 32, time_ms=now_ms(), slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", following, seq=13).wire)
        quoted = wait_until(
            lambda: heartbeats_quoting(collector, "a4" * 32), 30, "a heartbeat quoting slot 101"
        )
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == {"beacon_from_future": 2},
            15,
            "both future beacons counted",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        publisher.close()
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    assert quoted[0].raw["body"]["beacon_slot"] == 101
    quoted_nonces = {e.raw["body"]["beacon_nonce"] for e in cap.of_kind("heartbeat")}
    assert "a1" * 32 not in quoted_nonces and "a3" * 32 not in quoted_nonces
    # Once slot 101 was quoted, no later heartbeat quotes anything else.
    after = [e for e in cap.of_kind("heartbeat") if e.seq >= quoted[0].seq]
    assert {e.raw["body"]["beacon_slot"] for e in after} == {101}
    refused = [r for r in daemon.logs() if r.get("msg") == "inbound message rejected"]
    assert [r["reason"] for r in refused] == ["beacon_from_future", "beacon_from_future"]
    assert re.fullmatch(
        r"beacon time is 3[0-6]\d{5} ms ahead of the device clock \(tolerance 60000 ms\)", refused[0]["error"]
    ), refused[0]["error"]
    assert re.fullmatch(
        rf"beacon slot {10**12} is {10**12 - 100} slots past slot 100; at most [5-9] can have started since "
        r"\(slot 30000 ms\)",
        refused[1]["error"],
    ), refused[1]["error"]


def test_without_a_coordinator_pin_every_coordinator_message_is_refused_and_proofs_continue(
    tmp_path: Path,
) -> None:
    """Issue 6, unpinned coordinator: on main an empty pin trusted whoever signed."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "unpinned")
    metrics_port = free_port()
    config = write_config(tmp_path / "device", broker, coordinator="", metrics_port=metrics_port)
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        good = bodies(DEV, card.sha256)
        topics = {
            "beacon": f"{PREFIX}/beacon",
            "challenge": f"{PREFIX}/dev/{DEV}/challenge",
            "verdict": f"{PREFIX}/dev/{DEV}/verdict",
            "voucher": f"{PREFIX}/dev/{DEV}/voucher",
        }
        for seq, (kind, topic) in enumerate(topics.items(), start=1):
            publisher.publish(topic, coordinator_envelope(kind, good[kind], seq=seq).wire)
        sent_ms = now_ms()
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == {"unpinned_coordinator": 4},
            30,
            "four coordinator messages refused as unpinned",
        )
        wait_until(
            lambda: (
                any(e.ts > sent_ms for e in capture_of(collector).of_kind("proof"))
                and sum(e.ts > sent_ms for e in capture_of(collector).of_kind("heartbeat")) >= 3
            ),
            60,
            "proofs and heartbeats after the refusals",
        )
        owner_json = edgeproof_status(config)
        owner_text = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--config", str(config)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        publisher.close()
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    assert owner_json["coordinator"] == {
        "pinned": False,
        "pubkey": None,
        "notice": "coordinator: not pinned, every coordinator message is refused",
    }
    assert owner_json["rejected_inbound"] == {"unpinned_coordinator": 4}
    assert owner_json["beacon_slot"] == 0 and "challenges_answered" not in owner_json["counters"]
    assert "vouchers_seen" not in owner_json["counters"]
    assert "not pinned, every coordinator message is refused (set coordinator.pubkey)" in owner_text
    assert owner_json["verdicts"] == []
    # Heartbeats quote no beacon; proofs and heartbeats kept flowing; nothing was answered.
    assert {
        (e.raw["body"]["beacon_slot"], e.raw["body"]["beacon_nonce"]) for e in cap.of_kind("heartbeat")
    } == {(0, "0" * 64)}
    assert cap.kinds()["proof"] >= 1 and cap.kinds()["challenge_response"] == 0
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    by_reason = {
        s.labels["reason"]: s.value
        for s in families["edgeproof_inbound_rejected"].samples
        if s.name.endswith("_total")
    }
    assert by_reason == {"unpinned_coordinator": 4.0}
    assert [s.value for s in families["edgeproof_coordinator_pinned"].samples] == [0.0]
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]


# ---------------------------------------------------------------------------------------- 4. full outbox


@pytest.mark.parametrize("limit", ["byte_bound", "enospc"])
def test_full_outbox_keeps_proofs_drops_oldest_heartbeats_and_explains_every_gap(
    tmp_path: Path, tmpfs: Callable[[str], Path], limit: str
) -> None:
    """Broker down, outbox on a small tmpfs.  ``byte_bound``: the configured 6144-byte bound
    fills.  ``enospc``: the bound is far away but the file system fills up (a filler file takes
    every free block), so SQLite itself answers SQLITE_FULL."""
    disk = tmpfs("1m")
    outbox_path = disk / "outbox.sqlite3"
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    collector = collector_for(broker, f"disk-{limit}")
    config = write_config(
        tmp_path / "device",
        broker,
        outbox_path=outbox_path,
        max_bytes=6144 if limit == "byte_bound" else None,
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        broker.stop()
        assert Path(str(outbox_path) + "-reserve").stat().st_size == RESERVE_BYTES
        if limit == "enospc":
            with open(disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            with pytest.raises(OSError) as full:
                (disk / "probe").write_bytes(b"\0" * 8192)
            assert full.value.errno == errno.ENOSPC
            reasons = {"disk_full_evicted"}
        else:
            reasons = {"evicted_full"}
        proofs_at_full = daemon.status().get("counters", {}).get("proof_emitted", 0)

        def heartbeats_dropped() -> int:
            drops = daemon.status().get("outbox", {}).get("drops", {}).get("heartbeat", {})
            return sum(drops.get(r, 0) for r in reasons)

        wait_until(
            lambda: (
                heartbeats_dropped() >= 3
                and daemon.status()["counters"].get("proof_emitted", 0) >= proofs_at_full + 2
            ),
            60,
            f"heartbeats dropped by the policy ({limit}) while proofs keep being made",
        )
        assert daemon.alive(), daemon.tail()
        broker.start()
        wait_until(
            lambda: (
                (s := daemon.status()).get("transport", {}).get("connected") and s["outbox"]["depth"] == 0
            ),
            60,
            "the kept messages to drain once the broker is back",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()

    try:
        status = read_status(daemon.state_dir)
        assert status is not None
        facts = outbox_facts(outbox_path)
        seq = int(facts["state"]["seq"])
        wait_until(lambda: max(capture_of(collector).seqs) >= seq, 30, f"seq {seq} at the subscriber")
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert facts["integrity"] == "ok", "the outbox database is intact"
    counters = status["counters"]
    drops = status["outbox"]["drops"]
    assert "proof" not in drops, f"proofs are never dropped: {drops}"
    assert set(drops["heartbeat"]) <= {"evicted_full", "disk_full_evicted"}, drops
    assert counters.get("heartbeat_lost", 0) == 0 and counters.get("proof_lost", 0) == 0, counters
    chained_drops = sum(n for kind, reasons_ in drops.items() if kind != "status" for n in reasons_.values())
    assert chained_emitted(counters) == seq

    missing = set(range(1, seq + 1)) - cap.seqs
    assert len(missing) == chained_drops, f"gaps {sorted(missing)} vs drops {drops}"
    assert cap.forks == [] and cap.arrival == sorted(cap.arrival)
    assert len(cap.of_kind("proof")) == counters["proof_emitted"], "every proof arrived"
    # The oldest heartbeats went: no kept heartbeat is older than a dropped one it outlived.
    kept_heartbeats = [e.seq for e in cap.of_kind("heartbeat")]
    assert not [s for s in kept_heartbeats if min(missing) < s < max(missing)], (
        f"kept heartbeats inside the dropped range {min(missing)}..{max(missing)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    gaps = {s for lo, hi in report.signers[DEV].missing for s in range(lo, hi + 1)}
    assert gaps == missing
    assert {p.reason for p in report.problems} == {"chain_gap"}, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.counts["bad_signature"] == signer.counts["forks"] == signer.counts["schema"] == 0

    logs = daemon.logs()
    assert not [r for r in logs if r.get("level") == "critical" or "Traceback" in json.dumps(r)]
    assert not [r for r in logs if r.get("msg") == "message not stored"], "nothing lost outside the policy"
    overflow = [r for r in logs if r.get("msg") == "outbox overflow"]
    assert overflow and all(r["policy"] == "drop_oldest_heartbeats" for r in overflow)
    if limit == "enospc":
        disk_lines = [r["msg"] for r in logs if str(r.get("msg", "")).startswith("outbox disk full")]
        assert disk_lines, "a clear log line about the full disk"
        assert drops["heartbeat"].get("disk_full_evicted", 0) >= 3


# ---------------------------------------------------------------------------------------- 5. heartbeats-only + metrics


def test_heartbeats_only_mode_and_prometheus_endpoint(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "metrics")
    port = free_port()
    config = write_config(
        tmp_path / "device", broker, source="none", coordinator=str(COORDINATOR.pubkey()), metrics_port=port
    )
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 3, 90, "three heartbeats")
        nonce = os.urandom(32).hex()
        challenge = Challenge(
            device=DEV, nonce=nonce, model_sha256=card.sha256, deadline_ms=now_ms() + 60_000
        )
        publisher.publish(f"{PREFIX}/dev/{DEV}/challenge", coordinator_envelope("challenge", challenge).wire)
        wait_until(
            lambda: capture_of(collector).kinds()["challenge_response"] == 1, 30, "the challenge answered"
        )
        # Past at least two 5 s windows: still no proof, no inference.
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 11, 30, "eleven heartbeats")
        first = scrape()
        wait_until(
            lambda: scrape()["edgeproof_heartbeats_total"] > first["edgeproof_heartbeats_total"],
            10,
            "a heartbeat more",
        )
        second = scrape()
        status = daemon.status()
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        publisher.close()
        cap = capture_of(collector)
        collector.close()
        broker.kill()

    assert cap.kinds()["proof"] == 0
    assert status["counters"].get("inferences", 0) == 0 and status["inference"]["mode"] == "heartbeats-only"
    assert second["edgeproof_inferences_total"] == 0
    assert second["edgeproof_proofs_total"] == 0
    assert second["edgeproof_challenges_answered_total"] == 1
    assert second["edgeproof_heartbeats_total"] >= 11
    assert second["edgeproof_envelopes_emitted_total{kind=heartbeat}"] == second["edgeproof_heartbeats_total"]
    assert second["edgeproof_chain_seq"] >= second["edgeproof_heartbeats_total"] + 1
    assert second["edgeproof_outbox_depth"] >= 0 and second["edgeproof_mqtt_connected"] == 1
    info = [k for k in second if k.startswith("edgeproof_device_info")]
    assert len(info) == 1 and "mode=heartbeats-only" in info[0] and f"device={DEV}" in info[0]
    assert not any(k.startswith("edgeproof_inbound_rejected_total") for k in second)
    assert second["edgeproof_coordinator_pinned"] == 1
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    # It listens where configured (loopback).
    for line in daemon.logs():
        if line.get("msg") == "metrics endpoint listening":
            assert line["host"] == "127.0.0.1" and line["port"] == port
            break
    else:
        raise AssertionError("no 'metrics endpoint listening' log line")


def test_missing_source_is_retried_from_the_main_loop_while_heartbeats_continue(tmp_path: Path) -> None:
    """A source that is not there yet never blocks the loop: heartbeats flow, then proofs once it appears."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "late-source")
    folder = tmp_path / "frames"  # does not exist when the daemon starts
    config = write_config(tmp_path / "device", broker, source=str(folder), max_fps=5.0)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 4, 60, "heartbeats without a source")
        assert daemon.status()["counters"].get("inferences", 0) == 0
        folder.mkdir()
        for i in range(3):
            assert cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
        wait_until(lambda: capture_of(collector).kinds()["proof"] >= 1, 90, "a proof once the folder exists")
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    retries = [r for r in daemon.logs() if r.get("msg") == "source unavailable"]
    # Backoff from 1 s doubling: a handful of attempts, each logged with its next delay, never a flood.
    assert 2 <= len(retries) <= 8, [r.get("retry_s") for r in retries]
    delays = [r["retry_s"] for r in retries]
    assert delays == sorted(delays) and delays[0] == 1.0
    assert any(r.get("msg") == "source opened" for r in daemon.logs())
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
