"""One batch of inbound messages -> one transaction: rows, chain heads, signed verdicts.

:func:`commit_batch` classifies every message inside the transaction (so each one sees
the rows and heads of the messages before it, and of other coordinator processes that
committed first), records it, moves the device's head, then signs one ``verdict`` per
judged message on the coordinator's own chain (its head row locked until commit) and
stores the verdicts for publishing.  Nothing is acknowledged to the broker before this
returns: if it raises, the whole batch is rolled back and can be retried as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from solders.keypair import Keypair

from agent.coordinator import challenge_rows
from agent.coordinator.ingest import Outcome, Policy, VerdictInfo, classify
from agent.coordinator.payouts import ClaimRequest, PayoutAnswer, PayoutHook
from agent.coordinator.store import MessageRow, Store
from agent.errors import ProtocolError, StorageError
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import GENESIS_PREV, Envelope
from agent.protocol.messages import Claim, Receipt, Verdict
from agent.protocol.topics import Topics
from agent.validation import Strict

log = logging.getLogger("edgeproof.coordinator")


@dataclass(frozen=True)
class Inbound:
    """A message as received: the broker's packet id and the coordinator's receive time."""

    topic: str
    payload: bytes
    ingest_ms: int
    mid: int = 0
    qos: int = 1
    #: The MQTT connection it arrived on (an ack is only sent on that connection).
    generation: int = 0


@dataclass(frozen=True)
class SignedVerdict:
    seq: int
    topic: str
    wire: bytes


@dataclass(frozen=True)
class BatchResult:
    outcomes: list[Outcome]
    verdicts: list[SignedVerdict]
    #: Answers due for a reference run: (challenge id, model sha256, nonce).
    references: list[tuple[int, str, str]] = field(default_factory=list)
    #: Seconds spent judging and recording each message, in the order of ``outcomes``.
    judge_seconds: list[float] = field(default_factory=list)
    #: Voucher envelopes (topic, wire) to publish after the commit (the payout desk's).
    vouchers: list[tuple[str, bytes]] = field(default_factory=list)
    #: The payout breaker tripped on a claim of this batch.
    breaker_tripped: bool = False


class OwnChain:
    """The coordinator key's chain inside one transaction: its head row locked on first use."""

    def __init__(self, store: Store, keypair: Keypair, signer_key: str) -> None:
        self.store = store
        self.keypair = keypair
        self.signer_key = signer_key
        self._signer: ChainSigner | None = None

    def sign(self, kind: str, body: Strict, ts: int) -> Envelope:
        if self._signer is None:
            seq, prev = self.store.coordinator_head(self.signer_key)
            self._signer = ChainSigner(self.keypair, seq=seq, prev=prev if seq else GENESIS_PREV)
        return self._signer.next(kind, body, ts=ts)

    def close(self) -> None:
        if self._signer is not None:
            seq, digest = self._signer.state()
            self.store.set_coordinator_head(self.signer_key, seq, digest)


def _verdict_body(info: VerdictInfo) -> Verdict:
    fields: dict[str, Any] = {
        "device": info.device,
        "ref_kind": info.ref_kind,
        "ref_seq": info.ref_seq,
        "ref_hash": info.ref_hash,
        "accepted": info.accepted,
        "reason": info.reason,
    }
    try:
        return Verdict(**fields, detail=info.detail)
    except pydantic.ValidationError:
        return Verdict(**fields)  # a detail the schema does not take (e.g. a lone surrogate) is left out


def _topic_dev(topics: Topics, topic: str) -> str | None:
    try:
        return topics.parse(topic).dev
    except ProtocolError:
        return None


def _classify_safely(item: Inbound, store: Store, policy: Policy, signer_key: str, topics: Topics) -> Outcome:
    """``classify``, with a bug in it recorded as ``ingest_failed`` instead of poisoning the batch.

    An exception escaping here would fail the batch, the process would restart, the broker
    would redeliver the same message and the coordinator would stall on it for ever.  Storage
    errors still propagate: the batch is retried as a whole.
    """
    try:
        return classify(item.topic, item.payload, item.ingest_ms, store, policy, signer_key, topics)
    except StorageError:
        raise
    except Exception as exc:
        log.exception("classify_failed", extra={"topic": item.topic[:200], "bytes": len(item.payload)})
        row = MessageRow(
            dev=None,
            topic=item.topic,
            kind=None,
            seq=None,
            chain_seq=None,
            hash=hashlib.sha256(item.payload).hexdigest(),
            ts=None,
            ingest_ms=item.ingest_ms,
            accepted=False,
            reason="ingest_failed",
            detail=f"{type(exc).__name__}"[:200],
            raw=bytes(item.payload),
        )
        return Outcome(row)


_PAID_KINDS = ("claim", "receipt")


def _pay(
    outcome: Outcome,
    payouts: PayoutHook,
    store: Store,
    message_id: Callable[[], int],
    chain: OwnChain,
    now_ms: int,
) -> tuple[Outcome, PayoutAnswer]:
    """Hand an accepted claim or receipt to the payout desk; its rejection becomes the verdict."""
    row = outcome.row
    assert row.dev is not None and row.seq is not None
    body = json.loads(row.raw)["body"]
    try:
        if row.kind == "claim":
            record = store.device(row.dev)
            assert record is not None  # accepted: a registered device
            request = ClaimRequest(
                row.dev, record.owner, Claim.model_validate(body), row.seq, row.hash, message_id
            )
            answer = payouts.claim(
                store, request, now_ms=now_ms, sign=lambda kind, b: chain.sign(kind, b, now_ms)
            )
        else:
            answer = payouts.receipt(store, row.dev, Receipt.model_validate(body), now_ms=now_ms)
    except StorageError:
        raise  # the batch is retried as a whole
    except Exception as exc:  # a bug must not stall ingest on one message (as in _classify_safely)
        log.exception("payout_failed", extra={"dev": row.dev, "kind": row.kind})
        answer = PayoutAnswer(reason="ingest_failed", detail=type(exc).__name__)
    if answer.reason is None:
        return outcome, answer
    detail = answer.detail[:200] if answer.detail else None
    store.execute(
        "UPDATE messages SET accepted = 0, reason = ?, detail = ? WHERE id = ?",
        (answer.reason, detail, message_id()),
    )
    row = dataclasses.replace(row, accepted=False, reason=answer.reason, detail=detail)
    verdict = outcome.verdict
    if verdict is not None:
        verdict = dataclasses.replace(verdict, accepted=False, reason=answer.reason, detail=detail)
    return dataclasses.replace(outcome, row=row, verdict=verdict), answer


def commit_batch(
    store: Store,
    items: Sequence[Inbound],
    *,
    policy: Policy,
    keypair: Keypair,
    topics: Topics,
    now_ms: int,
    published: Sequence[int] = (),
    run_id: str | None = None,
    payouts: PayoutHook | None = None,
) -> BatchResult:
    """Classify, record and sign verdicts for ``items`` in one transaction.

    ``published`` are verdict seqs the broker has acknowledged since the last batch (marked
    in the same transaction); ``run_id`` is this process's liveness row (touched); accepted
    claims and receipts go to ``payouts`` (none: they are recorded and acknowledged only).
    """
    signer_key = str(keypair.pubkey())
    outcomes: list[Outcome] = []
    verdicts: list[SignedVerdict] = []
    references: list[tuple[int, str, str]] = []
    judge_seconds: list[float] = []
    vouchers: list[tuple[str, bytes]] = []
    tripped = False
    chain = OwnChain(store, keypair, signer_key)
    with store.transaction():
        # The registry rows and chain heads of the batch's devices, in a few queries (and on
        # PostgreSQL their head rows locked in one order); a message whose signer is another
        # device than its topic names is looked up on its own.
        store.prefetch([dev for dev in (_topic_dev(topics, item.topic) for item in items) if dev is not None])
        pending: list[tuple[Callable[[], int], VerdictInfo]] = []
        for item in items:
            started = time.perf_counter()
            outcome = _classify_safely(item, store, policy, signer_key, topics)
            message_id = store.insert_message_later(outcome.row)
            if (
                payouts is not None
                and outcome.row.accepted
                and outcome.row.kind in _PAID_KINDS
                and outcome.row.dev is not None
            ):
                outcome, answer = _pay(outcome, payouts, store, message_id, chain, now_ms)
                vouchers += answer.outgoing
                tripped = tripped or answer.tripped
            if outcome.head is not None and outcome.row.dev is not None:
                store.set_head(outcome.row.dev, outcome.head, item.ingest_ms)
            if outcome.verdict is not None:
                pending.append((message_id, outcome.verdict))
            if outcome.challenge is not None:
                challenge_id, state = outcome.challenge
                challenge_rows.set_outcome(
                    store, challenge_id, state, item.ingest_ms, response_id=message_id()
                )
                body = json.loads(outcome.row.raw)["body"]
                if state == "pending":
                    references.append((challenge_id, str(body["model_sha256"]), str(body["nonce"])))
            outcomes.append(outcome)
            judge_seconds.append(time.perf_counter() - started)
        if pending:
            rows: list[tuple[str, int, str, int, str, bytes, int]] = []
            for message_id, info in pending:
                env = chain.sign("verdict", _verdict_body(info), now_ms)
                topic = topics.for_kind("verdict", info.device)
                wire = env.wire  # encoded once for the row and the publish
                rows.append((signer_key, env.seq, info.device, message_id(), topic, wire, now_ms))
                verdicts.append(SignedVerdict(env.seq, topic, wire))
            store.insert_verdicts(rows)
        chain.close()
        if published:
            store.mark_published(signer_key, published, now_ms)
        if run_id is not None:
            store.touch_run(run_id, now_ms)
    return BatchResult(outcomes, verdicts, references, judge_seconds, vouchers, tripped)
