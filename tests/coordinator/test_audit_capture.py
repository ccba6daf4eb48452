"""A capture recomputes the database's audit exactly; a tampered envelope in it changes the result.

One scripted epoch on each backend, through the coordinator's own code paths: ``slots.tick``
issues the signed beacons and challenges, ``commit_batch`` ingests the signed device messages
and signs the verdicts, ``slots.score`` scores an answer.  The coordinator's liveness has a gap.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from agent.coordinator import challenge_rows, slots
from agent.coordinator.audit import epoch_report
from agent.coordinator.audit_capture import capture_report, export_capture, read_capture
from agent.coordinator.audit_device import device_verdicts
from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.config import ChallengeSection
from agent.coordinator.store import Store
from agent.errors import CorruptStateError, EdgeproofError
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    EFFICIENTNET_SHA,
    NOW,
    SLOT_MS,
    Device,
    device_key,
    enroll_direct,
    ingest_policy,
)

T = Topics()
POLICY = ingest_policy(late_window_seqs=64)
EPOCH_MS = 10 * SLOT_MS
EPOCH = NOW // EPOCH_MS + 1
FIRST = EPOCH * EPOCH_MS // SLOT_MS
SIGNER = str(COORD.pubkey())
CHALLENGES = ChallengeSection(probability_per_slot=1.0, deadline_ms=20_000, active_within_slots=1)


def at(slot_index: int, offset: int) -> int:
    return (FIRST + slot_index) * SLOT_MS + offset


def status(device: Device, ts: int) -> bytes:
    body = {
        "state": "online",
        "model_id": "efficientnet-lite0-int8",
        "model_sha256": EFFICIENTNET_SHA,
        "agent_version": "0.1.0",
        "profile": "rpi4",
    }
    return device.chain.sideband("status", body, ts).wire


def answer(device: Device, nonce: str, ts: int, sha: str = EFFICIENTNET_SHA) -> bytes:
    body = {"nonce": nonce, "model_sha256": sha, "sketch": [5] * 32, "latency_us": 900}
    return device.chain.next("challenge_response", body, ts).wire


def scripted_epoch(store: Store) -> tuple[Device, Device, bytes]:
    """Returns the two devices and b's only slot-3 heartbeat (the one the tamper test breaks)."""
    a, b = Device(device_key(1)), Device(device_key(2))
    enroll_direct(store, a.keypair)
    enroll_direct(store, b.keypair)
    with store.transaction():
        store.start_run("run-1", SIGNER, "h", 1, at(0, -500))
        store.touch_run("run-1", at(5, 100))  # killed early in slot 5
        store.start_run("run-2", SIGNER, "h", 2, at(7, -50))
        store.stop_run("run-2", at(10, 1))
    rng = random.Random(7)

    def ingest(topic: str, wire: bytes, when: int) -> None:
        commit_batch(store, [Inbound(topic, wire, when)], policy=POLICY, keypair=COORD, topics=T, now_ms=when)

    def heartbeat(device: Device, i: int) -> bytes:
        nonce = store.beacon_nonce(FIRST + i)
        assert nonce is not None
        env = device.heartbeat(FIRST + i, at(i, 2000), nonce)
        ingest(T.hb(device.id), env.wire, at(i, 2000))
        return env.wire

    def open_challenge(device: Device) -> challenge_rows.ChallengeRow:
        return [r for r in challenge_rows.challenges(store, device.id) if r.outcome is None][-1]

    b_slot3 = b""
    for i in [0, 1, 2, 3, 4, 7, 8, 9]:  # no tick while the coordinator is down (slots 5, 6)
        slots.tick(store, COORD, T, now_ms=at(i, 5), slot_ms=SLOT_MS, challenges=CHALLENGES, rng=rng)
        heartbeat(a, i)
        if i in (0, 1, 3):
            wire = heartbeat(b, i)
            b_slot3 = wire if i == 3 else b_slot3
        if i == 0:
            ingest(T.hb(a.id), b"\x00not an envelope", at(0, 3000))  # garbage on a's topic
        if i == 1:
            ingest(T.status(a.id), status(a, at(1, 9000)), at(1, 9000))  # a becomes active
        if i == 2:  # challenged at slot 2: answers naming another model
            ingest(
                T.device(a.id, "response"),
                answer(a, open_challenge(a).nonce, at(2, 4000), "ab" * 32),
                at(2, 4000),
            )
            ingest(T.status(a.id), status(a, at(2, 9000)), at(2, 9000))
        if i == 3:  # challenged at slot 3: answers in time, scored below; then replays the answer
            row = open_challenge(a)
            wire = answer(a, row.nonce, at(3, 4000))
            ingest(T.device(a.id, "response"), wire, at(3, 4000))
            ingest(T.device(a.id, "response"), wire, at(3, 4500))  # QoS 1 redelivery: duplicate
            slots.score(
                store,
                COORD,
                T,
                challenge_id=row.id,
                reference=[5] * 32,
                error=None,
                tolerance_of=lambda sha: 0.05,
                now_ms=at(3, 6000),
            )
        if i == 7:
            ingest(T.status(b.id), status(b, at(7, 9000)), at(7, 9000))  # b becomes active
        if i == 8:
            missed = open_challenge(b)  # challenged at slot 8, never answered in time
        if i == 9:  # the slot-9 tick marked slot 8's challenge missed; b answers it late
            ingest(T.device(b.id, "response"), answer(b, missed.nonce, at(9, 3000)), at(9, 3000))
    return a, b, b_slot3


def export(store: Store, path: Path) -> Path:
    export_capture(
        store,
        EPOCH,
        path,
        slot_ms=SLOT_MS,
        epoch_ms=EPOCH_MS,
        coordinator_key=SIGNER,
        policy=POLICY,
        topic_prefix=T.prefix,
    )
    return path


def rewrite(path: Path, raw: bytes, change) -> None:  # type: ignore[no-untyped-def]
    """Replace the record whose raw bytes are ``raw`` with ``change(envelope dict)``."""
    old = base64.b64encode(raw).decode()
    lines = path.read_text(encoding="utf-8").splitlines()
    hits = [n for n, line in enumerate(lines) if json.loads(line).get("raw_b64") == old]
    assert len(hits) == 1
    record = json.loads(lines[hits[0]])
    record["raw_b64"] = base64.b64encode(change(json.loads(raw))).decode()
    lines[hits[0]] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_capture_recomputes_the_database_report_exactly(store: Store, tmp_path: Path) -> None:
    a, b, _ = scripted_epoch(store)
    db = epoch_report(store, EPOCH, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS)
    by_dev = {d.dev: d for d in db.devices}
    assert (by_dev[a.id].slots, by_dev[b.id].slots) == ("UUUUUXXUUU", "UUDUDXXDDD")
    assert (db.coordinator_up_slots, db.coordinator_down_slots) == (8, 2)
    assert by_dev[a.id].challenges == {"passed": 1, "wrong_model": 1}
    assert by_dev[a.id].rejections == {"duplicate": 1, "malformed": 1, "wrong_model": 1}
    assert (by_dev[b.id].challenges, by_dev[b.id].rejections) == (
        {"challenge_late": 1},
        {"challenge_late": 1},
    )
    assert (by_dev[a.id].pass_rate, by_dev[b.id].pass_rate) == (0.5, 0.0)

    capture = read_capture(export(store, tmp_path / "epoch.jsonl"))
    assert capture.epoch == EPOCH and len(capture.devices) == 2 and len(capture.beacons) == 8
    replayed, stats = capture_report(capture)
    assert replayed == db
    assert stats.as_json() == {
        "devices_refused": 0,
        "beacons_refused": 0,
        "challenges_refused": 0,
        "verdicts_refused": 0,
        "messages": len(capture.messages),
        "verdicts_differ": 0,
    }
    with pytest.raises(EdgeproofError, match=f"ends with epoch {EPOCH}; epoch {EPOCH + 1} is not in it"):
        capture_report(capture, EPOCH + 1)


def test_a_broken_signature_in_the_capture_costs_its_slot(store: Store, tmp_path: Path) -> None:
    a, b, b_slot3 = scripted_epoch(store)
    db = {d.dev: d for d in epoch_report(store, EPOCH, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS).devices}
    path = export(store, tmp_path / "epoch.jsonl")
    other = str(b.keypair.sign_message(b"something else"))
    rewrite(path, b_slot3, lambda env: json.dumps({**env, "sig": other}, separators=(",", ":")).encode())
    replayed, stats = capture_report(read_capture(path))
    got = {d.dev: d for d in replayed.devices}
    assert got[b.id].up_slots == db[b.id].up_slots - 1 == 2
    assert got[b.id].slots == "UUDDDXXDDD"
    assert got[b.id].rejections == {"bad_signature": 1, "challenge_late": 1}
    assert got[a.id] == db[a.id]
    assert (stats.verdicts_differ, stats.beacons_refused) == (1, 0)


def test_a_forged_beacon_in_the_capture_is_refused_and_its_heartbeats_earn_nothing(
    store: Store, tmp_path: Path
) -> None:
    a, b, _ = scripted_epoch(store)
    path = export(store, tmp_path / "epoch.jsonl")
    beacon = next(raw for slot, *_, raw in challenge_rows.beacons(store) if slot == FIRST + 1)
    assert beacon is not None
    rewrite(
        path, beacon, lambda env: json.dumps({**env, "ts": env["ts"] + 1}, separators=(",", ":")).encode()
    )
    replayed, stats = capture_report(read_capture(path))
    got = {d.dev: d for d in replayed.devices}
    assert (got[a.id].slots, got[b.id].slots) == ("UDUUUXXUUU", "UDDUDXXDDD")
    assert got[a.id].rejections["unknown_beacon"] == 1 and got[b.id].rejections == {
        "challenge_late": 1,
        "unknown_beacon": 1,
    }
    assert (stats.beacons_refused, stats.verdicts_differ) == (1, 2)


def capture_policy() -> str:
    from agent.coordinator.audit_capture import _policy_json

    return json.dumps(_policy_json(POLICY))


def test_a_file_that_is_not_a_capture_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"record": "device"}\n', encoding="utf-8")
    with pytest.raises(CorruptStateError, match=r"c.jsonl:1: not an edgeproof capture \(version 1 header"):
        read_capture(path)
    header = {"record": "header", "version": 1, "epoch": 1, "slot_ms": 1000, "epoch_ms": 10_000}
    path.write_text(json.dumps(header) + "\n", encoding="utf-8")
    with pytest.raises(CorruptStateError, match=r"c.jsonl:1: the header record has no 'coordinator'$"):
        read_capture(path)
    header.update(coordinator=SIGNER, topic_prefix="edgeproof/v1", policy=json.loads(capture_policy()))
    path.write_text(json.dumps(header) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(CorruptStateError, match=r"c.jsonl:2: not a JSON line"):
        read_capture(path)
    path.write_text(json.dumps(header) + '\n{"record": "message", "topic": "t"}\n', encoding="utf-8")
    with pytest.raises(CorruptStateError, match=r"c.jsonl:2: the message record has no 'ingest_ms'$"):
        read_capture(path)


def test_audit_device_lists_every_verdict_in_or_out_of_an_epoch(store: Store) -> None:
    a, b, _ = scripted_epoch(store)
    window = (EPOCH * EPOCH_MS, (EPOCH + 1) * EPOCH_MS)
    mine = device_verdicts(store, a.id, window)
    assert mine.enrolled and mine.as_json()["start_ms"] == window[0]
    kinds = [(m.kind, m.accepted, m.reason) for m in mine.messages]
    assert kinds.count(("heartbeat", True, None)) == 8
    assert (None, False, "malformed") in kinds and ("challenge_response", False, "wrong_model") in kinds
    assert ("challenge_response", False, "duplicate") in kinds
    outcomes = [(c.outcome, c.distance, c.tolerance) for c in mine.challenges]
    assert outcomes == [("wrong_model", None, None), ("passed", 0.0, 0.05)]
    passed = mine.challenges[1]
    assert passed.response_id in {
        m.id for m in mine.messages if m.kind == "challenge_response" and m.accepted
    }
    late = device_verdicts(store, b.id)
    assert [c.outcome for c in late.challenges] == ["challenge_late"]
    assert device_verdicts(store, a.id, (window[1], window[1] + EPOCH_MS)).messages == ()
    assert device_verdicts(store, "nobody").as_json() == {
        "dev": "nobody",
        "enrolled": False,
        "start_ms": None,
        "end_ms": None,
        "messages": [],
        "challenges": [],
    }
