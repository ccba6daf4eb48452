"""Named demo steps: each one passes or fails, naming itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.errors import EdgeproofError

PASSED = "passed"
FAILED = "failed"


class DemoStepError(EdgeproofError):
    """A demo step failed; the message names the step (exit code 1, the family's default)."""

    def __init__(self, step: str, cause: str, *, hint: str | None = None) -> None:
        super().__init__(f"demo step {step!r} failed: {cause}", hint=hint)
        self.step = step


@dataclass
class Step:
    name: str
    status: str
    seconds: float
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "detail": self.detail,
        }


@dataclass
class Steps:
    """The record of every step, in order; ``on_change`` is told when a step starts or ends."""

    on_change: Callable[[str, Step | None], None] = lambda name, step: None
    done: list[Step] = field(default_factory=list)
    current: str = ""

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, str]]:
        """``with steps.step("settle") as note: ...; note["detail"] = "..."``; any failure names it."""
        note: dict[str, str] = {"detail": ""}
        self.current = name
        self.on_change(name, None)
        start = time.monotonic()
        try:
            yield note
        except DemoStepError:
            raise
        except KeyboardInterrupt:
            self._record(name, FAILED, start, "interrupted")
            raise
        except EdgeproofError as exc:
            self._record(name, FAILED, start, exc.message)
            raise DemoStepError(name, exc.message, hint=exc.hint) from exc
        except Exception as exc:  # a child's or a library's unexpected failure: still name the step
            self._record(name, FAILED, start, f"{type(exc).__name__}: {exc}")
            raise DemoStepError(name, f"{type(exc).__name__}: {exc}") from exc
        self._record(name, PASSED, start, note["detail"])

    def _record(self, name: str, status: str, start: float, detail: str) -> None:
        self.done.append(Step(name, status, time.monotonic() - start, detail))
        self.current = ""
        self.on_change(name, self.done[-1])

    def as_json(self) -> list[dict[str, Any]]:
        return [s.as_json() for s in self.done]
