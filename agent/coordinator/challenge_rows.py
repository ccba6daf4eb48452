"""Rows of the ``beacons`` and ``challenges`` tables: issue, answer, score, miss, pass rate.

Functions over a :class:`~agent.coordinator.store.Store` (inside the caller's transaction),
so :mod:`agent.coordinator.store` stays about messages, chains and verdicts.  Uniqueness
does the coordination between N coordinator processes: the ``beacons`` primary key
(slot) lets exactly one insert win a slot, the ``challenges`` (dev, slot) index one
challenge per device per slot, and an ``UPDATE ... WHERE outcome IS NULL`` marks a
challenge missed exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # store.py imports this module (Store.challenge_by_nonce)
    from agent.coordinator.store import Store

#: Outcomes that count in a pass rate (``unknown_model`` does not: nothing was scored).
SCORED_OUTCOMES = ("passed", "challenge_failed", "wrong_model", "challenge_late", "challenge_missed")
#: Every final outcome a challenge can have.
FINAL_OUTCOMES = (*SCORED_OUTCOMES, "unknown_model")


@dataclass(frozen=True)
class ChallengeRow:
    id: int
    dev: str
    slot: int
    nonce: str
    model_sha256: str
    seq: int
    hash: str
    issued_ms: int
    deadline_ms: int
    outcome: str | None
    distance: float | None
    response_id: int | None


_COLUMNS = (
    "id, dev, slot, nonce, model_sha256, seq, hash, issued_ms, deadline_ms, outcome, distance, response_id"
)


def _row(r: tuple[Any, ...]) -> ChallengeRow:
    return ChallengeRow(
        int(r[0]),
        str(r[1]),
        int(r[2]),
        str(r[3]),
        str(r[4]),
        int(r[5]),
        str(r[6]),
        int(r[7]),
        int(r[8]),
        None if r[9] is None else str(r[9]),
        None if r[10] is None else float(r[10]),
        None if r[11] is None else int(r[11]),
    )


# --- beacons ---------------------------------------------------------------------------------


def claim_slot(store: Store, slot: int, nonce: str, time_ms: int, slot_ms: int, issued_ms: int) -> bool:
    """Insert the slot's beacon row; True when this insert won (no process issued it before)."""
    row = store.one(
        "INSERT INTO beacons (slot, nonce, time_ms, slot_ms, issued_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (slot) DO NOTHING RETURNING slot",
        (slot, nonce, time_ms, slot_ms, issued_ms),
    )
    return row is not None


def set_beacon_envelope(store: Store, slot: int, signer: str, seq: int, raw: bytes) -> None:
    store.execute("UPDATE beacons SET signer = ?, seq = ?, raw = ? WHERE slot = ?", (signer, seq, raw, slot))


def beacons(store: Store) -> list[tuple[int, str, int, int, int, bytes | None]]:
    """``(slot, nonce, time_ms, slot_ms, issued_ms, raw)`` of every issued beacon, by slot."""
    return [
        (int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), None if r[5] is None else bytes(r[5]))
        for r in store.rows("SELECT slot, nonce, time_ms, slot_ms, issued_ms, raw FROM beacons ORDER BY slot")
    ]


# --- challenges ------------------------------------------------------------------------------


def reported_model(store: Store, dev: str, since_ms: int) -> str | None:
    """The model_sha256 the device last reported (accepted proof or status) since ``since_ms``."""
    for (raw,) in store.rows(
        "SELECT raw FROM messages WHERE dev = ? AND accepted = 1 AND kind IN ('proof', 'status') "
        "AND ingest_ms >= ? ORDER BY id DESC LIMIT 5",
        (dev, since_ms),
    ):
        sha = json.loads(bytes(raw))["body"].get("model_sha256")
        if isinstance(sha, str):
            return sha
    return None


def insert_challenge(
    store: Store,
    *,
    dev: str,
    slot: int,
    nonce: str,
    model_sha256: str,
    signer: str,
    seq: int,
    digest: str,
    issued_ms: int,
    deadline_ms: int,
    raw: bytes,
) -> None:
    store.execute(
        "INSERT INTO challenges (dev, slot, nonce, model_sha256, signer, seq, hash, issued_ms, deadline_ms, raw) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (dev, slot, nonce, model_sha256, signer, seq, digest, issued_ms, deadline_ms, raw),
    )


def challenge_by_nonce(store: Store, dev: str, nonce: str) -> ChallengeRow | None:
    row = store.one(
        f"SELECT {_COLUMNS} FROM challenges WHERE dev = ? AND nonce = ?{{for_update}}", (dev, nonce)
    )
    return None if row is None else _row(row)


def challenge(store: Store, challenge_id: int) -> ChallengeRow | None:
    row = store.one(f"SELECT {_COLUMNS} FROM challenges WHERE id = ?{{for_update}}", (challenge_id,))
    return None if row is None else _row(row)


def challenges(store: Store, dev: str | None = None) -> list[ChallengeRow]:
    where, params = ("WHERE dev = ?", (dev,)) if dev is not None else ("", ())
    return [_row(r) for r in store.rows(f"SELECT {_COLUMNS} FROM challenges {where} ORDER BY id", params)]


def set_outcome(
    store: Store,
    challenge_id: int,
    outcome: str,
    at_ms: int,
    *,
    response_id: int | None = None,
    distance: float | None = None,
    tolerance: float | None = None,
) -> None:
    store.execute(
        "UPDATE challenges SET outcome = ?, scored_ms = ?, response_id = COALESCE(?, response_id), "
        "distance = ?, tolerance = ? WHERE id = ?",
        (outcome, at_ms, response_id, distance, tolerance, challenge_id),
    )


def take_missed(store: Store, now_ms: int) -> list[ChallengeRow]:
    """Mark every unanswered challenge past its deadline ``challenge_missed`` (each exactly once)."""
    rows = store.rows(
        f"UPDATE challenges SET outcome = 'challenge_missed', scored_ms = ? "
        f"WHERE outcome IS NULL AND deadline_ms < ? RETURNING {_COLUMNS}",
        (now_ms, now_ms),
    )
    return [_row(r) for r in rows]


def pending(store: Store) -> list[ChallengeRow]:
    """Answered challenges whose reference run is still due."""
    return [
        _row(r)
        for r in store.rows(f"SELECT {_COLUMNS} FROM challenges WHERE outcome = 'pending' ORDER BY id")
    ]


@dataclass(frozen=True)
class PassRate:
    dev: str
    passed: int
    scored: int
    unknown_model: int

    @property
    def rate(self) -> float | None:
        """passed / scored; None when nothing was scored."""
        return self.passed / self.scored if self.scored else None

    def as_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "passed": self.passed,
            "scored": self.scored,
            "unknown_model": self.unknown_model,
            "rate": self.rate,
        }


def pass_rate(store: Store, dev: str, start_ms: int, end_ms: int) -> PassRate:
    """The device's challenge pass rate over challenges issued in ``[start_ms, end_ms)`` (an epoch).

    Counted: every challenge with a scored outcome (a miss and a late answer are failures);
    ``unknown_model`` is reported beside it and not counted; open or pending ones are not yet.
    """
    counts: dict[str, int] = {
        str(outcome): int(n)
        for outcome, n in store.rows(
            "SELECT outcome, COUNT(*) FROM challenges WHERE dev = ? AND issued_ms >= ? AND issued_ms < ? "
            "AND outcome IS NOT NULL GROUP BY outcome",
            (dev, start_ms, end_ms),
        )
    }
    scored = sum(counts.get(o, 0) for o in SCORED_OUTCOMES)
    return PassRate(dev, counts.get("passed", 0), scored, counts.get("unknown_model", 0))
