from __future__ import annotations

import random

import pytest

from agent.transport.backoff import Backoff, backoff_delay


def test_delay_is_within_equal_jitter_bounds_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        cap = min(60.0, 1.0 * 2**attempt)
        for _ in range(20):
            delay = backoff_delay(attempt, 1.0, 60.0, rng)
            assert cap / 2 <= delay <= cap
    assert backoff_delay(10_000, 1.0, 60.0, rng) <= 60.0


def test_seeded_sequence_is_deterministic() -> None:
    a = Backoff(0.5, 30.0, random.Random(42))
    b = Backoff(0.5, 30.0, random.Random(42))
    seq_a = [a.next() for _ in range(12)]
    assert seq_a == [b.next() for _ in range(12)]
    assert a.attempt == 12
    # grows roughly exponentially, then stays under the cap
    assert seq_a[0] <= 0.5 and seq_a[-1] >= 15.0 and max(seq_a) <= 30.0


def test_reset_starts_over() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(1))
    for _ in range(8):
        backoff.next()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next() <= 1.0


def test_jitter_spreads_a_fleet() -> None:
    delays = {round(backoff_delay(3, 1.0, 60.0, random.Random(seed)), 6) for seed in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize(("attempt", "lo", "hi"), [(-1, 1.0, 2.0), (0, 0.0, 1.0), (0, 2.0, 1.0)])
def test_invalid_arguments(attempt: int, lo: float, hi: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, lo, hi, random.Random(0))


def test_invalid_constructor() -> None:
    with pytest.raises(ValueError):
        Backoff(5.0, 1.0)
