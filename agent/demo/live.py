"""The live table: devices, verdicts, challenges, stage and balances while the demo runs.

On a terminal the table is redrawn in place (ANSI: cursor up, clear to the end); when stdout is
not a terminal (CI, a pipe, ``make demo > log``) it prints plain lines instead: one per step
and one per device whenever that device's row changed, at most every ``plain_every_s``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from agent.demo.observe import DeviceView, View
from agent.demo.steps import Step

COLUMNS = ("device", "model", "version", "heartbeats", "accepted", "rejected", "challenges", "balance")


def _challenges(view: DeviceView) -> str:
    passed = view.challenges.get("passed", 0)
    others = sum(n for k, n in view.challenges.items() if k not in ("passed", "open"))
    opened = view.challenges.get("open", 0)
    return f"{passed} passed" + (f", {others} not" if others else "") + (f", {opened} open" if opened else "")


def row(view: DeviceView) -> tuple[str, ...]:
    version = view.version + (" (trial)" if view.trial else "")
    balance = "-" if view.balance is None else str(view.balance)
    return (
        f"{view.name} {view.dev[:8]}",
        view.model,
        version,
        str(view.heartbeats),
        str(view.accepted),
        str(view.rejected),
        _challenges(view),
        balance,
    )


def table_lines(view: View, step: str, note: str = "") -> list[str]:
    rows = [COLUMNS, *(row(d) for d in view.devices)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        f"epoch {view.epoch} ({view.epoch_left_s:4.1f} s left)  rollout: {view.stage or '-'}  step: {step or '-'}"
        + (f"  ({note})" if note else "")
    ]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return lines


class LiveTable:
    def __init__(
        self, out: TextIO | None = None, *, tty: bool | None = None, plain_every_s: float = 10.0
    ) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self._drawn = 0
        self._last_rows: dict[str, tuple[str, ...]] = {}
        self._last_plain = 0.0
        self._lock = threading.Lock()
        self.step = ""
        #: Shown after the step in the table's header (e.g. which epoch will be settled).
        self.note = ""

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self._write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def step_changed(self, name: str, step: Step | None) -> None:
        """A step started (``step`` None) or ended: one line above the table."""
        with self._lock:
            if step is None:
                self.step = name
                if not self.tty:
                    self._write(f"step  {name} ...\n")
                return
            self._erase()
            detail = f": {step.detail}" if step.detail else ""
            self._write(f"{step.status:<9} {name} ({step.seconds:.1f} s){detail}\n")
            self.step = ""

    def show(self, view: View) -> None:
        with self._lock:
            if self.tty:
                self._erase()
                lines = table_lines(view, self.step, self.note)
                self._write("\n".join(lines) + "\n")
                self._drawn = len(lines)
                return
            now = time.monotonic()
            if now - self._last_plain < self.plain_every_s:
                return
            changed = [d for d in view.devices if self._last_rows.get(d.dev) != row(d)]
            for device in changed:
                cells = dict(zip(COLUMNS, row(device), strict=True))
                self._write("live  " + "  ".join(f"{k}={v}" for k, v in cells.items()) + "\n")
                self._last_rows[device.dev] = row(device)
            if changed:
                self._last_plain = now

    def finish(self) -> None:
        with self._lock:
            self._drawn = 0  # leave the last table on the screen
