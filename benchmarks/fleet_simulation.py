"""1,000 simulated devices against a real coordinator: the audit must equal the ground truth exactly.

    .venv/bin/python benchmarks/fleet_simulation.py [--devices 1000] [--slot-ms 10000] [--epoch-slots 8]
        [--epochs 1] [--connections 20] [--probability 0.03] [--deadline-ms 6000] [--proof-every 1]
        [--postgres] [--keep DIR] [--json]

Real parts: Mosquitto on a free 127.0.0.1 port (logging off, a deep queue per session), one
``python -m agent coordinator run`` process (SQLite by default, a real PostgreSQL server with
``--postgres``) with compressed slots, bulk enrolment of the devices' signed bindings
(``simulate bindings`` then ``coordinator enroll --from``), and ``python -m agent simulate
fleet`` with the built-in script (outages, an overclaimed slot, honest / wrong-model / silent
challenge answers) for whole epochs.  Then every challenge of the run settles, the
coordinator stops (SIGTERM), and ``edgeproof audit uptime --epoch E --json`` of each simulated
epoch is compared with the truth field by field (uptime, slots, accepted proofs and
inferences, rejections by reason, challenge outcomes, pass rate).

Printed: equal or not (and the first differences), the simulator's publish rate, the
coordinator's ingest (messages stored over the run), the CPU seconds of both processes and of
the machine, the coordinator's batch commit times, its ingest lag per kind (the coordinator's
ingest stamp minus the envelope's ``ts``, i.e. the simulator's send time: p50, p99, max), and
its commit lag (a message's ingest stamp to its verdict's commit: the backlog) and commit rate,
and the bound hit: the first of the coordinator's commits (a commit backlog over a slot: it
commits fewer messages per second than the fleet sends; the audit still holds, as time is
stamped on arrival and misses are swept by the oldest uncommitted stamp), its ingest lag (p99 over a quarter slot: messages are
stamped late and land in later slots or after deadlines), the coordinator's CPU (>= 0.8 core
over the run), the simulator's CPU (>= 0.8 core), the simulator falling behind schedule
(skipped sends), else "none: the fleet fits".
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.coordinator.store import Store  # noqa: E402
from agent.localnet.mosquitto import MosquittoBroker, free_port  # noqa: E402
from agent.simulator.compare import compare  # noqa: E402
from agent.simulator.script import default_script  # noqa: E402
from agent.simulator.truth import totals  # noqa: E402
from tests.support.fleet_sim import FleetRig  # noqa: E402

BATCH = re.compile(r"batch_committed messages=(\d+) .* ms=([0-9.]+)")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--slot-ms", type=int, default=10_000)
    parser.add_argument("--epoch-slots", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--probability", type=float, default=0.03, help="challenges per device per slot")
    parser.add_argument("--deadline-ms", type=int, default=6000)
    parser.add_argument("--proof-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--keep", help="work in this folder and keep it (logs, truth, audit)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def _stored(rig: FleetRig, start_ms: int, end_ms: int) -> int:
    store = Store.open(database_url=rig.database_url, sqlite_path=rig.folder / "coordinator.sqlite3")
    try:
        row = store.one(
            "SELECT COUNT(*) FROM messages WHERE ingest_ms >= ? AND ingest_ms < ?", (start_ms, end_ms)
        )
        return int(row[0]) if row else 0
    finally:
        store.close()


def _ingest_lag(rig: FleetRig, start_ms: int, end_ms: int) -> dict[str, dict[str, int]]:
    """Per kind: the coordinator's ingest stamp minus the envelope's ts (the simulator's send time)."""
    store = Store.open(database_url=rig.database_url, sqlite_path=rig.folder / "coordinator.sqlite3")
    try:
        rows = store.rows(
            "SELECT kind, ingest_ms - ts FROM messages WHERE ingest_ms >= ? AND ingest_ms < ? AND ts IS NOT NULL",
            (start_ms, end_ms),
        )
    finally:
        store.close()
    lags: dict[str, list[int]] = {}
    for kind, lag in rows:
        lags.setdefault(str(kind), []).append(int(lag))
    out: dict[str, dict[str, int]] = {}
    for kind, values in sorted(lags.items()):
        values.sort()
        out[kind] = {
            "p50": values[len(values) // 2],
            "p99": values[min(len(values) - 1, len(values) * 99 // 100)],
            "max": values[-1],
        }
    return out


def _commit_lag(rig: FleetRig, start_ms: int, end_ms: int) -> dict[str, float]:
    """From a message's ingest stamp to the commit of its verdict (the coordinator's backlog)."""
    store = Store.open(database_url=rig.database_url, sqlite_path=rig.folder / "coordinator.sqlite3")
    try:
        rows = store.rows(
            "SELECT m.ingest_ms, v.created_ms FROM verdicts v JOIN messages m ON m.id = v.message_id "
            "WHERE m.ingest_ms >= ? AND m.ingest_ms < ?",
            (start_ms, end_ms),
        )
    finally:
        store.close()
    if not rows:
        return {}
    lags = sorted(int(c) - int(i) for i, c in rows)
    span_s = (max(int(c) for _, c in rows) - min(int(i) for i, _ in rows)) / 1000
    return {
        "p50_ms": lags[len(lags) // 2],
        "p99_ms": lags[min(len(lags) - 1, len(lags) * 99 // 100)],
        "max_ms": lags[-1],
        "committed_per_s": round(len(rows) / span_s, 1) if span_s > 0 else 0.0,
    }


def _batches(log: str) -> dict[str, float]:
    found = [(int(m), float(ms)) for m, ms in BATCH.findall(log)]
    if not found:
        return {}
    times = [ms for _, ms in found]
    return {
        "batches": len(found),
        "mean_messages": round(statistics.mean(m for m, _ in found), 1),
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
    }


def _bound(
    cpu: dict[str, float],
    seconds: float,
    observed: dict[str, int],
    lag: dict[str, dict[str, int]],
    commit: dict[str, float],
    args: argparse.Namespace,
    sent_per_s: float,
) -> str:
    slot_ms = args.slot_ms
    coord = cpu.get("coordinator_s", 0.0) / seconds if seconds else 0.0
    sim = cpu.get("simulator_s", 0.0) / seconds if seconds else 0.0
    skipped = sum(n for k, n in observed.items() if k.startswith("skipped"))
    worst = max((v["p99"] for v in lag.values()), default=0)
    backlog = commit.get("p99_ms", 0)
    if backlog > slot_ms:
        return (
            f"coordinator commits (p99 {backlog} ms from ingest stamp to commit, over a slot: "
            f"{commit.get('committed_per_s')} messages/s committed while {sent_per_s}/s were sent)"
        )
    if worst > slot_ms // 4:
        return (
            f"coordinator ingest lag (p99 {worst} ms from send to the coordinator's stamp, over a quarter "
            f"slot; coordinator {coord:.2f} core, simulator {sim:.2f} core)"
        )
    if coord >= 0.8:
        return f"coordinator CPU ({coord:.2f} core over the run)"
    if sim >= 0.8:
        return f"simulator CPU ({sim:.2f} core over the run)"
    if skipped:
        return f"simulator behind schedule ({skipped} sends skipped)"
    return f"none: the fleet fits (coordinator {coord:.2f} core, simulator {sim:.2f} core)"


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    broker = MosquittoBroker(
        work / "broker",
        port=port,
        conf_text=f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
        "max_queued_messages 1000000\nmax_inflight_messages 1000\n",
    )
    pg = None
    database_url = ""
    if args.postgres:
        from tests.support.postgres import PostgresServer

        pg = PostgresServer()
        pg.start()
        database_url = pg.create_schema("fleet")
    broker.start()
    rig = FleetRig(
        work / "coord",
        broker.port,
        database_url=database_url,
        slot_ms=args.slot_ms,
        epoch_slots=args.epoch_slots,
        challenge_probability=args.probability,
        deadline_ms=args.deadline_ms,
    )
    script = default_script(
        devices=args.devices,
        connections=args.connections,
        slot_ms=args.slot_ms,
        epoch_slots=args.epoch_slots,
        epochs=args.epochs,
        challenge_deadline_ms=args.deadline_ms,
        proof_every=args.proof_every,
        seed=args.seed,
        inferences=[10, 40],
    )
    script_path = work / "script.json"
    script_path.write_text(json.dumps(script.model_dump(), indent=1), encoding="utf-8")
    machine_before = psutil.cpu_times()
    try:
        rig.start_coordinator()
        started = time.monotonic()
        enrolled = rig.enroll(script_path)["enrolled"]
        enroll_s = time.monotonic() - started
        summary = rig.simulate(script_path, work / "truth.json")
        truth = json.loads((work / "truth.json").read_text(encoding="utf-8"))
        rig.wait_settled(truth, timeout=600)
        rig.stop_coordinator()
        start_ms = truth["epochs"][0] * truth["epoch_ms"]
        end_ms = (truth["epochs"][-1] + 1) * truth["epoch_ms"]
        stored = _stored(rig, start_ms, end_ms)
        lag = _ingest_lag(rig, start_ms, end_ms)
        commit = _commit_lag(rig, start_ms, end_ms)
        reports = [rig.audit(e) for e in truth["epochs"]]
        (work / "audit.json").write_text(json.dumps(reports, indent=1), encoding="utf-8")
    finally:
        rig.kill()
        broker.kill()
        if pg is not None:
            pg.cleanup()
    machine_after = psutil.cpu_times()
    busy = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system", "nice"))
    problems = compare(truth, reports)
    seconds = float(summary["seconds"])
    observed = summary["observed"]
    return {
        "equal": not problems,
        "differences": len(problems),
        "first_differences": problems[:10],
        "devices": enrolled,
        "storage": "postgresql" if args.postgres else "sqlite",
        "slot_ms": args.slot_ms,
        "epoch_slots": args.epoch_slots,
        "epochs": truth["epochs"],
        "connections": summary["connections"],
        "enroll_s": round(enroll_s, 2),
        "run_s": seconds,
        "published": summary["published"],
        "published_per_s": summary["messages_per_s"],
        "stored_in_run": stored,
        "stored_per_s": round(stored / seconds, 1) if seconds else 0.0,
        "cpu_s": {**rig.cpu, "machine_busy_s": round(busy, 1)},
        "batches": _batches(rig.coordinator.log() if rig.coordinator else ""),
        "ingest_lag_ms": lag,
        "commit_lag": commit,
        "truth": totals(truth),
        "observed": observed,
        "bound": _bound(rig.cpu, seconds, observed, lag, commit, args, summary["messages_per_s"]),
    }


def main() -> int:
    args = _parse()
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeproof-fleet-") as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        verdict = "EQUALS" if result["equal"] else f"DIFFERS in {result['differences']} field(s) from"
        print(f"audit {verdict} the ground truth: {result['devices']} devices, epochs {result['epochs']}")
        for line in result["first_differences"]:
            print(f"  {line}")
        for key in ("storage", "slot_ms", "epoch_slots", "connections", "enroll_s", "run_s", "published",
                    "published_per_s", "stored_in_run", "stored_per_s", "cpu_s", "batches", "ingest_lag_ms", "commit_lag", "truth",
                    "observed", "bound"):  # fmt: skip
            print(f"{key:16} {result[key]}")
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
