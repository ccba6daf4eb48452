"""`edgeproof chain localnet|bootstrap`: the local ledger and the reward mint's setup."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from agent.commands.output import print_json, print_kv


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "chain",
        help="the local Solana ledger and the reward mint's setup",
        description="Solana tooling: a local ledger (LiteSVM behind a JSON-RPC endpoint on loopback) "
        "for demos and tests, and the bootstrap of the reward mint, the coordinator treasury and its "
        "vault on any cluster. See docs/rewards.md.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="chain_command", metavar="SUBCOMMAND")

    localnet = commands.add_parser(
        "localnet",
        help="serve a local Solana ledger over JSON-RPC (LiteSVM)",
        description="Serve a local ledger over Solana's JSON-RPC on HTTP, backed by LiteSVM with the SPL "
        "token, associated-token-account and memo programs. Slots advance every --slot-ms and a "
        "blockhash expires after --validity-slots slots, as on a cluster. With --snapshot the touched "
        "accounts, the transaction record and the slot are saved atomically every few seconds and on "
        "SIGTERM/SIGINT, and reloaded at start. Prints one JSON line with the URL when it is ready.",
    )
    localnet.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    localnet.add_argument(
        "--host", default=None, help="address to bind (default 127.0.0.1; a non-loopback one only when given)"
    )
    localnet.add_argument("--snapshot", type=Path, default=None, help="snapshot file (JSON), loaded at start")
    localnet.add_argument("--slot-ms", type=int, default=400, help="milliseconds per slot (default 400)")
    localnet.add_argument(
        "--validity-slots", type=int, default=150, help="slots a blockhash stays valid (default 150)"
    )
    localnet.add_argument(
        "--snapshot-every", type=float, default=5.0, help="seconds between snapshot writes (default 5)"
    )
    localnet.set_defaults(func=run_localnet)

    bootstrap = commands.add_parser(
        "bootstrap",
        help="create or adopt the reward mint, the treasury and its vault",
        description="Create (or adopt, when the state file and the accounts exist) the reward mint, with "
        "the treasury key as mint authority, and the vault: the treasury's associated token account. "
        "Funds the treasury by airdrop where the cluster allows it and mints --supply into the vault. "
        "Running it again changes nothing and says 'adopted'.",
    )
    bootstrap.add_argument("--rpc", required=True, help="RPC URL (localnet, devnet or mainnet)")
    bootstrap.add_argument(
        "--key", required=True, type=Path, help="the treasury's keypair file (Solana JSON)"
    )
    bootstrap.add_argument("--decimals", type=int, default=6, help="decimals of a new mint (default 6)")
    bootstrap.add_argument(
        "--supply", type=int, default=1_000_000_000_000, help="base units minted into a new vault"
    )
    bootstrap.add_argument(
        "--state", type=Path, default=None, help="state file with the mint's keypair and addresses"
    )
    bootstrap.add_argument(
        "--airdrop-sol", type=int, default=10, help="SOL to airdrop when the treasury is short (default 10)"
    )
    bootstrap.add_argument("--json", action="store_true", help="print the addresses as JSON")
    bootstrap.set_defaults(func=run_bootstrap)


def run_localnet(args: argparse.Namespace) -> int:
    from agent.chain.rpc_server import LocalnetServer, open_ledger
    from agent.errors import ConfigError

    if args.slot_ms <= 0 or args.validity_slots <= 0 or args.snapshot_every <= 0:
        raise ConfigError("--slot-ms, --validity-slots and --snapshot-every must be positive")
    ledger = open_ledger(args.snapshot, slot_ms=args.slot_ms, validity_slots=args.validity_slots)
    server = LocalnetServer(
        ledger,
        host=args.host or "127.0.0.1",
        port=args.port,
        snapshot_path=args.snapshot,
        snapshot_every_s=args.snapshot_every,
        allow_non_loopback=args.host is not None,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    ready = {"rpc": server.url, "slot": ledger.clock.slot, "snapshot": str(args.snapshot or "")}
    sys.stdout.write(json.dumps(ready, sort_keys=True) + "\n")
    sys.stdout.flush()
    stop.wait()
    server.stop()
    return 0


def run_bootstrap(args: argparse.Namespace) -> int:
    from agent.chain.bootstrap import bootstrap
    from agent.chain.client import ChainClient
    from agent.identity import load_keypair

    treasury = load_keypair(args.key)
    state_path = args.state or args.key.with_name(args.key.stem + ".bootstrap.json")
    with ChainClient(args.rpc) as client:
        result = bootstrap(
            client,
            treasury,
            state_path=state_path,
            decimals=args.decimals,
            supply=args.supply,
            airdrop_lamports=args.airdrop_sol * 1_000_000_000,
        )
    if args.json:
        print_json(result.as_json())
    else:
        print_kv(f"reward mint {result.outcome}", result.as_json())
    return 0
