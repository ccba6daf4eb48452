"""Ingest classification, one case per reason, committed through commit_batch on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from agent.coordinator.batch import BatchResult, Inbound, commit_batch
from agent.coordinator.ingest import Policy, classify, throughput_limit
from agent.coordinator.store import Store
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import Envelope, build_envelope, verify_envelope
from agent.protocol.messages import Verdict
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    NOW,
    SLOT_MS,
    Device,
    add_beacons,
    device_key,
    enroll_direct,
    heartbeat_body,
    ingest_policy,
)

T = Topics()
SLOT = NOW // SLOT_MS
POLICY = ingest_policy()


@pytest.fixture
def rig(store: Store) -> tuple[Store, Device]:
    device = Device(device_key(1))
    enroll_direct(store, device.keypair)
    add_beacons(store, range(SLOT - 5, SLOT + 1))
    return store, device


def ingest(store: Store, *items: tuple[str, bytes], at: int = NOW) -> BatchResult:
    batch = [Inbound(topic, payload, at) for topic, payload in items]
    return commit_batch(store, batch, policy=POLICY, keypair=COORD, topics=T, now_ms=at)


def one(store: Store, env: Envelope, topic: str | None = None, at: int = NOW) -> tuple[bool, str | None]:
    result = ingest(store, (topic or T.for_kind(env.kind, env.dev), env.wire), at=at)
    row = result.outcomes[0].row
    return row.accepted, row.reason


def test_a_heartbeat_quoting_the_current_beacon_is_accepted_and_gets_a_signed_verdict(
    rig: tuple[Store, Device],
) -> None:
    store, device = rig
    env = device.heartbeat(SLOT, NOW - 100)
    result = ingest(store, (T.hb(device.id), env.wire))
    assert [o.row.accepted for o in result.outcomes] == [True]
    [verdict] = result.verdicts
    assert verdict.topic == T.for_kind("verdict", device.id)
    signed = verify_envelope(verdict.wire, expected_signer=str(COORD.pubkey()))
    assert signed.kind == "verdict" and signed.seq == 1
    assert isinstance(signed.body, Verdict)
    assert (signed.body.device, signed.body.ref_seq, signed.body.ref_hash, signed.body.accepted) == (
        device.id,
        1,
        env.hash,
        True,
    )
    head = store.head(device.id)
    assert head is not None and (head.seq, head.hash) == (1, env.hash)
    assert store.unpublished_verdicts(str(COORD.pubkey()))[0][0] == 1


def test_verdicts_continue_the_coordinator_chain_across_batches(rig: tuple[Store, Device]) -> None:
    store, device = rig
    first = ingest(store, (T.hb(device.id), device.heartbeat(SLOT, NOW).wire))
    second = ingest(store, (T.hb(device.id), device.heartbeat(SLOT, NOW).wire))
    a = verify_envelope(first.verdicts[0].wire)
    b = verify_envelope(second.verdicts[0].wire)
    assert (a.seq, b.seq) == (1, 2) and b.prev == a.hash


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("garbage", "malformed"),
        ("unknown_device", "unknown_device"),
        ("bad_signature", "bad_signature"),
        ("wrong_kind", "wrong_kind"),
        ("topic", "topic"),
        ("clock_skew", "clock_skew"),
        ("unknown_beacon", "unknown_beacon"),
        ("stale_beacon", "stale_beacon"),
        ("implausible_throughput", "implausible_throughput"),
    ],
)
def test_each_refusal_has_its_reason_and_is_recorded(rig: tuple[Store, Device], case: str, want: str) -> None:
    store, device = rig
    stranger = Device(device_key(9))
    other = Device(device_key(2))
    enroll_direct(store, other.keypair)
    topic = T.hb(device.id)
    if case == "garbage":
        payload = b"\x00not an envelope"
    elif case == "unknown_device":
        env = stranger.heartbeat(SLOT, NOW)
        topic, payload = T.hb(stranger.id), env.wire
    elif case == "bad_signature":
        env = device.heartbeat(SLOT, NOW)
        forged = {**env.raw, "body": {**env.raw["body"], "uptime_s": 999_999}}
        payload = Envelope(**{**env.__dict__, "raw": forged}).wire
    elif case == "wrong_kind":
        topic, payload = T.proof(device.id), device.heartbeat(SLOT, NOW).wire
    elif case == "topic":
        topic, payload = T.hb(other.id), device.heartbeat(SLOT, NOW).wire
    elif case == "clock_skew":
        payload = device.heartbeat(SLOT, NOW + 31_000).wire
    elif case == "unknown_beacon":
        payload = device.heartbeat(SLOT, NOW, nonce="ee" * 32).wire
    elif case == "stale_beacon":
        payload = device.heartbeat(SLOT - 3, NOW).wire
    else:
        # rpi4, classifier-small: 60/s -> at most 3600 in a minute
        topic, payload = T.proof(device.id), device.proof(NOW - 60_000, NOW, 3601).wire
    result = ingest(store, (topic, payload))
    row = result.outcomes[0].row
    assert (row.accepted, row.reason) == (False, want)
    assert row.detail
    [stored] = [m for m in store.messages() if m.raw == payload]
    assert (stored.accepted, stored.reason) == (False, want)
    if case == "unknown_device":
        assert stored.dev == stranger.id and result.verdicts == []  # nobody to tell
    else:
        assert stored.dev in (device.id, other.id)
        [verdict] = result.verdicts
        body = verify_envelope(verdict.wire).body
        assert isinstance(body, Verdict) and (body.accepted, body.reason) == (False, want)


def test_garbage_without_a_device_topic(rig: tuple[Store, Device]) -> None:
    store, _ = rig
    result = ingest(store, ("edgeproof/v1/somewhere/else", b"{}"))
    row = result.outcomes[0].row
    assert (row.dev, row.accepted, row.reason) == (None, False, "malformed") and result.verdicts == []


def test_the_throughput_bound_is_the_profile_bound_for_the_models_class(rig: tuple[Store, Device]) -> None:
    store, device = rig
    assert one(store, device.proof(NOW - 60_000, NOW, 3600)) == (True, None)
    profile = POLICY.profiles["rpi4"]
    assert throughput_limit(profile, "classifier-small", 60_000) == (
        3600,
        "60/s for classifier-small on rpi4",
    )
    # a model the coordinator does not know is held to the profile's highest bound (detector-small: 150/s)
    assert throughput_limit(profile, None, 1000)[0] == 150  # type: ignore[index]


def test_an_overlapping_window_is_refused(rig: tuple[Store, Device]) -> None:
    store, device = rig
    assert one(store, device.proof(NOW - 60_000, NOW, 100)) == (True, None)
    assert one(store, device.proof(NOW - 30_000, NOW + 1, 100)) == (False, "window_overlap")
    assert one(store, device.proof(NOW, NOW + 1000, 10)) == (True, None)  # adjacent is fine


def test_a_redelivered_envelope_is_a_duplicate_stored_once_and_not_answered(
    rig: tuple[Store, Device],
) -> None:
    store, device = rig
    env = device.heartbeat(SLOT, NOW)
    assert one(store, env) == (True, None)
    result = ingest(store, (T.hb(device.id), env.wire), (T.hb(device.id), env.wire))
    assert [(o.row.accepted, o.row.reason) for o in result.outcomes] == [(False, "duplicate")] * 2
    assert result.verdicts == []
    accepted = [m for m in store.messages(device.id) if m.accepted]
    assert len(accepted) == 1 and accepted[0].chain_seq == 1


def test_a_second_envelope_at_the_same_seq_is_a_fork(rig: tuple[Store, Device]) -> None:
    store, device = rig
    assert one(store, device.heartbeat(SLOT, NOW)) == (True, None)
    twin = ChainSigner(device.keypair)  # a second signer on the same key
    forked = twin.next("heartbeat", heartbeat_body(SLOT - 1), NOW)
    assert one(store, forked) == (False, "fork")
    # a seq 2 that does not link to the stored seq 1 is a fork too
    bad_prev = build_envelope(
        device.keypair, "heartbeat", heartbeat_body(SLOT), seq=2, prev="11" * 32, ts=NOW
    )
    assert one(store, bad_prev) == (False, "fork")


def test_a_gap_is_accepted_and_named_then_filled_late_and_a_too_late_fill_is_a_replay(
    rig: tuple[Store, Device],
) -> None:
    store, device = rig
    envs = [device.heartbeat(SLOT, NOW) for _ in range(13)]
    assert one(store, envs[0]) == (True, None)
    assert one(store, envs[2]) == (True, "chain_gap")  # seq 2 missing
    head = store.head(device.id)
    assert head is not None and head.missing == ((2, 2),)
    assert one(store, envs[1]) == (True, None)  # the late seq 2 links to 1 and 3
    head = store.head(device.id)
    assert head is not None and (head.seq, head.missing) == (3, ())
    # seqs 4-12 missing, the head is 9 seqs past seq 4 (late window 8): seq 4 can no longer be filled
    assert one(store, envs[12]) == (True, "chain_gap")
    assert one(store, envs[3]) == (False, "replay")


def test_a_policy_refusal_still_links_the_chain(rig: tuple[Store, Device]) -> None:
    store, device = rig
    assert one(store, device.heartbeat(SLOT - 4, NOW)) == (False, "stale_beacon")
    assert one(store, device.heartbeat(SLOT, NOW)) == (True, None)  # seq 2 follows the refused seq 1
    head = store.head(device.id)
    assert head is not None and head.seq == 2 and head.missing == ()


def test_status_is_side_band_and_a_repeated_status_is_a_duplicate(rig: tuple[Store, Device]) -> None:
    store, device = rig
    assert one(store, device.heartbeat(SLOT, NOW)) == (True, None)
    status = device.chain.sideband("status", {"state": "online", "agent_version": "0.1.0"}, NOW)
    assert one(store, status) == (True, None)
    assert one(store, status) == (False, "duplicate")
    head = store.head(device.id)
    assert head is not None and head.seq == 1


def test_a_batch_sees_its_own_earlier_messages(rig: tuple[Store, Device]) -> None:
    store, device = rig
    a, b = device.heartbeat(SLOT, NOW), device.heartbeat(SLOT, NOW)
    result = ingest(store, (T.hb(device.id), a.wire), (T.hb(device.id), b.wire), (T.hb(device.id), b.wire))
    assert [(o.row.accepted, o.row.reason) for o in result.outcomes] == [
        (True, None),
        (True, None),
        (False, "duplicate"),
    ]
    assert [verify_envelope(v.wire).seq for v in result.verdicts] == [1, 2]


def test_a_failed_batch_leaves_nothing_behind(rig: tuple[Store, Device]) -> None:
    store, device = rig
    env = device.heartbeat(SLOT, NOW)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction():
        store.insert_message(
            classify(T.hb(device.id), env.wire, NOW, store, POLICY, str(COORD.pubkey()), T).row
        )
        raise Boom
    assert store.messages() == []
    assert one(store, env) == (True, None)


def test_an_operator_key_is_never_a_device(rig: tuple[Store, Device]) -> None:
    store, _ = rig
    signer = Keypair.from_seed(bytes([77]) * 32)
    env = ChainSigner(signer).next("heartbeat", heartbeat_body(SLOT), NOW)
    assert one(store, env) == (False, "unknown_device")


def test_a_bug_while_judging_one_message_is_recorded_and_the_batch_goes_on(rig: tuple[Store, Device]) -> None:
    store, device = rig
    broken = Policy(
        clock_skew_ms=30_000,
        beacon_max_age_slots=2,
        late_window_seqs=8,
        profiles={"rpi4": "not a profile"},  # type: ignore[dict-item]  # a bug: not a Profile
    )
    proof = device.proof(NOW - 60_000, NOW, 10)
    hb = device.heartbeat(SLOT, NOW)
    batch = [Inbound(T.proof(device.id), proof.wire, NOW), Inbound(T.hb(device.id), hb.wire, NOW)]
    result = commit_batch(store, batch, policy=broken, keypair=COORD, topics=T, now_ms=NOW)
    assert [(o.row.accepted, o.row.reason) for o in result.outcomes] == [
        (False, "ingest_failed"),
        (True, "chain_gap"),
    ]
    assert [m.reason for m in store.messages()] == ["ingest_failed", "chain_gap"]
