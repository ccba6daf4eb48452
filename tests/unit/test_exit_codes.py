"""Each exit code means one thing: no two error classes declare the same one."""

from __future__ import annotations

import importlib
import pkgutil

import agent
from agent.errors import EdgeproofError


def _all_error_classes() -> list[type[EdgeproofError]]:
    for info in pkgutil.walk_packages(agent.__path__, prefix="agent."):
        if not info.name.endswith("__main__"):  # running it would start the CLI
            importlib.import_module(info.name)
    found: list[type[EdgeproofError]] = []
    todo: list[type[EdgeproofError]] = [EdgeproofError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_no_two_error_classes_declare_the_same_exit_code() -> None:
    owners: dict[int, list[str]] = {}
    for cls in _all_error_classes():
        if "exit_code" in vars(cls):
            owners.setdefault(int(cls.exit_code), []).append(f"{cls.__module__}.{cls.__qualname__}")
    shared = {code: names for code, names in owners.items() if len(names) > 1}
    assert shared == {}, shared
    # 0 is success, 2 is argparse's usage error (and ours: a bad argument), 130 an interrupt.
    assert 0 not in owners and 130 not in owners
