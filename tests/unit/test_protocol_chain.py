"""Hash chain: signer state, verifier results for replay, gap, late fill, fork, duplicates."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.chain import ChainSigner, ChainVerifier, Link, format_ranges
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope, verify_envelope
from agent.protocol.vectors import TS, heartbeat_body

KP = Keypair.from_seed(bytes([3]) * 32)
STATUS = {"state": "online", "agent_version": "0.1.0"}


def _chain(n: int) -> list[Envelope]:
    signer = ChainSigner(KP)
    return [signer.next("heartbeat", heartbeat_body(i), TS + i) for i in range(n)]


def test_signer_links_and_state() -> None:
    signer = ChainSigner(KP)
    assert signer.state() == (0, GENESIS_PREV)
    a = signer.next("heartbeat", heartbeat_body(), TS)
    b = signer.next("heartbeat", heartbeat_body(), TS + 1)
    assert (a.seq, a.prev) == (1, GENESIS_PREV)
    assert (b.seq, b.prev) == (2, a.hash)
    assert signer.state() == (2, b.hash)
    verify_envelope(b.wire)


def test_signer_restore_continues_the_same_chain() -> None:
    envs = _chain(3)
    restored = ChainSigner(KP, seq=2, prev=envs[1].hash)
    again = restored.next("heartbeat", heartbeat_body(2), TS + 2)
    assert again.wire == envs[2].wire


def test_prepare_does_not_advance_until_commit() -> None:
    signer = ChainSigner(KP)
    env = signer.prepare("heartbeat", heartbeat_body(), TS)
    assert signer.state() == (0, GENESIS_PREV)
    signer.commit(env)
    assert signer.state() == (1, env.hash)
    with pytest.raises(ProtocolError) as info:
        signer.commit(env)
    assert info.value.reason == "fork"
    assert str(info.value) == "cannot commit seq 1: the chain head is seq 1"


def test_bad_restore_state() -> None:
    with pytest.raises(ProtocolError, match=r"seq 0 and a zero hash go together"):
        ChainSigner(KP, seq=0, prev="a" * 64)


def test_sideband_status_does_not_advance() -> None:
    signer = ChainSigner(KP)
    will = signer.sideband("status", STATUS, TS)
    assert (will.seq, will.prev) == (0, GENESIS_PREV)
    first = signer.next("heartbeat", heartbeat_body(), TS)
    status = signer.next("status", STATUS, TS)
    assert (status.seq, status.prev) == (1, first.hash)
    assert signer.state() == (1, first.hash)
    with pytest.raises(ProtocolError, match=r"heartbeat is a chained kind"):
        signer.sideband("heartbeat", heartbeat_body(), TS)
    verifier = ChainVerifier()
    assert [verifier.observe(e).link for e in (will, first, status)] == [
        Link.SIDEBAND,
        Link.START,
        Link.SIDEBAND,
    ]


def test_verifier_in_order() -> None:
    verifier = ChainVerifier()
    results = [verifier.observe(e) for e in _chain(4)]
    assert [r.link for r in results] == [Link.START, Link.OK, Link.OK, Link.OK]
    assert results[0].detail == "genesis"
    assert all(r.ok for r in results)
    assert verifier.state()[0] == 4


def test_verifier_anchors_mid_chain() -> None:
    envs = _chain(5)
    verifier = ChainVerifier()
    first = verifier.observe(envs[2])
    assert first.link is Link.START
    assert first.detail == "chain starts at seq 3 (earlier envelopes not seen)"
    assert verifier.observe(envs[3]).link is Link.OK
    assert verifier.observe(envs[0]).link is Link.REPLAY


def test_duplicate_is_harmless() -> None:
    envs = _chain(3)
    verifier = ChainVerifier()
    for e in envs:
        verifier.observe(e)
    dup = verifier.observe(envs[1])
    assert dup.link is Link.DUPLICATE and dup.ok


def test_gap_reports_missing_range_then_late_fill() -> None:
    envs = _chain(7)
    verifier = ChainVerifier.from_state(0, GENESIS_PREV)
    verifier.observe(envs[0])
    verifier.observe(envs[1])
    gap = verifier.observe(envs[5])  # seq 6 after seq 2
    assert gap.link is Link.GAP and not gap.ok
    assert gap.missing == (3, 5)
    assert gap.detail == "missing seq 3-5"
    assert verifier.observe(envs[6]).link is Link.OK
    late = verifier.observe(envs[3])  # seq 4 arrives late
    assert late.link is Link.LATE and late.ok
    assert verifier.missing == [(3, 3), (5, 5)]
    assert format_ranges(verifier.missing) == "3, 5"
    assert verifier.observe(envs[2]).link is Link.LATE
    assert verifier.observe(envs[4]).link is Link.LATE
    assert verifier.missing == []


def test_from_state_expects_the_next_seq() -> None:
    envs = _chain(3)
    verifier = ChainVerifier.from_state(1, envs[0].hash)
    assert verifier.observe(envs[1]).link is Link.OK
    fresh = ChainVerifier.from_state(0, GENESIS_PREV)
    first = fresh.observe(envs[1])
    assert first.link is Link.GAP and first.missing == (1, 1)


def test_replay_below_head_outside_history() -> None:
    envs = _chain(6)
    verifier = ChainVerifier(history=2)
    for e in envs:
        verifier.observe(e)
    replay = verifier.observe(envs[0])
    assert replay.link is Link.REPLAY and not replay.ok
    assert replay.detail == "seq 1 is at or below the last seen seq 6"


def test_fork_same_seq_different_hash() -> None:
    envs = _chain(3)
    other = build_envelope(KP, "heartbeat", heartbeat_body(99), seq=2, prev=envs[0].hash, ts=TS)
    verifier = ChainVerifier()
    for e in envs:
        verifier.observe(e)
    fork = verifier.observe(other)
    assert fork.link is Link.FORK
    assert fork.detail == "seq 2 seen before with a different hash"


def test_fork_prev_mismatch() -> None:
    envs = _chain(2)
    bad = build_envelope(KP, "heartbeat", heartbeat_body(), seq=3, prev="ab" * 32, ts=TS)
    verifier = ChainVerifier()
    verifier.observe(envs[0])
    verifier.observe(envs[1])
    fork = verifier.observe(bad)
    assert fork.link is Link.FORK
    assert fork.detail == "prev does not match the hash of seq 2"


def test_fork_on_late_fill_that_does_not_link() -> None:
    envs = _chain(4)
    verifier = ChainVerifier()
    verifier.observe(envs[0])
    verifier.observe(envs[3])  # gap 2-3
    bad = build_envelope(KP, "heartbeat", heartbeat_body(), seq=2, prev="cd" * 32, ts=TS)
    assert verifier.observe(bad).detail == "prev does not match the hash of seq 1"
    bad3 = build_envelope(KP, "heartbeat", heartbeat_body(), seq=3, prev="cd" * 32, ts=TS)
    assert verifier.observe(bad3).detail == "seq 4 does not link to this envelope"


def test_device_restart_from_scratch_is_detected() -> None:
    """A device that lost its state starts over at seq 1: the coordinator sees a fork."""
    envs = _chain(3)
    verifier = ChainVerifier()
    for e in envs:
        verifier.observe(e)
    restarted = ChainSigner(KP).next("heartbeat", heartbeat_body(42), TS + 999)
    assert verifier.observe(restarted).link is Link.FORK


def test_status_with_wrong_head_is_a_fork() -> None:
    envs = _chain(2)
    verifier = ChainVerifier()
    for e in envs:
        verifier.observe(e)
    bad = build_envelope(KP, "status", STATUS, seq=2, prev="ef" * 32, ts=TS)
    assert verifier.observe(bad).link is Link.FORK
