"""`edgeproof proofs verify [FILE|-]`: check captured envelopes with public information only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from agent.commands.output import print_json, print_kv
from agent.errors import ProtocolError, SourceError
from agent.protocol.capture import CaptureVerifier
from agent.protocol.chain import format_ranges
from agent.protocol.topics import DEFAULT_PREFIX

#: Problems listed in text mode (all of them are in --json).
MAX_LISTED = 50


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "proofs",
        help="verify signed proofs and other captured envelopes",
        description="Work with signed envelopes (proofs, heartbeats, challenges, ...) using public "
        "information only; see docs/protocol.md.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="proofs_command", metavar="SUBCOMMAND")
    verify = commands.add_parser(
        "verify",
        help="verify captured envelopes: signature, schema, size, chain continuity per device",
        description="Verify envelopes captured one per line (raw JSON, or `mosquitto_sub -v` output: "
        "'topic payload') using only the public keys they carry: signature, body schema, size bound, "
        "topic, and per-device hash chain (replays, gaps with the missing seq ranges, forks). "
        "Exit status 0 when everything is valid, 8 when any problem was found.",
    )
    verify.add_argument("file", nargs="?", default="-", help="capture file, or - for stdin (default)")
    verify.add_argument("--json", action="store_true", help="print the full report as JSON")
    verify.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="topic prefix of -v captures (default: %(default)s)"
    )
    verify.add_argument(
        "--coordinator",
        metavar="PUBKEY",
        help="base58 key that must sign beacon/challenge/verdict/voucher messages",
    )
    verify.set_defaults(func=run_verify)


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        with Path(path).open("rb") as handle:
            yield from handle
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: file not found") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from exc


def _short(dev: str) -> str:
    return dev if len(dev) <= 12 else f"{dev[:6]}..{dev[-4:]}"


def run_verify(args: argparse.Namespace) -> int:
    verifier = CaptureVerifier(prefix=args.prefix, coordinator=args.coordinator)
    for number, line in enumerate(_lines(args.file), start=1):
        verifier.feed(number, line)
    report = verifier.finish()
    if args.json:
        print_json(report.to_dict())
    else:
        for dev, s in sorted(report.signers.items()):
            c = s.counts
            rows = {
                "messages": c["messages"],
                "valid": c["valid"],
                "bad signature": c["bad_signature"],
                "schema errors": c["schema"],
                "oversized": c["oversized"],
                "topic mismatches": c["topic"],
                "missing seq": format_ranges(s.missing) or "-",
                "forks": c["forks"],
                "replays": c["replays"],
                "duplicates": c["duplicates"],
                "seq range": f"{s.first_seq}..{s.last_seq}" if s.first_seq is not None else "-",
                "status": "ok" if s.problems == 0 else f"{s.problems} problem(s)",
            }
            role = "/".join(sorted(s.roles)) or "unknown"
            print(f"{dev} ({role})")
            print_kv("", rows)
        listed = sorted(report.malformed + report.problems, key=lambda p: p.line)
        for problem in listed[:MAX_LISTED]:
            where = f"line {problem.line}" if problem.line else "capture"
            who = f" [{_short(problem.dev)}]" if problem.dev else ""
            print(f"{where}: {problem.reason}{who}: {problem.message}")
        if len(listed) > MAX_LISTED:
            print(f"... and {len(listed) - MAX_LISTED} more (use --json for all)")
        print(report.summary())
    return 0 if report.ok else ProtocolError.exit_code
