"""A device's chain followed from what is stored, not from memory.

Several coordinator processes share one database and a shared subscription hands any
message to any of them, so a device's chain state is read from storage inside the batch
transaction (its head row locked on PostgreSQL) for every envelope.  Forward links go
through :class:`~agent.protocol.chain.ChainVerifier` continued from the stored head
(``ChainVerifier.from_state``); what the in-memory verifier cannot know is looked up:

* an envelope already stored at this seq: ``duplicate`` (same hash, a QoS 1
  redelivery or a replayed capture) or ``fork`` (another hash);
* a seq at or below the head: a late fill of an open gap (``late``: it must link to
  its stored neighbours) or, outside any gap or more than ``late_window`` seqs below
  the head, a ``replay``.
"""

from __future__ import annotations

from typing import Protocol

from agent.coordinator.store import Head
from agent.protocol.chain import ChainVerifier, Link, LinkResult
from agent.protocol.envelope import GENESIS_PREV, Envelope


class ChainStore(Protocol):
    def head(self, dev: str, *, lock: bool = False) -> Head | None: ...
    def linked(self, dev: str, seq: int) -> tuple[str, str] | None: ...
    def accepted_hash(self, dev: str, digest: str) -> bool: ...


class StoredChain:
    """The :class:`~agent.protocol.inbound.ChainObserver` of one device, backed by storage.

    ``observe`` changes nothing; :attr:`new_head` is what the head becomes if the caller
    links the envelope (seq, hash, open gaps).
    """

    def __init__(self, store: ChainStore, dev: str, late_window: int) -> None:
        self._store = store
        self._dev = dev
        self._late_window = late_window
        self.new_head: tuple[int, str, tuple[tuple[int, int], ...]] | None = None

    def observe(self, env: Envelope) -> LinkResult:
        self.new_head = None
        # The head row first: on PostgreSQL it is locked until commit, so a second process
        # judging the same device waits here and then sees everything the first one stored.
        head = self._store.head(self._dev, lock=True)
        # Only linked envelopes are stored at a chain seq, and linking moves the head to at least
        # their seq: above a stored head nothing can be stored yet (one query saved per message).
        above = head is not None and env.seq > head.seq
        stored = self._store.linked(self._dev, env.seq) if env.seq > 0 and not above else None
        if env.sideband:
            if stored is not None and stored[0] != env.prev:
                return LinkResult(
                    Link.FORK, env.seq, detail=f"status names seq {env.seq} with a different hash"
                )
            if self._store.accepted_hash(self._dev, env.hash):
                return LinkResult(Link.DUPLICATE, env.seq, detail="this status is already stored")
            return LinkResult(Link.SIDEBAND, env.seq)
        if stored is not None:
            if stored[0] == env.hash:
                return LinkResult(Link.DUPLICATE, env.seq, detail=f"seq {env.seq} already stored")
            return LinkResult(Link.FORK, env.seq, detail=f"seq {env.seq} stored before with a different hash")
        seq, digest, missing = (
            (head.seq, head.hash, head.missing) if head is not None else (0, GENESIS_PREV, ())
        )
        if env.seq <= seq:
            return self._late(env, seq, digest, missing)
        result = ChainVerifier.from_state(seq, digest).observe(env)
        if result.link in (Link.OK, Link.GAP):
            gaps = missing + ((result.missing,) if result.missing is not None else ())
            self.new_head = (env.seq, env.hash, self._prune(gaps, env.seq))
        return result

    def _late(self, env: Envelope, seq: int, digest: str, missing: tuple[tuple[int, int], ...]) -> LinkResult:
        gap = next(((lo, hi) for lo, hi in missing if lo <= env.seq <= hi), None)
        if gap is None:
            return LinkResult(Link.REPLAY, env.seq, detail=f"seq {env.seq} is at or below the head seq {seq}")
        if seq - env.seq > self._late_window:
            return LinkResult(
                Link.REPLAY,
                env.seq,
                detail=f"seq {env.seq} fills a gap more than {self._late_window} seqs below the head seq {seq}",
            )
        before = self._store.linked(self._dev, env.seq - 1) if env.seq > 1 else None
        if before is not None and before[0] != env.prev:
            return LinkResult(Link.FORK, env.seq, detail=f"prev does not match the hash of seq {env.seq - 1}")
        after = self._store.linked(self._dev, env.seq + 1)
        if after is not None and after[1] != env.hash:
            return LinkResult(Link.FORK, env.seq, detail=f"seq {env.seq + 1} does not link to this envelope")
        lo, hi = gap
        rest = [r for r in missing if r != gap]
        if lo < env.seq:
            rest.append((lo, env.seq - 1))
        if env.seq < hi:
            rest.append((env.seq + 1, hi))
        self.new_head = (seq, digest, self._prune(tuple(sorted(rest)), seq))
        return LinkResult(Link.LATE, env.seq, detail=f"fills gap at seq {env.seq}")

    def _prune(self, gaps: tuple[tuple[int, int], ...], head: int) -> tuple[tuple[int, int], ...]:
        """Drop the parts of gaps too far below the head to ever be filled."""
        floor = head - self._late_window
        return tuple((max(lo, floor), hi) for lo, hi in gaps if hi >= floor)
