"""No test module imports another test module: shared test helpers live in tests/support/.

Checked statically with ``ast`` on every ``tests/**/test_*.py``, and on the support modules
and conftests too (a helper that imports a test module is the same coupling), lazy imports
inside functions included.  A test module is reached through its directory's package
(``tests.integration.*``, ``tests.unit.*``, ``tests.coordinator.*``: every directory that holds
test modules), relatively (``from .test_x import``), or by its bare name (pytest puts each
test directory on ``sys.path``, so ``import test_daemon_reliability`` would work too).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


@dataclass(frozen=True)
class TestLayout:
    """What counts as a test module: the packages of the test directories and the modules' names."""

    __test__ = False  # a value, not a pytest test class

    packages: frozenset[str]  # e.g. "tests.integration"
    stems: frozenset[str]  # e.g. "test_daemon_reliability"

    def is_test_module(self, name: str) -> bool:
        if any(name == pkg or name.startswith(pkg + ".") for pkg in self.packages):
            return True
        return name.split(".")[0] in self.stems


def _test_module_paths() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _checked_paths() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def layout_of(test_modules: list[Path]) -> TestLayout:
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in test_modules if p.parent != TESTS}
    return TestLayout(frozenset(packages), frozenset(p.stem for p in test_modules))


def cross_test_imports(source: str, filename: str, layout: TestLayout) -> list[tuple[int, str]]:
    """``(line, imported name)`` for every import in ``source`` that reaches a test module."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if layout.is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: a sibling module, or the test directory itself
                found.append((node.lineno, "." * node.level + (node.module or "")))
                continue
            module = node.module or ""
            if layout.is_test_module(module):
                found.append((node.lineno, module))
            elif module:  # ``from tests import unit`` / ``from tests.integration import test_x``
                found += [
                    (node.lineno, f"{module}.{a.name}")
                    for a in node.names
                    if any(f"{module}.{a.name}" == pkg for pkg in layout.packages)
                ]
    return sorted(found)


def test_no_test_module_imports_another_test_module() -> None:
    layout = layout_of(_test_module_paths())
    checked = _checked_paths()
    # The scan sees the modules that used to share helpers this way (it is not vacuous).
    assert {
        "test_daemon_reliability",
        "test_model_update",
        "test_quantize",
        "test_test_layout",
    } <= layout.stems
    assert {"tests.integration", "tests.unit"} <= layout.packages
    assert TESTS / "support" / "daemon_rig.py" in checked
    offences = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in checked
        for line, name in cross_test_imports(path.read_text(encoding="utf-8"), str(path), layout)
    ]
    assert offences == [], (
        "test modules must not import other test modules; move shared helpers to tests/support/:\n"
        + "\n".join(offences)
    )


def test_the_check_names_every_way_of_reaching_a_test_module() -> None:
    source = "\n".join(
        [
            "import os",
            "from tests.support.daemon_rig import DaemonProcess",
            "from tests.integration.test_daemon_reliability import wait_until",
            "def lazy():",
            "    from tests.unit.test_cli import run",
            "import tests.integration.conftest",
            "from tests.integration import test_doctor",
            "from tests import unit",
            "from .test_doctor import doctor",
            "import test_daemon_reliability",
            "from agent.device import status",
            "from tests import support",
            "from tests.coordinator.test_coordinator_cli import edgeproof",
        ]
    )
    layout = TestLayout(
        frozenset({"tests.integration", "tests.unit", "tests.coordinator"}),
        frozenset({"test_daemon_reliability", "test_doctor", "test_cli"}),
    )
    assert cross_test_imports(source, "<example>", layout) == [
        (3, "tests.integration.test_daemon_reliability"),
        (5, "tests.unit.test_cli"),
        (6, "tests.integration.conftest"),
        (7, "tests.integration"),
        (8, "tests.unit"),
        (9, ".test_doctor"),
        (10, "test_daemon_reliability"),
        (13, "tests.coordinator.test_coordinator_cli"),
    ]


def test_test_module_names_are_unique_across_folders() -> None:
    """The test folders are not packages (rootdir-relative imports), so two test modules with one
    basename would collide at collection ("import file mismatch")."""
    seen: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
