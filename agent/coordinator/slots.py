"""Per-slot work: the beacon, the slot's challenges, missed deadlines, and scoring answers.

Everything the coordinator signs is chained on its own key (the ``coordinator_chain`` row,
locked by the transaction that signs, as verdicts are).  :func:`tick` runs about once a
second in every coordinator process, in one transaction:

1. the slot's beacon row is inserted with ``ON CONFLICT (slot) DO NOTHING``: exactly one
   process's insert wins the slot; that process signs the beacon (recorded with its
   envelope *before* it is published, so heartbeats are judged against beacons really
   issued) and picks the slot's challenges;
2. each registered device that reported a model (an accepted proof or status) within
   ``active_within_slots`` slots is challenged with ``probability_per_slot``: a random
   32-byte nonce, the model it last reported, a deadline ``deadline_ms`` ahead;
3. challenges past their deadline without an answer become ``challenge_missed`` (an
   ``UPDATE ... WHERE outcome IS NULL``: any process, each exactly once), with a verdict --
   past the deadline by the ingest stamp of the oldest message the process still holds
   uncommitted, not by the wall clock: under a commit backlog an answer that arrived in time
   is still queued, and sweeping by the clock would judge it late.

:func:`score` turns a reference run into the challenge's outcome and a verdict on the answer.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from solders.keypair import Keypair

from agent.coordinator import challenge_rows
from agent.coordinator.batch import OwnChain, SignedVerdict
from agent.coordinator.challenge_rows import ChallengeRow
from agent.coordinator.config import ChallengeSection
from agent.coordinator.store import Store
from agent.protocol.challenge import sketch_distance, sketch_matches
from agent.protocol.messages import Beacon, Challenge, Verdict
from agent.protocol.topics import Topics


@dataclass(frozen=True)
class Outgoing:
    """A signed coordinator message to publish (beacons retained, challenges not)."""

    topic: str
    wire: bytes
    retain: bool = False


@dataclass
class TickResult:
    slot: int
    beacon: Outgoing | None = None
    challenges: list[Outgoing] = field(default_factory=list)
    verdicts: list[SignedVerdict] = field(default_factory=list)


def slot_of(now_ms: int, slot_ms: int) -> int:
    return now_ms // slot_ms


def _verdict(
    chain: OwnChain,
    topics: Topics,
    dev: str,
    ref: tuple[str, int, str],
    message_id: int,
    ok: bool,
    reason: str | None,
    detail: str,
    now_ms: int,
) -> SignedVerdict:
    body = Verdict(
        device=dev,
        ref_kind=ref[0],
        ref_seq=ref[1],
        ref_hash=ref[2],
        accepted=ok,
        reason=reason,
        detail=detail[:200],
    )
    env = chain.sign("verdict", body, now_ms)
    topic = topics.for_kind("verdict", dev)
    chain.store.insert_verdict(chain.signer_key, env.seq, dev, message_id, topic, env.wire, now_ms)
    return SignedVerdict(env.seq, topic, env.wire)


def tick(
    store: Store,
    keypair: Keypair,
    topics: Topics,
    *,
    now_ms: int,
    slot_ms: int,
    challenges: ChallengeSection,
    rng: random.Random,
    nonce: Callable[[], str] = lambda: secrets.token_hex(32),
    missed_before_ms: int | None = None,
) -> TickResult:
    """One transaction: the slot's beacon and challenges if this process wins the slot, then misses.

    ``missed_before_ms`` is the ingest stamp of the oldest message this process received and
    has not committed yet (None: nothing waits): a deadline at or after it is not swept as
    missed yet, since an answer stamped before the deadline may be among those messages.
    """
    slot = slot_of(now_ms, slot_ms)
    result = TickResult(slot)
    with store.transaction():
        chain = OwnChain(store, keypair, str(keypair.pubkey()))
        beacon_nonce = nonce()
        if challenge_rows.claim_slot(store, slot, beacon_nonce, slot * slot_ms, slot_ms, now_ms):
            body = Beacon(slot=slot, nonce=beacon_nonce, time_ms=slot * slot_ms, slot_ms=slot_ms)
            env = chain.sign("beacon", body, now_ms)
            challenge_rows.set_beacon_envelope(store, slot, chain.signer_key, env.seq, env.wire)
            result.beacon = Outgoing(topics.beacon(), env.wire, retain=True)
            result.challenges = _challenge_devices(
                store, chain, topics, slot, slot_ms, now_ms, challenges, rng, nonce
            )
        sweep_ms = now_ms if missed_before_ms is None else min(now_ms, missed_before_ms)
        for row in challenge_rows.take_missed(store, sweep_ms):
            result.verdicts.append(
                _verdict(
                    chain,
                    topics,
                    row.dev,
                    ("challenge", row.seq, row.hash),
                    0,
                    False,
                    "challenge_missed",
                    f"no answer to challenge {row.nonce[:16]}... by the deadline {row.deadline_ms}",
                    now_ms,
                )
            )
        chain.close()
    return result


def _challenge_devices(
    store: Store,
    chain: OwnChain,
    topics: Topics,
    slot: int,
    slot_ms: int,
    now_ms: int,
    config: ChallengeSection,
    rng: random.Random,
    nonce: Callable[[], str],
) -> list[Outgoing]:
    out: list[Outgoing] = []
    if config.probability_per_slot <= 0:
        return out
    since = now_ms - config.active_within_slots * slot_ms
    for device in store.devices():
        if rng.random() >= config.probability_per_slot:
            continue
        model = challenge_rows.reported_model(store, device.id, since)
        if model is None:
            continue
        deadline = now_ms + config.deadline_ms
        body = Challenge(device=device.id, nonce=nonce(), model_sha256=model, deadline_ms=deadline)
        env = chain.sign("challenge", body, now_ms)
        challenge_rows.insert_challenge(
            store,
            dev=device.id,
            slot=slot,
            nonce=body.nonce,
            model_sha256=model,
            signer=chain.signer_key,
            seq=env.seq,
            digest=env.hash,
            issued_ms=now_ms,
            deadline_ms=deadline,
            raw=env.wire,
        )
        out.append(Outgoing(topics.for_kind("challenge", device.id), env.wire))
    return out


def _answer(store: Store, row: ChallengeRow) -> tuple[list[int], int, str]:
    """(sketch, seq, hash) of the stored answer to ``row``."""
    assert row.response_id is not None
    found = store.one("SELECT raw, seq, hash FROM messages WHERE id = ?", (row.response_id,))
    assert found is not None
    sketch = [int(v) for v in json.loads(bytes(found[0]))["body"]["sketch"]]
    return sketch, int(found[1]), str(found[2])


def score(
    store: Store,
    keypair: Keypair,
    topics: Topics,
    *,
    challenge_id: int,
    reference: Sequence[int] | None,
    error: str | None,
    tolerance_of: Callable[[str], float],
    now_ms: int,
) -> SignedVerdict | None:
    """Score one answered challenge against its reference sketch; the verdict on the answer.

    None when the challenge is no longer pending (another process scored it first).  A
    reference run that failed leaves the challenge ``reference_failed`` (not scored).
    """
    with store.transaction():
        row = challenge_rows.challenge(store, challenge_id)
        if row is None or row.outcome != "pending":
            return None
        sketch, seq, digest = _answer(store, row)
        tolerance = tolerance_of(row.model_sha256)
        chain = OwnChain(store, keypair, str(keypair.pubkey()))
        reason: str | None
        if reference is None:
            challenge_rows.set_outcome(store, row.id, "reference_failed", now_ms)
            ok, reason, detail = True, "reference_failed", f"the coordinator could not run the model: {error}"
        else:
            distance = sketch_distance(sketch, reference)
            ok = sketch_matches(sketch, reference, tolerance)
            reason = None if ok else "challenge_failed"
            challenge_rows.set_outcome(
                store,
                row.id,
                "passed" if ok else "challenge_failed",
                now_ms,
                distance=distance,
                tolerance=tolerance,
            )
            detail = f"sketch distance {distance:.6f}, tolerance {tolerance:g}"
        verdict = _verdict(
            chain,
            topics,
            row.dev,
            ("challenge_response", seq, digest),
            row.response_id or 0,
            ok,
            reason,
            detail,
            now_ms,
        )
        chain.close()
    return verdict
