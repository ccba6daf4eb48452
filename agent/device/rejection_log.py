"""Log refusals without letting a flood of them flood the journal.

Each reason gets up to ``burst`` log lines per ``interval_s``; beyond that its refusals are only
counted, and :meth:`RejectionLog.flush` (called by the daemon's main loop every interval and at
shutdown) returns one summary per reason with how many lines were held back.  The counters in
``rejected_inbound`` always count every refusal; only the log lines are thinned.
"""

from __future__ import annotations

import threading
from collections import Counter


class RejectionLog:
    def __init__(self, *, burst: int = 5, interval_s: float = 10.0, now_s: float = 0.0) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._window_start = now_s
        self._logged: Counter[str] = Counter()
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def should_log(self, reason: str, now_s: float) -> bool:
        """True if this refusal gets its own log line; else it is held back and counted."""
        with self._lock:
            if now_s - self._window_start >= self.interval_s:
                # A new interval: lines are allowed again; held counts wait for flush().
                self._window_start = now_s
                self._logged.clear()
            if self._logged[reason] < self.burst:
                self._logged[reason] += 1
                return True
            self._held[reason] += 1
            return False

    def flush(self) -> dict[str, int]:
        """reason -> refusals held back since the last flush (no entry for none)."""
        with self._lock:
            held, self._held = dict(self._held), Counter()
        return held
