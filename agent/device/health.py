"""Device health from psutil and sysfs, as integers (basis points, milli-°C).

Temperature comes from the profile's thermal-zone glob (or psutil's sensors);
throttling from the Raspberry Pi firmware flag where it exists.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

# Raspberry Pi firmware: bit 0 under-voltage, 1 arm freq capped, 2 currently throttled, 3 soft temp limit.
_RPI_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
_RPI_ACTIVE_MASK = 0xF


@dataclass(frozen=True)
class HealthReading:
    cpu_bp: int
    mem_bp: int
    temp_mc: int | None
    throttled: bool


class HealthProbe:
    def __init__(
        self,
        root: Path = Path("/"),
        zone_glob: str = "sys/class/thermal/thermal_zone*/temp",
        ignore_zone_types: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.zone_glob = zone_glob
        self.ignore_zone_types = frozenset(ignore_zone_types)
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now

    def temperature_mc(self) -> int | None:
        values = []
        for path in sorted(glob.glob(str(self.root / self.zone_glob))):
            if self.ignore_zone_types and self._zone_type(Path(path)) in self.ignore_zone_types:
                continue
            try:
                values.append(int(Path(path).read_text().strip()))
            except (OSError, ValueError):
                continue
        if values:
            return max(values)
        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is None or self.root != Path("/"):
            return None
        try:
            readings = [t.current for group in sensors().values() for t in group if t.current]
        except (OSError, RuntimeError):
            return None
        return int(max(readings) * 1000) if readings else None

    @staticmethod
    def _zone_type(temp_path: Path) -> str | None:
        try:
            return (temp_path.parent / "type").read_text().strip()
        except OSError:
            return None

    def throttled(self) -> bool:
        try:
            raw = (self.root / _RPI_THROTTLED).read_text().strip()
        except OSError:
            return False
        try:
            return bool(int(raw, 16) & _RPI_ACTIVE_MASK)
        except ValueError:
            return False

    def read(self) -> HealthReading:
        cpu = psutil.cpu_percent(interval=None)
        mem = psutil.virtual_memory().percent
        temp = self.temperature_mc()
        if temp is not None:
            temp = max(-55_000, min(150_000, temp))
        return HealthReading(
            cpu_bp=max(0, min(10_000, round(cpu * 100))),
            mem_bp=max(0, min(10_000, round(mem * 100))),
            temp_mc=temp,
            throttled=self.throttled(),
        )
