"""The rollout tables (migration 6) in the coordinator's database: plain rows, no fleet logic.

The rollout controller (agent/fleet/rollout_run.py, composed by agent/commands/fleet_rollout.py)
writes them; ``fleet status`` and the dashboard read them.  One row per release in
``rollouts``; each device's newest report about it in ``rollout_reports`` (a report replaces
the stored one only with a higher seq of the device's chain); refusal counts by reason in
``rollout_refusals``; each device's newest online/offline status in ``rollout_presence``
(migration 7).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.coordinator.store import Store

_COLUMNS = (
    "id, channel, model_id, model_version, model_sha256, manifest_version, stage, state, halt_reason, "
    "abort_failure_rate, stage_timeout_ms, stage_started, started_ms, resumed_ms, updated_ms, manifest"
)


@dataclass(frozen=True)
class RolloutRow:
    id: int | None
    channel: str
    model_id: str
    model_version: str
    model_sha256: str
    manifest_version: int
    stage: int
    state: str
    halt_reason: str | None
    abort_failure_rate: float
    stage_timeout_ms: int
    stage_started: tuple[int, ...]
    started_ms: int
    resumed_ms: int
    updated_ms: int
    #: The newest manifest envelope published for the release (its wire JSON).
    manifest: str


@dataclass(frozen=True)
class ReportRow:
    dev: str
    state: str
    reason: str | None
    seq: int
    at_ms: int


def rollouts(store: Store, channel: str | None = None) -> list[RolloutRow]:
    """Every recorded rollout (of ``channel``), newest first."""
    where, params = ("WHERE channel = ?", (channel,)) if channel else ("", ())
    rows = store.rows(f"SELECT {_COLUMNS} FROM rollouts {where} ORDER BY started_ms DESC, id DESC", params)
    return [_rollout(r) for r in rows]


def save_rollout(store: Store, row: RolloutRow) -> int:
    """Insert the release's rollout or update it; returns its id."""
    values = (
        row.manifest_version,
        row.stage,
        row.state,
        row.halt_reason,
        row.abort_failure_rate,
        row.stage_timeout_ms,
        json.dumps(list(row.stage_started)),
        row.resumed_ms,
        row.updated_ms,
        row.manifest,
    )
    with store.transaction():
        store.execute(
            "INSERT INTO rollouts (channel, model_id, model_version, model_sha256, manifest_version, stage, "
            "state, halt_reason, abort_failure_rate, stage_timeout_ms, stage_started, resumed_ms, updated_ms, "
            "manifest, started_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (channel, model_id, model_version, model_sha256) DO UPDATE SET "
            "manifest_version = excluded.manifest_version, stage = excluded.stage, state = excluded.state, "
            "halt_reason = excluded.halt_reason, abort_failure_rate = excluded.abort_failure_rate, "
            "stage_timeout_ms = excluded.stage_timeout_ms, stage_started = excluded.stage_started, "
            "resumed_ms = excluded.resumed_ms, updated_ms = excluded.updated_ms, manifest = excluded.manifest",
            (row.channel, row.model_id, row.model_version, row.model_sha256, *values, row.started_ms),
        )
        found = store.one(
            "SELECT id FROM rollouts WHERE channel = ? AND model_id = ? AND model_version = ? AND model_sha256 = ?",
            (row.channel, row.model_id, row.model_version, row.model_sha256),
        )
    assert found is not None
    return int(found[0])


def reports(store: Store, rollout_id: int) -> list[ReportRow]:
    rows = store.rows(
        "SELECT dev, state, reason, seq, at_ms FROM rollout_reports WHERE rollout_id = ? ORDER BY dev",
        (rollout_id,),
    )
    return [ReportRow(str(r[0]), str(r[1]), r[2], int(r[3]), int(r[4])) for r in rows]


def put_reports(store: Store, rollout_id: int, rows: Sequence[ReportRow]) -> None:
    """Store each device's newer report (a lower or equal seq never replaces a stored one)."""
    if not rows:
        return
    with store.transaction():
        store.execute_many(
            "INSERT INTO rollout_reports (rollout_id, dev, state, reason, seq, at_ms) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rollout_id, dev) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
            "seq = excluded.seq, at_ms = excluded.at_ms WHERE excluded.seq > rollout_reports.seq",
            [(rollout_id, r.dev, r.state, r.reason, r.seq, r.at_ms) for r in rows],
        )


def highest_seqs(store: Store) -> dict[str, int]:
    """Each device's highest deploy seq taken (the controller's replay floor after a restart)."""
    return {str(d): int(s) for d, s in store.rows("SELECT dev, MAX(seq) FROM rollout_reports GROUP BY dev")}


def presence(store: Store) -> dict[str, tuple[bool, int]]:
    """dev -> (online, the ts of that status envelope), as the controller last stored it."""
    return {
        str(d): (bool(o), int(t)) for d, o, t in store.rows("SELECT dev, online, at_ms FROM rollout_presence")
    }


def put_presence(store: Store, rows: Mapping[str, tuple[bool, int]]) -> None:
    """Store each device's newest status, in the order the controller took them (not by ts)."""
    if not rows:
        return
    with store.transaction():
        store.execute_many(
            "INSERT INTO rollout_presence (dev, online, at_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET online = excluded.online, at_ms = excluded.at_ms",
            [(dev, int(online), at) for dev, (online, at) in sorted(rows.items())],
        )


def add_refusals(store: Store, counts: Mapping[str, int]) -> None:
    items = [(reason, n) for reason, n in sorted(counts.items()) if n]
    if not items:
        return
    with store.transaction():
        store.execute_many(
            "INSERT INTO rollout_refusals (reason, count) VALUES (?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = rollout_refusals.count + excluded.count",
            items,
        )


def refusals(store: Store) -> dict[str, int]:
    return {
        str(r): int(n) for r, n in store.rows("SELECT reason, count FROM rollout_refusals ORDER BY reason")
    }


def report_counts(store: Store, rollout_id: int) -> dict[str, int]:
    """Reports by state (the dashboard's view: it does not compute stage membership)."""
    rows = store.rows(
        "SELECT state, COUNT(*) FROM rollout_reports WHERE rollout_id = ? GROUP BY state", (rollout_id,)
    )
    return {str(s): int(n) for s, n in rows}


#: Report states that end a device's part (the controller's tally also counts timeouts).
_FAILED = ("failed", "rolled_back", "rejected")


def dashboard_items(store: Store) -> list[dict[str, Any]]:
    """The newest rollout of each channel as the dashboard's flat rows (counts of reports by state).

    The page does not compute stage membership: ``fleet status`` has the full per-stage tally
    (with devices that never reported and timeouts); here a failure is a failed report.
    """
    newest: dict[str, RolloutRow] = {}
    for row in rollouts(store):
        newest.setdefault(row.channel, row)
    items = []
    for channel in sorted(newest):
        row = newest[channel]
        assert row.id is not None
        counts = report_counts(store, row.id)
        reasons = store.rows(
            "SELECT COALESCE(reason, state), COUNT(*) FROM rollout_reports WHERE rollout_id = ? "
            "AND state IN (?, ?, ?) GROUP BY COALESCE(reason, state) ORDER BY 1",
            (row.id, *_FAILED),
        )
        stages = json.loads(row.manifest)["stages"]
        items.append(
            {
                "channel": channel,
                "release": f"{row.model_id} {row.model_version}",
                "manifest_version": row.manifest_version,
                "stage": f"{row.stage + 1} of {len(stages)} ({stages[row.stage] / 100:g}%)",
                "state": row.state,
                "committed": counts.get("committed", 0),
                "failed": sum(counts.get(s, 0) for s in _FAILED),
                "reasons": ", ".join(f"{r} {n}" for r, n in reasons) or "-",
                "in_flight": sum(n for s, n in counts.items() if s not in (*_FAILED, "committed")),
                "halt_reason": row.halt_reason or "-",
            }
        )
    return items


def _rollout(r: tuple[Any, ...]) -> RolloutRow:
    return RolloutRow(
        id=int(r[0]),
        channel=str(r[1]),
        model_id=str(r[2]),
        model_version=str(r[3]),
        model_sha256=str(r[4]),
        manifest_version=int(r[5]),
        stage=int(r[6]),
        state=str(r[7]),
        halt_reason=r[8],
        abort_failure_rate=float(r[9]),
        stage_timeout_ms=int(r[10]),
        stage_started=tuple(int(x) for x in json.loads(r[11])),
        started_ms=int(r[12]),
        resumed_ms=int(r[13]),
        updated_ms=int(r[14]),
        manifest=str(r[15]),
    )
