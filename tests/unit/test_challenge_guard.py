"""The device's inbound guards in isolation: challenge admission, token bucket, beacon plausibility,
the coordinator pin, log thinning, and the durable challenge memory (a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.device.beacon_guard import BeaconTolerance, check_beacon
from agent.device.challenge_guard import (
    ChallengeGuard,
    ChallengeLimits,
    MemoryChallengeMemory,
    TokenBucket,
    seq_key,
)
from agent.device.rejection_log import RejectionLog
from agent.device.state_store import StateStore
from agent.errors import ProtocolError
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.messages import Beacon, Challenge, Verdict

COORDINATOR = Keypair.from_seed(bytes([7] * 32))
OTHER = Keypair.from_seed(bytes([9] * 32))
DEVICE = str(Keypair.from_seed(bytes(range(32))).pubkey())
NOW = 1_700_000_000_000
MODEL = "ab" * 32


def challenge(
    nonce: str, *, seq: int, deadline_ms: int = NOW + 60_000, signer: Keypair = COORDINATOR
) -> Envelope:
    body = Challenge(device=DEVICE, nonce=nonce, model_sha256=MODEL, deadline_ms=deadline_ms)
    prev = GENESIS_PREV if seq == 1 else "cd" * 32
    return build_envelope(signer, "challenge", body, seq=seq, prev=prev, ts=NOW)


def reason_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value.reason


def guard(memory: MemoryChallengeMemory | None = None, **limits: int | float) -> ChallengeGuard:
    return ChallengeGuard(memory or MemoryChallengeMemory(), ChallengeLimits(**limits), now_s=0.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ challenge admission


def test_a_fresh_challenge_is_admitted_once_and_remembered_until_its_deadline() -> None:
    memory = MemoryChallengeMemory()
    g = guard(memory)
    env = challenge("11" * 32, seq=5)
    assert g.admit(env, now_ms=NOW, now_s=0.0).nonce == "11" * 32
    assert memory.nonces == {"11" * 32: NOW + 60_000}
    assert memory.signer_seq(seq_key(str(COORDINATOR.pubkey()))) == 5
    # The same envelope again: its seq is no longer above the highest.
    assert reason_of(lambda: g.admit(env, now_ms=NOW, now_s=0.0)) == "replay"
    # The same nonce in a new envelope (higher seq): the nonce memory refuses it.
    again = challenge("11" * 32, seq=6)
    with pytest.raises(ProtocolError, match=r"nonce 1111111111111111\.\.\. already accepted") as info:
        g.admit(again, now_ms=NOW, now_s=0.0)
    assert info.value.reason == "replay"
    # The seq of the refused one was not taken: 6 is still free for another nonce.
    assert g.admit(challenge("22" * 32, seq=6), now_ms=NOW, now_s=0.0).nonce == "22" * 32


def test_seq_gaps_are_fine_only_at_or_below_is_a_replay() -> None:
    g = guard()
    g.admit(challenge("11" * 32, seq=10), now_ms=NOW, now_s=0.0)
    g.admit(challenge("22" * 32, seq=250), now_ms=NOW, now_s=0.0)  # other devices' seqs in between
    with pytest.raises(ProtocolError, match="seq 250 is at or below 250"):
        g.admit(challenge("33" * 32, seq=250), now_ms=NOW, now_s=0.0)
    assert reason_of(lambda: g.admit(challenge("44" * 32, seq=11), now_ms=NOW, now_s=0.0)) == "replay"
    # Each coordinator key has its own seq.
    assert g.admit(challenge("55" * 32, seq=1, signer=OTHER), now_ms=NOW, now_s=0.0).nonce == "55" * 32


def test_deadline_checks_run_before_anything_is_remembered_or_paid() -> None:
    memory = MemoryChallengeMemory()
    g = guard(memory, horizon_ms=300_000, burst=1)
    far = challenge("11" * 32, seq=1, deadline_ms=NOW + 300_001)
    with pytest.raises(ProtocolError, match="300001 ms ahead, more than the 300000 ms horizon") as info:
        g.admit(far, now_ms=NOW, now_s=0.0)
    assert info.value.reason == "deadline_too_far"
    past = challenge("22" * 32, seq=2, deadline_ms=NOW - 1)
    assert reason_of(lambda: g.admit(past, now_ms=NOW, now_s=0.0)) == "expired"
    assert memory.nonces == {} and memory.seqs == {}
    # The one token is still there: exactly at the horizon is allowed.
    assert g.admit(challenge("33" * 32, seq=3, deadline_ms=NOW + 300_000), now_ms=NOW, now_s=0.0)


def test_the_token_bucket_refuses_the_excess_and_refills_with_time() -> None:
    memory = MemoryChallengeMemory()
    g = guard(memory, rate_per_min=60, burst=3)
    admitted = [g.admit(challenge(f"{i:02x}" * 32, seq=i), now_ms=NOW, now_s=0.0) for i in range(1, 4)]
    assert len(admitted) == 3
    excess = challenge("aa" * 32, seq=4)
    with pytest.raises(ProtocolError, match="more than 60 challenges per minute \\(burst 3\\)") as info:
        g.admit(excess, now_ms=NOW, now_s=0.5)
    assert info.value.reason == "rate_limited"
    # A refused challenge is not remembered: after a refill (1 per second) it is taken.
    assert "aa" * 32 not in memory.nonces
    assert g.admit(excess, now_ms=NOW, now_s=1.0).nonce == "aa" * 32


def test_a_full_queue_refuses_without_spending_a_token_or_the_nonce() -> None:
    memory = MemoryChallengeMemory()
    g = guard(memory, burst=1)
    env = challenge("11" * 32, seq=1)
    assert reason_of(lambda: g.admit(env, now_ms=NOW, now_s=0.0, room=False)) == "busy"
    assert memory.nonces == {}
    assert g.admit(env, now_ms=NOW, now_s=0.0).nonce == "11" * 32


def test_replays_do_not_spend_tokens() -> None:
    g = guard(burst=2)
    env = challenge("11" * 32, seq=1)
    g.admit(env, now_ms=NOW, now_s=0.0)
    for _ in range(100):
        assert reason_of(lambda: g.admit(env, now_ms=NOW, now_s=0.0)) == "replay"
    assert g.admit(challenge("22" * 32, seq=2), now_ms=NOW, now_s=0.0)


def test_forget_expired_drops_only_nonces_past_their_deadline() -> None:
    memory = MemoryChallengeMemory()
    g = guard(memory)
    g.admit(challenge("11" * 32, seq=1, deadline_ms=NOW + 1_000), now_ms=NOW, now_s=0.0)
    g.admit(challenge("22" * 32, seq=2, deadline_ms=NOW + 5_000), now_ms=NOW, now_s=0.0)
    assert g.forget_expired(NOW + 1_000) == 0  # until_ms == now: the deadline can still be met
    assert g.forget_expired(NOW + 1_001) == 1
    assert set(memory.nonces) == {"22" * 32}


def test_token_bucket_is_bounded_and_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2, now_s=100.0)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)
    assert not bucket.take(50.0)  # back in time: no refill
    assert bucket.take(100.5) and not bucket.take(100.5)
    assert bucket.take(1_000.0) and bucket.take(1_000.0) and not bucket.take(1_000.0)  # capped at burst
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(0.0, 1, 0.0)


# ------------------------------------------------------------------------------ durable memory


def test_the_real_state_store_keeps_nonces_and_seqs_across_a_reopen(tmp_path: Path) -> None:
    """The guard on the device's durable state store (agent/device/state_store.py), reopened."""
    path = tmp_path / "state.sqlite3"
    with StateStore.open(path) as first:
        g = ChallengeGuard(first, ChallengeLimits(), now_s=0.0)
        g.admit(challenge("11" * 32, seq=7), now_ms=NOW, now_s=0.0)
    with StateStore.open(path) as second:
        assert second.nonce_seen("11" * 32) and not second.nonce_seen("22" * 32)
        assert second.signer_seq(seq_key(str(COORDINATOR.pubkey()))) == 7
        g2 = ChallengeGuard(second, ChallengeLimits(), now_s=0.0)
        assert reason_of(lambda: g2.admit(challenge("11" * 32, seq=8), now_ms=NOW, now_s=0.0)) == "replay"
        assert reason_of(lambda: g2.admit(challenge("22" * 32, seq=7), now_ms=NOW, now_s=0.0)) == "replay"
        assert g2.forget_expired(NOW + 60_001) == 1 and not second.nonce_seen("11" * 32)
        assert g2.admit(challenge("22" * 32, seq=8), now_ms=NOW, now_s=0.0).nonce == "22" * 32


# ------------------------------------------------------------------------------ beacons


def beacon(slot: int, time_ms: int, slot_ms: int = 30_000) -> Beacon:
    return Beacon(slot=slot, nonce="aa" * 32, time_ms=time_ms, slot_ms=slot_ms)


TOL = BeaconTolerance(tolerance_ms=120_000, tolerance_slots=3)


def test_a_beacon_from_the_future_is_refused_by_time() -> None:
    check_beacon(beacon(1, NOW + 120_000), None, NOW, TOL)  # at the tolerance: fine
    with pytest.raises(ProtocolError, match="120001 ms ahead of the device clock") as info:
        check_beacon(beacon(1, NOW + 120_001), None, NOW, TOL)
    assert info.value.reason == "beacon_from_future"


def test_a_huge_slot_with_a_plausible_time_is_refused_against_the_last_beacon() -> None:
    last = beacon(100, NOW - 30_000)
    # 30 s since the last slot started, 120 s tolerance, 30 s slots: 5 + 3 slots at most.
    check_beacon(beacon(108, NOW), last, NOW, TOL)
    with pytest.raises(ProtocolError, match="slot 109 is 9 slots past slot 100; at most 8") as info:
        check_beacon(beacon(109, NOW), last, NOW, TOL)
    assert info.value.reason == "beacon_from_future"
    assert reason_of(lambda: check_beacon(beacon(2**40, NOW), last, NOW, TOL)) == "beacon_from_future"
    # The genuine next beacon, and the same slot again (a redelivery), pass.
    check_beacon(beacon(101, NOW), last, NOW, TOL)
    check_beacon(beacon(100, NOW - 30_000), last, NOW, TOL)
    # An older slot is a replay.
    with pytest.raises(ProtocolError, match="slot 99 is older than the current slot 100") as old:
        check_beacon(beacon(99, NOW - 60_000), last, NOW, TOL)
    assert old.value.reason == "replay"


def test_after_a_long_silence_the_slot_may_have_moved_on_accordingly() -> None:
    last = beacon(100, NOW - 3_600_000)  # an hour without a beacon (coordinator down, outage)
    check_beacon(beacon(100 + 120, NOW), last, NOW, TOL)
    # A coordinator that shortens its slots: judged with the shorter length.
    check_beacon(beacon(100 + 3_600, NOW, slot_ms=1_000), last, NOW, TOL)


# ------------------------------------------------------------------------------ the pin


def test_no_pin_refuses_every_coordinator_kind_and_another_key_is_untrusted() -> None:
    # The daemon's trust: the pin (or nobody) through the shared check_inbound.
    pinned = str(COORDINATOR.pubkey())
    bodies = {
        "beacon": beacon(1, NOW),
        "challenge": Challenge(device=DEVICE, nonce="11" * 32, model_sha256=MODEL, deadline_ms=NOW),
        "verdict": Verdict(device=DEVICE, ref_kind="proof", ref_seq=1, ref_hash="33" * 32, accepted=True),
    }
    unpinned = Trust(coordinators=frozenset(), kinds=DEVICE_INBOUND, audience=DEVICE)
    pin = Trust(coordinators=frozenset({pinned}), kinds=DEVICE_INBOUND, audience=DEVICE)
    for kind, body in bodies.items():
        env = build_envelope(COORDINATOR, kind, body, seq=1, prev=GENESIS_PREV, ts=NOW)
        refused = check_inbound(None, env.wire, unpinned)
        assert isinstance(refused, Rejection) and refused.reason == "unpinned_coordinator"
        assert refused.message == f"{kind} refused: no coordinator key is pinned"
        assert refused.hint == "set coordinator.pubkey to your coordinator's base58 public key"
        assert isinstance(check_inbound(None, env.wire, pin), Accepted)
        rogue = build_envelope(OTHER, kind, body, seq=1, prev=GENESIS_PREV, ts=NOW)
        other = check_inbound(None, rogue.wire, pin)
        assert isinstance(other, Rejection) and other.reason == "untrusted_coordinator"
        assert other.message == f"{kind} signed by {OTHER.pubkey()}, not the pinned coordinator {pinned}"


# ------------------------------------------------------------------------------ log thinning


def test_rejection_log_lets_a_few_lines_through_per_reason_and_counts_the_rest() -> None:
    thin = RejectionLog(burst=2, interval_s=10.0, now_s=0.0)
    assert [thin.should_log("replay", 1.0) for _ in range(5)] == [True, True, False, False, False]
    assert thin.should_log("malformed", 1.0)  # other reasons have their own budget
    assert thin.flush() == {"replay": 3}
    assert thin.flush() == {}
    assert not thin.should_log("replay", 9.9)
    assert thin.should_log("replay", 10.0)  # a new interval
    assert thin.flush() == {"replay": 1}
