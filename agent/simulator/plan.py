"""What one simulated device does in one slot (pure functions of the script).

Slot indexes are relative to the run's first slot.  A device that is down sends nothing
and leaves challenges unanswered; an up device sends one heartbeat and one proof per
slot, at a fixed offset inside the slot (spread evenly over the fleet), so the
coordinator, which stamps time at ingest, puts each message in the intended slot.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.simulator.script import Behaviour, Group, Script


def _in(ranges: list[list[int]], slot: int) -> bool:
    return any(lo <= slot <= hi for lo, hi in ranges)


@dataclass(frozen=True)
class DevicePlan:
    """One device's part of the script."""

    index: int
    group: Group | None

    @property
    def group_name(self) -> str:
        return self.group.name if self.group is not None else "honest"

    @property
    def behaviour(self) -> Behaviour:
        return self.group.challenges if self.group is not None else "honest"

    def up(self, slot: int) -> bool:
        return self.group is None or not _in(self.group.outages, slot)

    def proves(self, slot: int, every: int) -> bool:
        """Whether the device sends a proof in ``slot`` (every ``every`` slots, staggered by index)."""
        return (slot + self.index) % every == 0

    def overclaims(self, slot: int) -> bool:
        return self.group is not None and _in(self.group.overclaim, slot)


def device_plans(script: Script) -> list[DevicePlan]:
    return [DevicePlan(i, script.group_of(i)) for i in range(script.devices)]


def offset_ms(script: Script, index: int, at: list[float]) -> int:
    """Where in the slot device ``index`` sends (ms from the slot start), ``at`` = [lo, hi] fractions."""
    share = index / script.devices
    return int(script.slot_ms * (at[0] + (at[1] - at[0]) * share))


def inferences(script: Script, index: int, slot: int) -> int:
    """The inferences device ``index`` claims in ``slot`` (deterministic, in the script's range)."""
    lo, hi = script.inferences
    digest = hashlib.sha256(b"%d:%d:%d" % (script.seed, index, slot)).digest()
    return lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)


def proof_bound(max_fps: float, window_ms: int) -> int:
    """The most inferences the coordinator accepts in a window (``ceil(max_fps * window / 1000)``)."""
    return math.ceil(max_fps * window_ms / 1000)


def shortest_window_ms(script: Script) -> int:
    """The shortest proof window of the run: a proof covers its slot's start up to its send time."""
    return offset_ms(script, 0, script.proof_at)


def check_inferences(script: Script, max_fps: float, what: str) -> None:
    """Refuse a script whose honest proofs could exceed the bound (they must all be accepted)."""
    window = shortest_window_ms(script)
    most = math.floor(max_fps * window / 1000)
    if script.inferences[1] > most:
        raise ConfigError(
            f"script inferences {script.inferences} goes over the bound for {what} in the shortest proof "
            f"window ({window} ms at proof_at {script.proof_at[0]}): at most {most}"
        )


def slot_of_issue(deadline_ms: int, challenge_deadline_ms: int, slot_ms: int) -> int:
    """The (absolute) slot a challenge was issued in, from its deadline."""
    return (deadline_ms - challenge_deadline_ms) // slot_ms
