"""Shared output helpers for commands: JSON, tables, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def print_json(data: Any) -> None:
    """One JSON document on stdout (sorted keys, stable for scripts)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Cells are text, never rich markup: "[coordinator] pubkey" must print as it is.
        table.add_row(*(escape(str(cell)) for cell in row))
    # A terminal sets its own width; piped or logged output (make demo in CI, journald) gets 140
    # columns instead of rich's default 80, which would cut model and provider names.
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def print_kv(title: str, data: dict[str, Any]) -> None:
    print_table(title, ["key", "value"], [(k, v) for k, v in data.items()])


class _Bar:
    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool | None = None) -> Iterator[_Bar]:
    """A progress bar on stderr when it is a terminal; silent otherwise."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield _Bar(progress, task)
