"""Privacy, end to end: no byte of what the camera saw leaves the device.

The real daemon (``python -m agent run``) runs on an image folder whose frames are random
bytes from a fixed seed (lossless PNG), with 5 s work windows, 1 s heartbeats and a challenge
from a coordinator key.  Everything it sends is recorded three ways:

* a TCP proxy between the agent and Mosquitto keeps the raw byte streams of every
  connection (the strongest view: nothing the agent writes to its socket is missed); the
  agent-to-broker stream is parsed as MQTT v5 packets, and must parse completely;
* a subscriber on ``#`` records what the broker delivers;
* the broker's own log (``log_type all``) gives the size of every PUBLISH it received.

Canaries are every 16-byte window of: each frame as decoded (BGR) and as RGB, the resized
uint8 image the model sees (computed with the project's ``Preprocessor``), the same in planar
(CHW) order, the float32 input tensor, the model's raw output tensor, and each frame's input
and output commitment digests (only Merkle roots may leave, never per-frame digests).  The
captured bytes are searched for them raw and after decoding every hex run, base64 run
(standard and URL-safe, at every alignment) and comma-separated decimal byte list, so an
encoded leak of 16 consecutive bytes is found too (the detector itself is checked on planted
leaks first).  Besides: every payload (and the last will) is a valid signed envelope of the
device on the topic of its kind, in canonical form and within its kind's size bound, in the
agent's stream, in the subscriber's deliveries and by the broker's logged sizes; the chain
links; a proof with inferences, heartbeats and a challenge response were sent, so the test is
not vacuous; and the proofs' input and output Merkle roots equal the roots recomputed from
the canary frames, so the canary forms are exactly what the daemon processed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from solders.keypair import Keypair

from agent.identity import device_id, write_keypair
from agent.inference.cards import load_card
from agent.inference.pipeline import Pipeline
from agent.inference.preprocess import Preprocessor
from agent.inference.runtime import backend_settings, resolve_profile
from agent.protocol.chain import ChainVerifier
from agent.protocol.envelope import MAX_BYTES, Envelope, build_envelope, verify_envelope
from agent.protocol.leaf import LEAF_HASHES, default_leaf_hash, input_digest, output_digest
from agent.protocol.merkle import merkle_root
from agent.protocol.messages import Beacon, Challenge, Proof
from agent.protocol.topics import DEVICE_PUBLISHES, Topics
from tests.support.mosquitto import Collector, MosquittoBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CARD = ROOT / "models" / "efficientnet-lite0-int8.toml"
CANARY_LEN = 16
FRAMES = 3
FRAME_W, FRAME_H = 320, 240
RUN_S = 12.0
PREFIX = "edgeproof/v1"


# ------------------------------------------------------------------ canaries


def canary_frames(seed: int = 20260101) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(FRAME_H, FRAME_W, 3), dtype=np.uint8) for _ in range(FRAMES)]


def canary_sources(frames: list[np.ndarray]) -> dict[str, bytes]:
    """Every form of the frames the device holds in memory, as byte strings."""
    card = load_card(CARD)
    prep = Preprocessor(card.card.input)
    pipeline = Pipeline.open(str(CARD), backend_settings(resolve_profile("auto")))
    sources: dict[str, bytes] = {}
    for i, frame in enumerate(frames):
        prepared = prep(frame)
        outputs = pipeline.step(frame).outputs
        sources[f"frame{i}.bgr"] = frame.tobytes()
        sources[f"frame{i}.rgb"] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).tobytes()
        sources[f"frame{i}.resized"] = np.ascontiguousarray(prepared.resized).tobytes()
        sources[f"frame{i}.resized_chw"] = np.ascontiguousarray(prepared.resized.transpose(2, 0, 1)).tobytes()
        sources[f"frame{i}.tensor"] = prepared.tensor.tobytes()
        sources[f"frame{i}.outputs"] = b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)
        for leaf_hash in LEAF_HASHES:  # whichever the daemon uses, its per-frame digests are canaries too
            sources[f"frame{i}.input_digest.{leaf_hash}"] = input_digest(prepared.resized, leaf_hash)
            sources[f"frame{i}.output_digest.{leaf_hash}"] = output_digest(outputs, leaf_hash)
    return sources


_HEX_RUN = re.compile(rb"[0-9a-fA-F]{%d,}" % (2 * CANARY_LEN))
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{%d,}" % (4 * CANARY_LEN // 3))
_DEC_RUN = re.compile(rb"\d{1,3}(?:\s*,\s*\d{1,3}){%d,}" % (CANARY_LEN - 1))


def decoded_forms(blob: bytes) -> Iterator[bytes]:
    """``blob`` itself, and what every hex, base64 or decimal-list run in it decodes to."""
    yield blob
    for match in _HEX_RUN.finditer(blob):
        run = match.group()
        for start in (0, 1):
            part = run[start:]
            with contextlib.suppress(ValueError):
                yield binascii.unhexlify(part[: len(part) // 2 * 2])
    for match in _B64_RUN.finditer(blob):
        run = match.group().replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):
            part = run[start:]
            part = part[: len(part) // 4 * 4]
            with contextlib.suppress(binascii.Error, ValueError):
                yield base64.b64decode(part, validate=True)
    for match in _DEC_RUN.finditer(blob):
        values = [int(v) for v in re.split(rb"\s*,\s*", match.group())]
        chunk: list[int] = []
        for value in [*values, 256]:  # split at values that are not bytes
            if value <= 255:
                chunk.append(value)
            else:
                if len(chunk) >= CANARY_LEN:
                    yield bytes(chunk)
                chunk = []


def windows(data: bytes) -> set[bytes]:
    return {data[i : i + CANARY_LEN] for i in range(len(data) - CANARY_LEN + 1)}


def find_canaries(blobs: Iterable[bytes], sources: dict[str, bytes]) -> list[str]:
    """Names of the canary sources with a 16-byte window in any (decoded) blob."""
    hay: set[bytes] = set()
    for blob in blobs:
        for form in decoded_forms(blob):
            hay |= windows(form)
    found = []
    for name, data in sources.items():
        if not hay.isdisjoint(data[i : i + CANARY_LEN] for i in range(len(data) - CANARY_LEN + 1)):
            found.append(name)
    return found


# ------------------------------------------------------------------ raw capture


@dataclass
class Connection:
    up: bytearray = field(default_factory=bytearray)  # agent -> broker
    down: bytearray = field(default_factory=bytearray)  # broker -> agent


class RecordingProxy:
    """A 127.0.0.1 TCP proxy that keeps every byte of every connection, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        acceptor.start()
        self._threads.append(acceptor)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            conn = Connection()
            with self._lock:
                self.connections.append(conn)
                self._sockets += [client, upstream]
            for src, dst, buf in ((client, upstream, conn.up), (upstream, client, conn.down)):
                pump = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                pump.start()
                self._threads.append(pump)

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                buf += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass
class Packet:
    kind: int  # MQTT control packet type
    size: int
    topic: str | None = None
    payload: bytes | None = None  # PUBLISH payload, or the CONNECT will payload


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise AssertionError("malformed MQTT variable byte integer")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    length = int.from_bytes(data[pos : pos + 2], "big")
    return data[pos + 2 : pos + 2 + length], pos + 2 + length


def parse_mqtt(stream: bytes) -> list[Packet]:
    """Split a client-to-broker MQTT v5 byte stream into packets; every byte must belong to one."""
    packets = []
    pos = 0
    while pos < len(stream):
        first = stream[pos]
        remaining, body = _varint(stream, pos + 1)
        end = body + remaining
        assert end <= len(stream), f"truncated MQTT packet at offset {pos}"
        kind = first >> 4
        packet = Packet(kind=kind, size=end - pos)
        if kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            topic, p = _string(stream, body)
            if qos:
                p += 2
            props, p = _varint(stream, p)
            packet.topic = topic.decode()
            packet.payload = stream[p + props : end]
        elif kind == 1:  # CONNECT (v5)
            name, p = _string(stream, body)
            assert name == b"MQTT" and stream[p] == 5, "not an MQTT v5 CONNECT"
            flags = stream[p + 1]
            props, p = _varint(stream, p + 4)
            _client_id, p = _string(stream, p + props)
            if flags & 0x04:  # will flag
                will_props, p = _varint(stream, p)
                will_topic, p = _string(stream, p + will_props)
                will_payload, p = _string(stream, p)
                packet.topic = will_topic.decode()
                packet.payload = will_payload
        packets.append(packet)
        pos = end
    return packets


_LOG_PUBLISH = re.compile(
    r"Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)', \.\.\. \((\d+) bytes\)\)"
)
_LOG_WILL = re.compile(r"Will message specified \((\d+) bytes\)")


# ------------------------------------------------------------------ the test


def write_config(tmp_path: Path, key: Path, folder: Path, port: int, coordinator: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""[device]
key = "{key}"
state_dir = "{tmp_path / "state"}"

[inference]
model = "{CARD}"
source = "{folder}"
loop = true
max_fps = 10

[proofs]
window_s = 5
heartbeat_s = 1

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[coordinator]
pubkey = "{coordinator}"
""",
        encoding="utf-8",
    )
    return path


def test_canary_detector_finds_planted_leaks() -> None:
    """The search below is only as good as its detector: plant each encoding and find it."""
    secret = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    sources = {"secret": secret}
    leak = secret[1001 : 1001 + CANARY_LEN + 3]
    planted = [
        b'{"x":"' + leak + b'"}',
        b'{"x":"' + leak.hex().encode() + b'"}',
        b'{"x":"' + leak.hex().upper().encode() + b'"}',
        b'{"x":"Zq' + base64.b64encode(leak) + b'"}',
        b'{"x":"' + base64.urlsafe_b64encode(b"a" + leak).rstrip(b"=") + b'"}',
        b'{"x":[' + ",".join(str(b) for b in leak).encode() + b"]}",
        b'{"x":[7, 300, ' + ", ".join(str(b) for b in leak).encode() + b", 999]}",
    ]
    for blob in planted:
        assert find_canaries([blob], sources) == ["secret"], blob[:60]
    assert find_canaries([secret[: CANARY_LEN - 1], leak.hex()[:30].encode()], sources) == []


def run_daemon(
    tmp_path: Path,
    folder: Path,
    device_key: Path,
    dev: str,
    coordinator: Keypair,
    proxy: RecordingProxy,
    collector: Collector,
) -> tuple[int, str]:
    """Run ``python -m agent run --duration`` through the proxy; publish a beacon and a challenge."""
    topics = Topics(PREFIX)
    config = write_config(tmp_path, device_key, folder, proxy.port, str(coordinator.pubkey()))
    now = int(time.time() * 1000)
    beacon = build_envelope(
        coordinator,
        "beacon",
        Beacon(slot=1, nonce=os.urandom(32).hex(), time_ms=now, slot_ms=30_000),
        seq=1,
        prev="0" * 64,
        ts=now,
    )
    collector.client.publish(topics.beacon(), beacon.wire, qos=1, retain=True).wait_for_publish(10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), "--duration", str(RUN_S)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Once the device is online, challenge it: its response is a device message too.
        assert collector.wait_for(lambda msgs: any(t == topics.hb(dev) for t, _ in msgs), 60), (
            f"no heartbeat from the daemon; log:\n{log_path.read_text(errors='replace')[-3000:]}"
        )
        challenge = build_envelope(
            coordinator,
            "challenge",
            Challenge(
                device=dev,
                nonce=os.urandom(32).hex(),
                model_sha256=load_card(CARD).card.sha256,
                deadline_ms=int(time.time() * 1000) + 60_000,
            ),
            seq=2,
            prev=beacon.hash,
            ts=int(time.time() * 1000),
        )
        collector.client.publish(topics.device(dev, "challenge"), challenge.wire, qos=1).wait_for_publish(10)
        returncode = proc.wait(timeout=RUN_S + 90)
    finally:
        if proc.poll() is None:  # only the daemon this test started, by its Popen handle
            proc.kill()
            proc.wait(timeout=10)
    return returncode, log_path.read_text(errors="replace")


def test_nothing_the_camera_saw_leaves_the_device(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    frames = canary_frames()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        path = folder / f"canary{i}.png"
        assert cv2.imwrite(str(path), frame)
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert decoded is not None and np.array_equal(decoded, frame), "PNG must be lossless"
    sources = canary_sources(frames)

    device_key = tmp_path / "device-key.json"
    device = Keypair.from_seed(bytes(range(40, 72)))
    write_keypair(device_key, device)
    dev = device_id(device)
    coordinator = Keypair.from_seed(bytes(range(100, 132)))
    topics = Topics(PREFIX)
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        proxy = RecordingProxy(mosquitto.port)
        cleanup.callback(proxy.close)
        collector = Collector(mosquitto, "#", client_id="privacy-collector")
        cleanup.callback(collector.close)
        returncode, log_text = run_daemon(tmp_path, folder, device_key, dev, coordinator, proxy, collector)
        assert returncode == 0, f"daemon exited with {returncode}; log:\n{log_text[-3000:]}"
        offline = b'"state":"offline"'
        assert collector.wait_for(
            lambda msgs: any(t == topics.status(dev) and offline in p for t, p in msgs), 10
        ), "the daemon's final offline status was not delivered"
        time.sleep(0.5)
    elapsed = time.monotonic() - started

    # --- the raw streams: every agent-to-broker byte is part of a well-formed MQTT packet
    assert proxy.connections, "the agent never connected through the proxy"
    published: list[tuple[str, bytes]] = []
    wills: list[tuple[str, bytes]] = []
    for conn in proxy.connections:
        for packet in parse_mqtt(bytes(conn.up)):
            assert packet.kind in (1, 3, 4, 8, 10, 12, 14), f"unexpected MQTT packet type {packet.kind}"
            if packet.kind == 3:
                assert packet.topic is not None and packet.payload is not None
                published.append((packet.topic, packet.payload))
            elif packet.kind == 1 and packet.payload is not None:
                assert packet.topic is not None
                wills.append((packet.topic, packet.payload))

    # --- every payload is a valid signed envelope of this device, on its kind's topic, in bounds
    envelopes: list[Envelope] = []
    for topic, payload in published + wills:
        envelope = verify_envelope(payload)
        assert envelope.dev == dev, f"{topic}: signed by {envelope.dev}, not the device"
        assert topics.parse(topic).kind == envelope.kind, f"{envelope.kind} published on {topic}"
        assert len(payload) <= MAX_BYTES[envelope.kind], f"{topic}: {len(payload)} bytes"
        assert payload == envelope.wire, f"{topic}: not the canonical encoding"
        envelopes.append(envelope)
    verifier = ChainVerifier()
    for envelope in envelopes[: len(published)]:
        result = verifier.observe(envelope)
        assert result.ok, f"chain: {result.link} at seq {envelope.seq}: {result.detail}"

    kinds = [e.kind for e in envelopes[: len(published)]]
    by_seq = {e.seq: e.body for e in envelopes if e.kind == "proof"}  # QoS 1 may repeat one
    proofs = [body for _, body in sorted(by_seq.items()) if isinstance(body, Proof)]
    assert proofs and len(proofs) == len(by_seq)
    assert sum(p.inferences for p in proofs) > 0, "no inference was proven"

    # --- the canaries are what the daemon really processed: its proofs commit to exactly these
    # frames (folder order, looped), so the resized images and outputs above are the ones it held
    done = 0
    for proof in proofs:
        order = [(done + j) % FRAMES for j in range(proof.inferences)]
        assert proof.leaf_hash == default_leaf_hash()
        inputs = merkle_root(sources[f"frame{i}.input_digest.{proof.leaf_hash}"] for i in order)
        outputs = merkle_root(sources[f"frame{i}.output_digest.{proof.leaf_hash}"] for i in order)
        assert proof.input_root == inputs.hex(), "the daemon saw other pixels than the canary forms"
        assert proof.output_root == outputs.hex(), "the daemon's outputs differ from the canary outputs"
        done += proof.inferences
    assert "heartbeat" in kinds and "status" in kinds
    assert "challenge_response" in kinds, f"the challenge was not answered; kinds sent: {sorted(set(kinds))}"
    assert [t for t, _ in wills] == [topics.status(dev)] * len(wills) and wills

    # --- what the broker delivered from the device is exactly what the proxy saw it send
    from_device = {topics.device(dev, channel) for channel in DEVICE_PUBLISHES}
    delivered = [(t, p) for t, p in collector.messages if t in from_device]
    assert delivered, "the subscriber received nothing from the device"
    assert set(delivered) <= set(published) | set(wills), "delivered a payload the agent did not send"
    for topic, payload in collector.messages:
        envelope = verify_envelope(payload)
        assert len(payload) <= MAX_BYTES[envelope.kind], f"{topic}: {len(payload)} bytes"

    # --- the broker's own view: sizes of everything it received from the device
    broker_log = mosquitto.log_text()
    sizes = [(m.group(2), int(m.group(3))) for m in _LOG_PUBLISH.finditer(broker_log) if m.group(1) == dev]
    assert len(sizes) == len(published), f"broker logged {len(sizes)} PUBLISH, proxy saw {len(published)}"
    for topic, size in sizes:
        kind = topics.parse(topic).kind
        assert kind is not None and size <= MAX_BYTES[kind], f"broker received {size} bytes on {topic}"
    assert sorted(sizes) == sorted((t, len(p)) for t, p in published)
    will_sizes = [int(m.group(1)) for m in _LOG_WILL.finditer(broker_log)]
    assert sorted(will_sizes) == sorted(len(p) for _, p in wills)
    assert all(size <= MAX_BYTES["status"] for size in will_sizes)

    # --- no canary, raw or encoded, anywhere
    streams = [bytes(c.up) for c in proxy.connections] + [bytes(c.down) for c in proxy.connections]
    planted = base64.b64encode(sources["frame1.resized"][70_001:70_040])
    assert find_canaries([streams[0] + planted], sources) == ["frame1.resized"], "the detector is blind"
    leaks = find_canaries([*streams, *(p for _, p in collector.messages), broker_log.encode()], sources)
    assert leaks == [], f"frame data left the device: {leaks}"
    summary = {
        "published": len(published),
        "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
        "bytes_up": sum(len(c.up) for c in proxy.connections),
        "canary_sources": len(sources),
        "canary_windows": sum(len(s) - CANARY_LEN + 1 for s in sources.values()),
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(summary, sort_keys=True))
