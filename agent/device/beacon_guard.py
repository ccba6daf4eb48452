"""Is a verified beacon plausible?  Refuse one from the future, or an older one (a replay).

A beacon carries its slot number, the coordinator's wall clock when the slot started
(``time_ms``) and the slot length (``slot_ms``).  Slot numbers are the coordinator's counter,
not a function of the epoch, so a slot alone cannot be compared with the device clock; the rule
(docs/protocol.md, "Beacons at the device") is:

1. ``beacon_from_future``: ``time_ms`` is more than ``tolerance_ms`` ahead of the device clock;
2. ``replay``: the slot is below the last accepted beacon's slot;
3. ``beacon_from_future``: the slot is further ahead of the last accepted beacon than the time
   since that beacon's ``time_ms`` (device clock) allows: at most
   ``(now - last.time_ms + tolerance_ms) // slot_ms + tolerance_slots`` slots, with the shorter
   of the two beacons' slot lengths (a coordinator that shortens its slots stays plausible).

Without rule 3 one signed beacon with a huge slot would make every genuine beacon look like a
replay until a restart.  The first beacon after a start is judged by rule 1 alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.protocol.messages import Beacon


@dataclass(frozen=True)
class BeaconTolerance:
    #: How far ahead of the device clock a beacon's time (or its slot's implied time) may be.
    tolerance_ms: int = 120_000
    #: How many slots further than the elapsed time allows a beacon may be.
    tolerance_slots: int = 3


def check_beacon(beacon: Beacon, last: Beacon | None, now_ms: int, tolerance: BeaconTolerance) -> None:
    """Raise ProtocolError (``beacon_from_future`` or ``replay``) for an implausible beacon."""
    ahead = beacon.time_ms - now_ms
    if ahead > tolerance.tolerance_ms:
        raise ProtocolError(
            f"beacon time is {ahead} ms ahead of the device clock (tolerance {tolerance.tolerance_ms} ms)",
            reason="beacon_from_future",
        )
    if last is None:
        return
    if beacon.slot < last.slot:
        raise ProtocolError(
            f"beacon slot {beacon.slot} is older than the current slot {last.slot}", reason="replay"
        )
    slot_ms = min(beacon.slot_ms, last.slot_ms)
    elapsed = max(0, now_ms - last.time_ms)
    allowed = (elapsed + tolerance.tolerance_ms) // slot_ms + tolerance.tolerance_slots
    if beacon.slot - last.slot > allowed:
        raise ProtocolError(
            f"beacon slot {beacon.slot} is {beacon.slot - last.slot} slots past slot {last.slot}; "
            f"at most {allowed} can have started since (slot {slot_ms} ms)",
            reason="beacon_from_future",
        )
