"""Which verified challenges the device takes on: replay, deadline horizon, seq, rate.

A challenge reaches the guard only after its envelope verified (signature, schema, size, kind,
coordinator pin, addressed to us), so a forged message never consumes a token or a nonce slot.
The guard then runs the cheap checks first and the ones with a side effect last:

1. ``expired``: the deadline has already passed (nothing to remember);
2. ``deadline_too_far``: the deadline is further ahead than the horizon (this also bounds how
   long a nonce must be remembered, hence the size of the nonce memory);
3. ``replay``: the envelope's seq is at or below the highest seq accepted from that coordinator
   key for challenges (its chain spans every device, so a device sees gaps: only "at or below"
   is a replay);
4. ``replay``: the nonce was already accepted (durable memory, kept until the deadline);
5. ``busy``: the answer queue is full;
6. ``rate_limited``: the token bucket is empty.

Only a challenge that passes all of them takes a token and is remembered (nonce until its
deadline, seq as the signer's highest).  Clocks are arguments, so every rule is testable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from agent.errors import ProtocolError
from agent.protocol.envelope import Envelope
from agent.protocol.messages import Challenge


class ChallengeMemory(Protocol):
    """The part of the device state store (agent/device/state_store.py) the guard uses."""

    def nonce_seen(self, nonce: str) -> bool: ...

    def remember_nonce(self, nonce: str, until_ms: int) -> None: ...

    def forget_nonces(self, before_ms: int) -> int: ...

    def signer_seq(self, signer: str) -> int: ...

    def set_signer_seq(self, signer: str, seq: int) -> None: ...


@dataclass(frozen=True)
class ChallengeLimits:
    #: Challenges taken on per minute, on average (token refill rate).
    rate_per_min: float = 30.0
    #: Challenges taken on at once after a quiet period (bucket size).
    burst: int = 10
    #: A deadline further ahead than this is refused (ms).
    horizon_ms: int = 300_000


def seq_key(signer: str) -> str:
    """The state store key under which a coordinator key's highest *challenge* seq is kept.

    Per kind, not per key alone: beacons, challenges and verdicts travel on different topics
    (and a retained beacon is delivered on every subscribe), so their relative order at the
    device is not the order the coordinator signed them in; within one topic it is.
    """
    return f"{signer}/challenge"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; ``take`` spends one if there is one."""

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated_s = now_s

    def _refill(self, now_s: float) -> None:
        elapsed = max(0.0, now_s - self.updated_s)  # a clock that steps back refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated_s = max(self.updated_s, now_s)

    def available(self, now_s: float) -> bool:
        self._refill(now_s)
        return self.tokens >= 1.0

    def take(self, now_s: float) -> bool:
        self._refill(now_s)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ChallengeGuard:
    """Admits verified challenge envelopes (thread-safe; the memory is the durable state store)."""

    def __init__(self, memory: ChallengeMemory, limits: ChallengeLimits, now_s: float) -> None:
        self.memory = memory
        self.limits = limits
        self.bucket = TokenBucket(limits.rate_per_min / 60.0, limits.burst, now_s)
        self._lock = threading.Lock()

    def admit(self, env: Envelope, *, now_ms: int, now_s: float, room: bool = True) -> Challenge:
        """The challenge, remembered and paid for; or ProtocolError with the refusal's reason.

        ``now_ms`` is the wall clock (deadlines are wall-clock ms), ``now_s`` a monotonic clock
        (the token bucket), ``room`` whether the answer queue can take one more.
        """
        body = env.body
        if not isinstance(body, Challenge):
            raise ProtocolError(f"expected a challenge, got {env.kind}", reason="wrong_kind")
        if body.deadline_ms < now_ms:
            raise ProtocolError(
                f"challenge deadline {body.deadline_ms} already passed (now {now_ms})", reason="expired"
            )
        ahead = body.deadline_ms - now_ms
        if ahead > self.limits.horizon_ms:
            raise ProtocolError(
                f"challenge deadline is {ahead} ms ahead, more than the {self.limits.horizon_ms} ms horizon",
                reason="deadline_too_far",
            )
        key = seq_key(env.dev)
        with self._lock:
            highest = self.memory.signer_seq(key)
            if env.seq <= highest:
                raise ProtocolError(
                    f"challenge seq {env.seq} is at or below {highest}, the highest accepted from {env.dev}",
                    reason="replay",
                )
            if self.memory.nonce_seen(body.nonce):
                raise ProtocolError(f"challenge nonce {body.nonce[:16]}... already accepted", reason="replay")
            if not room:
                raise ProtocolError("challenge queue is full", reason="busy")
            if not self.bucket.take(now_s):
                raise ProtocolError(
                    f"more than {self.limits.rate_per_min:g} challenges per minute (burst {self.limits.burst})",
                    reason="rate_limited",
                )
            # Remembered until the deadline can no longer be met; after it, `expired` refuses it.
            self.memory.remember_nonce(body.nonce, body.deadline_ms)
            self.memory.set_signer_seq(key, env.seq)
        return body

    def forget_expired(self, now_ms: int) -> int:
        """Drop the nonces whose deadline has passed; returns how many."""
        return self.memory.forget_nonces(now_ms)


class MemoryChallengeMemory:
    """An in-memory :class:`ChallengeMemory` (unit tests; not durable)."""

    def __init__(self) -> None:
        self.nonces: dict[str, int] = {}
        self.seqs: dict[str, int] = {}

    def nonce_seen(self, nonce: str) -> bool:
        return nonce in self.nonces

    def remember_nonce(self, nonce: str, until_ms: int) -> None:
        self.nonces[nonce] = max(until_ms, self.nonces.get(nonce, 0))

    def forget_nonces(self, before_ms: int) -> int:
        gone = [n for n, until in self.nonces.items() if until < before_ms]
        for nonce in gone:
            del self.nonces[nonce]
        return len(gone)

    def signer_seq(self, signer: str) -> int:
        return self.seqs.get(signer, 0)

    def set_signer_seq(self, signer: str, seq: int) -> None:
        self.seqs[signer] = max(seq, self.seqs.get(signer, 0))
