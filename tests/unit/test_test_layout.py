"""No test module imports another test module: shared test helpers live in tests/support/.

Checked statically with ``ast`` on every ``tests/**/test_*.py``, and on the support modules
and conftests too (a helper that imports a test module is the same coupling), lazy imports
inside functions included.  A test module is reached as ``tests.integration.*`` / ``tests.unit.*``, relatively
(``from .test_x import``), or by its bare name (pytest puts each test directory on
``sys.path``, so ``import test_daemon_reliability`` would work too).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
#: Packages whose modules are tests, never helpers.
TEST_PACKAGES = ("tests.integration", "tests.unit")


def _test_module_paths() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _checked_paths() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def _is_test_module(name: str, test_stems: set[str]) -> bool:
    if any(name == pkg or name.startswith(pkg + ".") for pkg in TEST_PACKAGES):
        return True
    return name.split(".")[0] in test_stems


def cross_test_imports(source: str, filename: str, test_stems: set[str]) -> list[tuple[int, str]]:
    """``(line, imported name)`` for every import in ``source`` that reaches a test module."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _is_test_module(a.name, test_stems)]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: a sibling module, or the test directory itself
                found.append((node.lineno, "." * node.level + (node.module or "")))
                continue
            module = node.module or ""
            if _is_test_module(module, test_stems):
                found.append((node.lineno, module))
            else:  # ``from tests import unit`` / ``from tests.integration import test_x``
                found += [
                    (node.lineno, f"{module}.{a.name}")
                    for a in node.names
                    if _is_test_module(f"{module}.{a.name}", set())
                ]
    return sorted(found)


def test_no_test_module_imports_another_test_module() -> None:
    stems = {p.stem for p in _test_module_paths()}
    checked = _checked_paths()
    # The scan sees the modules that used to share helpers this way (it is not vacuous).
    assert {"test_daemon_reliability", "test_model_update", "test_quantize", "test_test_layout"} <= stems
    assert TESTS / "support" / "daemon_rig.py" in checked
    offences = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in checked
        for line, name in cross_test_imports(path.read_text(encoding="utf-8"), str(path), stems)
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
        ]
    )
    assert cross_test_imports(source, "<example>", {"test_daemon_reliability", "test_doctor"}) == [
        (3, "tests.integration.test_daemon_reliability"),
        (5, "tests.unit.test_cli"),
        (6, "tests.integration.conftest"),
        (7, "tests.integration"),
        (8, "tests.unit"),
        (9, ".test_doctor"),
        (10, "test_daemon_reliability"),
    ]
