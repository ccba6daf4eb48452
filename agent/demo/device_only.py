"""The one-device demo (`edgeproof demo --device-only`): the shipped models, then one daemon.

1. Generate a clip from the bundled sample photos.
2. Run every shipped model card on it and print what each saw.
3. Start a local Mosquitto on a free loopback port, a throwaway device key, and the
   daemon on the clip for a few windows; a demo coordinator key publishes a signed
   beacon and one challenge.  Every message the broker carried is captured and
   verified with public information only (signatures, schemas, hash chain); the
   challenge answer is checked against a local re-run of the model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from solders.keypair import Keypair

from agent.commands.output import print_kv, print_table
from agent.config import default_models_dir, load_config
from agent.errors import EdgeproofError
from agent.identity import init_keypair
from agent.inference.pipeline import LatencyStats, Pipeline
from agent.inference.runtime import backend_settings, resolve_profile
from agent.inference.sources import frames, open_source
from agent.localnet.mosquitto import MosquittoBroker

DEMO_COORDINATOR_SEED = b"edgeproof-demo-coordinator-seed!"


def run_models(clip: Path) -> list[dict[str, Any]]:
    profile = resolve_profile("auto")
    results = []
    for card in sorted(default_models_dir().glob("*.toml")):
        pipeline = Pipeline.open(str(card), backend_settings(profile))
        source = open_source(str(clip))
        latency = LatencyStats()
        start = time.perf_counter()
        count = 0
        for frame in frames(source, None):
            latency.add(pipeline.step(frame).latency_us)
            count += 1
        source.close()
        elapsed = time.perf_counter() - start
        counts = pipeline.decoder.counts()
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
        results.append(
            {
                **pipeline.describe(),
                "frames": count,
                "fps": round(count / elapsed, 1),
                "latency_us": latency.summary(),
                "top": top,
            }
        )
    if not results:
        raise EdgeproofError(f"no model cards in {default_models_dir()}")
    return results


class Capture:
    """Subscribes to everything under the prefix and keeps `topic payload` lines."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.lines: list[str] = []
        self.max_payload = 0
        self.total_bytes = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="edgeproof-demo-capture",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(host, port)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            raise EdgeproofError("demo capture could not subscribe to the local broker")

    def _on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.lines.append(f"{msg.topic} {msg.payload.decode('utf-8', errors='replace')}")
            self.max_payload = max(self.max_payload, len(msg.payload))
            self.total_bytes += len(msg.payload)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_network(workdir: Path, clip: Path, seconds: float, window: int) -> dict[str, Any]:
    from agent.challenge_run import answer_matches, expected_sketch
    from agent.device.daemon import Daemon
    from agent.protocol.capture import verify_capture
    from agent.protocol.envelope import build_envelope, verify_envelope
    from agent.protocol.messages import Beacon, Challenge
    from agent.protocol.topics import Topics

    coordinator = Keypair.from_seed(DEMO_COORDINATOR_SEED)
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    try:
        key = workdir / "device-key.json"
        if not key.exists():
            init_keypair(key)
        config_path = workdir / "agent.toml"
        config_path.write_text(
            f"""[device]
key = "{key}"
state_dir = "{workdir / "state"}"

[inference]
source = "{clip}"
max_fps = 10

[proofs]
window_s = {window}
heartbeat_s = 2

[mqtt]
port = {broker.port}

[coordinator]
pubkey = "{coordinator.pubkey()}"
""",
            encoding="utf-8",
        )
        config = load_config(config_path, env={})
        topics = Topics(config.mqtt.topic_prefix)
        capture = Capture(broker.host, broker.port, config.mqtt.topic_prefix)
        now = int(time.time() * 1000)
        nonce = os.urandom(32).hex()
        beacon = build_envelope(
            coordinator,
            "beacon",
            Beacon(slot=1, nonce=nonce, time_ms=now, slot_ms=30_000),
            seq=1,
            prev="0" * 64,
            ts=now,
        )
        capture.publish(topics.beacon(), beacon.wire, retain=True)
        daemon = Daemon(config)
        runner = threading.Thread(target=daemon.run, kwargs={"duration_s": seconds}, daemon=True)
        runner.start()
        time.sleep(min(3.0, seconds / 3))
        card = daemon.pipeline.loaded.card
        challenge_nonce = os.urandom(32).hex()
        challenge = build_envelope(
            coordinator,
            "challenge",
            Challenge(
                device=daemon.dev, nonce=challenge_nonce, model_sha256=card.sha256, deadline_ms=now + 60_000
            ),
            seq=2,
            prev=beacon.hash,
            ts=int(time.time() * 1000),
        )
        capture.publish(topics.device(daemon.dev, "challenge"), challenge.wire)
        runner.join(seconds + 30)
        time.sleep(0.5)
        capture.close()
        (workdir / "capture.txt").write_text("\n".join(capture.lines) + "\n", encoding="utf-8")
        report = verify_capture(capture.lines, prefix=config.mqtt.topic_prefix)
        device_kinds: dict[str, int] = {}
        sketch_ok = None
        for line in capture.lines:
            _, payload = line.split(" ", 1)
            env = verify_envelope(payload.encode())
            if env.dev != daemon.dev:
                continue
            device_kinds[env.kind] = device_kinds.get(env.kind, 0) + 1
            if env.kind == "challenge_response":
                local = Pipeline.open(config.inference.model, backend_settings(resolve_profile("auto")))
                expected, _ = expected_sketch(local, challenge_nonce)
                sketch_ok = answer_matches(local.loaded.card, expected, list(getattr(env.body, "sketch", [])))
        return {
            "broker": f"{broker.host}:{broker.port}",
            "device_id": daemon.dev,
            "messages": len(capture.lines),
            "device_messages": device_kinds,
            "all_valid": report.ok,
            "verify_summary": report.summary(),
            "largest_payload_bytes": capture.max_payload,
            "bytes_sent_total": capture.total_bytes,
            "challenge_answer_matches": sketch_ok,
            "capture_file": str(workdir / "capture.txt"),
        }
    finally:
        broker.stop()


def print_report(report: dict[str, Any]) -> None:
    rows = []
    for m in report["models"]:
        lat = m["latency_us"]
        top = ", ".join(f"{label} x{n}" for label, n in m["top"])
        rows.append(
            (m["model"], m["backend"], m["provider"], m["frames"], m["fps"], f"{lat['p50'] / 1000:.1f}", top)
        )
    print_table(
        f"shipped models on the demo clip ({report['clip']['frames']} frames)",
        ["model", "backend", "provider", "frames", "fps", "p50 ms", "most seen"],
        rows,
    )
    network = report["network"]
    if network:
        shown = {k: v for k, v in network.items() if k != "device_messages"}
        shown["device messages"] = json.dumps(network["device_messages"], sort_keys=True)
        print_kv("local network: daemon -> Mosquitto -> independent verifier", shown)
