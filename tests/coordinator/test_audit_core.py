"""The uptime audit's pure core (slot coverage, enrolment, crediting) and its load from both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.coordinator import challenge_rows
from agent.coordinator.audit import (
    ChallengeFact,
    DeviceFact,
    MessageFact,
    check_lengths,
    compute_report,
    covered_slots,
    epoch_of,
    epoch_report,
    merge_intervals,
    report_json,
)
from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.config import load_coordinator_config
from agent.coordinator.ingest import Policy
from agent.coordinator.registry import model_classes
from agent.coordinator.store import Store
from agent.errors import ConfigError
from agent.profiles import load_profiles
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    NOW,
    ROOT,
    SLOT_MS,
    Device,
    add_beacons,
    device_key,
    enroll_direct,
)

S = 1000  # slot_ms of the pure tests
E = 10 * S  # ten slots an epoch
EPOCH = 7
T0 = EPOCH * E  # the epoch's first millisecond


def hb(dev: str, slot: int, accepted: bool = True, reason: str | None = None, at: int = 10) -> MessageFact:
    return MessageFact(dev, "heartbeat", T0 + slot * S + at, accepted, reason, None)


def report(messages, liveness=((T0 - 5, T0 + E + 5),), devices=None, challenges=()):  # type: ignore[no-untyped-def]
    return compute_report(
        EPOCH,
        slot_ms=S,
        epoch_ms=E,
        devices=devices if devices is not None else [DeviceFact("a", "own", "rpi4", 0)],
        messages=messages,
        liveness=liveness,
        challenges=challenges,
    )


def test_epoch_of_and_lengths() -> None:
    assert [epoch_of(ms, E) for ms in (0, E - 1, E, T0 + 5)] == [0, 0, 1, EPOCH]
    check_lengths(S, E)
    with pytest.raises(ValueError, match=r"^epoch_ms \(10500\) must be a multiple of slot_ms \(1000\)$"):
        check_lengths(S, 10_500)


def test_a_slot_counts_only_when_the_union_of_runs_covers_all_of_it() -> None:
    assert merge_intervals([(5, 9), (0, 5), (20, 30), (25, 26)]) == [(0, 9), (20, 30)]
    # Two overlapping runs (two processes) cover slots 0-3; a killed run ends at 3400 and the
    # restart begins at 6200: slots 3 (partly), 4, 5 and 6 (partly) are not covered.
    runs = [(0, 2500), (2000, 3400), (6200, 10_000)]
    assert covered_slots(runs, 0, 10, S) == [True, True, True, False, False, False, False, True, True, True]
    assert covered_slots([], 0, 3, S) == [False, False, False]


def test_up_down_and_not_counted_slots() -> None:
    messages = [
        hb("a", 0),
        hb("a", 0, at=500),  # a second heartbeat in one slot: still one up slot
        hb("a", 1, accepted=False, reason="duplicate"),  # a redelivery never credits
        hb("a", 2, accepted=False, reason="stale_beacon"),
        hb("a", 4),  # coordinator down in slot 4: not credited
        hb("a", 6),
        MessageFact("a", "proof", T0 + 6 * S, True, None, 120),
        MessageFact("a", "proof", T0 + 7 * S, False, "implausible_throughput", 99_999),
        MessageFact("a", "heartbeat", T0 + E, True, None, None),  # next epoch: ignored
        MessageFact("a", "heartbeat", T0 - 1, True, None, None),  # previous epoch: ignored
        hb("z", 3),  # not a registered device: ignored
    ]
    liveness = [(T0 - 1000, T0 + 3 * S + 999), (T0 + 5 * S, T0 + E + 1)]
    rep = report(messages, liveness)
    assert (rep.start_ms, rep.end_ms, rep.coordinator_up_slots, rep.coordinator_down_slots) == (
        T0,
        T0 + E,
        8,
        2,
    )
    [a] = rep.devices
    assert a.slots == "UDDXXDUDDD"
    assert (a.up_slots, a.counted_slots, a.excluded_slots, a.uptime) == (2, 8, 2, 2 / 8)
    assert (a.heartbeats_accepted, a.proofs_accepted, a.inferences_accepted) == (4, 1, 120)
    assert a.rejections == {"duplicate": 1, "implausible_throughput": 1, "stale_beacon": 1}


def test_slots_up_to_the_enrolment_slot_are_excluded() -> None:
    devices = [DeviceFact("b", "o", "rpi4", T0 + 2 * S + 1), DeviceFact("a", "o", "rpi4", T0 - 1)]
    rep = report([hb("b", 2, at=500), hb("b", 3), hb("a", 0)], devices=devices)
    assert [d.dev for d in rep.devices] == ["a", "b"]  # sorted by dev
    a, b = rep.devices
    assert a.slots == "UDDDDDDDDD" and a.counted_slots == 10
    assert b.slots == "XXXUDDDDDD" and (b.up_slots, b.counted_slots, b.excluded_slots) == (1, 7, 3)
    late = report([], devices=[DeviceFact("c", "o", "rpi4", T0 + E + 5)]).devices[0]
    assert (late.slots, late.counted_slots, late.uptime) == ("X" * 10, 0, None)


def test_challenges_issued_in_the_epoch_and_their_pass_rate() -> None:
    issued = T0 + 100
    challenges = [
        ChallengeFact("a", issued, "passed"),
        ChallengeFact("a", issued, "passed"),
        ChallengeFact("a", issued, "challenge_late"),
        ChallengeFact("a", issued, "unknown_model"),  # not scored
        ChallengeFact("a", issued, None),
        ChallengeFact("a", issued, "pending"),
        ChallengeFact("a", T0 + E, "challenge_failed"),  # issued in the next epoch
    ]
    [a] = report([], challenges=challenges).devices
    assert a.challenges == {"challenge_late": 1, "open": 2, "passed": 2, "unknown_model": 1}
    assert a.pass_rate == pytest.approx(2 / 3)
    [quiet] = report([]).devices
    assert (quiet.challenges, quiet.pass_rate) == ({}, None)


def test_report_json_is_plain_data() -> None:
    rep = report([hb("a", 1)])
    data = json.loads(json.dumps(report_json(rep)))
    assert data["epoch"] == EPOCH and data["coordinator_up_slots"] == 10
    assert data["devices"][0]["slots"] == "DUDDDDDDDD"
    assert set(data["devices"][0]) == {
        "dev",
        "owner",
        "profile",
        "up_slots",
        "counted_slots",
        "excluded_slots",
        "uptime",
        "heartbeats_accepted",
        "proofs_accepted",
        "inferences_accepted",
        "rejections",
        "challenges",
        "pass_rate",
        "slots",
    }


def test_the_config_refuses_an_epoch_that_is_not_whole_slots(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[beacons]\nslot_ms = 7000\n\n[epochs]\nepoch_ms = 60000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"epoch_ms \(60000\) must be a multiple of \[beacons\] slot_ms"):
        load_coordinator_config(path)
    path.write_text("[beacons]\nslot_ms = 6000\n", encoding="utf-8")
    assert load_coordinator_config(path).epochs.epoch_ms == 3_600_000


def test_epoch_report_from_the_store_on_both_backends(store: Store) -> None:
    """Real signed envelopes through commit_batch; the report reads what ingest stored."""
    topics = Topics()
    policy = Policy(30_000, 1_000, 64, load_profiles(), model_classes(ROOT / "models"))
    epoch_ms = 10 * SLOT_MS
    epoch = NOW // epoch_ms + 1
    first = epoch * epoch_ms // SLOT_MS
    device = Device(device_key(1))
    enroll_direct(store, device.keypair)  # enrolled before the epoch
    add_beacons(store, range(first - 1, first + 10))
    with store.transaction():
        store.start_run("r1", str(COORD.pubkey()), "h", 1, epoch * epoch_ms - 5)
        store.touch_run("r1", epoch * epoch_ms + 4 * SLOT_MS + 10)  # killed in slot 4
        store.start_run("r2", str(COORD.pubkey()), "h", 2, epoch * epoch_ms + 6 * SLOT_MS - 3)
        store.stop_run("r2", (epoch + 1) * epoch_ms)

    def send(slot_index: int, env_wire: bytes, topic: str) -> None:
        at = (first + slot_index) * SLOT_MS + 50
        commit_batch(
            store, [Inbound(topic, env_wire, at)], policy=policy, keypair=COORD, topics=topics, now_ms=at
        )

    hb0 = device.heartbeat(first, (first) * SLOT_MS)
    send(0, hb0.wire, topics.hb(device.id))
    send(1, hb0.wire, topics.hb(device.id))  # the redelivery: duplicate, no credit in slot 1
    send(2, device.heartbeat(first + 2, (first + 2) * SLOT_MS).wire, topics.hb(device.id))
    send(4, device.heartbeat(first + 4, (first + 4) * SLOT_MS).wire, topics.hb(device.id))  # not counted
    proof = device.proof((first + 6) * SLOT_MS, (first + 7) * SLOT_MS - 1, 300)
    send(7, proof.wire, topics.for_kind("proof", device.id))
    send(8, device.heartbeat(first + 8, (first + 8) * SLOT_MS).wire, topics.hb(device.id))
    with store.transaction():
        challenge_rows.insert_challenge(
            store,
            dev=device.id,
            slot=first + 8,
            nonce="ab" * 32,
            model_sha256="00" * 32,
            signer=str(COORD.pubkey()),
            seq=99,
            digest="cd" * 32,
            issued_ms=(first + 8) * SLOT_MS,
            deadline_ms=(first + 9) * SLOT_MS,
            raw=b"{}",
        )

    rep = epoch_report(store, epoch, slot_ms=SLOT_MS, epoch_ms=epoch_ms)
    assert (rep.coordinator_up_slots, rep.coordinator_down_slots) == (8, 2)
    [d] = rep.devices
    assert d.slots == "UDUDXXDDUD"
    assert (d.up_slots, d.counted_slots, d.uptime) == (3, 8, 3 / 8)
    assert (d.heartbeats_accepted, d.proofs_accepted, d.inferences_accepted) == (4, 1, 300)
    assert d.rejections == {"duplicate": 1}
    assert (d.challenges, d.pass_rate) == ({"open": 1}, None)
