"""`edgeproof state recover`: salvage an unreadable state file without forking the chain."""

from __future__ import annotations

import argparse

from agent.commands.output import print_json, print_kv
from agent.config import load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "state",
        help="the device's local state file (queue, chain head, manifest versions)",
        description="The device's state file holds the outbox (queued envelopes), the chain head and the "
        "accepted manifest versions; a second copy of the head and versions lives beside it in "
        "state_dir/state-copy.json.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="state_command", metavar="SUBCOMMAND")
    recover = commands.add_parser(
        "recover",
        help="move an unreadable state file aside and salvage what it still holds",
        description="When `edgeproof run` exits with code 12 (corrupt state): move the state file aside "
        "(timestamped, never deleted), re-queue every envelope still readable in it (each re-verified "
        "against the device key), and restore the chain head and manifest versions from the state copy "
        "and the damaged file, whichever is higher, so the next envelope continues the chain (or leaves an "
        "honest gap) instead of restarting at seq 1. Refuses while the daemon runs. A healthy file is left "
        "alone.",
    )
    recover.add_argument("--config", default=None, help="config file (TOML) naming device.state_dir")
    recover.add_argument("--json", action="store_true", help="print what was kept, lost and restored as JSON")
    recover.set_defaults(func=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    from agent.device.recover import recover_state

    result = recover_state(load_config(args.config))
    report = result.as_dict()
    if args.json:
        print_json(report)
        return 0
    if result.healthy:
        print(f"state file {result.state_file} is healthy: nothing moved, nothing to recover")
        return 0
    chain = report["restored"].get("chain", {})
    print_kv(
        f"recovered {result.state_file}",
        {
            "problem": result.problem,
            "moved aside to": ", ".join(result.moved_to),
            "kept (re-queued)": f"{report['kept_total']} {report['kept'] or ''}".strip(),
            "lost": f"{report['lost_total']} {report['lost'] or ''}".strip(),
            "read errors": result.read_errors,
            "chain head restored": f"seq {chain.get('seq')} ({str(chain.get('head'))[:16]}...)",
            "chain head found in": report["head_sources"] or "nowhere",
            "manifest versions": report["restored"].get("manifest_versions"),
            "signer seqs": report["restored"].get("signer_seqs"),
        },
    )
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0
