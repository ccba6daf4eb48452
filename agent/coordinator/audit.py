"""The uptime audit: per device per epoch, from the stored messages and the coordinator's liveness.

Time is the coordinator's own: a message belongs to slot ``ingest_ms // slot_ms``, and epoch
``E`` covers ``[E * epoch_ms, (E + 1) * epoch_ms)`` (``epoch_ms`` a multiple of ``slot_ms``).

* The coordinator is **up** over the union of its liveness intervals (``started_ms`` to
  ``stopped_ms``, or to ``last_ms`` for a run that never closed its record: killed).  A slot is
  **counted** only when that union covers it entirely; any other slot is excluded: neither
  charged nor credited.
* A device's slots up to and including the slot of its ``enrolled_ms`` are excluded too.
* A counted slot is **up** for a device when at least one of its *accepted* heartbeats was
  ingested in it (a redelivery is stored as a rejected ``duplicate``, so it never counts twice).

:func:`compute_report` is the pure function over plain records; :func:`epoch_report` loads the
records from a :class:`~agent.coordinator.store.Store` and calls it, so anyone holding the
same records (a capture: :mod:`agent.coordinator.audit_capture`) gets the same report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.coordinator.challenge_rows import SCORED_OUTCOMES

if TYPE_CHECKING:
    from agent.coordinator.store import Store

#: Slot states in :attr:`DeviceEpoch.slots`.
UP, DOWN, NOT_COUNTED = "U", "D", "X"
#: A challenge with no final outcome yet (none, or ``pending`` its reference run).
OPEN = "open"


class MessageFact(NamedTuple):
    """What the audit needs of one stored message."""

    dev: str
    kind: str | None
    ingest_ms: int
    accepted: bool
    reason: str | None
    inferences: int | None


class ChallengeFact(NamedTuple):
    dev: str
    issued_ms: int
    outcome: str | None


class DeviceFact(NamedTuple):
    dev: str
    owner: str
    profile: str
    enrolled_ms: int


#: A coordinator run's up interval ``(from_ms, to_ms)``, both ends included.
Interval = tuple[int, int]


@dataclass(frozen=True)
class DeviceEpoch:
    dev: str
    owner: str
    profile: str
    #: Counted slots with at least one accepted heartbeat ingested in the slot.
    up_slots: int
    #: Epoch slots the coordinator was up for the whole slot and the device was enrolled.
    counted_slots: int
    #: Epoch slots not counted (coordinator down or partly down, or before enrolment).
    excluded_slots: int
    #: up_slots / counted_slots; None when counted_slots == 0.
    uptime: float | None
    heartbeats_accepted: int
    proofs_accepted: int
    #: Sum of ``inferences`` over the accepted proofs ingested in the epoch.
    inferences_accepted: int
    #: reason -> count of rejected messages ingested in the epoch (redeliveries as ``duplicate``).
    rejections: dict[str, int]
    #: outcome -> count of challenges issued in the epoch (no outcome yet, or pending: ``open``).
    challenges: dict[str, int]
    #: passed / scored challenges issued in the epoch (as challenge_rows.pass_rate); None if none scored.
    pass_rate: float | None
    #: One character per epoch slot: U up, D down (counted, no heartbeat), X not counted.
    slots: str


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    slot_ms: int
    epoch_ms: int
    start_ms: int
    end_ms: int
    coordinator_up_slots: int
    coordinator_down_slots: int
    #: Every enrolled device, sorted by dev.
    devices: tuple[DeviceEpoch, ...]


def epoch_of(ms: int, epoch_ms: int) -> int:
    """The epoch a coordinator timestamp falls in."""
    return ms // epoch_ms


def check_lengths(slot_ms: int, epoch_ms: int) -> None:
    """ValueError unless both are positive and ``epoch_ms`` is a whole number of slots."""
    if slot_ms <= 0 or epoch_ms <= 0:
        raise ValueError(f"slot_ms ({slot_ms}) and epoch_ms ({epoch_ms}) must be positive")
    if epoch_ms % slot_ms:
        raise ValueError(f"epoch_ms ({epoch_ms}) must be a multiple of slot_ms ({slot_ms})")


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of closed intervals, as sorted disjoint intervals (touching ones merged)."""
    merged: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[1] >= i[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def covered_slots(intervals: Iterable[Interval], first_slot: int, count: int, slot_ms: int) -> list[bool]:
    """For each slot ``first_slot + i``: is ``[start, end]`` of it inside one up interval?"""
    merged = merge_intervals(intervals)
    out: list[bool] = []
    k = 0
    for i in range(count):
        start = (first_slot + i) * slot_ms
        end = start + slot_ms
        while k < len(merged) and merged[k][1] < end:
            k += 1
        out.append(k < len(merged) and merged[k][0] <= start)
    return out


def pass_rate_of(outcomes: dict[str, int]) -> float | None:
    scored = sum(outcomes.get(o, 0) for o in SCORED_OUTCOMES)
    return outcomes.get("passed", 0) / scored if scored else None


def compute_report(
    epoch: int,
    *,
    slot_ms: int,
    epoch_ms: int,
    devices: Iterable[DeviceFact],
    messages: Iterable[MessageFact],
    liveness: Iterable[Interval],
    challenges: Iterable[ChallengeFact],
) -> EpochReport:
    """The epoch's report from plain records (records outside the epoch are ignored)."""
    check_lengths(slot_ms, epoch_ms)
    start, end = epoch * epoch_ms, (epoch + 1) * epoch_ms
    first_slot, count = start // slot_ms, epoch_ms // slot_ms
    coordinator_up = covered_slots(liveness, first_slot, count, slot_ms)

    up_slots: dict[str, set[int]] = defaultdict(set)
    heartbeats: Counter[str] = Counter()
    proofs: Counter[str] = Counter()
    inferences: Counter[str] = Counter()
    rejections: dict[str, Counter[str]] = defaultdict(Counter)
    for m in messages:
        if not start <= m.ingest_ms < end:
            continue
        if not m.accepted:
            rejections[m.dev][str(m.reason)] += 1
        elif m.kind == "heartbeat":
            heartbeats[m.dev] += 1
            up_slots[m.dev].add(m.ingest_ms // slot_ms)
        elif m.kind == "proof":
            proofs[m.dev] += 1
            inferences[m.dev] += m.inferences or 0
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for c in challenges:
        if start <= c.issued_ms < end:
            outcomes[c.dev][OPEN if c.outcome in (None, "pending") else str(c.outcome)] += 1

    rows: list[DeviceEpoch] = []
    for d in sorted(devices, key=lambda d: d.dev):
        first_counted = d.enrolled_ms // slot_ms + 1
        chars = []
        for i in range(count):
            slot = first_slot + i
            if not coordinator_up[i] or slot < first_counted:
                chars.append(NOT_COUNTED)
            else:
                chars.append(UP if slot in up_slots[d.dev] else DOWN)
        text = "".join(chars)
        counted = count - text.count(NOT_COUNTED)
        up = text.count(UP)
        challenge_counts = dict(sorted(outcomes[d.dev].items()))
        rows.append(
            DeviceEpoch(
                dev=d.dev,
                owner=d.owner,
                profile=d.profile,
                up_slots=up,
                counted_slots=counted,
                excluded_slots=count - counted,
                uptime=up / counted if counted else None,
                heartbeats_accepted=heartbeats[d.dev],
                proofs_accepted=proofs[d.dev],
                inferences_accepted=inferences[d.dev],
                rejections=dict(sorted(rejections[d.dev].items())),
                challenges=challenge_counts,
                pass_rate=pass_rate_of(challenge_counts),
                slots=text,
            )
        )
    up_count = sum(coordinator_up)
    return EpochReport(
        epoch=epoch,
        slot_ms=slot_ms,
        epoch_ms=epoch_ms,
        start_ms=start,
        end_ms=end,
        coordinator_up_slots=up_count,
        coordinator_down_slots=count - up_count,
        devices=tuple(rows),
    )


# --- loading the records from storage ------------------------------------------------------------


def liveness_intervals(runs: Sequence[tuple[str, int, int, int | None]]) -> list[Interval]:
    """Up intervals of ``Store.runs()`` rows: started to stopped, or to the last refresh."""
    return [(started, stopped if stopped is not None else last) for _, started, last, stopped in runs]


def load_facts(
    store: Store, start_ms: int, end_ms: int
) -> tuple[list[DeviceFact], list[MessageFact], list[Interval], list[ChallengeFact]]:
    """The records of ``[start_ms, end_ms)`` that :func:`compute_report` reads."""
    devices = [DeviceFact(d.id, d.owner, d.profile, d.enrolled_ms) for d in store.devices()]
    messages = [
        MessageFact(str(r[0]), None if r[1] is None else str(r[1]), int(r[2]), bool(r[3]), r[4], r[5])
        for r in store.rows(
            "SELECT dev, kind, ingest_ms, accepted, reason, inferences FROM messages "
            "WHERE dev IS NOT NULL AND ingest_ms >= ? AND ingest_ms < ? ORDER BY id",
            (start_ms, end_ms),
        )
    ]
    challenges = [
        ChallengeFact(str(r[0]), int(r[1]), None if r[2] is None else str(r[2]))
        for r in store.rows(
            "SELECT dev, issued_ms, outcome FROM challenges WHERE issued_ms >= ? AND issued_ms < ? "
            "ORDER BY id",
            (start_ms, end_ms),
        )
    ]
    return devices, messages, liveness_intervals(store.runs()), challenges


def epoch_report(store: Store, epoch: int, *, slot_ms: int, epoch_ms: int) -> EpochReport:
    """The audit of ``epoch`` from what ``store`` holds (load the rows, then :func:`compute_report`)."""
    check_lengths(slot_ms, epoch_ms)
    devices, messages, liveness, challenges = load_facts(store, epoch * epoch_ms, (epoch + 1) * epoch_ms)
    return compute_report(
        epoch,
        slot_ms=slot_ms,
        epoch_ms=epoch_ms,
        devices=devices,
        messages=messages,
        liveness=liveness,
        challenges=challenges,
    )


def report_json(report: EpochReport) -> dict[str, Any]:
    """The report as plain JSON data (every field; devices as a list, in report order)."""
    data = asdict(report)
    data["devices"] = [asdict(d) for d in report.devices]
    return data
