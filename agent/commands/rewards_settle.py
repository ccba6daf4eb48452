"""`edgeproof rewards settle|replay|proof`: settlement records, their replay and inclusion proofs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_kv, print_table


def add_settlement_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    settle = commands.add_parser(
        "settle",
        help="settle one epoch: allocate the pool, commit the Merkle root, add to cumulative totals",
        description="Computes the epoch's uptime audit from the coordinator's database, allocates the "
        "[rewards] pool, and records the amounts, each device's cumulative total and the Merkle root "
        "in one transaction. Settling an epoch again changes nothing: the stored root is reported "
        "(exit 0); a different result for a settled epoch is refused (settlement_conflict, exit 16). "
        "Epochs are settled in order; an epoch that has not ended or has unscored challenges is "
        "refused (epoch_not_final). The epoch's signed reward_root is then published retained on the "
        "broker (the same bytes on every run; never over a newer epoch) and, with --memo, in a memo "
        "on chain.",
    )
    settle.add_argument("--epoch", required=True, help="epoch number or 'previous'")
    settle.add_argument("--config", required=True, help="coordinator config file (TOML) with [rewards]")
    settle.add_argument(
        "--no-publish",
        action="store_true",
        help="do not publish the signed reward_root (retained, {prefix}/rewards/root) on the broker",
    )
    settle.add_argument(
        "--memo",
        action="store_true",
        help="also put the root in a memo on chain ([payout] rpc_url, signed by the treasury), once",
    )
    settle.add_argument("--json", action="store_true", help="print JSON (every device's allocation)")
    settle.set_defaults(func=run_settle)

    replay = commands.add_parser(
        "replay",
        help="recompute an epoch's settlement root from a capture alone",
        description="Replays a capture (`edgeproof audit export`): signatures re-verified, ingest "
        "replayed, the audit recomputed; then settles --first-epoch .. --epoch in order with the "
        "policy and prints the root, to compare with the published one.",
    )
    replay.add_argument("--epoch", required=True, type=int, help="epoch number")
    replay.add_argument("--capture", required=True, help="a capture written by `edgeproof audit export`")
    replay.add_argument(
        "--policy", help="TOML file with a [rewards] table (a coordinator config works; default: defaults)"
    )
    replay.add_argument(
        "--first-epoch", type=int, default=None, help="the first settled epoch (default: --epoch itself)"
    )
    replay.add_argument("--json", action="store_true", help="print JSON (every device's allocation)")
    replay.set_defaults(func=run_replay)

    proof = commands.add_parser(
        "proof",
        help="one device's inclusion proof in a settled epoch",
        description="The device's leaf (device, owner, epoch, amount, cumulative), its hash, the "
        "sibling hashes up to the root, and the root; check it with docs/rewards.md, 'Settlement'.",
    )
    proof.add_argument("dev", metavar="DEV", help="the device's base58 public key")
    proof.add_argument("--epoch", required=True, help="epoch number or 'previous'")
    proof.add_argument("--config", required=True, help="coordinator config file (TOML)")
    proof.add_argument("--json", action="store_true", help="print JSON")
    proof.set_defaults(func=run_proof)

    payouts = commands.add_parser(
        "payouts",
        help="the coordinator's payout desk: per device earned, paid, outstanding; the breaker",
        description="Reads the coordinator's database (read-only): for each device its cumulative "
        "earned total in the newest settled epoch, what was paid (vouchers confirmed on chain), what "
        "is outstanding (a voucher whose transaction may still land), what is claimable, its last "
        "receipts, and whether the payout breaker is open. See docs/rewards.md, 'Claims'.",
    )
    payouts.add_argument("--config", required=True, help="coordinator config file (TOML)")
    payouts.add_argument("--json", action="store_true", help="print JSON")
    payouts.set_defaults(func=run_payouts)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _epoch(text: str, epoch_ms: int) -> int:
    from agent.commands.audit import resolve_epoch

    return resolve_epoch(text, epoch_ms, _now_ms())


def _print_settlement(data: dict[str, Any], title: str) -> None:
    print_kv(
        title,
        {
            "epoch": data["epoch"],
            "root": data["root"],
            "pool": data["pool"],
            "allocated": data["total"],
            "unallocated": data["unallocated"],
            "policy": data["policy_hash"],
        },
    )
    print_table(
        "allocations",
        ["device", "owner", "amount", "cumulative", "uptime", "pass", "note"],
        [
            (
                d["dev"],
                d["owner"],
                d["amount"],
                d["cumulative"],
                f"{d['uptime_bp'] / 100:.2f}%",
                f"{d['pass_bp'] / 100:.2f}%",
                d["reason"] or ("capped" if d["capped"] else ""),
            )
            for d in data["devices"]
        ],
    )


def run_settle(args: argparse.Namespace) -> int:
    from agent.commands.rewards_root import publish_root
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import open_store
    from agent.rewards.settle import settle_epoch

    config = load_coordinator_config(args.config)
    epoch = _epoch(args.epoch, config.epochs.epoch_ms)
    store = open_store(config)
    try:
        outcome = settle_epoch(
            store,
            epoch,
            config.rewards,
            slot_ms=config.beacons.slot_ms,
            epoch_ms=config.epochs.epoch_ms,
            now_ms=_now_ms(),
        )
        published = publish_root(
            config, store, outcome.stored, mqtt=not args.no_publish, memo=args.memo, now_ms=_now_ms()
        )
    finally:
        store.close()
    data = outcome.settlement.as_json()
    data["created"] = outcome.created
    data["settled_ms"] = outcome.stored.settled_ms
    data["published"] = published
    if args.json:
        print_json(data)
    else:
        state = "settled" if outcome.created else f"already settled at {outcome.stored.settled_ms} ms"
        _print_settlement(data, f"epoch {epoch}: {state}")
        print(
            f"reward_root: mqtt {published['mqtt']}, memo {published['memo']}"
            + (f" ({published['memo_signature']})" if published["memo_signature"] else "")
        )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from agent.coordinator.audit_capture import read_capture
    from agent.rewards.policy import RewardPolicy, load_policy_file
    from agent.rewards.settle import replay_settlements

    policy = load_policy_file(args.policy) if args.policy else RewardPolicy()
    capture = read_capture(Path(args.capture))
    settlement = replay_settlements(capture, args.epoch, policy, first_epoch=args.first_epoch)
    data = settlement.as_json()
    if args.json:
        print_json(data)
    else:
        _print_settlement(data, f"epoch {args.epoch} replayed from {args.capture}")
    return 0


def run_proof(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import open_store
    from agent.errors import CorruptStateError, SettlementError
    from agent.rewards.ledger import load_settlement
    from agent.rewards.merkle import leaf_hash, proof, verify

    config = load_coordinator_config(args.config)
    epoch = _epoch(args.epoch, config.epochs.epoch_ms)
    store = open_store(config)
    try:
        stored = load_settlement(store, epoch)
    finally:
        store.close()
    if stored is None:
        raise SettlementError(f"epoch {epoch} is not settled", reason="not_settled")
    index = next((i for i, leaf in enumerate(stored.leaves) if leaf.dev == args.dev), None)
    if index is None:
        raise SettlementError(
            f"device {args.dev} has no leaf in the settlement of epoch {epoch}", reason="not_in_settlement"
        )
    leaf = stored.leaves[index]
    steps = proof(stored.leaves, index)
    root = bytes.fromhex(stored.root)
    data = {
        "epoch": epoch,
        "root": stored.root,
        "leaf": {
            "dev": leaf.dev,
            "owner": leaf.owner,
            "epoch": leaf.epoch,
            "amount": leaf.amount,
            "cumulative": leaf.cumulative,
        },
        "leaf_hash": leaf_hash(leaf).hex(),
        "index": index,
        "leaves": len(stored.leaves),
        "proof": [{"sibling": s.sibling.hex(), "side": "left" if s.left else "right"} for s in steps],
    }
    if not verify(root, leaf, steps):
        raise CorruptStateError(
            f"the stored allocations of epoch {epoch} do not hash to its stored root {stored.root}"
        )
    if args.json:
        print_json(data)
    else:
        rows: dict[str, Any] = {
            "owner": leaf.owner,
            "amount": leaf.amount,
            "cumulative": leaf.cumulative,
            "leaf": leaf_hash(leaf).hex(),
        }
        for i, step in enumerate(steps):
            rows[f"step {i} ({'left' if step.left else 'right'})"] = step.sibling.hex()
        rows["root"] = stored.root
        print_kv(f"inclusion proof of {leaf.dev} in epoch {epoch}", rows)
    return 0


def run_payouts(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.payout_summary import payout_summary
    from agent.coordinator.read_store import open_read_store

    config = load_coordinator_config(args.config)
    store = open_read_store(config.storage)
    try:
        with store.transaction():
            doc = payout_summary(store, now_ms=_now_ms())
    finally:
        store.close()
    if args.json:
        print_json(doc)
        return 0
    breaker = doc["breaker"]
    print(
        f"payout breaker OPEN until {breaker['until_ms']} ms: {breaker['detail']}"
        if breaker["open"]
        else "payout breaker closed"
    )
    print_table(
        f"{len(doc['devices'])} device(s) with rewards",
        ["device", "epoch", "earned", "paid", "outstanding", "claimable", "last receipt"],
        [
            (
                d["dev"],
                d["epoch"],
                d["earned"],
                d["paid"],
                d["outstanding"],
                d["claimable"],
                d["receipts"][0]["status"] if d["receipts"] else "",
            )
            for d in doc["devices"]
        ],
    )
    return 0
