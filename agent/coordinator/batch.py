"""One batch of inbound messages -> one transaction: rows, chain heads, signed verdicts.

:func:`commit_batch` classifies every message inside the transaction (so each one sees
the rows and heads of the messages before it, and of other coordinator processes that
committed first), records it, moves the device's head, then signs one ``verdict`` per
judged message on the coordinator's own chain (its head row locked until commit) and
stores the verdicts for publishing.  Nothing is acknowledged to the broker before this
returns: if it raises, the whole batch is rolled back and can be retried as it is.
"""

from __future__ import annotations

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
from agent.coordinator.store import MessageRow, Store
from agent.errors import ProtocolError, StorageError
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import GENESIS_PREV
from agent.protocol.messages import Verdict
from agent.protocol.topics import Topics

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
) -> BatchResult:
    """Classify, record and sign verdicts for ``items`` in one transaction.

    ``published`` are verdict seqs the broker has acknowledged since the last batch (marked
    in the same transaction); ``run_id`` is this process's liveness row (touched).
    """
    signer_key = str(keypair.pubkey())
    outcomes: list[Outcome] = []
    verdicts: list[SignedVerdict] = []
    references: list[tuple[int, str, str]] = []
    judge_seconds: list[float] = []
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
            seq, prev = store.coordinator_head(signer_key)
            signer = ChainSigner(keypair, seq=seq, prev=prev if seq else GENESIS_PREV)
            rows: list[tuple[str, int, str, int, str, bytes, int]] = []
            for message_id, info in pending:
                env = signer.next("verdict", _verdict_body(info), ts=now_ms)
                topic = topics.for_kind("verdict", info.device)
                wire = env.wire  # encoded once for the row and the publish
                rows.append((signer_key, env.seq, info.device, message_id(), topic, wire, now_ms))
                verdicts.append(SignedVerdict(env.seq, topic, wire))
            store.insert_verdicts(rows)
            head_seq, head_hash = signer.state()
            store.set_coordinator_head(signer_key, head_seq, head_hash)
        if published:
            store.mark_published(signer_key, published, now_ms)
        if run_id is not None:
            store.touch_run(run_id, now_ms)
    return BatchResult(outcomes, verdicts, references, judge_seconds)
