"""One reason catalogue: every reason named in agent/ is catalogued, and docs/protocol.md lists them."""

from __future__ import annotations

import re
from pathlib import Path

from agent.protocol.chain import Link
from agent.protocol.reasons import REASONS, is_reason

ROOT = Path(__file__).resolve().parents[2]
#: reason="..." / reason='...' literals and _reject("...") calls in the package.
_LITERAL = re.compile(r"""(?:reason\s*=\s*|_reject\(|_roll_back\(\w+,\s*|error\s*=\s*\()["']([a-z_]+)["']""")


def _literals() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "agent").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in _LITERAL.findall(line):
                found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def test_every_reason_in_the_code_is_catalogued() -> None:
    literals = _literals()
    assert len(literals) > 30  # the scan itself works
    missing = {name: where for name, where in literals.items() if not is_reason(name)}
    assert missing == {}


def test_chain_links_that_reject_are_reasons() -> None:
    for link in (Link.REPLAY, Link.FORK, Link.DUPLICATE, Link.GAP):
        assert link.value in REASONS


def test_docs_list_every_reason() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    # A row of the table in section 12 ("| `name` | scope | meaning |"), not just a mention.
    undocumented = sorted(name for name in REASONS if f"| `{name}` | {REASONS[name].scope} |" not in text)
    assert undocumented == []


def test_http_family() -> None:
    assert is_reason("http_404") and not is_reason("http_x") and not is_reason("nonsense")
