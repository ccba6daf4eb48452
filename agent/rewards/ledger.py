"""Settlement records in the coordinator's store (migration 3: ``settlements``, ``allocations``).

A settled epoch is written once, in one transaction, and never updated.  Epochs are settled in
order without gaps, so the cumulative totals before epoch ``E`` are the rows of epoch ``E - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import SettlementError
from agent.rewards.merkle import Leaf
from agent.rewards.settlement import Settlement

if TYPE_CHECKING:
    from agent.coordinator.store import Store


@dataclass(frozen=True)
class StoredSettlement:
    epoch: int
    root: str
    pool: int
    total: int
    policy_hash: str
    settled_ms: int
    #: In tree order (by dev).
    leaves: tuple[Leaf, ...]


def settled_range(store: Store) -> tuple[int, int] | None:
    """(first, last) settled epoch, or None."""
    row = store.one("SELECT MIN(epoch), MAX(epoch) FROM settlements")
    return None if row is None or row[0] is None else (int(row[0]), int(row[1]))


def cumulatives_before(store: Store, epoch: int) -> dict[str, int]:
    """Each device's cumulative earned total through epoch ``epoch - 1`` (empty if unsettled)."""
    rows = store.rows("SELECT dev, cumulative FROM allocations WHERE epoch = ?", (epoch - 1,))
    return {str(dev): int(total) for dev, total in rows}


def load_settlement(store: Store, epoch: int) -> StoredSettlement | None:
    row = store.one(
        "SELECT root, pool, total, policy_hash, settled_ms FROM settlements WHERE epoch = ?", (epoch,)
    )
    if row is None:
        return None
    leaves = [
        Leaf(str(dev), str(owner), epoch, int(amount), int(cumulative))
        for dev, owner, amount, cumulative in store.rows(
            "SELECT dev, owner, amount, cumulative FROM allocations WHERE epoch = ?", (epoch,)
        )
    ]
    leaves.sort(key=lambda leaf: leaf.dev.encode("utf-8"))
    return StoredSettlement(
        epoch, str(row[0]), int(row[1]), int(row[2]), str(row[3]), int(row[4]), tuple(leaves)
    )


def check_order(store: Store, epoch: int) -> None:
    """SettlementError ``settlement_order`` unless ``epoch`` is the next one to settle."""
    span = settled_range(store)
    if span is not None and epoch != span[1] + 1:
        raise SettlementError(
            f"epoch {epoch} cannot be settled: epochs {span[0]}..{span[1]} are settled and the next is "
            f"{span[1] + 1}",
            reason="settlement_order",
            hint="settle the epochs in order, each once",
        )


def write_settlement(store: Store, settlement: Settlement, settled_ms: int) -> None:
    """Insert the settlement and its allocations in one transaction."""
    with store.transaction():
        store.execute(
            "INSERT INTO settlements (epoch, root, pool, total, policy_hash, settled_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                settlement.epoch,
                settlement.root,
                settlement.pool,
                settlement.total,
                settlement.policy_hash,
                settled_ms,
            ),
        )
        store.execute_many(
            "INSERT INTO allocations (epoch, dev, owner, amount, cumulative) VALUES (?, ?, ?, ?, ?)",
            [(leaf.epoch, leaf.dev, leaf.owner, leaf.amount, leaf.cumulative) for leaf in settlement.leaves],
        )
