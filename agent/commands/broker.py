"""`edgeproof broker credentials DEV`: a device's broker login, checked against the shipped ACL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.commands.output import print_json, print_kv


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "broker",
        help="broker operator tooling: a device's Mosquitto password entry and client certificate",
        description="Tools for the operator of the Mosquitto broker (deploy/mosquitto, docs/operations.md).",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="broker_command", metavar="SUBCOMMAND")
    creds = commands.add_parser(
        "credentials",
        help="write a device's password entry (mosquitto_passwd format) and check the ACL covers it",
        description="Check that the ACL grants the device DEV exactly its topics (write its outbound "
        "channels, read its challenge/verdict/voucher, the beacon and the fleet manifests; nothing of "
        "another device, never write on its own inbound channels), then write DEV's entry into the "
        "Mosquitto password file in the $7$ PBKDF2-SHA512 form mosquitto_passwd writes, replacing an "
        "existing entry of DEV. The device's password (generated, or read from stdin with "
        "--password-stdin) goes to a 0600 file to copy to the device as [mqtt] password_file. With --ca "
        "DIR, also issue a client certificate CN=DEV from the CA in DIR (created, key 0600, when DIR has "
        "none). Send SIGHUP to Mosquitto afterwards to reload the password file. Exit status 19 when "
        "refused (the reason is named).",
    )
    creds.add_argument("dev", metavar="DEV", help="the device id (base58 public key; the broker user name)")
    creds.add_argument(
        "--password-file",
        default="/etc/mosquitto/edgeproof/passwd",
        help="the broker's password file to update (default /etc/mosquitto/edgeproof/passwd)",
    )
    creds.add_argument(
        "--secret-out",
        default=None,
        help="where to write the device's plaintext password, mode 0600 (default: DEV.password next to "
        "the password file)",
    )
    creds.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead of generating one"
    )
    creds.add_argument(
        "--acl",
        default=None,
        help="the broker's acl_file to check (default: the shipped deploy/mosquitto/acl)",
    )
    creds.add_argument(
        "--topic-prefix", default="edgeproof/v1", help="[mqtt] topic_prefix (default edgeproof/v1)"
    )
    creds.add_argument(
        "--ca", default=None, metavar="DIR", help="issue a client certificate from the CA in DIR"
    )
    creds.add_argument(
        "--days", type=int, default=825, help="client certificate validity in days (default 825)"
    )
    creds.add_argument("--json", action="store_true", help="print what was written as JSON")
    creds.set_defaults(func=run_credentials)


def run_credentials(args: argparse.Namespace) -> int:
    from agent.broker.credentials import issue_credentials

    password = None
    if args.password_stdin:
        password = sys.stdin.read(4096).removesuffix("\n").removesuffix("\r")
    issued = issue_credentials(
        args.dev,
        password_file=Path(args.password_file),
        secret_file=Path(args.secret_out) if args.secret_out else None,
        acl=Path(args.acl) if args.acl else None,
        prefix=args.topic_prefix,
        password=password,
        ca=Path(args.ca) if args.ca else None,
        days=args.days,
    )
    data = issued.as_dict()
    if args.json:
        print_json(data)
    else:
        flat = {k: v for k, v in data.items() if k != "certificate"}
        flat.update({f"certificate.{k}": v for k, v in data.get("certificate", {}).items()})
        print_kv(f"broker credentials for {issued.dev}", flat)
    return 0
