"""`edgeproof run` (the device daemon) and `edgeproof status` (its local state)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_kv, print_table
from agent.config import load_config
from agent.device.status import pid_alive, read_status
from agent.errors import EdgeproofError
from agent.transport.outbox import read_stats


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the device daemon (inference, proofs, heartbeats, challenges)",
        description="Run the model continuously on the configured source; every window emit a signed work "
        "proof, every heartbeat interval a heartbeat, answer challenges; everything goes through the durable "
        "outbox to MQTT. SIGTERM closes the window and flushes. Under systemd: READY and watchdog pings.",
    )
    run.add_argument("--config", default=None, help="config file (TOML); default: embedded defaults")
    run.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (demos, tests)"
    )
    run.set_defaults(func=run_run)

    status = sub.add_parser(
        "status",
        help="the daemon's local state: outbox depth, last acked seq, verdicts, active model",
        description="Read the daemon's status file and, when it is stopped, its outbox (works while it "
        "runs and after it stopped). Read-only: the outbox is opened with SQLite's mode=ro and no file is "
        "created; a locked or unreadable outbox is one error message (exit code 10, or 12 if corrupt).",
    )
    status.add_argument("--config", default=None, help="config file (TOML) naming device.state_dir")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--live",
        action="store_true",
        help="ask the running daemon over its control socket (state_dir/control.sock) instead of "
        "reading status.json; fails if it is not running",
    )
    status.set_defaults(func=run_status)


def run_run(args: argparse.Namespace) -> int:
    from agent.device.daemon import run_daemon

    return run_daemon(load_config(args.config), duration_s=args.duration)


def live_status(state_dir: Path) -> dict[str, Any]:
    """The running daemon's own status snapshot, over its control socket."""
    from agent.device.control_client import ControlClient, socket_path

    return ControlClient(socket_path(state_dir)).call("status")


def _coordinator_line(data: dict[str, Any], configured: str) -> str:
    """The daemon's own account of its pin; the config's for a status file written before it had one."""
    coordinator = data.get("coordinator")
    pubkey = coordinator.get("pubkey") if isinstance(coordinator, dict) else configured
    if not pubkey:
        return "not pinned, every coordinator message is refused (set coordinator.pubkey)"
    return f"pinned {pubkey}"


def _release_line(model: dict[str, Any]) -> str:
    """The fleet release the daemon runs and whether it is on trial (or the configured model)."""
    release = model.get("release")
    if not release:
        return "none (the configured [inference] model)"
    return f"{release} ({'on trial' if model.get('trial') else 'committed'})"


def run_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state_dir = Path(config.device.state_dir)
    data: dict[str, Any] | None = live_status(state_dir) if args.live else read_status(state_dir)
    if data is None:
        raise EdgeproofError(
            f"no status in {state_dir}: the daemon has not run with this config",
            hint="start it with: edgeproof run --config FILE (or systemctl start edgeproof)",
        )
    data["running"] = bool(data.get("running")) and pid_alive(int(data.get("pid", 0)))
    outbox_path = Path(config.outbox.path)
    if outbox_path.exists() and not data["running"]:
        # Read-only: no reserve file, no migration, nothing written (a running daemon's own
        # numbers are in its status file).
        data["outbox"] = read_stats(config.outbox).as_dict()
    if args.json:
        print_json(data)
        return 0
    chain = data.get("chain", {})
    outbox_stats = data.get("outbox", {})
    print_kv(
        f"device {data.get('device_id')}",
        {
            "running": data["running"],
            "model": f"{data['model']['id']} ({data['model']['sha256'][:12]}...)",
            "release": _release_line(data.get("model", {})),
            "provider": data.get("inference", {}).get("provider"),
            "chain seq / last acked": f"{chain.get('seq')} / {chain.get('last_acked_seq')}",
            "outbox depth / bytes": f"{outbox_stats.get('depth')} / {outbox_stats.get('bytes')}",
            "dropped": outbox_stats.get("dropped_total"),
            "connected": data.get("transport", {}).get("connected"),
            "thermal": data.get("thermal", {}).get("level"),
            "coordinator": _coordinator_line(data, config.coordinator.pubkey),
        },
    )
    verdicts = data.get("verdicts", [])
    if verdicts:
        rows = [(v["ref_kind"], v["ref_seq"], v["accepted"], v.get("reason") or "") for v in verdicts[-10:]]
        print_table("recent verdicts", ["kind", "seq", "accepted", "reason"], rows)
    manifests = data.get("manifests", {})
    if manifests:
        manifest_rows = [
            (channel, m["version"], f"{m['model_id']} {m['model_version']}", m["targeted"], m["eligible"])
            for channel, m in sorted(manifests.items())
        ]
        print_table("fleet manifests", ["channel", "version", "model", "targeted", "eligible"], manifest_rows)
    return 0
