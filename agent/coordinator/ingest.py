"""Classify one inbound message: ``classify(...) -> Outcome`` (reads storage, writes nothing).

Every message goes through the shared :func:`agent.protocol.inbound.check_inbound` with
the registry as the trusted device set, the coordinator's own key as the only trusted
coordinator, and the device's chain followed from storage
(:class:`~agent.coordinator.chain_view.StoredChain`).  An envelope that verified and
linked then meets the coordinator's own checks, all against the coordinator's clock
(``ingest_ms``, stamped when the message arrived):

* ``clock_skew``: the envelope's ``ts`` is more than ``clock_skew_ms`` ahead of ingest
  time (a ts in the past is normal: an outbox drains after an outage);
* heartbeats: the quoted beacon must be one this coordinator issued (``unknown_beacon``)
  and at most ``beacon_max_age_slots`` older than the newest one (``stale_beacon``);
* proofs: ``inferences`` at most the device profile's ``max_fps`` for the model's class
  times the window length (``implausible_throughput``), and the window may not overlap a
  window already accepted from the device (``window_overlap``).

A policy rejection still takes its place in the device's chain (it is a validly signed
link); a chain rejection (``fork``, ``replay``, ``duplicate``) does not.  The caller
(:mod:`agent.coordinator.batch`) stores the row, moves the head and signs the verdict.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Protocol

from agent.coordinator.chain_view import ChainStore, StoredChain
from agent.coordinator.challenge_rows import ChallengeRow
from agent.coordinator.store import DeviceRecord, Head, MessageRow
from agent.errors import ProtocolError
from agent.profiles import Profile
from agent.protocol.chain import Link
from agent.protocol.envelope import Envelope
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import COORDINATOR_INBOUND
from agent.protocol.messages import ChallengeResponse, Heartbeat, Proof
from agent.protocol.topics import Topics


class IngestStore(ChainStore, Protocol):
    """What classification reads (implemented by :class:`~agent.coordinator.store.Store`)."""

    def device(self, dev: str) -> DeviceRecord | None: ...
    def overlapping_window(self, dev: str, start_ms: int, end_ms: int) -> tuple[int, int] | None: ...
    def beacon_nonce(self, slot: int) -> str | None: ...
    def newest_beacon_slot(self, at_ms: int) -> int | None: ...
    def challenge_by_nonce(self, dev: str, nonce: str) -> ChallengeRow | None: ...


@dataclass(frozen=True)
class Policy:
    """The coordinator-side bounds (from the config) and what they are measured against."""

    clock_skew_ms: int
    beacon_max_age_slots: int
    late_window_seqs: int
    #: Firmware profiles by id (``firmware_profiles/*.toml``).
    profiles: dict[str, Profile]
    #: model sha256 -> model class (from the model cards the coordinator knows).
    model_classes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VerdictInfo:
    """What the verdict to the device says (signed and chained by the batch)."""

    device: str
    ref_kind: str
    ref_seq: int
    ref_hash: str
    accepted: bool
    reason: str | None
    detail: str | None


@dataclass(frozen=True)
class Outcome:
    row: MessageRow
    #: The device's new chain head when the envelope linked.
    head: Head | None = None
    #: The verdict to publish (messages attributed to a registered device, not duplicates).
    verdict: VerdictInfo | None = None
    #: A challenge answer: (challenge id, its outcome now: ``pending`` until the reference run
    #: scores it, or a final name), recorded with the message.
    challenge: tuple[int, str] | None = None


class _Registry:
    """``Trust.devices``: membership looked up in storage, once per device per message."""

    def __init__(self, store: IngestStore) -> None:
        self._store = store
        self.records: dict[str, DeviceRecord | None] = {}

    def get(self, dev: str) -> DeviceRecord | None:
        if dev not in self.records:
            self.records[dev] = self._store.device(dev)
        return self.records[dev]

    def __contains__(self, dev: object) -> bool:
        return isinstance(dev, str) and self.get(dev) is not None


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_KIND_IDENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _detail(text: str | None) -> str | None:
    if not text:
        return None
    clean = _UNPRINTABLE.sub(" ", text)
    return clean if len(clean) <= 200 else clean[:197] + "..."


def _topic_dev(topics: Topics, topic: str) -> str | None:
    try:
        return topics.parse(topic).dev
    except ProtocolError:
        return None


def classify(
    topic: str,
    payload: bytes,
    ingest_ms: int,
    store: IngestStore,
    policy: Policy,
    coordinator_key: str,
    topics: Topics,
) -> Outcome:
    """Judge one message; never raises for anything a peer can send."""
    registry = _Registry(store)
    chains: dict[str, StoredChain] = {}

    def follow(env: Envelope) -> StoredChain | None:
        if env.dev not in registry:
            return None
        chains[env.dev] = StoredChain(store, env.dev, policy.late_window_seqs)
        return chains[env.dev]

    trust = Trust(devices=registry, coordinators=frozenset({coordinator_key}), kinds=COORDINATOR_INBOUND)
    result = check_inbound(topic, payload, trust, follow, topics=topics)
    if isinstance(result, Rejection):
        return _rejected(result, topic, payload, ingest_ms, registry, topics)
    return _judge(result, topic, ingest_ms, store, policy, registry, chains[result.envelope.dev])


def _rejected(
    rej: Rejection, topic: str, payload: bytes, ingest_ms: int, registry: _Registry, topics: Topics
) -> Outcome:
    env = rej.envelope
    dev = rej.dev if rej.dev is not None else _topic_dev(topics, topic)
    digest = env.hash if env is not None else hashlib.sha256(payload).hexdigest()
    row = MessageRow(
        dev=dev,
        topic=topic,
        kind=rej.kind,
        seq=env.seq if env is not None else None,
        chain_seq=None,
        hash=digest,
        ts=env.ts if env is not None else None,
        ingest_ms=ingest_ms,
        accepted=False,
        reason=rej.reason,
        detail=_detail(rej.message),
        raw=bytes(payload),
    )
    verdict = None
    if dev is not None and rej.reason != "duplicate" and registry.get(dev) is not None:
        kind = rej.kind if rej.kind is not None and _KIND_IDENT.match(rej.kind) else "unknown"
        verdict = VerdictInfo(
            dev, kind, env.seq if env is not None else 0, digest, False, rej.reason, _detail(rej.message)
        )
    return Outcome(row, None, verdict)


def _policy_check(
    env: Envelope, ingest_ms: int, store: IngestStore, policy: Policy, device: DeviceRecord
) -> tuple[str, str] | None:
    """The coordinator's own checks of a verified, linked envelope: (reason, detail) or None."""
    if env.ts > ingest_ms + policy.clock_skew_ms:
        return "clock_skew", (
            f"ts {env.ts} is {env.ts - ingest_ms} ms ahead of the coordinator clock "
            f"(bound {policy.clock_skew_ms} ms)"
        )
    body = env.body
    if isinstance(body, Heartbeat):
        nonce = store.beacon_nonce(body.beacon_slot)
        if nonce is None or nonce != body.beacon_nonce:
            return "unknown_beacon", f"beacon slot {body.beacon_slot} with this nonce was never issued"
        newest = store.newest_beacon_slot(ingest_ms)
        if newest is not None and newest - body.beacon_slot > policy.beacon_max_age_slots:
            return "stale_beacon", (
                f"beacon slot {body.beacon_slot} is {newest - body.beacon_slot} slots older than "
                f"slot {newest} (at most {policy.beacon_max_age_slots})"
            )
    if isinstance(body, Proof):
        return _throughput(env.dev, body, store, policy, device)
    return None


def answer_check(
    env: Envelope, body: ChallengeResponse, ingest_ms: int, store: IngestStore, policy: Policy
) -> tuple[ChallengeRow | None, str | None, str | None]:
    """``(challenge, reason, detail)`` for an answer; reason None: due for the reference run.

    ``unknown_challenge`` and ``replay`` leave no challenge to record; the others are the
    challenge's outcome: ``challenge_late`` (after the deadline, also when already marked
    missed), ``wrong_model`` (another model hash than the one challenged), ``unknown_model``
    (the coordinator does not have the model: accepted, not scored).
    """
    row = store.challenge_by_nonce(env.dev, body.nonce)
    if row is None:
        return (
            None,
            "unknown_challenge",
            f"no challenge with nonce {body.nonce[:16]}... was issued to this device",
        )
    if row.outcome not in (None, "challenge_missed"):
        return None, "replay", f"challenge {body.nonce[:16]}... was already answered"
    if ingest_ms > row.deadline_ms or row.outcome == "challenge_missed":
        return (
            row,
            "challenge_late",
            (
                f"answered at {ingest_ms}, {ingest_ms - row.deadline_ms} ms after the deadline {row.deadline_ms}"
            ),
        )
    if body.model_sha256 != row.model_sha256:
        return (
            row,
            "wrong_model",
            (f"answer names model {body.model_sha256[:12]}..., the challenge {row.model_sha256[:12]}..."),
        )
    if row.model_sha256 not in policy.model_classes:
        return (
            row,
            "unknown_model",
            f"model {row.model_sha256[:12]}... is not in the coordinator's model store",
        )
    return row, None, None


def throughput_limit(profile: Profile, model_class: str | None, window_ms: int) -> tuple[int, str] | None:
    """The most inferences ``profile`` allows in ``window_ms`` for ``model_class``, and what it was.

    A model the coordinator does not know is held to the profile's highest bound (no
    class can do more on this hardware).  None when the profile declares no bound at all.
    """
    if model_class is not None and model_class in profile.throughput:
        fps, what = profile.throughput[model_class].max_fps, f"{model_class} on {profile.id}"
    elif profile.throughput:
        fps = max(b.max_fps for b in profile.throughput.values())
        what = f"any model class on {profile.id} (model not in the coordinator's store)"
    else:
        return None
    return math.ceil(fps * window_ms / 1000), f"{fps}/s for {what}"


def _throughput(
    dev: str, body: Proof, store: IngestStore, policy: Policy, device: DeviceRecord
) -> tuple[str, str] | None:
    window = body.window_end_ms - body.window_start_ms
    profile = policy.profiles.get(device.profile)
    if profile is None:
        return "implausible_throughput", f"the device's profile {device.profile} is not known here"
    limit = throughput_limit(profile, policy.model_classes.get(body.model_sha256), window)
    if limit is None:
        return "implausible_throughput", f"profile {profile.id} declares no throughput bound"
    most, what = limit
    if body.inferences > most:
        return "implausible_throughput", (
            f"{body.inferences} inferences in {window} ms, over the bound of {most} ({what})"
        )
    other = store.overlapping_window(dev, body.window_start_ms, body.window_end_ms)
    if other is not None:
        return "window_overlap", (
            f"window {body.window_start_ms}-{body.window_end_ms} overlaps accepted window {other[0]}-{other[1]}"
        )
    return None


def _judge(
    acc: Accepted,
    topic: str,
    ingest_ms: int,
    store: IngestStore,
    policy: Policy,
    registry: _Registry,
    chain: StoredChain,
) -> Outcome:
    env = acc.envelope
    device = registry.get(env.dev)
    assert device is not None  # check_inbound only accepts registered devices
    refusal = _policy_check(env, ingest_ms, store, policy, device)
    challenge: tuple[int, str] | None = None
    note: tuple[str, str] | None = None  # an accepted message's reason (unknown_model)
    if refusal is None and isinstance(env.body, ChallengeResponse):
        answered, why, about = answer_check(env, env.body, ingest_ms, store, policy)
        if why == "unknown_model":
            note = (why, about or why)
        elif why is not None:
            refusal = (why, about or why)
        if answered is not None:
            challenge = (answered.id, why or "pending")
    link = acc.link
    reason, detail = refusal or note or (None, None)
    if refusal is None and note is None and link is not None and link.link is Link.GAP:
        reason, detail = "chain_gap", link.detail  # accepted; the verdict names the gap
    body = env.body
    proof = body if isinstance(body, Proof) else None
    heartbeat = body if isinstance(body, Heartbeat) else None
    row = MessageRow(
        dev=env.dev,
        topic=topic,
        kind=env.kind,
        seq=env.seq,
        chain_seq=None if env.sideband else env.seq,
        hash=env.hash,
        ts=env.ts,
        ingest_ms=ingest_ms,
        accepted=refusal is None,
        reason=reason,
        detail=_detail(detail),
        raw=env.wire,
        win_start_ms=proof.window_start_ms if proof else None,
        win_end_ms=proof.window_end_ms if proof else None,
        inferences=proof.inferences if proof else None,
        beacon_slot=heartbeat.beacon_slot if heartbeat else None,
    )
    head = Head(*chain.new_head) if chain.new_head is not None else None
    verdict: VerdictInfo | None = VerdictInfo(
        env.dev, env.kind, env.seq, env.hash, refusal is None, reason, _detail(detail)
    )
    if challenge is not None and challenge[1] == "pending":
        verdict = None  # the verdict follows the reference run (it carries the score)
    return Outcome(row, head, verdict, challenge)
