"""The slot work in-process, on both backends: one beacon per slot, challenges, misses, pass rate."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from agent.coordinator import challenge_rows, slots
from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.config import ChallengeSection
from agent.coordinator.ingest import Policy
from agent.coordinator.reference import ModelStore
from agent.coordinator.store import Store
from agent.inference.cards import load_card
from agent.profiles import load_profiles
from agent.protocol.challenge import REL_TOL
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Beacon, Challenge
from agent.protocol.topics import Topics
from tests.support.coordinator import COORD, EFFICIENTNET_SHA, ROOT, Device, device_key, enroll_direct

T = Topics()
SLOT = 1000
NOW = 1_760_000_000_000
ALWAYS = ChallengeSection(probability_per_slot=1.0, deadline_ms=5000, active_within_slots=2)


def _nonces() -> Any:
    counter = iter(range(1, 10_000))
    return lambda: f"{next(counter):064x}"


def _policy() -> Policy:
    return Policy(
        clock_skew_ms=30_000,
        beacon_max_age_slots=2,
        late_window_seqs=1024,
        profiles=load_profiles(None),
        model_classes={EFFICIENTNET_SHA: "classifier-small"},
    )


def _quiet_tick(store: Store, now_ms: int) -> slots.TickResult:
    """A slot tick that issues no challenges (it still marks the missed ones)."""
    return slots.tick(
        store,
        COORD,
        T,
        now_ms=now_ms,
        slot_ms=SLOT,
        challenges=ChallengeSection(probability_per_slot=0.0),
        rng=random.Random(1),
    )


def _status(device: Device, sha: str, at: int) -> Inbound:
    body = {"state": "online", "model_id": "m", "model_sha256": sha, "agent_version": "0.1.0"}
    return Inbound(T.status(device.id), device.chain.sideband("status", body, at).wire, at)


def test_one_beacon_per_slot_even_from_two_connections(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    other = Store.open(database_url=database_url, sqlite_path=tmp_path / "coordinator.sqlite3")
    rng = random.Random(5)
    nonce = _nonces()
    try:
        first = slots.tick(store, COORD, T, now_ms=NOW, slot_ms=SLOT, challenges=ALWAYS, rng=rng, nonce=nonce)
        again = slots.tick(
            other, COORD, T, now_ms=NOW + 400, slot_ms=SLOT, challenges=ALWAYS, rng=rng, nonce=nonce
        )
        later = slots.tick(
            other, COORD, T, now_ms=NOW + 1000, slot_ms=SLOT, challenges=ALWAYS, rng=rng, nonce=nonce
        )
    finally:
        other.close()
    assert first.beacon is not None and again.beacon is None and later.beacon is not None
    a = verify_envelope(first.beacon.wire, expected_signer=str(COORD.pubkey()))
    b = verify_envelope(later.beacon.wire, expected_signer=str(COORD.pubkey()))
    assert isinstance(a.body, Beacon) and a.body.slot == NOW // SLOT and a.body.time_ms == NOW
    assert isinstance(b.body, Beacon) and b.body.slot == a.body.slot + 1
    assert (a.seq, b.seq, b.prev) == (1, 2, a.hash)  # one chain across both connections
    assert first.beacon.topic == T.beacon() and first.beacon.retain
    recorded = challenge_rows.beacons(store)
    assert [(r[0], r[1], r[5]) for r in recorded] == [
        (a.body.slot, a.body.nonce, a.wire),
        (b.body.slot, b.body.nonce, b.wire),
    ]
    assert store.beacon_nonce(a.body.slot) == a.body.nonce


def test_challenges_go_to_active_devices_for_their_reported_model_and_misses_are_marked_once(
    store: Store,
) -> None:
    active, quiet, unknown = Device(device_key(91)), Device(device_key(92)), Device(device_key(93))
    for d in (active, quiet, unknown):
        enroll_direct(store, d.keypair)
    commit_batch(
        store,
        [_status(active, EFFICIENTNET_SHA, NOW - 500), _status(unknown, "ee" * 32, NOW - 500)],
        policy=_policy(),
        keypair=COORD,
        topics=T,
        now_ms=NOW,
    )
    result = slots.tick(
        store, COORD, T, now_ms=NOW, slot_ms=SLOT, challenges=ALWAYS, rng=random.Random(1), nonce=_nonces()
    )
    sent = {verify_envelope(o.wire).body.device: o for o in result.challenges}  # type: ignore[union-attr]
    assert set(sent) == {active.id, unknown.id}  # the quiet device reported no model
    body = verify_envelope(sent[active.id].wire).body
    assert (
        isinstance(body, Challenge)
        and body.model_sha256 == EFFICIENTNET_SHA
        and body.deadline_ms == NOW + 5000
    )
    assert sent[active.id].topic == T.device(active.id, "challenge") and not sent[active.id].retain
    # No answer: missed once the deadline passed, by exactly one tick.
    before = _quiet_tick(store, NOW + 5000)
    after = _quiet_tick(store, NOW + 5001)
    again = _quiet_tick(store, NOW + 6000)
    assert before.verdicts == [] and len(after.verdicts) == 2 and again.verdicts == []
    verdict = verify_envelope(after.verdicts[0].wire).body
    assert verdict.reason == "challenge_missed" and verdict.ref_kind == "challenge"  # type: ignore[union-attr]
    rate = challenge_rows.pass_rate(store, active.id, NOW, NOW + 1)
    assert (rate.passed, rate.scored, rate.rate) == (0, 1, 0.0)
    assert challenge_rows.pass_rate(store, active.id, NOW + 1, NOW + 10_000).scored == 0  # another epoch


def test_a_response_then_a_score_on_the_coordinator_chain(store: Store) -> None:
    device = Device(device_key(94))
    enroll_direct(store, device.keypair)
    commit_batch(
        store,
        [_status(device, EFFICIENTNET_SHA, NOW - 500)],
        policy=_policy(),
        keypair=COORD,
        topics=T,
        now_ms=NOW,
    )
    result = slots.tick(
        store, COORD, T, now_ms=NOW, slot_ms=SLOT, challenges=ALWAYS, rng=random.Random(1), nonce=_nonces()
    )
    challenge = verify_envelope(result.challenges[0].wire).body
    assert isinstance(challenge, Challenge)
    sketch = [1000 * (i + 1) for i in range(32)]
    answer = device.chain.next(
        "challenge_response",
        {"nonce": challenge.nonce, "model_sha256": EFFICIENTNET_SHA, "sketch": sketch, "latency_us": 9},
        NOW + 100,
    )
    batch = commit_batch(
        store,
        [Inbound(T.device(device.id, "response"), answer.wire, NOW + 100)],
        policy=_policy(),
        keypair=COORD,
        topics=T,
        now_ms=NOW + 100,
    )
    assert batch.verdicts == []  # the verdict waits for the reference run
    [(challenge_id, sha, nonce)] = batch.references
    assert (sha, nonce) == (EFFICIENTNET_SHA, challenge.nonce)
    assert challenge_rows.challenge(store, challenge_id).outcome == "pending"  # type: ignore[union-attr]
    near = [v + 1 for v in sketch]
    verdict = slots.score(
        store,
        COORD,
        T,
        challenge_id=challenge_id,
        reference=near,
        error=None,
        tolerance_of=lambda sha: REL_TOL,
        now_ms=NOW + 200,
    )
    assert verdict is not None
    body = verify_envelope(verdict.wire).body
    assert body.accepted and body.ref_hash == answer.hash and body.ref_kind == "challenge_response"  # type: ignore[union-attr]
    assert (
        slots.score(
            store,
            COORD,
            T,
            challenge_id=challenge_id,
            reference=near,
            error=None,
            tolerance_of=lambda sha: REL_TOL,
            now_ms=NOW + 300,
        )
        is None
    )
    row = challenge_rows.challenge(store, challenge_id)
    assert (
        row is not None
        and row.outcome == "passed"
        and row.distance is not None
        and 0 < row.distance < REL_TOL
    )
    # Seqs on the coordinator chain: status verdict 1, beacon 2, challenge 3, score verdict 4.
    assert json.loads(verdict.wire)["seq"] == 4


def test_the_tolerance_comes_from_the_card_when_it_has_one(tmp_path: Path) -> None:
    models = ModelStore(ROOT / "models")
    shipped = load_card(ROOT / "models" / "efficientnet-lite0-int8.toml")
    assert shipped.card.challenge is not None  # the shipped card carries its measured tolerance
    assert models.tolerance(EFFICIENTNET_SHA) == shipped.card.challenge.tolerance != REL_TOL
    assert models.tolerance("ee" * 32) == REL_TOL  # a model the store does not have
    # A card without a [challenge] table is scored with the protocol default.
    text = (ROOT / "models" / "efficientnet-lite0-int8.toml").read_text(encoding="utf-8")
    head, _, _ = text.partition("[challenge]")
    assert "[challenge]" in text
    (tmp_path / "plain.toml").write_text(head, encoding="utf-8")
    plain = ModelStore(tmp_path)
    assert set(plain.cards) == {EFFICIENTNET_SHA} and plain.cards[EFFICIENTNET_SHA].card.challenge is None
    assert plain.tolerance(EFFICIENTNET_SHA) == REL_TOL


def test_the_model_store_finds_the_shipped_models_by_sha256(tmp_path: Path) -> None:
    models = ModelStore(ROOT / "models")
    assert models.has(EFFICIENTNET_SHA) and not models.has("ee" * 32)
    (tmp_path / "broken.toml").write_text("id = 3\n", encoding="utf-8")
    assert ModelStore(tmp_path).cards == {}  # a broken card is skipped, not fatal
    assert ModelStore(tmp_path / "missing").cards == {}


def test_a_deadline_is_not_swept_while_an_older_message_waits_uncommitted(store: Store) -> None:
    device = Device(device_key(94))
    enroll_direct(store, device.keypair)
    commit_batch(
        store,
        [_status(device, EFFICIENTNET_SHA, NOW - 500)],
        policy=_policy(),
        keypair=COORD,
        topics=T,
        now_ms=NOW,
    )
    issued = slots.tick(
        store, COORD, T, now_ms=NOW, slot_ms=SLOT, challenges=ALWAYS, rng=random.Random(1), nonce=_nonces()
    )
    assert len(issued.challenges) == 1
    quiet = ChallengeSection(probability_per_slot=0.0)
    # 3 s past the deadline by the clock, but a message stamped 1 ms before the deadline is
    # still queued (a commit backlog): it may be the answer, so nothing is swept
    held = slots.tick(
        store,
        COORD,
        T,
        now_ms=NOW + 8000,
        slot_ms=SLOT,
        challenges=quiet,
        rng=random.Random(1),
        missed_before_ms=NOW + 4999,
    )
    assert held.verdicts == [] and challenge_rows.challenges(store, device.id)[0].outcome is None
    # once the queue holds only messages stamped after the deadline, the miss is swept
    swept = slots.tick(
        store,
        COORD,
        T,
        now_ms=NOW + 8100,
        slot_ms=SLOT,
        challenges=quiet,
        rng=random.Random(1),
        missed_before_ms=NOW + 5001,
    )
    assert (
        len(swept.verdicts) == 1
        and challenge_rows.challenges(store, device.id)[0].outcome == "challenge_missed"
    )
