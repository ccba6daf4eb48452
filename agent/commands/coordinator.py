"""`edgeproof coordinator run|dashboard|enroll|migrate|devices`: the coordinator service, its dashboard and registry."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agent.commands.output import print_json, print_table
from agent.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "coordinator",
        help="run the coordinator service and manage its device registry",
        description="The coordinator verifies every message devices send (signature, schema, chain, "
        "beacon freshness, clock skew, throughput plausibility), records each as accepted or rejected "
        "with a named reason, and publishes a signed verdict to the device. It also issues beacons and "
        "challenges and scores challenge answers by reference execution. See docs/coordinator.md.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="coordinator_command", metavar="SUBCOMMAND")

    run = commands.add_parser(
        "run",
        help="run the coordinator (MQTT v5 shared subscription, ack after commit)",
        description="Subscribe to every device channel through an MQTT v5 shared subscription, judge "
        "each message, commit it in batches (SQLite or PostgreSQL), publish verdicts, and acknowledge "
        "a message to the broker only after its verdict is stored. Every slot one process publishes a "
        "signed, retained beacon and challenges active devices; answers are scored by running the same "
        "model (found by sha256 in [registry] models_dir). SIGTERM drains and exits 0.",
    )
    run.add_argument("--config", required=True, help="coordinator config file (TOML)")
    run.set_defaults(func=run_service)

    enroll = commands.add_parser(
        "enroll",
        help="register a device (or many: --from FILE.jsonl) with its owner, profile, tags and signed binding",
        description="Register DEVICE_ID (its base58 public key). The binding file is made on the "
        "device with `edgeproof keys bind` and must be signed by that device's key for that owner; "
        "a binding that does not verify is refused (exit code 8). Enrolling again replaces the owner, "
        "profile, tags and binding and keeps the device's chain. With --from FILE.jsonl (one binding "
        "document per line, each device's owner taken from its binding) every line is verified and "
        "all devices are enrolled in one transaction; a refused line names its number and nothing "
        "is stored.",
    )
    enroll.add_argument("device_id", metavar="DEVICE_ID", nargs="?", help="the device's base58 public key")
    enroll.add_argument("--owner", help="the owner's base58 wallet address (with DEVICE_ID)")
    enroll.add_argument("--profile", required=True, help="firmware profile id (e.g. rpi4)")
    enroll.add_argument("--tags", default="", help="comma-separated lower-case tags (e.g. lab,eu)")
    enroll.add_argument("--binding", help="binding file written by `edgeproof keys bind` (with DEVICE_ID)")
    enroll.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE.jsonl",
        help="bulk enrolment: one binding document per line (instead of DEVICE_ID, --owner, --binding)",
    )
    enroll.add_argument("--config", required=True, help="coordinator config file (TOML)")
    enroll.add_argument("--json", action="store_true", help="print the enrolled device as JSON")
    enroll.set_defaults(func=run_enroll)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the dashboard read-only from the database (no ingest)",
        description="Serve the coordinator dashboard (/ the page, /api/summary, /metrics with the "
        "database gauges, /healthz) from the database alone, read-only, without subscribing to the "
        "broker: useful beside several `coordinator run` processes on one PostgreSQL database. "
        "Listens on [http] listen (loopback by default) until SIGTERM or Ctrl-C.",
    )
    dashboard.add_argument("--config", required=True, help="coordinator config file (TOML)")
    dashboard.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="override [http] listen (e.g. 127.0.0.1:8481)"
    )
    dashboard.set_defaults(func=run_dashboard)

    migrate = commands.add_parser(
        "migrate",
        help="create the database, or bring its schema up to date (install.sh runs it)",
        description="Open the database of the config ([storage] database_url, else the SQLite file "
        "sqlite_path, created when missing) and apply every schema migration it lacks, in one "
        "transaction; several processes may run it at once on PostgreSQL. Running it again changes "
        "nothing. `coordinator run` does the same at start; this is for installers and upgrades.",
    )
    migrate.add_argument("--config", required=True, help="coordinator config file (TOML)")
    migrate.add_argument(
        "--sqlite-path",
        default=None,
        metavar="FILE",
        help="this SQLite file instead of [storage] sqlite_path (install.sh --root/--prefix, whose "
        "config names the installed system's path)",
    )
    migrate.add_argument("--json", action="store_true", help="print the database and versions as JSON")
    migrate.set_defaults(func=run_migrate)

    devices = commands.add_parser(
        "devices",
        help="list the registered devices",
        description="List every registered device: id, owner, profile, tags, enrolment time.",
    )
    devices.add_argument("--config", required=True, help="coordinator config file (TOML)")
    devices.add_argument("--json", action="store_true", help="print a JSON list")
    devices.set_defaults(func=run_devices)


def run_service(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import load_policy, open_store
    from agent.coordinator.service import CoordinatorService
    from agent.identity import load_keypair

    config = load_coordinator_config(args.config)
    keypair = load_keypair(config.coordinator.key)
    policy = load_policy(config)
    payouts = None
    if config.payout.rpc_url:  # the payout desk is rewards code: composed here, not imported there
        from agent.protocol.topics import Topics
        from agent.rewards.desk import open_desk

        payouts = open_desk(config.payout, config.coordinator.key, Topics(config.mqtt.topic_prefix))
    stop_rollout = None
    if config.rollout.channel:  # the rollout controller is fleet code: composed here too
        from agent.commands.fleet_rollout_embedded import start_embedded

        stop_rollout = start_embedded(config)
    store = open_store(config)
    try:
        return CoordinatorService(config, keypair, store, policy, payouts=payouts).run()
    finally:
        if stop_rollout is not None:
            stop_rollout()


def run_dashboard(args: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.http_app import start_dashboard
    from agent.coordinator.read_store import open_read_store
    from agent.errors import ConfigError

    config = load_coordinator_config(args.config)
    open_read_store(config.storage).close()  # a missing or unmigrated database fails now, not per request
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    served = start_dashboard(config, CollectorRegistry(), mode="read-only", listen=args.listen)
    if served is None:
        raise ConfigError("[http] listen is empty: nothing to serve", hint="give --listen 127.0.0.1:8480")
    server, dashboard = served
    print(f"dashboard (read-only) on {server.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        dashboard.close()
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import enroll, open_store

    if args.from_file is not None:
        return run_enroll_many(args)
    missing = [
        name
        for name, value in (
            ("DEVICE_ID", args.device_id),
            ("--owner", args.owner),
            ("--binding", args.binding),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(
            f"enroll needs {', '.join(missing)} (or --from FILE.jsonl for many devices)",
            hint="edgeproof coordinator enroll DEVICE_ID --owner WALLET --binding FILE --profile P --config FILE",
        )
    config = load_coordinator_config(args.config)
    store = open_store(config)
    try:
        record = enroll(
            store,
            config,
            device_id=args.device_id,
            owner=args.owner,
            profile=args.profile,
            tags=[t.strip() for t in args.tags.split(",") if t.strip()],
            binding_path=Path(args.binding),
            now_ms=time.time_ns() // 1_000_000,
        )
    finally:
        store.close()
    if args.json:
        print_json(record.as_json())
    else:
        print(f"enrolled {record.id} (owner {record.owner}, profile {record.profile})")
    return 0


def run_enroll_many(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import enroll_from, open_store

    extra = [
        name
        for name, value in (
            ("DEVICE_ID", args.device_id),
            ("--owner", args.owner),
            ("--binding", args.binding),
        )
        if value is not None
    ]
    if extra:
        raise ConfigError(
            f"--from takes each device, owner and binding from the file; drop {', '.join(extra)}"
        )
    config = load_coordinator_config(args.config)
    store = open_store(config)
    try:
        records = enroll_from(
            store,
            config,
            path=Path(args.from_file),
            profile=args.profile,
            tags=[t.strip() for t in args.tags.split(",") if t.strip()],
            now_ms=time.time_ns() // 1_000_000,
        )
    finally:
        store.close()
    if args.json:
        print_json({"enrolled": len(records), "devices": [r.as_json() for r in records]})
    else:
        print(f"enrolled {len(records)} devices from {args.from_file} (profile {args.profile})")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.store import Store

    config = load_coordinator_config(args.config)
    storage = config.storage
    if args.sqlite_path is not None:
        storage = storage.model_copy(update={"sqlite_path": str(Path(args.sqlite_path).resolve())})
    store = Store.open(
        database_url=storage.database_url,
        sqlite_path=storage.sqlite_path,
        synchronous=storage.sqlite_synchronous,
        migrate=False,
    )
    try:
        before = store.schema_version()
        after = store.migrate()
    finally:
        store.close()
    report = {"database": store.where, "dialect": store.dialect.name, "from": before, "to": after}
    if args.json:
        print_json(report)
    elif before == after:
        print(f"database {store.where} is at schema version {after} (unchanged)")
    else:
        print(f"database {store.where} migrated from schema version {before} to {after}")
    return 0


def run_devices(args: argparse.Namespace) -> int:
    from agent.coordinator.config import load_coordinator_config
    from agent.coordinator.registry import open_store

    config = load_coordinator_config(args.config)
    store = open_store(config)
    try:
        records = store.devices()
    finally:
        store.close()
    if args.json:
        print_json([r.as_json() for r in records])
        return 0
    print_table(
        f"{len(records)} registered device(s)",
        ["device", "owner", "profile", "tags", "enrolled_ms"],
        [(r.id, r.owner, r.profile, ",".join(r.tags), r.enrolled_ms) for r in records],
    )
    return 0
