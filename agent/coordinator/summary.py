"""What the dashboard shows, as one JSON document read from the database (``/api/summary``).

:func:`summary` reads one consistent snapshot (the caller's read transaction): devices online
now (an accepted heartbeat within the online window), the current epoch's uptime and
challenge pass rate per device (:func:`agent.coordinator.audit.epoch_report`, the same
numbers as ``edgeproof audit uptime``), rejections by reason (all time and this epoch), and
the rollout state.  Everything is the database's, never a process's memory, so every
coordinator process of a shared group and the read-only ``coordinator dashboard`` agree.
"""

from __future__ import annotations

from typing import Any

from agent.coordinator import rollout_rows
from agent.coordinator.audit import epoch_of, epoch_report
from agent.coordinator.challenge_rows import SCORED_OUTCOMES
from agent.coordinator.payout_summary import payout_summary
from agent.coordinator.store import Store

#: Shown until `edgeproof fleet rollout run` records a rollout in the coordinator's database.
NO_ROLLOUTS = "no rollouts recorded: edgeproof fleet rollout run records them (docs/fleet.md)"


def online_devices(store: Store, now_ms: int, window_ms: int) -> dict[str, int]:
    """dev -> ingest time of its newest accepted heartbeat, for devices seen within ``window_ms``."""
    return {
        str(dev): int(last)
        for dev, last in store.rows(
            "SELECT dev, MAX(ingest_ms) FROM messages WHERE kind = 'heartbeat' AND accepted = 1 "
            "AND ingest_ms >= ? AND ingest_ms <= ? GROUP BY dev",
            (now_ms - window_ms, now_ms),
        )
    }


def registered_count(store: Store) -> int:
    row = store.one("SELECT COUNT(*) FROM devices")
    return int(row[0]) if row is not None else 0


def rejections_total(store: Store) -> dict[str, int]:
    """reason -> rejected messages ever recorded (duplicates included, named ``duplicate``)."""
    return {
        str(reason): int(n)
        for reason, n in store.rows(
            "SELECT reason, COUNT(*) FROM messages WHERE accepted = 0 GROUP BY reason ORDER BY reason"
        )
    }


def message_totals(store: Store) -> dict[str, int]:
    row = store.one("SELECT COUNT(*), COALESCE(SUM(accepted), 0) FROM messages")
    total, accepted = (int(row[0]), int(row[1])) if row is not None else (0, 0)
    return {"accepted": accepted, "rejected": total - accepted}


def rollouts(store: Store) -> list[dict[str, Any]]:
    """The newest rollout of each channel (agent/coordinator/rollout_rows.py, migration 6).

    Each item is a flat object (``channel``, ``release``, ``stage``, ``state``, report counts);
    the page shows one table row per item with its keys as columns.
    """
    return rollout_rows.dashboard_items(store)


def _rate(passed: int, scored: int) -> float | None:
    return passed / scored if scored else None


def summary(
    store: Store, *, now_ms: int, slot_ms: int, epoch_ms: int, online_window_ms: int
) -> dict[str, Any]:
    """The dashboard's document (call inside a read transaction for one consistent snapshot)."""
    epoch = epoch_of(now_ms, epoch_ms)
    report = epoch_report(store, epoch, slot_ms=slot_ms, epoch_ms=epoch_ms)
    online = online_devices(store, now_ms, online_window_ms)
    devices: list[dict[str, Any]] = []
    epoch_rejections: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    passed_all = scored_all = 0
    for dev in report.devices:
        passed = dev.challenges.get("passed", 0)
        scored = sum(dev.challenges.get(o, 0) for o in SCORED_OUTCOMES)
        passed_all += passed
        scored_all += scored
        for reason, n in dev.rejections.items():
            epoch_rejections[reason] = epoch_rejections.get(reason, 0) + n
        for outcome, n in dev.challenges.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
        devices.append(
            {
                "dev": dev.dev,
                "owner": dev.owner,
                "profile": dev.profile,
                "online": dev.dev in online,
                "last_heartbeat_ms": online.get(dev.dev),
                "uptime": dev.uptime,
                "up_slots": dev.up_slots,
                "counted_slots": dev.counted_slots,
                "heartbeats_accepted": dev.heartbeats_accepted,
                "proofs_accepted": dev.proofs_accepted,
                "rejections": sum(dev.rejections.values()),
                "challenges_passed": passed,
                "challenges_scored": scored,
                "pass_rate": dev.pass_rate,
            }
        )
    totals = rejections_total(store)
    reasons = sorted(set(totals) | set(epoch_rejections))
    items = rollouts(store)
    return {
        "generated_ms": now_ms,
        "slot_ms": slot_ms,
        "epoch_ms": epoch_ms,
        "online_window_ms": online_window_ms,
        "epoch": {
            "epoch": epoch,
            "start_ms": report.start_ms,
            "end_ms": report.end_ms,
            "coordinator_up_slots": report.coordinator_up_slots,
            "coordinator_down_slots": report.coordinator_down_slots,
            # Slots of the epoch that have ended by now_ms (the audit's down slots include the rest).
            "slots_elapsed": min(report.epoch_ms, now_ms - report.start_ms) // slot_ms,
        },
        "devices_registered": registered_count(store),
        "devices_online": len(online),
        "messages": message_totals(store),
        "devices": devices,
        "rejections": [
            {"reason": r, "total": totals.get(r, 0), "epoch": epoch_rejections.get(r, 0)} for r in reasons
        ],
        "challenges": {
            "passed": passed_all,
            "scored": scored_all,
            "pass_rate": _rate(passed_all, scored_all),
            "outcomes": dict(sorted(outcomes.items())),
        },
        "rollouts": {"items": items, "note": None if items else NO_ROLLOUTS},
        "payouts": payout_summary(store, now_ms=now_ms),
    }
