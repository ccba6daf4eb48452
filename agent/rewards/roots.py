"""The published form of a settled epoch: its signed ``reward_root`` envelope and optional memo.

The envelope is side-band (seq 0, the genesis prev: it does not touch the coordinator's chain,
whose one writer is the coordinator service) with ``ts`` = the stored ``settled_ms``; ed25519
signatures are deterministic, so the same settlement always gives the same bytes.  The first
publication is recorded (migration 5, ``settlement_roots``) and every later one re-sends the
recorded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solders.keypair import Keypair

from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope
from agent.protocol.messages import RewardRoot
from agent.rewards.ledger import StoredSettlement

if TYPE_CHECKING:
    from agent.coordinator.store import Store


@dataclass(frozen=True)
class RecordedRoot:
    epoch: int
    raw: bytes
    memo_signature: str | None
    published_ms: int


def root_body(stored: StoredSettlement) -> RewardRoot:
    return RewardRoot(
        epoch=stored.epoch,
        root=stored.root,
        devices=len(stored.leaves),
        pool=stored.pool,
        total=stored.total,
        policy_hash=stored.policy_hash,
        settled_ms=stored.settled_ms,
    )


def root_envelope(stored: StoredSettlement, keypair: Keypair) -> Envelope:
    """The signed, side-band ``reward_root`` of a stored settlement (deterministic bytes)."""
    return build_envelope(
        keypair, "reward_root", root_body(stored), seq=0, prev=GENESIS_PREV, ts=stored.settled_ms
    )


def memo_text(epoch: int, root: str) -> str:
    """The on-chain memo of a settlement root: ``edgeproof:root:<epoch>:<root hex>``."""
    return f"edgeproof:root:{epoch}:{root}"


def recorded(store: Store, epoch: int) -> RecordedRoot | None:
    row = store.one(
        "SELECT raw, memo_signature, published_ms FROM settlement_roots WHERE epoch = ?", (epoch,)
    )
    if row is None:
        return None
    return RecordedRoot(epoch, bytes(row[0]), None if row[1] is None else str(row[1]), int(row[2]))


def record(store: Store, stored: StoredSettlement, keypair: Keypair, now_ms: int) -> RecordedRoot:
    """The recorded envelope of the epoch, recording it first if this is its first publication."""
    known = recorded(store, stored.epoch)
    if known is not None:
        return known
    env = root_envelope(stored, keypair)
    with store.transaction():
        store.execute(
            "INSERT INTO settlement_roots (epoch, raw, memo_signature, published_ms) VALUES (?, ?, NULL, ?)",
            (stored.epoch, env.wire, now_ms),
        )
    return RecordedRoot(stored.epoch, env.wire, None, now_ms)


def record_memo(store: Store, epoch: int, signature: str) -> None:
    with store.transaction():
        store.execute("UPDATE settlement_roots SET memo_signature = ? WHERE epoch = ?", (signature, epoch))
