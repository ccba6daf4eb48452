"""`edgeproof rewards ...`: reward settlement (settle, replay, proof) and the owner's claims (claim, status)."""

from __future__ import annotations

import argparse

from agent.commands.rewards_claim import add_claim_commands
from agent.commands.rewards_settle import add_settlement_commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "rewards",
        help="settle epochs into Merkle-committed allocations, replay them, print inclusion proofs; "
        "claim a device's rewards and show them",
        description="Rewards per epoch: the [rewards] policy shares a pool between the devices by "
        "uptime, accepted inferences and challenge pass rate; `settle` records the integer amounts "
        "and the Merkle root over (device, owner, epoch, amount, cumulative); `replay` recomputes the "
        "root from a capture; `proof` prints one device's inclusion proof. On a device, `claim` asks "
        "the running daemon to claim (it checks the coordinator's voucher before it signs) and `status` "
        "shows earned, paid, outstanding and the last receipts. See docs/rewards.md, 'Settlement' and "
        "'Claiming'.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    add_settlement_commands(commands)
    add_claim_commands(commands)
