"""The per-signer hash chain: a pure signer and a per-device verifier.

:class:`ChainSigner` holds the chain head ``(seq, hash)`` of one key and
produces the next envelope.  It does no I/O: the daemon persists the head (or
recovers it from the last envelope in its outbox) and restores it with
``ChainSigner(keypair, seq=..., prev=...)``.  To never fork across a crash, the
daemon can ``prepare()`` an envelope, commit it to the outbox, then
``commit()`` it.

:class:`ChainVerifier` follows one signer's chain and classifies every
envelope with a named :class:`Link` result instead of raising, so an ingest
loop or ``edgeproof proofs verify`` keeps going.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope
from agent.protocol.kinds import SIDEBAND_KINDS
from agent.validation import Strict


class ChainSigner:
    """Produces consecutive envelopes for one key.  ``state()`` is ``(last seq, hash of last envelope)``."""

    def __init__(self, keypair: Keypair, *, seq: int = 0, prev: str = GENESIS_PREV) -> None:
        if (seq == 0) != (prev == GENESIS_PREV):
            raise ProtocolError("chain state: seq 0 and a zero hash go together", reason="schema")
        self._keypair = keypair
        self._dev = str(keypair.pubkey())
        self._seq = seq
        self._prev = prev

    @property
    def dev(self) -> str:
        return self._dev

    def state(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last chained envelope; ``(0, 64 zeros)`` before the first."""
        return self._seq, self._prev

    def prepare(self, kind: str, body: Strict | dict[str, Any], ts: int) -> Envelope:
        """Build the next envelope without advancing (call :meth:`commit` once it is stored)."""
        if kind in SIDEBAND_KINDS:
            return self.sideband(kind, body, ts)
        return build_envelope(
            self._keypair, kind, body, seq=self._seq + 1, prev=self._prev, ts=ts, dev=self._dev
        )

    def commit(self, env: Envelope) -> None:
        """Advance the head past ``env`` (which must be the next chained envelope of this key)."""
        if env.sideband:
            return
        if env.dev != self.dev or env.seq != self._seq + 1 or env.prev != self._prev:
            raise ProtocolError(
                f"cannot commit seq {env.seq}: the chain head is seq {self._seq}", reason="fork"
            )
        self._seq = env.seq
        self._prev = env.hash

    def next(self, kind: str, body: Strict | dict[str, Any], ts: int) -> Envelope:
        """Build and commit the next envelope."""
        env = self.prepare(kind, body, ts)
        self.commit(env)
        return env

    def sideband(self, kind: str, body: Strict | dict[str, Any], ts: int) -> Envelope:
        """A side-band envelope (``status``, e.g. the last will): carries the head, does not advance it."""
        if kind not in SIDEBAND_KINDS:
            raise ProtocolError(f"{kind} is a chained kind, not side-band", reason="schema")
        return build_envelope(self._keypair, kind, body, seq=self._seq, prev=self._prev, ts=ts, dev=self._dev)


class Link(enum.StrEnum):
    """How an envelope relates to the chain seen so far."""

    OK = "ok"  # the next envelope, prev matches
    START = "start"  # first envelope seen from this signer (genesis, or mid-chain when capture started late)
    GAP = "chain_gap"  # seq jumped: ``missing`` names the unseen range
    LATE = "late"  # fills a previously reported gap (reordered delivery), links consistently
    DUPLICATE = "duplicate"  # same seq and same hash as an envelope already seen (QoS 1 redelivery)
    REPLAY = "replay"  # seq at or below what was seen and not in the remembered history
    FORK = "fork"  # same seq with a different hash, or prev does not match its predecessor
    SIDEBAND = "sideband"  # status: consistent with the chain, does not advance it


#: Results that do not indicate a problem with the signer's chain.
GOOD_LINKS = frozenset({Link.OK, Link.START, Link.LATE, Link.DUPLICATE, Link.SIDEBAND})


@dataclass(frozen=True)
class LinkResult:
    link: Link
    seq: int
    #: For GAP: the inclusive range of seqs not seen.
    missing: tuple[int, int] | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.link in GOOD_LINKS


class ChainVerifier:
    """Follows one signer's chain (envelopes already passed :func:`verify_envelope`).

    ``ChainVerifier()`` anchors on the first envelope it sees (a capture may start
    mid-chain).  ``ChainVerifier.from_state(seq, hash)`` continues from a
    persisted head: the next envelope must be ``seq + 1`` (``from_state(0,
    GENESIS_PREV)`` for a newly registered device).  The last ``history``
    hashes are remembered to tell duplicates from forks and to fill gaps late.
    """

    def __init__(self, *, history: int = 4096) -> None:
        self._history = max(1, history)
        self._hashes: dict[int, str] = {}
        self._prevs: dict[int, str] = {}
        self._head: int | None = None
        self._head_hash = GENESIS_PREV
        self._missing: list[tuple[int, int]] = []
        self._first: int | None = None

    @classmethod
    def from_state(cls, seq: int, hash_: str, *, history: int = 4096) -> ChainVerifier:
        verifier = cls(history=history)
        verifier._head = seq
        verifier._head_hash = hash_
        verifier._first = seq + 1
        if seq > 0:
            verifier._hashes[seq] = hash_
        return verifier

    def state(self) -> tuple[int, str]:
        """``(highest seq seen, its hash)`` to persist; ``(0, zeros)`` before anything."""
        return (self._head or 0), self._head_hash

    @property
    def missing(self) -> list[tuple[int, int]]:
        """Inclusive seq ranges reported as gaps and not filled since."""
        return list(self._missing)

    def observe(self, env: Envelope) -> LinkResult:
        seq, digest = env.seq, env.hash
        if env.sideband:
            return self._sideband(env)
        known = self._hashes.get(seq)
        if known is not None:
            if known == digest:
                return LinkResult(Link.DUPLICATE, seq, detail=f"seq {seq} already seen")
            return LinkResult(Link.FORK, seq, detail=f"seq {seq} seen before with a different hash")
        if self._head is None:
            self._record(seq, env.prev, digest)
            self._first = seq
            detail = "genesis" if seq == 1 else f"chain starts at seq {seq} (earlier envelopes not seen)"
            return LinkResult(Link.START, seq, detail=detail)
        head = self._head
        if seq == head + 1:
            if env.prev != self._head_hash:
                return LinkResult(Link.FORK, seq, detail=f"prev does not match the hash of seq {head}")
            self._record(seq, env.prev, digest)
            return LinkResult(Link.OK, seq)
        if seq > head + 1:
            gap = (head + 1, seq - 1)
            self._missing.append(gap)
            self._record(seq, env.prev, digest)
            return LinkResult(Link.GAP, seq, missing=gap, detail=f"missing seq {_range(gap)}")
        # seq < head and not remembered
        for index, (lo, hi) in enumerate(self._missing):
            if lo <= seq <= hi:
                before = self._hashes.get(seq - 1)
                if before is not None and env.prev != before:
                    return LinkResult(Link.FORK, seq, detail=f"prev does not match the hash of seq {seq - 1}")
                after = self._prevs.get(seq + 1)
                if after is not None and after != digest:
                    return LinkResult(Link.FORK, seq, detail=f"seq {seq + 1} does not link to this envelope")
                self._fill(index, seq)
                self._record(seq, env.prev, digest)
                return LinkResult(Link.LATE, seq, detail=f"fills gap at seq {seq}")
        return LinkResult(Link.REPLAY, seq, detail=f"seq {seq} is at or below the last seen seq {head}")

    def _sideband(self, env: Envelope) -> LinkResult:
        known = self._hashes.get(env.seq)
        if known is not None and env.prev != known:
            return LinkResult(Link.FORK, env.seq, detail=f"status names seq {env.seq} with a different hash")
        return LinkResult(Link.SIDEBAND, env.seq)

    def _fill(self, index: int, seq: int) -> None:
        lo, hi = self._missing.pop(index)
        if lo < seq:
            self._missing.insert(index, (lo, seq - 1))
            index += 1
        if seq < hi:
            self._missing.insert(index, (seq + 1, hi))

    def _record(self, seq: int, prev: str, digest: str) -> None:
        self._hashes[seq] = digest
        self._prevs[seq] = prev
        if self._head is None or seq > self._head:
            self._head = seq
            self._head_hash = digest
        floor = self._head - self._history
        if len(self._hashes) > self._history:
            for old in [s for s in self._hashes if s <= floor]:
                del self._hashes[old]
                self._prevs.pop(old, None)
            self._missing = [(max(lo, floor + 1), hi) for lo, hi in self._missing if hi > floor]


def _range(gap: tuple[int, int]) -> str:
    lo, hi = gap
    return str(lo) if lo == hi else f"{lo}-{hi}"


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(3, 3), (7, 9)]`` -> ``"3, 7-9"``."""
    return ", ".join(_range(r) for r in ranges)
