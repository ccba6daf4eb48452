"""The dashboard's rewards section (``payouts`` in ``/api/summary``), read from the database.

Per device: earned (its cumulative in the newest settled epoch it has a leaf in), paid, outstanding
(vouchers whose transaction may still land) and its last receipts; and the payout breaker.  The
tables are the payout desk's (migration 5); the coordinator reads them with SQL of its own and
never imports the rewards code.
"""

from __future__ import annotations

from typing import Any

from agent.coordinator.store import Store

#: Receipts shown per device.
LAST_RECEIPTS = 3


def breaker_state(store: Store, now_ms: int) -> dict[str, Any]:
    row = store.one("SELECT tripped_ms, until_ms, detail FROM payout_breaker WHERE id = 1")
    if row is None or int(row[1]) <= now_ms:
        return {"open": False, "tripped_ms": None, "until_ms": None, "detail": None}
    return {"open": True, "tripped_ms": int(row[0]), "until_ms": int(row[1]), "detail": str(row[2])}


def payout_summary(store: Store, *, now_ms: int) -> dict[str, Any]:
    earned: dict[str, tuple[int, int]] = {
        str(dev): (int(epoch), int(cumulative))
        for dev, epoch, cumulative in store.rows(
            "SELECT a.dev, a.epoch, a.cumulative FROM allocations a JOIN "
            "(SELECT dev, MAX(epoch) AS epoch FROM allocations GROUP BY dev) n "
            "ON a.dev = n.dev AND a.epoch = n.epoch"
        )
    }
    sums: dict[str, dict[str, int]] = {}
    for dev, state, total in store.rows("SELECT dev, state, SUM(amount) FROM vouchers GROUP BY dev, state"):
        sums.setdefault(str(dev), {})[str(state)] = int(total)
    receipts: dict[str, list[dict[str, Any]]] = {}
    for dev, claim_id, status, reason, at, state, amount in store.rows(
        "SELECT dev, claim_id, receipt_status, receipt_reason, receipt_ms, state, amount FROM vouchers "
        "WHERE receipt_ms IS NOT NULL ORDER BY receipt_ms DESC"
    ):
        shown = receipts.setdefault(str(dev), [])
        if len(shown) < LAST_RECEIPTS:
            shown.append(
                {
                    "claim_id": str(claim_id),
                    "status": str(status),
                    "reason": None if reason is None else str(reason),
                    "ms": int(at),
                    "voucher": str(state),
                    "amount": int(amount),
                }
            )
    devices = []
    for dev in sorted(set(earned) | set(sums)):
        epoch, cumulative = earned.get(dev, (None, 0))
        by_state = sums.get(dev, {})
        devices.append(
            {
                "dev": dev,
                "epoch": epoch,
                "earned": cumulative,
                "paid": by_state.get("paid", 0),
                "outstanding": by_state.get("outstanding", 0),
                "claimable": max(0, cumulative - by_state.get("paid", 0) - by_state.get("outstanding", 0)),
                "receipts": receipts.get(dev, []),
            }
        )
    return {"breaker": breaker_state(store, now_ms), "devices": devices}
