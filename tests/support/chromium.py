"""Headless Chromium (Debian's ``chromium`` package) for the dashboard test, and a DOM reader.

:func:`dump_dom` runs the real browser on a URL with a virtual-time budget, so the page's
scripts (fetch /api/summary, render) have run when it prints the DOM.  No browser download,
no node packages: ``make test`` installs ``chromium`` when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError("chromium is not installed: apt-get install -y chromium (make test does it)")
    return found


def dump_dom(url: str, profile: Path, *, budget_ms: int = 4000, timeout: float = 120) -> str:
    """The DOM after the page's scripts ran for ``budget_ms`` of virtual time."""
    profile.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0 or "<html" not in done.stdout:
        raise AssertionError(f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Row:
    """A ``<tr data-dev|data-reason=...>``: its cells by ``data-field``."""

    key: str
    cells: dict[str, Element] = field(default_factory=dict)


class DomReader(HTMLParser):
    """Elements with an id, the body's attributes, and keyed table rows (``data-dev``, ``data-reason``,
    ``data-payee``)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, Element] = {}
        self.body: dict[str, str] = {}
        self.rows: dict[str, dict[str, Row]] = {"dev": {}, "reason": {}, "rollout": {}, "payee": {}}
        self._open: list[Element] = []
        self._row: Row | None = None
        self._cell: Element | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        element = Element(tag, values)
        if tag == "body":
            self.body = values
        if "id" in values:
            self.by_id[values["id"]] = element
        if tag == "tr":
            for key in ("dev", "reason", "rollout", "payee"):
                if f"data-{key}" in values:
                    self._row = Row(values[f"data-{key}"])
                    self.rows[key][self._row.key] = self._row
        if tag == "td" and self._row is not None and "data-field" in values:
            self._cell = element
            self._row.cells[values["data-field"]] = element
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            element = self._open.pop()
            if element.tag == tag:
                break
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def value(self, element_id: str) -> str:
        return self.by_id[element_id].attrs["data-value"]

    def text(self, element_id: str) -> str:
        return self.by_id[element_id].text.strip()
