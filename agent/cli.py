"""The `edgeproof` command: one entry point, subcommands per role.

This is the only module that configures logging and the only place where
:class:`~agent.errors.EdgeproofError` becomes a message and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.errors import EdgeproofError

# Command modules, in the order they appear in --help.
COMMAND_MODULES = (
    "agent.commands.config_cmd",
    "agent.commands.keys",
    "agent.commands.profile",
    "agent.commands.models",
    "agent.commands.infer",
    "agent.commands.proofs",
    "agent.commands.daemon",
    "agent.commands.state",
    "agent.commands.doctor",
    "agent.commands.demo",
    "agent.commands.coordinator",
    "agent.commands.audit",
    "agent.commands.rewards",
    "agent.commands.chain",
    "agent.commands.fleet",
    "agent.commands.simulate",
    "agent.commands.broker",
)

_STD_ATTRS = set(vars(logging.makeLogRecord({})))


class OneLineFormatter(logging.Formatter):
    """`level logger message key=value ...` on one line (journald friendly)."""

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and k != "message"}
        text = f"{record.levelname.lower()} {record.name} {record.getMessage()}"
        for key, value in extras.items():
            text += f" {key}={json.dumps(value, default=str, separators=(',', ':'))}"
        if record.exc_info:
            text += " exc=" + json.dumps(self.formatException(record.exc_info))
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": int(record.created * 1000),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS and k != "message"})
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else OneLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproof",
        description="Edge-AI DePIN agent: run quantized models locally, prove the work over MQTT, "
        "claim rewards. Raw data never leaves the device.",
    )
    parser.add_argument("--version", action="version", version=f"edgeproof {__version__}")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    func = getattr(args, "func", None)
    if func is None:
        # A group without a subcommand: show that group's help.
        target = getattr(args, "group_parser", parser)
        target.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except EdgeproofError as exc:
        sys.stderr.write(f"edgeproof: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("edgeproof: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
