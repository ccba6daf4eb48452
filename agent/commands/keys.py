"""`edgeproof keys init|show|bind`: the device key (Solana CLI keypair JSON, mode 0600)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.commands.output import print_json
from agent.errors import ConfigError
from agent.identity import device_id, init_keypair, load_keypair
from agent.protocol.binding import sign_binding


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
    bind = commands.add_parser(
        "bind",
        help="sign the binding of this device to its owner's wallet",
        description="Write a binding document signed by the device key: canonical JSON "
        '{device, owner, ts, sig} (docs/protocol.md, "Device binding"). The coordinator operator '
        "passes it to `edgeproof coordinator enroll --binding FILE`, which refuses a binding that "
        "does not verify.",
    )
    bind.add_argument("--owner", required=True, help="the owner's base58 wallet address")
    bind.add_argument("--key", default="device-key.json", help="device key file (default: %(default)s)")
    bind.add_argument("--out", default="", help="write the binding here (default: stdout); never overwrites")
    bind.set_defaults(func=run_bind)


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


def run_bind(args: argparse.Namespace) -> int:
    from agent.errors import ProtocolError

    keypair = load_keypair(args.key)
    try:
        binding = sign_binding(keypair, args.owner, time.time_ns() // 1_000_000)
    except ProtocolError as exc:
        raise ConfigError(f"--owner: {exc.message}") from exc
    document = binding.document()
    if not args.out:
        sys.stdout.write(document.decode("utf-8"))
        return 0
    out = Path(args.out)
    try:
        with out.open("xb") as handle:
            handle.write(document)
    except FileExistsError as exc:
        raise ConfigError(
            f"{out} already exists; refusing to overwrite it", hint="choose another --out"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc}") from exc
    print(f"wrote {out}: device {binding.device} bound to owner {binding.owner}")
    return 0
