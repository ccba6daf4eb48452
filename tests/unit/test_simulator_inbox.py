"""The simulator's inbox: beacons and challenges judged as a device would, verdicts counted."""

from __future__ import annotations

import collections

from solders.keypair import Keypair

from agent.protocol.chain import ChainSigner
from agent.protocol.messages import Challenge
from agent.protocol.topics import Topics
from agent.simulator.identities import device_keypair
from agent.simulator.inbox import BeaconView, Inbox

COORD = Keypair.from_seed(bytes([90]) * 32)
OTHER = Keypair.from_seed(bytes([91]) * 32)
T = Topics()
DEV = str(device_keypair(1, 0).pubkey())
NONCE = "ab" * 32


def _inbox() -> tuple[Inbox, BeaconView, list[tuple[str, Challenge]], collections.Counter[str]]:
    notes: collections.Counter[str] = collections.Counter()
    got: list[tuple[str, Challenge]] = []
    beacons = BeaconView()
    inbox = Inbox(
        str(COORD.pubkey()),
        T,
        beacons,
        lambda dev, c, at: got.append((dev, c)),
        lambda what: notes.update([what]),
    )
    return inbox, beacons, got, notes


def _beacon(signer: ChainSigner, slot: int) -> bytes:
    body = {"slot": slot, "nonce": NONCE, "time_ms": slot * 2000, "slot_ms": 2000}
    return signer.next("beacon", body, slot * 2000).wire


def test_beacons_verify_against_the_pinned_key_and_only_go_forward() -> None:
    inbox, beacons, _, notes = _inbox()
    coord = ChainSigner(COORD)
    inbox.handle(T.beacon(), _beacon(coord, 10), 20_000)
    seen = beacons.latest()
    assert seen is not None and (seen.slot, seen.nonce, seen.slot_ms, seen.received_ms) == (
        10,
        NONCE,
        2000,
        20_000,
    )
    inbox.handle(T.beacon(), _beacon(coord, 9), 20_100)  # an older slot is not newer
    inbox.handle(T.beacon(), _beacon(ChainSigner(OTHER), 11), 20_200)  # another key
    inbox.handle(T.beacon(), b"{not json", 20_300)
    assert beacons.latest() == seen
    assert dict(notes) == {
        "beacons": 1,
        "beacons_not_newer": 1,
        "refused.untrusted_coordinator": 1,
        "refused.malformed": 1,
    }


def test_challenges_for_this_device_only_and_verdicts_counted() -> None:
    inbox, _, got, notes = _inbox()
    coord = ChainSigner(COORD)
    body = {"device": DEV, "nonce": NONCE, "model_sha256": "cd" * 32, "deadline_ms": 50_000}
    inbox.handle(T.device(DEV, "challenge"), coord.next("challenge", body, 40_000).wire, 40_010)
    assert [(d, c.nonce, c.deadline_ms) for d, c in got] == [(DEV, NONCE, 50_000)]
    other_dev = str(device_keypair(1, 1).pubkey())
    # addressed to another device than the topic's
    inbox.handle(T.device(other_dev, "challenge"), coord.next("challenge", body, 40_000).wire, 40_020)
    # signed by a key that is not the coordinator's
    forged = ChainSigner(OTHER).next("challenge", body, 40_000).wire
    inbox.handle(T.device(DEV, "challenge"), forged, 40_030)
    verdict = {"device": DEV, "ref_kind": "heartbeat", "ref_seq": 3, "ref_hash": "00" * 32, "accepted": True}
    inbox.handle(T.device(DEV, "verdict"), coord.next("verdict", verdict, 40_100).wire, 40_110)
    refused = {**verdict, "ref_kind": "proof", "accepted": False, "reason": "implausible_throughput"}
    inbox.handle(T.device(DEV, "verdict"), coord.next("verdict", refused, 40_200).wire, 40_210)
    assert len(got) == 1
    assert dict(notes) == {
        "refused.topic": 1,
        "refused.untrusted_coordinator": 1,
        "verdict.heartbeat.accepted": 1,
        "verdict.proof.implausible_throughput": 1,
    }
