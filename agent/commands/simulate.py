"""`edgeproof simulate fleet|bindings|compare`: a simulated fleet on the real protocol, and its truth."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_kv
from agent.errors import ConfigError

SCRIPT_HELP = "simulation script (.toml or .json); default: the built-in script (docs/coordinator.md)"


def _script_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--script", help=SCRIPT_HELP)
    parser.add_argument("--devices", type=int, help="fleet size (overrides the script's devices)")
    parser.add_argument("--seed", type=int, help="key seed (overrides the script's seed)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "simulate",
        help="simulate a fleet of devices on the real protocol",
        description="Run N simulated devices (deterministic keys, each with its own signed hash chain) "
        "against a real broker and coordinator in compressed time: heartbeats quoting the verified "
        "beacon, proofs under the profile's bound, challenges answered on script. The ground truth "
        "is written as JSON, to compare with `edgeproof audit uptime --json`. See docs/coordinator.md.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="simulate_command", metavar="SUBCOMMAND")

    fleet = commands.add_parser(
        "fleet",
        help="run the simulated fleet for the script's epochs and write the ground truth",
        description="Connect the devices (multiplexed over --connections MQTT v5 connections), wait "
        "for the next epoch boundary, play the script slot by slot and write the ground truth per "
        "device per epoch. The devices must be enrolled first (`simulate bindings`, then "
        "`coordinator enroll --from`).",
    )
    _script_options(fleet)
    fleet.add_argument(
        "--connections", type=int, help="MQTT connections the devices share (overrides the script)"
    )
    fleet.add_argument(
        "--coordinator-key",
        required=True,
        help="the coordinator's base58 public key, or its key file: beacons and challenges must be signed by it",
    )
    fleet.add_argument("--truth", required=True, help="write the ground truth (JSON) here")
    fleet.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    fleet.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    fleet.add_argument("--prefix", default="edgeproof/v1", help="topic prefix (default edgeproof/v1)")
    fleet.add_argument(
        "--card", help="model card the devices run (default: the shipped efficientnet-lite0-int8)"
    )
    fleet.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    fleet.set_defaults(func=run_fleet)

    bindings = commands.add_parser(
        "bindings",
        help="write the simulated devices' signed bindings (JSONL) for bulk enrolment",
        description="Write one binding document per device (signed by the device key, binding it "
        "to its owner's wallet) for `edgeproof coordinator enroll --from FILE --profile P`.",
    )
    _script_options(bindings)
    bindings.add_argument("--out", required=True, help="the JSONL file to write")
    bindings.add_argument("--json", action="store_true", help="print a JSON summary")
    bindings.set_defaults(func=run_bindings)

    compare = commands.add_parser(
        "compare",
        help="compare a ground truth with audit reports (exit 1 on any difference)",
        description="Compare the truth of `simulate fleet` with `edgeproof audit uptime --epoch E "
        "--json` reports (one file per epoch, or a JSON list of reports) field by field.",
    )
    compare.add_argument("--truth", required=True, help="ground truth JSON written by `simulate fleet`")
    compare.add_argument("--audit", required=True, nargs="+", help="audit report JSON file(s)")
    compare.add_argument("--json", action="store_true", help="print the differences as JSON")
    compare.set_defaults(func=run_compare)


def load_script_args(args: argparse.Namespace) -> Any:
    from agent.simulator.script import default_script, load_script, script_from

    overrides = {
        key: getattr(args, key)
        for key in ("devices", "seed", "connections")
        if getattr(args, key, None) is not None
    }
    if args.script is None:
        return default_script(**overrides)
    script = load_script(Path(args.script))
    if not overrides:
        return script
    return script_from(
        {**script.model_dump(), **overrides}, origin=f"{args.script} with command-line overrides"
    )


def coordinator_key(value: str) -> str:
    """A base58 public key, or the key file it is read from."""
    from solders.pubkey import Pubkey

    path = Path(value)
    if path.is_file():
        from agent.identity import load_keypair

        return str(load_keypair(path, check_mode=False).pubkey())
    try:
        key = Pubkey.from_string(value)
    except ValueError:
        raise ConfigError(
            f"--coordinator-key {value!r} is neither a key file nor a base58 public key"
        ) from None
    if str(key) != value:
        raise ConfigError(f"--coordinator-key {value!r} is not in canonical base58 form")
    return value


def run_fleet(args: argparse.Namespace) -> int:
    from agent.simulator.fleet import Endpoint, FleetRun
    from agent.simulator.truth import totals

    script = load_script_args(args)
    run = FleetRun(
        script,
        coordinator=coordinator_key(args.coordinator_key),
        endpoint=Endpoint(args.host, args.port, args.prefix),
        card_path=Path(args.card) if args.card else None,
    )
    result = run.run()
    truth_path = Path(args.truth)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_path.write_text(json.dumps(result.truth, indent=1) + "\n", encoding="utf-8")
    summary = {
        "devices": script.devices,
        "connections": script.links,
        "epochs": result.truth["epochs"],
        "published": result.published,
        "unacknowledged": result.unacknowledged,
        "seconds": round(result.seconds, 3),
        "messages_per_s": round(result.messages_per_s, 1),
        "truth": str(truth_path),
        **totals(result.truth),
        "observed": result.truth["observed"],
    }
    if args.json:
        print_json(summary)
    else:
        print_kv("simulated fleet", summary)
    return 0


def run_bindings(args: argparse.Namespace) -> int:
    from agent.simulator.identities import identities, write_bindings

    script = load_script_args(args)
    fleet = identities(script.seed, script.devices, script.owners)
    count = write_bindings(Path(args.out), fleet, time.time_ns() // 1_000_000)
    summary = {"bindings": count, "out": args.out, "seed": script.seed, "owners": min(script.owners, count)}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {count} bindings to {args.out}")
    return 0


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file: {exc}") from None


def run_compare(args: argparse.Namespace) -> int:
    from agent.simulator.compare import compare

    truth = _read_json(args.truth)
    reports: list[dict[str, Any]] = []
    for path in args.audit:
        data = _read_json(path)
        reports += data if isinstance(data, list) else [data]
    problems = compare(truth, reports)
    if args.json:
        print_json({"equal": not problems, "differences": problems})
    elif problems:
        print(f"{len(problems)} difference(s) between the audit and the ground truth:")
        for line in problems:
            print(f"  {line}")
    else:
        print(
            f"the audit equals the ground truth for {len(truth['devices'])} devices, epochs {truth['epochs']}"
        )
    return 0 if not problems else 1
