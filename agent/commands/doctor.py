"""`edgeproof doctor`: check every part a device needs, with the real parts, and say what to fix."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.commands.output import print_json, print_table

EXIT_PROBLEMS = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check this device end to end: config, key, wallet, model, source, disk, broker, beacon, clock, RPC",
        description="Run one check per part with the real thing: validate the config, read the key, hash "
        "the model against its card and run it once on the backend the daemon would use, read a frame "
        "from the source, write to the state folder, connect to the broker with the configured TLS and "
        "credentials and read the coordinator's retained beacon in that connection (its signer against "
        "coordinator.pubkey, its slot time against this clock: the fix for an offset is NTP), read the "
        "temperature sensor, check the reward wallet and, with [rewards] rpc_url, getHealth and the reward "
        "mint on that RPC endpoint, and what the platform needs (Jetson: GPU providers and TensorRT cache; "
        "Termux: wake lock, runit service, storage). While the daemon runs, the broker is asked through "
        "the daemon's control socket instead and the beacon checks are skipped. "
        "Each check is ok, warn, fail or skip (skipped when an earlier failure makes it meaningless). "
        f"Exit status 0 when nothing failed, {EXIT_PROBLEMS} otherwise.",
    )
    doctor.add_argument("--config", default=None, help="config file (TOML); default: embedded defaults")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument(
        "--root", default="/", help="filesystem root for hardware detection and sensors (tests: a fake tree)"
    )
    doctor.add_argument(
        "--broker-timeout", type=float, default=5.0, help="seconds to wait for the broker (default 5)"
    )
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from agent.device.doctor import diagnose

    report = diagnose(args.config, root=Path(args.root), broker_timeout_s=args.broker_timeout)
    if args.json:
        print_json(report.as_dict())
    else:
        rows = [(c.name, c.status, c.detail + (f"\n→ {c.hint}" if c.hint else "")) for c in report.checks]
        verdict = "ready" if report.ok else f"{len(report.failed)} failed: {', '.join(report.failed)}"
        print_table(f"edgeproof doctor: {verdict}", ["check", "result", "detail"], rows)
    return 0 if report.ok else EXIT_PROBLEMS
