"""`edgeproof rewards ...`: reward settlement (settle, replay, proof)."""

from __future__ import annotations

import argparse

from agent.commands.rewards_settle import add_settlement_commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "rewards",
        help="settle epochs into Merkle-committed allocations, replay them, print inclusion proofs",
        description="Rewards per epoch: the [rewards] policy shares a pool between the devices by "
        "uptime, accepted inferences and challenge pass rate; `settle` records the integer amounts "
        "and the Merkle root over (device, owner, epoch, amount, cumulative); `replay` recomputes the "
        "root from a capture; `proof` prints one device's inclusion proof. See docs/rewards.md, "
        "'Settlement'.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    add_settlement_commands(commands)
