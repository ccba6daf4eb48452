"""`edgeproof audit uptime|device|export`: the per-epoch uptime audit, one device's verdicts, captures."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_table
from agent.errors import ConfigError

FORMATS = ("table", "json", "csv")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "audit",
        help="audit uptime per device per epoch, list a device's verdicts, export a capture",
        description="The uptime audit counts, per device per epoch, the slots with an accepted "
        "heartbeat among the slots the coordinator was up for entirely (its liveness record); other "
        "slots are excluded, neither charged nor credited. It is a pure function of the stored signed "
        "envelopes and the liveness record: `audit export` writes them to a capture and `audit uptime "
        "--capture` recomputes the report from it alone. See docs/coordinator.md, 'Uptime audit'.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")

    uptime = commands.add_parser(
        "uptime",
        help="uptime per device for one epoch (table, JSON or CSV; optional heatmap PNG)",
        description="Per device: up slots / counted slots, excluded slots, accepted heartbeats, "
        "proofs and inferences, rejections by reason, challenge outcomes and pass rate, and one "
        "character per slot (U up, D down, X not counted). With --capture FILE the report is "
        "recomputed from the capture alone (signatures re-verified, ingest replayed).",
    )
    source = uptime.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="coordinator config file (TOML): read its database")
    source.add_argument("--capture", help="a capture written by `edgeproof audit export`")
    uptime.add_argument(
        "--epoch",
        default=None,
        help="epoch number, 'current' or 'previous' (default: previous; with --capture: the capture's)",
    )
    uptime.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    uptime.add_argument("--json", action="store_true", help="same as --format json")
    uptime.add_argument("--plot", metavar="FILE.png", help="also draw the devices x slots heatmap here")
    uptime.set_defaults(func=run_uptime)

    device = commands.add_parser(
        "device",
        help="every verdict about one device: its messages and its challenges",
        description="Each message the device sent (accepted or rejected, with the reason and detail "
        "recorded at ingest) and each challenge issued to it (outcome, sketch distance, tolerance). "
        "Without --epoch: everything stored.",
    )
    device.add_argument("dev", metavar="DEV", help="the device's base58 public key")
    device.add_argument("--config", required=True, help="coordinator config file (TOML)")
    device.add_argument("--epoch", default=None, help="only this epoch: a number, 'current' or 'previous'")
    device.add_argument("--json", action="store_true", help="print JSON")
    device.set_defaults(func=run_device)

    export = commands.add_parser(
        "export",
        help="write the capture an epoch's audit can be recomputed from",
        description="JSON lines: the devices with their signed bindings, the coordinator's liveness "
        "record, its signed beacons, challenges and challenge verdicts, and every stored message "
        "(raw envelope, topic, ingest time) in commit order up to the epoch's end.",
    )
    export.add_argument("--config", required=True, help="coordinator config file (TOML)")
    export.add_argument("--epoch", required=True, help="epoch number, 'current' or 'previous'")
    export.add_argument("--out", required=True, help="capture file to write (JSON lines)")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    export.set_defaults(func=run_export)


def resolve_epoch(text: str | None, epoch_ms: int, now_ms: int, default: str = "previous") -> int:
    """An epoch number from ``N``, ``current`` or ``previous`` (relative to ``now_ms``)."""
    value = default if text is None else text.strip()
    current = now_ms // epoch_ms
    if value == "current":
        return current
    if value == "previous":
        return current - 1
    try:
        epoch = int(value)
    except ValueError:
        raise ConfigError(f"--epoch {value!r}: expected a number, 'current' or 'previous'") from None
    if epoch < 0:
        raise ConfigError(f"--epoch {epoch}: epochs are numbered from 0")
    return epoch


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _share(num: int, den: int) -> str:
    return f"{num}/{den} ({num / den:.1%})" if den else f"{num}/0 (n/a)"


def _counts(counts: dict[str, int]) -> str:
    return ";".join(f"{k}={v}" for k, v in counts.items())


def report_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [
        "dev",
        "owner",
        "profile",
        "up_slots",
        "counted_slots",
        "excluded_slots",
        "uptime",
        "heartbeats_accepted",
        "proofs_accepted",
        "inferences_accepted",
        "pass_rate",
        "rejections",
        "challenges",
        "slots",
    ]
    writer.writerow(["epoch", *columns])
    for d in data["devices"]:
        row = []
        for c in columns:
            value = d[c]
            if isinstance(value, dict):
                value = _counts(value)
            row.append("" if value is None else value)
        writer.writerow([data["epoch"], *row])
    return out.getvalue()


def short_id(dev: str) -> str:
    """A device key shortened for a table (the full key is in --format json/csv)."""
    return dev if len(dev) <= 14 else f"{dev[:8]}...{dev[-4:]}"


def print_report_table(data: dict[str, Any]) -> None:
    slots = data["epoch_ms"] // data["slot_ms"]
    title = (
        f"epoch {data['epoch']} ({data['start_ms']}..{data['end_ms']} ms, {slots} slots of "
        f"{data['slot_ms']} ms): coordinator up {data['coordinator_up_slots']}, "
        f"down {data['coordinator_down_slots']}"
    )
    rows = []
    for d in data["devices"]:
        scored = d["challenges"]
        rate = "n/a" if d["pass_rate"] is None else f"{d['pass_rate']:.0%}"
        rows.append(
            (
                short_id(d["dev"]),
                d["profile"],
                _share(d["up_slots"], d["counted_slots"]),
                d["excluded_slots"],
                d["heartbeats_accepted"],
                d["proofs_accepted"],
                d["inferences_accepted"],
                f"{rate} {_counts(scored)}".strip(),
                _counts(d["rejections"]) or "-",
                d["slots"] if slots <= 30 else "(see --plot)",
            )
        )
    print_table(
        title,
        [
            "device",
            "profile",
            "up/counted",
            "excluded",
            "heartbeats",
            "proofs",
            "inferences",
            "challenges",
            "rejections",
            "slots",
        ],
        rows,
    )


def run_uptime(args: argparse.Namespace) -> int:
    from agent.coordinator.audit import EpochReport, epoch_report, report_json

    report: EpochReport
    if args.capture:
        from agent.coordinator.audit_capture import capture_report, read_capture

        capture = read_capture(Path(args.capture))
        epoch = (
            capture.epoch if args.epoch is None else resolve_epoch(args.epoch, capture.epoch_ms, _now_ms())
        )
        report, stats = capture_report(capture, epoch)
        sys.stderr.write(
            f"replayed {stats.messages} messages from {args.capture}: {stats.verdicts_differ} judged "
            f"differently than recorded; refused {stats.devices_refused} devices, {stats.beacons_refused} "
            f"beacons, {stats.challenges_refused} challenges, {stats.verdicts_refused} verdicts\n"
        )
    else:
        from agent.coordinator.config import load_coordinator_config
        from agent.coordinator.registry import open_store

        config = load_coordinator_config(args.config)
        epoch_ms, slot_ms = config.epochs.epoch_ms, config.beacons.slot_ms
        epoch = resolve_epoch(args.epoch, epoch_ms, _now_ms())
        store = open_store(config)
        try:
            report = epoch_report(store, epoch, slot_ms=slot_ms, epoch_ms=epoch_ms)
        finally:
            store.close()
    data = report_json(report)
    if args.plot:
        from agent.coordinator.audit_plot import write_plot

        write_plot(report, Path(args.plot))
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print_json(data)
    elif fmt == "csv":
        sys.stdout.write(report_csv(data))
    else:
        print_report_table(data)
    return 0


def _print_folded(title: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """A table whose cells fold instead of being cut (reasons and details must stay readable)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def run_device(args: argparse.Namespace) -> int:
    from agent.coordinator.audit_device import device_verdicts
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import open_store

    config = load_coordinator_config(args.config)
    window = None
    if args.epoch is not None:
        epoch_ms = config.epochs.epoch_ms
        epoch = resolve_epoch(args.epoch, epoch_ms, _now_ms())
        window = (epoch * epoch_ms, (epoch + 1) * epoch_ms)
    store = open_store(config)
    try:
        found = device_verdicts(store, args.dev, window)
    finally:
        store.close()
    if args.json:
        print_json(found.as_json())
        return 0
    where = "" if window is None else f" in {window[0]}..{window[1]} ms"
    status = "registered" if found.enrolled else "NOT registered"
    _print_folded(
        f"{len(found.messages)} message(s) from {found.dev} ({status}){where}",
        ["id", "ingest_ms", "kind", "seq", "verdict", "reason", "detail"],
        [
            (
                m.id,
                m.ingest_ms,
                m.kind or "-",
                "-" if m.seq is None else m.seq,
                "accepted" if m.accepted else "rejected",
                m.reason or "-",
                m.detail or "",
            )
            for m in found.messages
        ],
    )
    _print_folded(
        f"{len(found.challenges)} challenge(s) issued to {found.dev}{where}",
        ["id", "issued_ms", "deadline_ms", "model", "outcome", "distance", "tolerance", "answer"],
        [
            (
                c.id,
                c.issued_ms,
                c.deadline_ms,
                c.model_sha256[:12],
                c.outcome or "open",
                "-" if c.distance is None else f"{c.distance:.6f}",
                "-" if c.tolerance is None else f"{c.tolerance:g}",
                "-" if c.response_id is None else c.response_id,
            )
            for c in found.challenges
        ],
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from agent.coordinator.audit_capture import export_capture
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import load_policy, open_store
    from agent.identity import load_keypair

    config = load_coordinator_config(args.config)
    epoch = resolve_epoch(args.epoch, config.epochs.epoch_ms, _now_ms())
    signer = str(load_keypair(config.coordinator.key).pubkey())
    policy = load_policy(config)
    store = open_store(config)
    try:
        stats = export_capture(
            store,
            epoch,
            Path(args.out),
            slot_ms=config.beacons.slot_ms,
            epoch_ms=config.epochs.epoch_ms,
            coordinator_key=signer,
            policy=policy,
            topic_prefix=config.mqtt.topic_prefix,
        )
    finally:
        store.close()
    if args.json:
        print_json(stats.as_json())
    else:
        print(
            f"wrote {stats.path}: epoch {stats.epoch}, {stats.messages} messages, {stats.devices} devices, "
            f"{stats.runs} runs, {stats.beacons} beacons, {stats.challenges} challenges, "
            f"{stats.verdicts} challenge verdicts"
        )
    return 0
