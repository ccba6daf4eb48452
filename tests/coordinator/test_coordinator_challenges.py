"""Challenges from the real coordinator, scored by reference execution on the real shipped models.

A real broker, `python -m agent coordinator run` (2-second slots, every active device
challenged every slot), SQLite and PostgreSQL, and six simulated devices that sign with
:class:`ChainSigner` and answer each challenge they receive in their own way: honestly
(``expected_sketch`` on the shipped efficientnet), with a sketch from another model
(blazeface), naming another model hash, after the deadline, never, or for a model the
coordinator does not have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.challenge_run import expected_sketch
from agent.coordinator import challenge_rows
from agent.coordinator.challenge_rows import FINAL_OUTCOMES
from agent.coordinator.store import Store
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Challenge, Verdict
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    EFFICIENTNET_SHA,
    ROOT,
    CoordinatorProcess,
    Device,
    Publisher,
    device_key,
    enroll_direct,
    wait_until,
    write_config,
)
from tests.support.mosquitto import Collector, MosquittoBroker

pytestmark = pytest.mark.integration
T = Topics()
SIGNER = str(COORD.pubkey())
DEADLINE_MS = 4000
UNKNOWN_SHA = "ee" * 32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimDevice:
    """A device that reports a model and answers challenges with ``answer`` (None: never)."""

    name: str
    device: Device
    model_sha256: str
    answer: Callable[[Challenge], tuple[float, dict[str, object]] | None]
    nonces: list[str] = field(default_factory=list)

    def status(self) -> bytes:
        body = {
            "state": "online",
            "model_id": "efficientnet-lite0-int8",
            "model_sha256": self.model_sha256,
            "agent_version": "0.1.0",
            "profile": "rpi4",
        }
        return self.device.chain.sideband("status", body, now_ms()).wire

    def respond(self, body: dict[str, object]) -> tuple[str, bytes]:
        env = self.device.chain.next("challenge_response", body, now_ms())
        return T.device(self.device.id, "response"), env.wire


def _response(challenge: Challenge, sketch: list[int], sha: str | None = None) -> dict[str, object]:
    return {
        "nonce": challenge.nonce,
        "model_sha256": sha or challenge.model_sha256,
        "sketch": sketch,
        "latency_us": 1000,
    }


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Pipeline]:
    settings = BackendSettings(threads=1)
    return {
        "efficientnet": Pipeline.open(str(ROOT / "models" / "efficientnet-lite0-int8.toml"), settings),
        "blazeface": Pipeline.open(str(ROOT / "models" / "blazeface-short-range.toml"), settings),
    }


def test_challenges_are_scored_by_reference_execution_on_the_real_models(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path, pipelines: dict[str, Pipeline]
) -> None:
    eff, blaze = pipelines["efficientnet"], pipelines["blazeface"]
    blaze_sha = blaze.loaded.card.sha256

    def honest(c: Challenge) -> tuple[float, dict[str, object]]:
        return 0.0, _response(c, expected_sketch(eff, c.nonce)[0])

    def other_model(c: Challenge) -> tuple[float, dict[str, object]]:
        return 0.0, _response(c, expected_sketch(blaze, c.nonce)[0])

    def wrong_hash(c: Challenge) -> tuple[float, dict[str, object]]:
        return 0.0, _response(c, expected_sketch(eff, c.nonce)[0], sha=blaze_sha)

    def late(c: Challenge) -> tuple[float, dict[str, object]]:
        return (c.deadline_ms - now_ms()) / 1000 + 1.5, _response(c, expected_sketch(eff, c.nonce)[0])

    def unknown(c: Challenge) -> tuple[float, dict[str, object]]:
        return 0.0, _response(c, [7] * 32)

    sims = [
        SimDevice("honest", Device(device_key(81)), EFFICIENTNET_SHA, honest),
        SimDevice("other_model", Device(device_key(82)), EFFICIENTNET_SHA, other_model),
        SimDevice("wrong_hash", Device(device_key(83)), EFFICIENTNET_SHA, wrong_hash),
        SimDevice("late", Device(device_key(84)), EFFICIENTNET_SHA, late),
        SimDevice("silent", Device(device_key(85)), EFFICIENTNET_SHA, lambda c: None),
        SimDevice("unknown", Device(device_key(86)), UNKNOWN_SHA, unknown),
    ]
    by_id = {s.device.id: s for s in sims}
    folder = tmp_path / "coord"
    config = write_config(
        folder,
        broker_port=mosquitto.port,
        database_url=database_url,
        slot_ms=2000,
        challenge_probability=1.0,
        deadline_ms=DEADLINE_MS,
        active_within_slots=2,  # a 4 s window always holds a slot start with room to spare
    )
    store = Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")
    for sim in sims:
        enroll_direct(store, sim.device.keypair)
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    challenges = Collector(mosquitto, T.prefix + "/dev/+/challenge", client_id="sim-challenges")
    verdict_sub = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="sim-verdicts")
    publisher = Publisher(mosquitto.host, mosquitto.port)
    stray = Device(device_key(87))
    enroll_direct(store, stray.keypair)
    extra: dict[str, tuple[str, bytes]] = {}
    try:
        coordinator.start()
        publisher.publish([(T.status(s.device.id), s.status()) for s in sims])
        due: list[tuple[float, str, bytes]] = []
        handled = 0

        def settled() -> bool:
            rows = challenge_rows.challenges(store)
            per_dev = {s.device.id: [r for r in rows if r.dev == s.device.id] for s in sims}
            return all(
                per_dev[d] and all(r.outcome in FINAL_OUTCOMES for r in per_dev[d]) for d in per_dev
            ) and (len(rows) == handled and not due)

        deadline = time.monotonic() + 150
        while not settled():
            assert time.monotonic() < deadline, f"challenges did not settle\n{coordinator.log()}"
            payloads = challenges.payloads()
            for payload in payloads[handled:]:
                env = verify_envelope(payload, expected_signer=SIGNER)
                body = env.body
                assert isinstance(body, Challenge)
                sim = by_id[body.device]
                sim.nonces.append(body.nonce)
                action = sim.answer(body)
                if action is not None:
                    delay, answer = action
                    topic, wire = sim.respond(answer)
                    due.append((time.monotonic() + max(0.0, delay), topic, wire))
                    if sim.name == "honest" and "replay" not in extra:
                        extra["replay"] = sim.respond(answer)  # the same nonce answered again
                        due.append((due[-1][0], *extra["replay"]))  # right behind it: no gap
            handled = len(payloads)
            ready = [d for d in due if d[0] <= time.monotonic()]
            if ready:
                publisher.publish([(topic, wire) for _, topic, wire in ready])
                due = [d for d in due if d[0] > time.monotonic() or d not in ready]
            time.sleep(0.05)
        # An answer to a nonce never issued.
        stray_answer = stray.chain.next(
            "challenge_response",
            {"nonce": "cd" * 32, "model_sha256": EFFICIENTNET_SHA, "sketch": [1] * 32, "latency_us": 5},
            now_ms(),
        )
        publisher.publish([(T.device(stray.id, "response"), stray_answer.wire)])
        wait_until(
            lambda: any(m.hash == stray_answer.hash for m in store.messages(stray.id)), 60, "the stray answer"
        )
        assert coordinator.terminate() == 0
    finally:
        publisher.close()
        challenges.close()
        verdict_sub.close()
        coordinator.kill()

    rows = challenge_rows.challenges(store)
    outcomes = {s.name: {r.outcome for r in rows if r.dev == s.device.id} for s in sims}
    assert outcomes == {
        "honest": {"passed"},
        "other_model": {"challenge_failed"},
        "wrong_hash": {"wrong_model"},
        "late": {"challenge_late"},
        "silent": {"challenge_missed"},
        "unknown": {"unknown_model"},
    }, coordinator.log()
    # Every challenge the devices received is recorded, for the model each last reported.
    for sim in sims:
        mine = [r for r in rows if r.dev == sim.device.id]
        assert sorted(r.nonce for r in mine) == sorted(sim.nonces)
        assert {r.model_sha256 for r in mine} == {sim.model_sha256}
        assert all(r.deadline_ms - r.issued_ms == DEADLINE_MS for r in mine)
    distances = {s.name: [r.distance for r in rows if r.dev == s.device.id] for s in sims}
    assert all(d == 0.0 for d in distances["honest"])  # same model, same machine: the same sketch
    assert all(d is not None and d > 0.5 for d in distances["other_model"])
    # The answers as recorded: the immediate outcomes are the message's reason.
    reasons = {
        s.name: {m.reason for m in store.messages(s.device.id) if m.kind == "challenge_response"}
        for s in sims
    }
    assert reasons["wrong_hash"] == {"wrong_model"} and reasons["late"] == {"challenge_late"}
    assert reasons["unknown"] == {"unknown_model"}
    assert reasons["honest"] == {None, "replay"}
    assert [m.reason for m in store.messages(stray.id) if m.kind == "challenge_response"] == [
        "unknown_challenge"
    ]
    # A verdict for each scored answer and each miss, signed by the coordinator.
    judged = [verify_envelope(p, expected_signer=SIGNER).body for p in verdict_sub.payloads()]
    by_dev: dict[str, list[Verdict]] = {}
    for v in judged:
        assert isinstance(v, Verdict)
        by_dev.setdefault(v.device, []).append(v)

    def verdict_reasons(name: str, kind: str) -> list[tuple[bool, str | None]]:
        sim = next(s for s in sims if s.name == name)
        return [(v.accepted, v.reason) for v in by_dev.get(sim.device.id, []) if v.ref_kind == kind]

    n = {s.name: len([r for r in rows if r.dev == s.device.id]) for s in sims}
    assert verdict_reasons("honest", "challenge_response").count((True, None)) == n["honest"]
    assert (
        verdict_reasons("other_model", "challenge_response")
        == [(False, "challenge_failed")] * n["other_model"]
    )
    assert verdict_reasons("silent", "challenge") == [(False, "challenge_missed")] * n["silent"]
    assert verdict_reasons("late", "challenge") == [(False, "challenge_missed")] * n["late"]
    assert verdict_reasons("late", "challenge_response") == [(False, "challenge_late")] * n["late"]
    # Pass rate per device over the epoch that holds the test.
    start, end = min(r.issued_ms for r in rows), max(r.issued_ms for r in rows) + 1
    rates = {s.name: challenge_rows.pass_rate(store, s.device.id, start, end) for s in sims}
    assert (rates["honest"].passed, rates["honest"].scored, rates["honest"].rate) == (
        n["honest"],
        n["honest"],
        1.0,
    )
    for name in ("other_model", "wrong_hash", "late", "silent"):
        assert (rates[name].passed, rates[name].scored, rates[name].rate) == (0, n[name], 0.0)
    assert (rates["unknown"].scored, rates["unknown"].unknown_model, rates["unknown"].rate) == (
        0,
        n["unknown"],
        None,
    )
    store.close()
