"""Every verdict the coordinator reached about one device: its messages and its challenges.

``device_verdicts(store, dev, window)`` lists each stored message of ``dev`` (accepted or
rejected, with the reason and detail recorded at ingest) and each challenge issued to it
(outcome, sketch distance, tolerance), optionally within ``[start_ms, end_ms)``.  A device that
is not (or no longer) registered still gets its list: messages from unknown devices are
stored with the device named by their topic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.coordinator.store import Store


@dataclass(frozen=True)
class MessageVerdict:
    id: int
    ingest_ms: int
    kind: str | None
    seq: int | None
    accepted: bool
    reason: str | None
    detail: str | None
    hash: str


@dataclass(frozen=True)
class ChallengeVerdict:
    id: int
    issued_ms: int
    deadline_ms: int
    model_sha256: str
    #: ``None`` while unanswered, ``pending`` while the reference run is due, else the final name.
    outcome: str | None
    distance: float | None
    tolerance: float | None
    #: The stored answer (a message id), if any.
    response_id: int | None


@dataclass(frozen=True)
class DeviceVerdicts:
    dev: str
    enrolled: bool
    start_ms: int | None
    end_ms: int | None
    messages: tuple[MessageVerdict, ...]
    challenges: tuple[ChallengeVerdict, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "enrolled": self.enrolled,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "messages": [asdict(m) for m in self.messages],
            "challenges": [asdict(c) for c in self.challenges],
        }


def device_verdicts(store: Store, dev: str, window: tuple[int, int] | None = None) -> DeviceVerdicts:
    lo, hi = window if window is not None else (None, None)
    span_m = " AND ingest_ms >= ? AND ingest_ms < ?" if window else ""
    span_c = " AND issued_ms >= ? AND issued_ms < ?" if window else ""
    params: tuple[Any, ...] = (dev, *window) if window else (dev,)
    messages = tuple(
        MessageVerdict(
            int(r[0]),
            int(r[1]),
            None if r[2] is None else str(r[2]),
            None if r[3] is None else int(r[3]),
            bool(r[4]),
            r[5],
            r[6],
            str(r[7]),
        )
        for r in store.rows(
            "SELECT id, ingest_ms, kind, seq, accepted, reason, detail, hash FROM messages "
            f"WHERE dev = ?{span_m} ORDER BY id",
            params,
        )
    )
    challenges = tuple(
        ChallengeVerdict(
            int(r[0]),
            int(r[1]),
            int(r[2]),
            str(r[3]),
            None if r[4] is None else str(r[4]),
            None if r[5] is None else float(r[5]),
            None if r[6] is None else float(r[6]),
            None if r[7] is None else int(r[7]),
        )
        for r in store.rows(
            "SELECT id, issued_ms, deadline_ms, model_sha256, outcome, distance, tolerance, response_id "
            f"FROM challenges WHERE dev = ?{span_c} ORDER BY id",
            params,
        )
    )
    return DeviceVerdicts(dev, store.device(dev) is not None, lo, hi, messages, challenges)
