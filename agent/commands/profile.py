"""`edgeproof profile detect|list|show`: firmware profiles and hardware detection."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_kv, print_table
from agent.profiles import detect, get_profile, load_profiles


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "profile",
        help="firmware profiles: detect the hardware, list, show",
        description="Firmware profiles (firmware_profiles/*.toml): how to detect a kind of hardware, "
        "which backend, providers/delegates and threads to use, thermal limits, memory budget and "
        "plausible throughput per model class.",
    )
    group.set_defaults(group_parser=group)
    group.add_argument("--dir", type=Path, default=None, help="profiles folder (default: firmware_profiles/)")
    commands = group.add_subparsers(dest="profile_command", metavar="SUBCOMMAND")
    det = commands.add_parser(
        "detect",
        help="which profile matches this host",
        description="Match every profile's detection rules (arch, device-tree model, /etc/nv_tegra_release, "
        "Android markers) against the host, or against a fake root tree with --root.",
    )
    det.add_argument(
        "--root", type=Path, default=Path("/"), help="detect against this root (fake /proc, /sys, /etc)"
    )
    det.add_argument(
        "--json", action="store_true", help="print {profile, name, backend, threads, facts, evidence} as JSON"
    )
    det.set_defaults(func=run_detect)
    lst = commands.add_parser(
        "list",
        help="list the known profiles",
        description="List every firmware profile: id, name, backend, threads and detection priority.",
    )
    lst.add_argument("--json", action="store_true", help="print every profile in full as JSON, keyed by id")
    lst.set_defaults(func=run_list)
    show = commands.add_parser(
        "show",
        help="show one profile",
        description="Show one firmware profile in full: detection rules, inference defaults, thermal "
        "policy, memory budget and throughput bounds.",
    )
    show.add_argument("id", help="profile id, e.g. rpi4 (see 'edgeproof profile list')")
    show.add_argument("--json", action="store_true", help="print the profile as JSON")
    show.set_defaults(func=run_show)


def run_detect(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.dir)
    profile, facts = detect(profiles, args.root)
    result: dict[str, Any] = {
        "profile": profile.id,
        "name": profile.name,
        "backend": profile.inference.backend,
        "threads": profile.inference.threads,
        "facts": {
            "arch": facts.arch,
            "device_tree_model": facts.device_tree_model,
            "tegra_release": facts.tegra_release,
            "android": facts.android,
        },
        "evidence": facts.sources,
    }
    if args.json:
        print_json(result)
    else:
        print_kv(f"profile: {profile.id}", {**result["facts"], "backend": profile.inference.backend})
    return 0


def run_list(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.dir)
    if args.json:
        print_json({pid: p.model_dump(mode="json") for pid, p in profiles.items()})
    else:
        rows = [
            (p.id, p.name, p.inference.backend, p.inference.threads, p.priority) for p in profiles.values()
        ]
        print_table("firmware profiles", ["id", "name", "backend", "threads", "priority"], rows)
    return 0


def run_show(args: argparse.Namespace) -> int:
    profile = get_profile(load_profiles(args.dir), args.id)
    data = profile.model_dump(mode="json")
    if args.json:
        print_json(data)
    else:
        print_kv(profile.id, {k: v for k, v in data.items()})
    return 0
