"""An epoch's settlement as a pure function: report + policy + previous cumulatives -> leaves, root."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.coordinator.audit import OPEN, EpochReport
from agent.rewards.allocate import Allocation, allocate
from agent.rewards.merkle import Leaf, ordered, root
from agent.rewards.policy import RewardPolicy, policy_hash


@dataclass(frozen=True)
class Settlement:
    epoch: int
    #: Merkle root, hex.
    root: str
    pool: int
    total: int
    policy_hash: str
    #: In tree order (by dev).
    leaves: tuple[Leaf, ...]
    allocations: tuple[Allocation, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "root": self.root,
            "pool": self.pool,
            "total": self.total,
            "unallocated": self.pool - self.total,
            "policy_hash": self.policy_hash,
            "devices": [
                {
                    "dev": a.dev,
                    "owner": a.owner,
                    "amount": a.amount,
                    "cumulative": leaf.cumulative,
                    "uptime_bp": a.uptime_bp,
                    "pass_bp": a.pass_bp,
                    "eligible": a.eligible,
                    "reason": a.reason,
                    "capped": a.capped,
                }
                for a, leaf in zip(self.allocations, self.leaves, strict=True)
            ],
        }


def open_challenges(report: EpochReport) -> int:
    """Challenges issued in the epoch that have no final outcome yet."""
    return sum(d.challenges.get(OPEN, 0) for d in report.devices)


def settle_report(report: EpochReport, policy: RewardPolicy, previous: Mapping[str, int]) -> Settlement:
    """The settlement of ``report``: cumulative = ``previous[dev]`` (0 if absent) + this epoch."""
    allocations = allocate(report, policy)
    leaves = ordered(
        [Leaf(a.dev, a.owner, a.epoch, a.amount, previous.get(a.dev, 0) + a.amount) for a in allocations]
    )
    by_dev = {a.dev: a for a in allocations}
    return Settlement(
        epoch=report.epoch,
        root=root(leaves).hex(),
        pool=policy.pool_per_epoch,
        total=sum(a.amount for a in allocations),
        policy_hash=policy_hash(policy),
        leaves=tuple(leaves),
        allocations=tuple(by_dev[leaf.dev] for leaf in leaves),
    )
