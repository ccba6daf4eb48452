"""What the rollout controller takes from ``dev/+/deploy`` and ``dev/+/status``, judged at the edge.

Every message is a device-signed envelope, judged with the protocol's own
:func:`~agent.protocol.inbound.check_inbound` as the coordinator does: size, JSON, kind on its
topic (``wrong_kind``, ``topic``), an enrolled signer (``unknown_device``), the signature
(``bad_signature``), the schema (``schema``), and each device's chain seen in part
(:class:`~agent.protocol.inbound.SeqFloor`: a seq at or below the highest taken is a
``replay``).  Before any of that, a per-device token bucket refuses a flood (``flooded``), so
one device cannot buy signature checks with volume.  About the rollout itself (the runner):
a report about another release is ``unknown_rollout``, one from a device the stages reached
so far do not include is ``not_in_stage``.  Each refusal is counted by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Mapping
from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.protocol.chain import LinkResult
from agent.protocol.envelope import Envelope
from agent.protocol.inbound import Accepted, ChainObserver, SeqFloor, Trust, check_inbound
from agent.protocol.topics import Topics

#: Reports a device may send in a burst, and the sustained rate (per second) after it.
BURST = 40
RATE_PER_S = 4.0
_KINDS = frozenset({"deploy", "status"})


@dataclass(frozen=True)
class Refused:
    reason: str
    message: str
    dev: str | None = None


class TokenBucket:
    """``take(now_s)``: True while the bucket has a token (``BURST`` deep, ``RATE_PER_S`` refill)."""

    def __init__(self, burst: int = BURST, rate_per_s: float = RATE_PER_S) -> None:
        self.burst, self.rate = burst, rate_per_s
        self.tokens = float(burst)
        self.last: float | None = None

    def take(self, now_s: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now_s - self.last) * self.rate)
        self.last = now_s
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class DeployInbox:
    """Judges one message at a time; ``counters`` holds the refusals by reason and what was taken."""

    def __init__(
        self,
        topics: Topics,
        *,
        highest_seqs: Mapping[str, int] | None = None,
        burst: int = BURST,
        rate_per_s: float = RATE_PER_S,
    ) -> None:
        self.topics = topics
        self.counters: Counter[str] = Counter()
        self._floors: dict[str, SeqFloor] = {dev: SeqFloor(seq) for dev, seq in (highest_seqs or {}).items()}
        self._buckets: dict[str, TokenBucket] = {}
        self._limits = (burst, rate_per_s)

    def judge(
        self, topic: str, payload: bytes, *, enrolled: Container[str], now_s: float
    ) -> Envelope | Refused:
        try:
            claimed = self.topics.parse(topic).dev
        except ProtocolError:  # a topic outside the layout: check_inbound names it below
            claimed = None
        if claimed is not None and claimed in enrolled:
            bucket = self._buckets.setdefault(claimed, TokenBucket(*self._limits))
            if not bucket.take(now_s):
                return self.refuse(
                    "flooded", f"more than {self._limits[0]} reports in a burst from {claimed}", claimed
                )
        verdict = check_inbound(
            topic,
            payload,
            Trust(devices=enrolled, kinds=_KINDS),
            self._chain,
            topics=self.topics,
        )
        if not isinstance(verdict, Accepted):
            return self.refuse(verdict.reason, verdict.message, verdict.dev)
        self.counters[f"{verdict.envelope.kind}_taken"] += 1
        return verdict.envelope

    def _chain(self, env: Envelope) -> ChainObserver | None:
        if env.kind != "deploy":
            return None  # status is side-band: no seq of its own
        floor = self._floors.setdefault(env.dev, SeqFloor(0))
        return _Advancing(floor)

    def refuse(self, reason: str, message: str, dev: str | None = None) -> Refused:
        self.counters[reason] += 1
        return Refused(reason, message, dev)


class _Advancing:
    """A SeqFloor that moves up to each seq it accepts."""

    def __init__(self, floor: SeqFloor) -> None:
        self.floor = floor

    def observe(self, env: Envelope) -> LinkResult:
        result = self.floor.observe(env)
        if env.seq > self.floor.highest:
            self.floor.highest = env.seq
        return result
