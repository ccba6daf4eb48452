"""The hook through which the coordinator service hands ``claim`` and ``receipt`` envelopes to a
payout desk (docs/rewards.md, "Claims").

The coordinator package never imports the rewards code built on top of its audit
(tests/unit/test_architecture.py): it defines here what it calls, and ``edgeproof coordinator
run`` composes the implementation (:class:`agent.rewards.desk.PayoutDesk`) when the config has a
``[payout]`` section with an RPC URL.

Both calls run inside the batch's transaction (:func:`agent.coordinator.batch.commit_batch`),
after the envelope verified and linked: what the desk writes commits with the message and its
verdict, or not at all.  A voucher is signed through ``sign``, the batch's one writer of the
coordinator chain, and stored before anything is published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agent.protocol.envelope import Envelope
from agent.protocol.messages import Claim, Receipt
from agent.validation import Strict

if TYPE_CHECKING:
    from agent.coordinator.store import Store

#: Signs the next envelope of the coordinator's chain: ``sign(kind, body)``.
ChainSign = Callable[[str, Strict], Envelope]


@dataclass(frozen=True)
class ClaimRequest:
    """An accepted ``claim`` envelope and what the registry says about its device."""

    dev: str
    #: The owner the device was enrolled with (its leaf's owner).
    registry_owner: str
    claim: Claim
    seq: int
    hash: str
    #: The id of the claim's message row (forces its insert).
    message_id: Callable[[], int]


@dataclass
class PayoutAnswer:
    """A desk's answer: ``reason`` None = a voucher was issued or re-sent (in ``outgoing``)."""

    reason: str | None = None
    detail: str | None = None
    #: (topic, wire) of voucher envelopes to publish after the commit.
    outgoing: list[tuple[str, bytes]] = field(default_factory=list)
    #: The payout breaker tripped on this claim (the service logs it and sets the metric).
    tripped: bool = False


@dataclass(frozen=True)
class ReconcileResult:
    paid: int = 0
    released: int = 0
    failed: int = 0
    #: The payout breaker refuses claims (``payout_paused``).
    breaker_open: bool = False


class PayoutHook(Protocol):
    """What the service calls; see :class:`agent.rewards.desk.PayoutDesk`."""

    def claim(self, store: Store, request: ClaimRequest, *, now_ms: int, sign: ChainSign) -> PayoutAnswer:
        """Answer a claim: a voucher (new, or the stored one again) or a named rejection."""
        ...

    def receipt(self, store: Store, dev: str, receipt: Receipt, *, now_ms: int) -> PayoutAnswer:
        """Look a receipt's transaction up on chain and record what it says."""
        ...

    def reconcile(self, store: Store, *, now_ms: int) -> ReconcileResult:
        """Bring every outstanding voucher in line with the chain (paid, failed or released)."""
        ...

    def outstanding(self, store: Store) -> list[tuple[str, bytes]]:
        """(topic, wire) of every outstanding voucher as stored (published again at start)."""
        ...

    def close(self) -> None: ...
