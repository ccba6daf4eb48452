"""`edgeproof rewards claim|status`: the device owner's commands (the daemon does the work).

``claim`` asks the running daemon over its control socket (the daemon is the one writer of the
device chain: it sends the chained claim, checks the voucher, signs, submits and confirms);
``status`` shows earned, paid, outstanding and the last receipts, from the daemon or, when it is
not running, from its state file (read-only), and says which.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_kv, print_table

#: How often ``claim --wait`` asks the daemon about the claim.
POLL_S = 0.5


def add_claim_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    claim = commands.add_parser(
        "claim",
        help="claim this device's rewards: the daemon sends the claim, checks the voucher, signs and submits",
        description="Asks the running daemon (state_dir/control.sock) to claim: it sends a chained claim "
        "with a fresh claim id (or reports the claim still outstanding), then checks the coordinator's "
        "voucher before signing (program ids, mint, decimals, destination = the ATA of device.owner_wallet, "
        "amount within its own record, no extra instruction or writable account), submits it and "
        "confirms it on chain. With --wait it follows the claim (and the fresh claim made when a "
        "voucher's blockhash expired) until it is final: exit 0 when confirmed, 21 when refused, "
        "rejected, failed or still pending. See docs/rewards.md, 'Claiming'.",
    )
    claim.add_argument("--config", default=None, help="config file (TOML) naming device.state_dir")
    claim.add_argument("--amount", type=int, default=None, help="base units to claim (default: everything)")
    claim.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="follow the claim for up to S seconds"
    )
    claim.add_argument("--json", action="store_true", help="print JSON")
    claim.set_defaults(func=run_claim)

    status = commands.add_parser(
        "status",
        help="earned, paid, outstanding and the last receipts of this device",
        description="Earned (the cumulative total last proven against a verified reward_root), paid "
        "(what this agent itself confirmed on chain), outstanding (the claim in flight) and the last "
        "receipts. From the running daemon, or from its state file when it is not running (read-only; "
        "'source' says which).",
    )
    status.add_argument("--config", default=None, help="config file (TOML) naming device.state_dir")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)


def _client(config_path: str | None) -> Any:
    from agent.config import load_config
    from agent.device.control_client import ControlClient, socket_path

    config = load_config(config_path)
    return ControlClient(socket_path(Path(config.device.state_dir)))


def _follow(client: Any, claim: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """The claim's record until it is final (following expired claims to their successor)."""
    deadline = time.monotonic() + wait_s
    history = [claim["claim_id"]]
    while True:
        record: dict[str, Any] = client.call("claim_status", claim_id=history[-1])
        if record["state"] == "expired" and record.get("next_claim"):
            history.append(record["next_claim"])
            continue
        if record["final"] or time.monotonic() >= deadline:
            record["followed"] = history
            return record
        time.sleep(POLL_S)


def _receipt_of(client: Any, claim_id: str) -> dict[str, Any] | None:
    receipts = client.call("rewards").get("receipts", [])
    mine = [r for r in receipts if r.get("claim_id") == claim_id]
    return mine[-1] if mine else None


def run_claim(args: argparse.Namespace) -> int:
    from agent.device.control_client import ControlRefusedError
    from agent.errors import ClaimError

    client = _client(args.config)
    params = {} if args.amount is None else {"amount": args.amount}
    try:
        record = client.call("claim", **params)
    except ControlRefusedError as exc:
        raise ClaimError(exc.message, reason=exc.reason) from None
    if args.wait > 0:
        record = {**_follow(client, record, args.wait), "new": record["new"]}
        record["receipt"] = _receipt_of(client, record["claim_id"])
    if args.json:
        print_json(record)
    else:
        print_kv(
            "claim",
            {
                "claim id": record["claim_id"],
                "state": record["state"],
                "new": record["new"],
                "amount": record.get("amount"),
                "signature": record.get("signature"),
                "slot": record.get("slot"),
                "reason": record.get("reason"),
            },
        )
    if args.wait <= 0 or record["state"] == "confirmed":
        return 0
    if record["state"] in ("sent", "signed", "submitted"):
        raise ClaimError(
            f"claim {record['claim_id']} is still {record['state']} after {args.wait:g} s",
            reason="claim_pending",
            hint="see it later with: edgeproof rewards status",
        )
    reason = record.get("reason") or record["state"]
    raise ClaimError(f"claim {record['claim_id']} ended {record['state']}", reason=reason)


def run_status(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.device.claim_book import read_summary
    from agent.device.control_client import ControlClient, DaemonNotRunningError, socket_path

    config = load_config(args.config)
    try:
        data: dict[str, Any] = ControlClient(socket_path(Path(config.device.state_dir))).call("rewards")
        data["source"] = "daemon"
    except DaemonNotRunningError:
        data = read_summary(Path(config.outbox.path))
        data["source"] = "state file (the daemon is not running)"
    if args.json:
        print_json(data)
        return 0
    root = data.get("root") or {}
    print_kv(
        "rewards",
        {
            "source": data["source"],
            "newest reward root": f"epoch {root['epoch']} {root['root'][:16]}..." if root else "none yet",
            "earned (proven)": data.get("earned"),
            "paid (confirmed by this agent)": data.get("paid"),
            "outstanding": data.get("outstanding"),
            "claimable": data.get("claimable"),
        },
    )
    claim = data.get("claim")
    if claim:
        print_kv(
            "current claim", {k: claim.get(k) for k in ("claim_id", "state", "amount", "reason", "signature")}
        )
    receipts = data.get("receipts") or []
    if receipts:
        rows = [
            (r["claim_id"][:12], r["status"], r.get("reason") or "", r.get("slot") or "") for r in receipts
        ]
        print_table("last receipts", ["claim", "status", "reason", "slot"], rows)
    return 0
