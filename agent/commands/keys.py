"""`edgeproof keys init|show`: the device key (Solana CLI keypair JSON, mode 0600)."""

from __future__ import annotations

import argparse

from agent.commands.output import print_json
from agent.identity import device_id, init_keypair, load_keypair


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "keys",
        help="create and show the device key",
        description="The device key: ed25519, stored as a Solana CLI keypair JSON file (a 64-byte array) "
        "with mode 0600. The device id is its base58 public key. A key file that group or others can "
        "read is refused.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    init = commands.add_parser(
        "init",
        help="create a new device key (never overwrites)",
        description="Write a new ed25519 device key as a Solana CLI keypair JSON file with mode 0600. "
        "An existing file is never overwritten.",
    )
    init.add_argument("--key", default="device-key.json", help="key file to create (default: %(default)s)")
    init.add_argument("--json", action="store_true", help="print {device_id, key} as JSON")
    init.set_defaults(func=run_init)
    show = commands.add_parser(
        "show",
        help="print the device id (base58 public key)",
        description="Print the device id (the key's base58 public key). The key file must have mode 0600.",
    )
    show.add_argument("--key", default="device-key.json", help="key file (default: %(default)s)")
    show.add_argument("--json", action="store_true", help='print {"device_id": ...}')
    show.set_defaults(func=run_show)


def run_init(args: argparse.Namespace) -> int:
    keypair = init_keypair(args.key)
    if args.json:
        print_json({"device_id": device_id(keypair), "key": args.key})
    else:
        print(f"created {args.key} (mode 0600)\ndevice id: {device_id(keypair)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    keypair = load_keypair(args.key)
    if args.json:
        print_json({"device_id": device_id(keypair)})
    else:
        print(device_id(keypair))
    return 0
