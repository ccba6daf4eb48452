"""The ground truth: what each simulated device did, per device per epoch.

It uses the uptime audit's names (``up_slots``, ``slots``, ``heartbeats_accepted``,
``proofs_accepted``, ``inferences_accepted``, ``rejections``, ``challenges``,
``pass_rate``), so :mod:`agent.simulator.compare` can set it beside an audit report field
by field.  Everything is keyed by the coordinator's slot and epoch numbers
(``ms // slot_ms``, ``ms // epoch_ms``): the simulator runs on the coordinator's clock.
Thread-safe: the timing thread and the inbox thread both record.
"""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Outcomes that count in a pass rate (as the coordinator's ``challenge_rows.SCORED_OUTCOMES``).
SCORED = ("passed", "challenge_failed", "wrong_model", "challenge_late", "challenge_missed")
#: The challenge outcome each behaviour leads to.
OUTCOME = {"honest": "passed", "wrong_model": "wrong_model", "ignore": "challenge_missed"}


def pass_rate(challenges: dict[str, int]) -> float | None:
    scored = sum(challenges.get(o, 0) for o in SCORED)
    return challenges.get("passed", 0) / scored if scored else None


@dataclass
class EpochTruth:
    slots: list[str]
    heartbeats: int = 0
    proofs: int = 0
    inferences: int = 0
    rejections: collections.Counter[str] = field(default_factory=collections.Counter)
    challenges: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_json(self) -> dict[str, Any]:
        challenges = dict(sorted(self.challenges.items()))
        return {
            "up_slots": self.slots.count("U"),
            "counted_slots": len(self.slots),
            "slots": "".join(self.slots),
            "heartbeats_accepted": self.heartbeats,
            "proofs_accepted": self.proofs,
            "inferences_accepted": self.inferences,
            "rejections": dict(sorted(self.rejections.items())),
            "challenges": challenges,
            "pass_rate": pass_rate(challenges),
        }


@dataclass
class DeviceTruth:
    dev: str
    index: int
    owner: str
    profile: str
    group: str
    behaviour: str
    epochs: dict[int, EpochTruth]


class Truth:
    """Ground truth of one run covering epochs ``first_epoch .. first_epoch + epochs - 1``."""

    def __init__(self, *, slot_ms: int, epoch_slots: int, first_epoch: int, epochs: int) -> None:
        self.slot_ms = slot_ms
        self.epoch_slots = epoch_slots
        self.epoch_ms = slot_ms * epoch_slots
        self.first_epoch = first_epoch
        self.epoch_numbers = list(range(first_epoch, first_epoch + epochs))
        self.devices: dict[str, DeviceTruth] = {}
        #: What the simulator saw: verdicts by kind and reason, beacons, anything odd.
        self.observed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @property
    def first_slot(self) -> int:
        return self.first_epoch * self.epoch_slots

    def add_device(self, dev: str, index: int, owner: str, profile: str, group: str, behaviour: str) -> None:
        epochs = {e: EpochTruth(["D"] * self.epoch_slots) for e in self.epoch_numbers}
        self.devices[dev] = DeviceTruth(dev, index, owner, profile, group, behaviour, epochs)

    def _epoch(self, dev: str, slot: int) -> EpochTruth | None:
        return self.devices[dev].epochs.get(slot // self.epoch_slots)

    def heartbeat(self, dev: str, slot: int) -> None:
        with self._lock:
            epoch = self._epoch(dev, slot)
            if epoch is not None:
                epoch.slots[slot % self.epoch_slots] = "U"
                epoch.heartbeats += 1

    def proof(self, dev: str, slot: int, inferences: int) -> None:
        with self._lock:
            epoch = self._epoch(dev, slot)
            if epoch is not None:
                epoch.proofs += 1
                epoch.inferences += inferences

    def rejection(self, dev: str, slot: int, reason: str) -> None:
        with self._lock:
            epoch = self._epoch(dev, slot)
            if epoch is not None:
                epoch.rejections[reason] += 1

    def challenge(self, dev: str, issued_slot: int, outcome: str) -> bool:
        """Record a challenge issued in ``issued_slot``; False when that slot is outside the run."""
        with self._lock:
            epoch = self._epoch(dev, issued_slot)
            if epoch is None:
                return False
            epoch.challenges[outcome] += 1
            return True

    def note(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.observed[what] += n

    def maximum(self, what: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``what`` (e.g. a delay in ms)."""
        with self._lock:
            self.observed[what] = max(self.observed[what], value)

    def verdicts_on_messages(self) -> int:
        """Verdicts received on the devices' own messages (not the ones on missed challenges)."""
        with self._lock:
            return sum(
                n
                for k, n in self.observed.items()
                if k.startswith("verdict.") and not k.startswith("verdict.challenge.")
            )

    def in_run(self, slot: int) -> bool:
        return self.first_slot <= slot < self.first_slot + len(self.epoch_numbers) * self.epoch_slots

    def as_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            devices = [
                {
                    "dev": d.dev,
                    "index": d.index,
                    "owner": d.owner,
                    "profile": d.profile,
                    "group": d.group,
                    "behaviour": d.behaviour,
                    "epochs": {str(e): t.as_json() for e, t in sorted(d.epochs.items())},
                }
                for d in sorted(self.devices.values(), key=lambda d: d.dev)
            ]
            return {
                "version": 1,
                "slot_ms": self.slot_ms,
                "epoch_ms": self.epoch_ms,
                "epoch_slots": self.epoch_slots,
                "first_slot": self.first_slot,
                "epochs": self.epoch_numbers,
                **(extra or {}),
                "observed": dict(sorted(self.observed.items())),
                "devices": devices,
            }

    def write(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(extra), indent=1, sort_keys=False) + "\n", encoding="utf-8")


def totals(truth: dict[str, Any]) -> dict[str, Any]:
    """Fleet-wide sums of a truth document (for the run's summary line)."""
    sums: collections.Counter[str] = collections.Counter()
    challenges: collections.Counter[str] = collections.Counter()
    rejections: collections.Counter[str] = collections.Counter()
    for device in truth["devices"]:
        for epoch in device["epochs"].values():
            for key in ("up_slots", "counted_slots", "heartbeats_accepted", "proofs_accepted"):
                sums[key] += epoch[key]
            sums["inferences_accepted"] += epoch["inferences_accepted"]
            challenges.update(epoch["challenges"])
            rejections.update(epoch["rejections"])
    return {
        **dict(sums),
        "challenges": dict(sorted(challenges.items())),
        "rejections": dict(sorted(rejections.items())),
    }
