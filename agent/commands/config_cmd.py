"""`edgeproof config check FILE`: validate a config file (and EDGEPROOF_* overrides)."""

from __future__ import annotations

import argparse

from agent.commands.output import print_json
from agent.config import load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("config", help="check agent config files")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="validate a config file: unknown keys, types and ranges",
        description="Validate a TOML config file with EDGEPROOF_SECTION__KEY environment overrides applied. "
        "Exits 0 when valid, 2 with file:line: key: problem otherwise.",
    )
    check.add_argument("file", help="config file (TOML)")
    check.add_argument("--json", action="store_true", help="print the effective config as JSON")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    if args.json:
        print_json({"valid": True, "file": args.file, "config": config.model_dump(mode="json")})
    else:
        print(f"{args.file}: ok")
    return 0
