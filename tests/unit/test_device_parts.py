"""Daemon parts in isolation: thermal policy, health readings, work windows, systemd notify, challenges."""

import hashlib
import socket

import numpy as np
import pytest
from blake3 import blake3
from solders.keypair import Keypair

from agent.challenge_run import challenge_tensor, expected_sketch
from agent.device.challenges import ChallengeResponder
from agent.device.commitments import CommitmentHasher
from agent.device.health import HealthProbe
from agent.device.systemd import Notifier
from agent.device.thermal import ThermalGovernor
from agent.device.window import WorkWindow
from agent.errors import ProtocolError
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.profiles import ThermalPolicy
from agent.protocol.challenge import sketch_matches
from agent.protocol.merkle import merkle_root
from agent.protocol.messages import Challenge, Health
from tests.support.onnx_models import tiny_classifier, write_model_and_card

POLICY = ThermalPolicy(throttle_c=80, resume_c=70, critical_c=85, throttled_rate_bp=5000)
HEALTH = Health(cpu_bp=1234, mem_bp=5000)


def test_thermal_hysteresis():
    gov = ThermalGovernor(POLICY)
    assert gov.update(60_000).level == "normal"
    assert gov.update(81_000).rate_bp == 5000
    assert gov.update(75_000).level == "throttled"  # between resume and throttle: stays throttled
    assert gov.update(86_000).level == "paused" and gov.state.rate_bp == 0
    assert gov.update(78_000).level == "throttled"  # cooling, not yet at resume_c
    assert gov.update(70_000).level == "normal"
    assert gov.update(None, soc_throttled=True).level == "throttled"
    assert gov.update(50_000, soc_throttled=True).level == "throttled"


def test_health_from_fake_sysfs(tmp_path):
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("61234\n")
    (tmp_path / "sys/class/thermal/thermal_zone1").mkdir()
    (tmp_path / "sys/class/thermal/thermal_zone1/temp").write_text("48000\n")
    fw = tmp_path / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("0x50005\n")
    reading = HealthProbe(tmp_path).read()
    assert reading.temp_mc == 61234 and reading.throttled is True
    assert 0 <= reading.cpu_bp <= 10_000 and 0 < reading.mem_bp <= 10_000
    (fw / "get_throttled").write_text("0x50000\n")  # only "has happened" bits: not throttled now
    assert HealthProbe(tmp_path).read().throttled is False


def test_health_without_sensors(tmp_path):
    reading = HealthProbe(tmp_path).read()
    assert reading.temp_mc is None and reading.throttled is False


@pytest.mark.parametrize("leaf_hash", ["blake3", "sha256"])
def test_window_commits_to_every_inference_and_aggregates(leaf_hash):
    # batch 2 with 5 inferences: two hand-offs to the hashing thread and a remainder that close() flushes
    window = WorkWindow(1_000, "tiny", "ab" * 32, CommitmentHasher(batch=2), leaf_hash)
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    outputs = [[rng.standard_normal((1, 4)).astype(np.float32), np.full((2,), i, np.int64)] for i in range(5)]
    for i in range(5):
        window.add(images[i], outputs[i], 100 * (i + 1), ["cat" if i % 2 else "dog"])
    proof = window.close(61_000, HEALTH)
    assert proof.inferences == 5
    # leaves: SHA-256 of the image bytes, and of the output tensors' bytes concatenated in order
    digest = {"blake3": lambda b: blake3(b).digest(), "sha256": lambda b: hashlib.sha256(b).digest()}[
        leaf_hash
    ]
    input_leaves = [digest(image.tobytes()) for image in images]
    output_leaves = [digest(b"".join(o.tobytes() for o in outs)) for outs in outputs]
    assert proof.leaf_hash == leaf_hash
    assert proof.input_root == merkle_root(input_leaves).hex()
    assert proof.output_root == merkle_root(output_leaves).hex()
    assert proof.summary == {"dog": 3, "cat": 2}
    assert (proof.latency_us.p50, proof.latency_us.p99) == (300, 500)
    assert (proof.window_start_ms, proof.window_end_ms) == (1_000, 61_000)


def test_window_folds_excess_labels_into_other():
    window = WorkWindow(0, "tiny", "ab" * 32, CommitmentHasher())
    image, outputs = np.zeros((2, 2, 3), np.uint8), [np.ones((1, 2), np.float32)]
    for i in range(40):
        window.add(image, outputs, 10, [f"label-{i:02d}-with-a-very-long-name-that-is-cut"])
    proof = window.close(10, HEALTH)
    assert len(proof.summary) == 32
    assert proof.summary["other"] == 9
    assert all(len(label) <= 32 for label in proof.summary)


def test_systemd_notify_over_a_real_socket(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"})
        assert notifier.watchdog_s == 20.0
        assert notifier.ready("up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        assert notifier.watchdog()
        assert server.recv(100) == b"WATCHDOG=1"
    assert Notifier({}).ready() is False


@pytest.fixture
def pipeline(tmp_path):
    card = write_model_and_card(tmp_path, tiny_classifier())
    return Pipeline.open(str(card), BackendSettings(threads=1))


def test_challenge_is_deterministic_and_checked(pipeline):
    dev = str(Keypair.from_seed(bytes(32)).pubkey())
    nonce = "11" * 32
    responder = ChallengeResponder(pipeline, dev, clock_ms=lambda: 1_000)
    challenge = Challenge(
        device=dev, nonce=nonce, model_sha256=pipeline.loaded.card.sha256, deadline_ms=2_000
    )
    answer = responder.answer(challenge)
    again, _ = expected_sketch(pipeline, nonce)
    assert answer.sketch == again and len(answer.sketch) == 32
    other, _ = expected_sketch(pipeline, "22" * 32)
    assert not sketch_matches(answer.sketch, other)
    tensor = challenge_tensor(pipeline.loaded.card.input, nonce)
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == np.float32
    with pytest.raises(ProtocolError, match="deadline already passed"):
        ChallengeResponder(pipeline, dev, clock_ms=lambda: 3_000).answer(challenge)
    with pytest.raises(ProtocolError, match="active model is"):
        responder.answer(challenge.model_copy(update={"model_sha256": "00" * 32}))
    with pytest.raises(ProtocolError, match="not us"):
        ChallengeResponder(pipeline, str(Keypair.from_seed(bytes([1] * 32)).pubkey()), lambda: 0).answer(
            challenge
        )


class _Unreadable:
    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise ValueError("tensor memory is gone")


def test_commitment_hasher_keeps_windows_apart_and_reports_errors():
    hasher = CommitmentHasher(batch=3)
    first, second = WorkWindow(0, "m", "ab" * 32, hasher), WorkWindow(0, "m", "ab" * 32, hasher)
    image = np.zeros((2, 2, 3), np.uint8)
    for _ in range(4):
        first.add(image, [np.zeros((1,), np.float32)], 1, [])
    second.add(image, [np.zeros((1,), np.float32)], 1, [])
    assert first.close(5, HEALTH).inferences == 4
    assert second.close(5, HEALTH).inferences == 1
    assert (first.commitments.count, second.commitments.count) == (4, 1)
    broken = WorkWindow(0, "m", "ab" * 32, hasher)
    broken.add(image, [_Unreadable()], 1, [])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="commitment hashing failed"):
        broken.close(5, HEALTH)


def test_health_skips_ignored_zone_types(tmp_path):
    for index, (kind, temp) in enumerate(
        [("CPU-therm", "52000"), ("PMIC-Die", "100000"), ("GPU-therm", "54500")]
    ):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    assert HealthProbe(tmp_path).read().temp_mc == 100_000  # the placeholder wins by default
    assert HealthProbe(tmp_path, ignore_zone_types=["PMIC-Die"]).read().temp_mc == 54_500
