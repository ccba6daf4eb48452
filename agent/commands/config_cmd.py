"""`edgeproof config check FILE`: validate a config file (and EDGEPROOF_* overrides)."""

from __future__ import annotations

import argparse

from agent.commands.output import print_json
from agent.config import load_config
from agent.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "config",
        help="check agent config files",
        description="Agent config files (TOML). Every key is validated once at start-up; unknown keys "
        "are refused with the file, the key path, the line and the nearest valid key.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="validate a config file: unknown keys, types and ranges",
        description="Validate a TOML config file with EDGEPROOF_SECTION__KEY environment overrides applied "
        "(e.g. EDGEPROOF_MQTT__PORT=8883). Exits 0 when valid; 2 with 'file:line: key: problem' "
        "lines otherwise.",
    )
    check.add_argument("file", help="config file (TOML)")
    check.add_argument(
        "--json",
        action="store_true",
        help='print {"valid": true, "file", "config": effective config} or '
        '{"valid": false, "file", "error", "hint"} as JSON (exit codes unchanged)',
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        if not args.json:
            raise
        print_json({"valid": False, "file": args.file, "error": exc.message, "hint": exc.hint})
        return exc.exit_code
    if args.json:
        print_json({"valid": True, "file": args.file, "config": config.model_dump(mode="json")})
    else:
        print(f"{args.file}: ok")
    return 0
