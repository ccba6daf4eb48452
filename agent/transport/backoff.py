"""Capped exponential backoff with jitter, for reconnecting to the broker.

Pure: the random source is injected, so a seeded :class:`random.Random` makes it
deterministic in tests.  "Equal jitter": attempt ``n`` waits a uniform time in
``[cap_n / 2, cap_n]`` with ``cap_n = min(max_s, min_s * 2**n)``, so a fleet that lost
its broker at the same moment does not reconnect in lockstep, and no wait is ever
shorter than half the nominal delay.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before reconnect attempt ``attempt`` (0-based), in seconds."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s} max_s={max_s}")
    # Cap the exponent first so huge attempt counts do not overflow.
    exponent = min(attempt, 64)
    cap = min(max_s, min_s * (2.0**exponent))
    return rng.uniform(cap / 2.0, cap)


class Backoff:
    """Stateful helper: ``next()`` after each failure, ``reset()`` after a success."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s} max_s={max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def next(self) -> float:
        delay = backoff_delay(self._attempt, self.min_s, self.max_s, self._rng)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0
