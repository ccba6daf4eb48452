"""`edgeproof fleet rollout run`, `fleet status`, `fleet halt`, `fleet resume` (docs/fleet.md, "Rollouts").

This module composes the two roles: the controller (agent/fleet, which never imports the
coordinator) and the coordinator's database (agent/coordinator/rollout_rows.py, which never
imports the fleet code), through :class:`CoordinatorRollouts`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands.output import print_json, print_table
from agent.errors import ConfigError, FleetError

if TYPE_CHECKING:
    from agent.coordinator.config import CoordinatorConfig
    from agent.coordinator.store import Store
    from agent.fleet.rollout import Member, Report, Rollout

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="the rollout controller: advance stages, halt on failures",
        description="Follow a channel's release through its stages: a stage advances (a new, signed "
        "manifest with the next stage) when its devices committed or failed or timed out; the rollout "
        "halts by itself (a signed manifest with halted: true) when the failure rate passes the abort "
        "rate. State lives in the coordinator's database. See docs/fleet.md, 'Rollouts'.",
    )
    rollout.set_defaults(group_parser=rollout)
    sub = rollout.add_subparsers(dest="fleet_rollout_command", metavar="SUBCOMMAND")
    run = sub.add_parser(
        "run",
        help="run the controller for one channel (until SIGTERM)",
        description="Follow {prefix}/dev/+/deploy, dev/+/status and the channel's manifest; a trusted "
        "manifest of a new release starts its rollout. Reports are judged like the coordinator judges "
        "messages (signature, enrolled device, replay) plus flooded, unknown_rollout and not_in_stage.",
    )
    _common(run, signing=True)
    run.add_argument(
        "--abort-failure-rate",
        type=float,
        default=None,
        help="halt above this failure rate (default: what fleet publish recorded in --state, else 0.2)",
    )
    run.add_argument(
        "--stage-timeout", default="30m", help="a device not done by then failed (default: %(default)s)"
    )
    run.add_argument(
        "--tick", type=float, default=1.0, help="seconds between decisions (default: %(default)s)"
    )
    run.add_argument(
        "--operator-keys",
        default="",
        help="other operator keys (comma-separated) whose manifests start a rollout",
    )
    run.add_argument(
        "--propose",
        default=None,
        metavar="DIR",
        help="k>1 teams: sign each next manifest (stage, halt) with --key and write it to DIR as a signing "
        "file for `fleet sign`, then `fleet publish --from`, instead of publishing it",
    )
    run.add_argument(
        "--threshold",
        type=int,
        default=2,
        help="with --propose: the signatures each signing file needs, the devices' operator_threshold "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--exit-when-settled", action="store_true", help="exit once the rollout is halted or done"
    )
    run.set_defaults(func=run_rollout)

    status = commands.add_parser(
        "status",
        help="per-stage progress of rollouts: committed, failed with reasons, in flight",
        description="The newest rollout of each channel (or of --channel) from the coordinator's database.",
    )
    _common(status, signing=False)
    status.set_defaults(func=run_status)
    for name, verb in (("halt", "halt a running rollout"), ("resume", "resume a halted rollout")):
        cmd = commands.add_parser(
            name,
            help=verb + " (publishes a signed manifest)",
            description=f"{verb.capitalize()}: publish the release's manifest under a higher version "
            + ("with halted: true" if name == "halt" else "without halted; failures so far are accepted")
            + ", signed with --key, and record it in the coordinator's database.",
        )
        _common(cmd, signing=True)
        cmd.set_defaults(func=run_halt if name == "halt" else run_resume)


def _common(parser: argparse.ArgumentParser, *, signing: bool) -> None:
    parser.add_argument("--coordinator-config", required=True, help="coordinator config: [storage], [mqtt]")
    parser.add_argument("--channel", required=signing, default=None, help="manifest channel")
    if signing:
        parser.add_argument("--key", required=True, help="operator key file")
        parser.add_argument("--state", required=True, help="the operator's state file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


# --------------------------------------------------------------------------- storage adapter


class CoordinatorRollouts:
    """:class:`agent.fleet.rollout_run.RolloutStorage` on the coordinator's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ids: dict[tuple[str, str, str, str], int] = {}

    def members(self) -> list[Member]:
        from agent.fleet.rollout import Member

        return [Member(d.id, d.profile, d.tags) for d in self.store.devices()]

    def all(self, channel: str | None = None) -> list[Rollout]:
        from agent.coordinator import rollout_rows

        return [self._rollout(row) for row in rollout_rows.rollouts(self.store, channel)]

    def load(self, channel: str) -> Rollout | None:
        found = self.all(channel)
        return found[0] if found else None

    def save(self, rollout: Rollout) -> None:
        from agent.coordinator import rollout_rows
        from agent.protocol.messages import body_to_dict

        m = rollout.manifest
        rid = rollout_rows.save_rollout(
            self.store,
            rollout_rows.RolloutRow(
                id=None,
                channel=m.channel,
                model_id=m.model_id,
                model_version=m.model_version,
                model_sha256=m.model_sha256,
                manifest_version=m.version,
                stage=m.stage,
                state=rollout.state,
                halt_reason=rollout.halt_reason,
                abort_failure_rate=rollout.abort_failure_rate,
                stage_timeout_ms=rollout.stage_timeout_ms,
                stage_started=rollout.stage_started_ms,
                started_ms=rollout.started_ms,
                resumed_ms=rollout.resumed_ms,
                updated_ms=time.time_ns() // 1_000_000,
                manifest=json.dumps(body_to_dict(m), sort_keys=True),
            ),
        )
        self._ids[_key(rollout)] = rid

    def _id(self, rollout: Rollout) -> int:
        key = _key(rollout)
        if key not in self._ids:
            self.all(rollout.channel)
        return self._ids[key]

    def reports(self, rollout: Rollout) -> dict[str, Report]:
        from agent.coordinator import rollout_rows
        from agent.fleet.rollout import Report

        return {
            r.dev: Report(r.state, r.reason, r.at_ms, r.seq)
            for r in rollout_rows.reports(self.store, self._id(rollout))
        }

    def put_reports(self, rollout: Rollout, reports: Mapping[str, Report]) -> None:
        from agent.coordinator import rollout_rows

        rows = [rollout_rows.ReportRow(dev, r.state, r.reason, r.seq, r.at_ms) for dev, r in reports.items()]
        rollout_rows.put_reports(self.store, self._id(rollout), rows)

    def highest_seqs(self) -> dict[str, int]:
        from agent.coordinator import rollout_rows

        return rollout_rows.highest_seqs(self.store)

    def presence(self) -> dict[str, tuple[bool, int]]:
        from agent.coordinator import rollout_rows

        return rollout_rows.presence(self.store)

    def put_presence(self, rows: Mapping[str, tuple[bool, int]]) -> None:
        from agent.coordinator import rollout_rows

        rollout_rows.put_presence(self.store, rows)

    def add_refusals(self, counts: Mapping[str, int]) -> None:
        from agent.coordinator import rollout_rows

        rollout_rows.add_refusals(self.store, counts)

    def refusals(self) -> dict[str, int]:
        from agent.coordinator import rollout_rows

        return rollout_rows.refusals(self.store)

    def _rollout(self, row: Any) -> Rollout:
        from agent.fleet.rollout import Rollout
        from agent.protocol.envelope import validate_body
        from agent.protocol.messages import Manifest

        manifest = validate_body("manifest", json.loads(row.manifest))
        assert isinstance(manifest, Manifest)
        rollout = Rollout(
            manifest=manifest,
            state=row.state,
            abort_failure_rate=row.abort_failure_rate,
            stage_timeout_ms=row.stage_timeout_ms,
            stage_started_ms=row.stage_started,
            started_ms=row.started_ms,
            resumed_ms=row.resumed_ms,
            halt_reason=row.halt_reason,
        )
        self._ids[_key(rollout)] = row.id
        return rollout


def _key(rollout: Rollout) -> tuple[str, str, str, str]:
    r = rollout.release
    return (r.channel, r.model_id, r.model_version, r.model_sha256)


def _config(args: argparse.Namespace) -> CoordinatorConfig:
    from agent.coordinator.config import load_coordinator_config

    return load_coordinator_config(args.coordinator_config)


def _open(config: CoordinatorConfig) -> Store:
    from agent.coordinator.store import Store

    s = config.storage
    return Store.open(
        database_url=s.database_url, sqlite_path=s.sqlite_path, synchronous=s.sqlite_synchronous
    )


# --------------------------------------------------------------------------- commands


def run_rollout(args: argparse.Namespace) -> int:
    from agent.fleet.keys import load_operator_key
    from agent.fleet.mqtt_publish import BrokerSession
    from agent.fleet.release import parse_duration_ms
    from agent.fleet.rollout_run import ControllerSettings, RolloutController
    from agent.fleet.rollout_sign import controller_lock
    from agent.fleet.state import load_state
    from agent.protocol.topics import Topics

    config = _config(args)
    keypair = load_operator_key(args.key)
    operator = str(keypair.pubkey())
    rate = args.abort_failure_rate
    load_state(Path(args.state), operator)  # it must be this key's (or not exist yet)
    if rate is not None and not 0.0 < rate <= 1.0:
        raise ConfigError(f"--abort-failure-rate {rate} must be in (0, 1]")
    if args.tick <= 0:
        raise ConfigError(f"--tick {args.tick} must be positive")
    if args.propose:
        from agent.fleet.signing import check_threshold

        check_threshold(args.threshold)
    others = frozenset(k.strip() for k in args.operator_keys.split(",") if k.strip())
    settings = ControllerSettings(
        channel=args.channel,
        key=keypair,
        state=Path(args.state),
        operators=others | {operator},
        abort_failure_rate=rate,
        stage_timeout_ms=parse_duration_ms(args.stage_timeout),
        tick_s=args.tick,
        propose=Path(args.propose) if args.propose else None,
        threshold=args.threshold,
    )
    store = _open(config)
    storage = CoordinatorRollouts(store)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.process_time()
    with controller_lock(settings.state), BrokerSession(config.mqtt) as broker:
        controller = RolloutController(storage, broker, Topics(config.mqtt.topic_prefix), settings)
        if args.exit_when_settled:
            watcher = threading.Thread(target=_watch_settled, args=(config, args.channel, stop), daemon=True)
            watcher.start()
        controller.subscribe()
        if args.json:  # one line a supervising script can read once the subscriptions hold
            print(json.dumps({"controller": "running", "channel": args.channel}), flush=True)
        else:
            print(f"rollout controller running on channel {args.channel}", flush=True)
        controller.run(stop)
    result = {
        "channel": args.channel,
        "refusals": dict(
            sorted((k, v) for k, v in controller.inbox.counters.items() if not k.endswith("_taken"))
        ),
        "taken": {k: v for k, v in controller.inbox.counters.items() if k.endswith("_taken")},
        "decisions": [{"action": d.action, "why": d.why, "at_ms": at} for at, d in controller.decisions],
        "cpu_s": round(time.process_time() - started, 3),
    }
    log.info("rollout_controller_stopped", extra=result)
    if args.json:
        print_json(result)
    else:
        for d in result["decisions"]:
            print(f"{d['action']}: {d['why']}")
        print(f"refused: {result['refusals'] or 'none'}; cpu {result['cpu_s']} s")
    store.close()
    return 0


def _watch_settled(config: CoordinatorConfig, channel: str, stop: threading.Event) -> None:
    # Its own connection: the controller's store is used from its thread only.
    watcher = CoordinatorRollouts(_open(config))
    while not stop.wait(0.5):
        rollout = watcher.load(channel)
        if rollout is not None and rollout.state in ("halted", "done"):
            stop.set()
    watcher.store.close()


def status_report(storage: CoordinatorRollouts, channel: str | None, now_ms: int) -> dict[str, Any]:
    from agent.fleet import rollout as plan

    members = storage.members()
    offline = {dev for dev, (online, _) in storage.presence().items() if not online}
    newest: dict[str, Rollout] = {}
    for r in storage.all(channel):
        newest.setdefault(r.channel, r)
    out = []
    for r in sorted(newest.values(), key=lambda x: x.channel):
        stages = plan.tally(r, members, storage.reports(r), now_ms=now_ms, offline=offline)
        decision = plan.decide(r, stages)
        m = r.manifest
        out.append(
            {
                "channel": r.channel,
                "model_id": m.model_id,
                "model_version": m.model_version,
                "model_sha256": m.model_sha256,
                "manifest_version": m.version,
                "stage": m.stage,
                "stages_percent": [bp / 100 for bp in m.stages],
                "state": r.state,
                "halt_reason": r.halt_reason,
                "abort_failure_rate": r.abort_failure_rate,
                "failure_rate": round(decision.failure_rate, 4),
                "stages": [s.as_json() for s in stages],
            }
        )
    if channel is not None and not out:
        raise FleetError(
            f"no rollout is recorded for channel {channel!r}",
            reason="no_rollout",
            hint="fleet rollout run records one when it sees the channel's manifest",
        )
    return {"rollouts": out, "refusals": storage.refusals()}


def run_status(args: argparse.Namespace) -> int:
    from agent.coordinator.read_store import open_read_store

    store = open_read_store(_config(args).storage)
    try:
        report = status_report(CoordinatorRollouts(store), args.channel, time.time_ns() // 1_000_000)
    finally:
        store.close()
    if args.json:
        print_json(report)
        return 0
    if not report["rollouts"]:
        print("no rollouts recorded")
    for r in report["rollouts"]:
        halt = f" ({r['halt_reason']})" if r["halt_reason"] else ""
        print(
            f"{r['channel']}: {r['model_id']} {r['model_version']} manifest v{r['manifest_version']}, "
            f"stage {r['stage']} of {len(r['stages_percent'])}, {r['state']}{halt}; "
            f"failure rate {r['failure_rate']:.1%} (abort above {r['abort_failure_rate']:.1%})"
        )
        rows = [
            (
                s["stage"],
                f"{s['percent']:g}%",
                s["devices"],
                s["committed"],
                s["failed"],
                ", ".join(f"{k} {v}" for k, v in s["failed_reasons"].items()) or "-",
                s["in_flight"],
                s["waiting"],
                s["offline"],
            )
            for s in r["stages"]
        ]
        print_table(
            "stages",
            (
                "stage",
                "up to",
                "devices",
                "committed",
                "failed",
                "reasons",
                "in flight",
                "waiting",
                "offline",
            ),
            rows,
        )
    if report["refusals"]:
        print("refused reports: " + ", ".join(f"{k} {v}" for k, v in report["refusals"].items()))
    return 0


def _flip(args: argparse.Namespace, *, halt: bool) -> int:
    from agent.fleet import rollout as plan
    from agent.fleet.keys import load_operator_key
    from agent.fleet.mqtt_publish import BrokerSession
    from agent.fleet.rollout_sign import publish_next
    from agent.protocol.topics import Topics

    config = _config(args)
    keypair = load_operator_key(args.key)
    store = _open(config)
    try:
        storage = CoordinatorRollouts(store)
        rollout = storage.load(args.channel)
        if rollout is None:
            raise FleetError(f"no rollout is recorded for channel {args.channel!r}", reason="no_rollout")
        if halt and rollout.state != "running":
            raise FleetError(
                f"the rollout on {args.channel!r} is {rollout.state} already", reason="already_halted"
            )
        if not halt and rollout.state != "halted":
            raise FleetError(
                f"the rollout on {args.channel!r} is {rollout.state}, not halted", reason="not_halted"
            )
        now = time.time_ns() // 1_000_000
        with BrokerSession(config.mqtt) as broker:
            manifest = publish_next(
                broker,
                Topics(config.mqtt.topic_prefix),
                Path(args.state),
                keypair,
                rollout.manifest,
                halted=halt,
                now_ms=now,
                abort_failure_rate=rollout.abort_failure_rate,
            )
        storage.save(
            plan.halted(rollout, manifest, "operator") if halt else plan.resumed(rollout, manifest, now)
        )
    finally:
        store.close()
    result = {"channel": args.channel, "version": manifest.version, "stage": manifest.stage, "halted": halt}
    if args.json:
        print_json(result)
    else:
        verb = "halted" if halt else "resumed"
        print(f"{verb} the rollout on {args.channel}: manifest v{manifest.version}, stage {manifest.stage}")
    return 0


def run_halt(args: argparse.Namespace) -> int:
    return _flip(args, halt=True)


def run_resume(args: argparse.Namespace) -> int:
    return _flip(args, halt=False)
