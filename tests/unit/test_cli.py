"""The command line itself: every command explains itself, reports as JSON, and starts light."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.commands.infer import BACKEND_KEYS
from agent.inference.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[2]

# Commands of issue 2 that report something, and must offer --json.
REPORTING = {
    ("config", "check"),
    ("keys", "init"),
    ("keys", "show"),
    ("profile", "detect"),
    ("profile", "list"),
    ("profile", "show"),
    ("models", "quantize"),
    ("infer",),
    ("bench",),
    ("proofs", "verify"),
    ("status",),
    ("doctor",),
    ("demo",),
    ("broker", "credentials"),
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for name, sub in _subparsers(parser).items():
        yield (*path, name), parser, sub
        yield from _walk(sub, (*path, name))


def _help_of(parent: argparse.ArgumentParser, name: str) -> str | None:
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help
    return None


COMMANDS = list(_walk(build_parser()))


@pytest.mark.parametrize(("path", "parent", "parser"), COMMANDS, ids=[" ".join(p) for p, _, _ in COMMANDS])
def test_every_command_has_a_one_line_help_and_a_description(path, parent, parser):
    assert _help_of(parent, path[-1]), f"edgeproof {' '.join(path)}: no help line in the parent's --help"
    assert parser.description and len(parser.description) > 30, f"edgeproof {' '.join(path)}: no description"
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"edgeproof {' '.join(path)} {action.option_strings[0]}: no help"


def test_reporting_commands_offer_json():
    found = {path for path, _, _ in COMMANDS}
    assert found >= REPORTING
    for path, _, parser in COMMANDS:
        if path in REPORTING:
            assert any("--json" in a.option_strings for a in parser._actions), path


def test_backend_choices_follow_the_registry():
    assert tuple(sorted(BACKENDS)) == BACKEND_KEYS


def test_python_m_agent_is_the_edgeproof_command():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    from agent import __version__

    assert result.stdout == f"edgeproof {__version__}\n"


def test_keys_and_config_commands_do_not_import_the_inference_runtimes():
    code = (
        "import sys; "
        "import agent.commands.infer, agent.commands.keys, agent.commands.config_cmd, agent.commands.profile; "
        "print(sorted(m for m in ('onnxruntime', 'ai_edge_litert', 'cv2') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_setup_cfg_extras_are_the_ones_issue_2_lists():
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = {
        k: [line.strip() for line in v.strip().splitlines()]
        for k, v in config["options.extras_require"].items()
    }
    assert {"litert", "tflite", "gpu", "coordinator", "dev"} <= set(extras)
    assert any(r.startswith("ai-edge-litert") for r in extras["litert"])
    assert any(r.startswith("tflite-runtime") for r in extras["tflite"]) and "numpy<2" in extras["tflite"]
    assert any(r.startswith("onnxruntime-gpu") for r in extras["gpu"])
    assert config["options.entry_points"]["console_scripts"].strip() == "edgeproof = agent.cli:main"
    assert (ROOT / "agent" / "__main__.py").is_file()
