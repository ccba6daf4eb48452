"""Settling an epoch against a store, and replaying settlements from a capture.

``settle_epoch`` is idempotent: an epoch already settled is recomputed and compared, and the
stored record is returned unchanged when the root is the same (a different root is refused as
``settlement_conflict``; nothing is ever overwritten).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.coordinator.audit import epoch_report
from agent.coordinator.store import StorageUnavailableError
from agent.errors import SettlementError
from agent.rewards.ledger import (
    StoredSettlement,
    check_order,
    cumulatives_before,
    load_settlement,
    write_settlement,
)
from agent.rewards.policy import RewardPolicy
from agent.rewards.settlement import Settlement, open_challenges, settle_report

if TYPE_CHECKING:
    from agent.coordinator.audit_capture import Capture
    from agent.coordinator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettleOutcome:
    settlement: Settlement
    stored: StoredSettlement
    #: False when the epoch was already settled with this same root (nothing written).
    created: bool


def _final(
    store: Store, epoch: int, policy: RewardPolicy, *, slot_ms: int, epoch_ms: int, now_ms: int
) -> Settlement:
    end_ms = (epoch + 1) * epoch_ms
    if now_ms < end_ms:
        raise SettlementError(
            f"epoch {epoch} ends at {end_ms} ms (now {now_ms}): it cannot be settled yet",
            reason="epoch_not_final",
        )
    report = epoch_report(store, epoch, slot_ms=slot_ms, epoch_ms=epoch_ms)
    still_open = open_challenges(report)
    if still_open:
        raise SettlementError(
            f"epoch {epoch}: {still_open} challenge(s) issued in it have no final outcome yet",
            reason="epoch_not_final",
            hint="settle once the coordinator has scored them (deadline passed, reference run done)",
        )
    return settle_report(report, policy, cumulatives_before(store, epoch))


def _same_or_refused(computed: Settlement, existing: StoredSettlement) -> SettleOutcome:
    """The stored record when ``computed`` has its root, else ``settlement_conflict``."""
    if existing.root != computed.root:
        log.warning(
            "settlement_conflict",
            extra={"epoch": existing.epoch, "stored_root": existing.root, "computed_root": computed.root},
        )
        raise SettlementError(
            f"epoch {existing.epoch} is settled with root {existing.root}; recomputing it gives "
            f"{computed.root} (policy {computed.policy_hash}, stored {existing.policy_hash})",
            reason="settlement_conflict",
            hint="the stored settlement stands; check the [rewards] policy and the store",
        )
    return SettleOutcome(computed, existing, created=False)


def settle_epoch(
    store: Store, epoch: int, policy: RewardPolicy, *, slot_ms: int, epoch_ms: int, now_ms: int
) -> SettleOutcome:
    """Compute, check and record the settlement of ``epoch`` (or confirm the stored one)."""
    computed = _final(store, epoch, policy, slot_ms=slot_ms, epoch_ms=epoch_ms, now_ms=now_ms)
    existing = load_settlement(store, epoch)
    if existing is not None:
        return _same_or_refused(computed, existing)
    check_order(store, epoch)
    try:
        write_settlement(store, computed, now_ms)
    except StorageUnavailableError:
        # A unique-key conflict is reported as this too: another run may have settled it meanwhile.
        raced = load_settlement(store, epoch)
        if raced is None:
            raise
        return _same_or_refused(computed, raced)
    stored = load_settlement(store, epoch)
    assert stored is not None
    log.info(
        "settled",
        extra={
            "epoch": epoch,
            "root": computed.root,
            "total": computed.total,
            "devices": len(computed.leaves),
        },
    )
    return SettleOutcome(computed, stored, created=True)


def replay_settlements(
    capture: Capture, epoch: int, policy: RewardPolicy, *, first_epoch: int | None = None
) -> Settlement:
    """The settlement of ``epoch`` recomputed from a capture alone.

    Settlements ``first_epoch`` (default: ``epoch``) .. ``epoch`` are recomputed in order, each
    adding to the cumulative totals of the one before, as ``edgeproof rewards settle`` did.
    """
    from agent.coordinator.audit_capture import replay_capture

    start = epoch if first_epoch is None else first_epoch
    if not 0 <= start <= epoch:
        raise SettlementError(
            f"--first-epoch {start} must be between 0 and the epoch {epoch}", reason="settlement_order"
        )
    if epoch > capture.epoch:
        raise SettlementError(
            f"the capture {capture.path} ends with epoch {capture.epoch}; epoch {epoch} is not in it",
            reason="not_settled",
            hint=f"export a capture of epoch {epoch} with: edgeproof audit export --epoch {epoch}",
        )
    store, _ = replay_capture(capture)
    try:
        previous: dict[str, int] = {}
        settlement: Settlement | None = None
        for e in range(start, epoch + 1):
            report = epoch_report(store, e, slot_ms=capture.slot_ms, epoch_ms=capture.epoch_ms)
            settlement = settle_report(report, policy, previous)
            previous = {leaf.dev: leaf.cumulative for leaf in settlement.leaves}
        assert settlement is not None
        return settlement
    finally:
        store.close()
