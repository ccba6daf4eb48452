"""Thermal policy: lower the inference rate when hot, pause when critical, with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass

from agent.profiles import ThermalPolicy


@dataclass(frozen=True)
class ThermalState:
    level: str  # "normal", "throttled", "paused"
    rate_bp: int  # fraction of the configured rate, basis points

    @property
    def limited(self) -> bool:
        return self.level != "normal"


NORMAL = ThermalState("normal", 10_000)


class ThermalGovernor:
    def __init__(self, policy: ThermalPolicy) -> None:
        self.policy = policy
        self.state = NORMAL

    def update(self, temp_mc: int | None, soc_throttled: bool = False) -> ThermalState:
        p = self.policy
        if temp_mc is None:
            self.state = ThermalState("throttled", p.throttled_rate_bp) if soc_throttled else NORMAL
            return self.state
        c = temp_mc / 1000
        if c >= p.critical_c:
            self.state = ThermalState("paused", 0)
        elif c >= p.throttle_c or soc_throttled:
            self.state = ThermalState("throttled", p.throttled_rate_bp)
        elif c <= p.resume_c:
            self.state = NORMAL
        elif self.state.level == "paused":
            # Cooling down between resume_c and throttle_c: run, but still throttled.
            self.state = ThermalState("throttled", p.throttled_rate_bp)
        return self.state
