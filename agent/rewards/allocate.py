"""Allocation: an epoch's audit report and the policy -> integer amounts per device (pure).

Each measure has its share of the pool (``pool * weight_bp / 10000``), split among the
*eligible* devices in proportion to the device's measure:

* uptime: ``up_slots``;
* verified work: ``inferences_accepted`` (the sum over the device's accepted proofs);
* challenges: the pass rate in basis points (``passed * 10000 // scored``), or the policy's
  ``unscored_pass_bp`` for a device with no scored challenge.

A device is eligible when ``counted_slots > 0`` and ``up_slots * 10000 >= min_uptime_bp *
counted_slots``.  The exact share (a fraction) is capped at ``device_cap`` and then **floored**:
no device ever gets more than its exact share and no amount depends on another device's
rounding or on sort order; what is left (a measure no eligible device has, the capped excess,
the floored fractions: under one unit per device) stays in the pool.  So ``sum <= pool``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from agent.coordinator.audit import DeviceEpoch, EpochReport
from agent.coordinator.challenge_rows import SCORED_OUTCOMES

# DeviceEpoch, EpochReport
from agent.rewards.policy import BASIS, RewardPolicy

#: Why a device of the report earns nothing this epoch (catalogued in agent/protocol/reasons.py).
NO_COUNTED_SLOTS = "no_counted_slots"
BELOW_MIN_UPTIME = "below_min_uptime"


@dataclass(frozen=True)
class Allocation:
    dev: str
    owner: str
    epoch: int
    amount: int
    #: up_slots * 10000 // counted_slots (0 with no counted slot).
    uptime_bp: int
    #: The challenge measure used (pass rate in bp, or unscored_pass_bp).
    pass_bp: int
    #: True when the device reached the minimum uptime.
    eligible: bool
    #: Why an ineligible device gets nothing (None when eligible).
    reason: str | None
    #: True when the cap cut the device's share.
    capped: bool


def pass_bp(device: DeviceEpoch, unscored_pass_bp: int) -> int:
    """The challenge measure of one device, in basis points."""
    passed = device.challenges.get("passed", 0)
    scored = sum(device.challenges.get(o, 0) for o in SCORED_OUTCOMES)
    return passed * BASIS // scored if scored else unscored_pass_bp


def eligibility(device: DeviceEpoch, min_uptime_bp: int) -> str | None:
    """None when the device may earn, else the reason it may not."""
    if device.counted_slots == 0:
        return NO_COUNTED_SLOTS
    if device.up_slots * BASIS < min_uptime_bp * device.counted_slots:
        return BELOW_MIN_UPTIME
    return None


def allocate(report: EpochReport, policy: RewardPolicy) -> tuple[Allocation, ...]:
    """One :class:`Allocation` per device of the report, in the report's order (sorted by dev)."""
    reasons = {d.dev: eligibility(d, policy.min_uptime_bp) for d in report.devices}
    passes = {d.dev: pass_bp(d, policy.unscored_pass_bp) for d in report.devices}
    eligible = [d for d in report.devices if reasons[d.dev] is None]
    measures = (
        (policy.uptime_weight_bp, {d.dev: d.up_slots for d in eligible}),
        (policy.work_weight_bp, {d.dev: d.inferences_accepted for d in eligible}),
        (policy.challenge_weight_bp, {d.dev: passes[d.dev] for d in eligible}),
    )
    share: dict[str, Fraction] = {d.dev: Fraction(0) for d in report.devices}
    for weight, values in measures:
        total = sum(values.values())
        if not total or not weight:
            continue  # nobody has this measure: its part stays in the pool
        part = Fraction(policy.pool_per_epoch * weight, BASIS)
        for dev, value in values.items():
            share[dev] += part * value / total
    out: list[Allocation] = []
    for d in report.devices:
        exact = share[d.dev]
        capped = policy.device_cap is not None and exact > policy.device_cap
        if capped:
            exact = Fraction(policy.device_cap or 0)
        out.append(
            Allocation(
                dev=d.dev,
                owner=d.owner,
                epoch=report.epoch,
                amount=int(exact),  # floor: the fraction stays in the pool
                uptime_bp=d.up_slots * BASIS // d.counted_slots if d.counted_slots else 0,
                pass_bp=passes[d.dev],
                eligible=reasons[d.dev] is None,
                reason=reasons[d.dev],
                capped=capped,
            )
        )
    return tuple(out)
