"""Roles stay apart: which agent packages may import which (checked on the source, statically)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> agent packages it must never import (anywhere in its modules, lazily or not).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # The wire protocol is pure and knows no role, no runtime and no transport.
    "agent/protocol": ("agent.device", "agent.inference", "agent.transport", "agent.commands"),
    # Inference knows nothing of proofs.
    "agent/inference": ("agent.protocol", "agent.device", "agent.transport"),
    # The transport moves bytes; it does not know the daemon or a coordinator.
    "agent/transport": ("agent.device", "agent.inference"),
    # A coordinator never imports device code (nor a device coordinator code, below), nor the
    # rewards built on top of its audit.
    "agent/coordinator": ("agent.device", "agent.rewards"),
    "agent/device": ("agent.coordinator",),
    # The fleet simulator is a device-side role built on the protocol alone: it neither reuses
    # the daemon nor peeks into the coordinator it is measured against.
    "agent/simulator": ("agent.coordinator", "agent.device"),
    # The fleet operator's tools build on the protocol alone: an operator never runs device code
    # (the rollout bucket they share lives in agent.protocol.rollout), nor the coordinator's.
    "agent/fleet": ("agent.device", "agent.coordinator", "agent.commands"),
    # The chain code serves every role: it knows none of them, nor the CLI.
    "agent/chain": ("agent.device", "agent.coordinator", "agent.commands"),
    # Settlement reads the coordinator's audit; it knows neither the daemon nor the CLI nor MQTT.
    "agent/rewards": ("agent.device", "agent.commands", "agent.transport"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_lane(package: str) -> None:
    folder = ROOT / package
    assert folder.is_dir(), f"{package} is listed but does not exist"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(folder.rglob("*.py"))
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert bad == []
