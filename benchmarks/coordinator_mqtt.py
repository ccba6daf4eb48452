"""Coordinator end to end over MQTT, and two processes on one shared subscription against one.

    .venv/bin/python benchmarks/coordinator_mqtt.py [--messages N] [--rounds R] [--backends ...] [--json]

Every scenario gets a fresh Mosquitto on a free 127.0.0.1 port (no persistence, no logging,
unlimited queues) and the same pre-signed heartbeat load (``--devices`` enrolled devices,
round-robin, each on its own chain), published at QoS 1 by a separate publisher process that
connects first and starts on a "go" line, so its start-up is not timed:

* ``bare``: a plain paho subscriber process (MQTT v5, QoS 1, the coordinator's own shared
  subscription filters ``$share/coord/edgeproof/v1/dev/+/<channel>``, the same Receive Maximum)
  that only counts: the transport ceiling of this machine.  The clock stops at its last message.
* ``coordinator x1`` / ``x2`` per backend: one or two real ``edgeproof coordinator run``
  processes (the shipped defaults: batches of 200 or 50 ms, SQLite ``synchronous=FULL``; one
  signed verdict published per message; ack after commit) on a fresh database (SQLite WAL file
  or a schema of a real PostgreSQL server on a free loopback port, ``fsync=off``) holding the
  registry and the beacons the heartbeats quote.  The clock stops at the ``batch_committed`` log
  line (JSON logs, ms stamps) that brings the committed count to N: delivered and committed.
  Every message must be committed as accepted.

Figures, per scenario the median over ``--rounds`` (scenarios interleaved per round):

* e2e: coordinator x1 msg/s over bare msg/s (goal >= 0.6);
* scale: messages per CPU-second of the processes under test (psutil ``cpu_times`` of each
  coordinator process over the timed interval): x2 is ``sum_i messages_i / cpu_seconds_i``
  (the capacity if each had its own core), over x1's ``messages / cpu_seconds`` (goal >= 1.8);
  plus plain wall msg/s of both, and the bound: how many of the machine's cores the
  coordinators, the broker, the publisher and PostgreSQL used in the interval.

Internal roles (``--role publisher|counter``) are this script run as the child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator_load import (
    COORDINATOR_SEED,
    HEARTBEAT_MS,
    ROOT,
    Databases,
    Load,
    make_load,
    median_spread,
    prepare_store,
)

GOAL_E2E = 0.6
GOAL_SCALE = 1.8
GROUP = "coord"
RECEIVE_MAXIMUM = 1000


# ------------------------------------------------------------------ child roles


def _client(client_id: str, receive_maximum: int | None = None) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )


def _connect_props(receive_maximum: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = receive_maximum
    return props


def role_publisher(port: int, load_file: Path, inflight: int) -> int:
    """Connect, say ``ready``, wait for ``go`` on stdin, publish everything at QoS 1, wait for every PUBACK."""
    messages = [tuple(json.loads(line)) for line in load_file.read_text(encoding="utf-8").splitlines()]
    client = _client("bench-publisher")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    if not connected.wait(10):
        print(json.dumps({"error": "publisher could not connect"}), flush=True)
        return 1
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.time()
    infos = [client.publish(topic, payload.encode("utf-8"), qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(300)
    end = time.time()
    published = sum(1 for info in infos if info.is_published())
    print(json.dumps({"published": published, "start": start, "end": end}), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0 if published == len(messages) else 1


def role_counter(port: int, expect: int) -> int:
    """A bare QoS 1 subscriber on the coordinator's shared filters: counts, prints when it has ``expect``."""
    from agent.protocol.topics import Topics

    client = _client(f"bench-counter-{os.getpid()}")
    subscribed = threading.Event()
    done = threading.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(Topics().coordinator_subscriptions(GROUP))

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.time()
        if state["count"] == 0:
            state["first"] = now
        state["count"] += 1
        state["last"] = now
        if state["count"] >= expect:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port, 30, clean_start=True, properties=_connect_props(RECEIVE_MAXIMUM))
    client.loop_start()
    if not subscribed.wait(10):
        print(json.dumps({"error": "counter could not subscribe"}), flush=True)
        return 1
    print("ready", flush=True)
    done.wait(600)
    print(json.dumps(state), flush=True)
    sys.stdin.readline()  # stay connected until the orchestrator is done with the broker
    client.disconnect()
    client.loop_stop()
    return 0 if state["count"] >= expect else 1


# ------------------------------------------------------------------ orchestration


def _python() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


class Child:
    """A child process of this run, stopped by its own pid only."""

    def __init__(self, cmd: list[str], log: Path | None = None, cwd: Path = ROOT) -> None:
        out: Any = log.open("ab") if log is not None else subprocess.PIPE
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out if log is not None else subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if log is not None:
            out.close()

    def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline().decode()), daemon=True
        )  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"child {self.proc.args[2:4]} said nothing within {timeout} s")
        return result[0].strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            with _quiet():
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with _quiet():
                    stream.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], (OSError, ValueError))  # type: ignore[arg-type]


def start_broker(workdir: Path) -> Any:
    from agent.localnet.mosquitto import MosquittoBroker, free_port

    port = free_port()
    conf = "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_dest none",
            "max_queued_messages 0",
            "max_inflight_messages 0",
        ]
    )
    broker = MosquittoBroker(workdir, port=port, conf_text=conf)
    broker.start()
    return broker


@dataclass
class Cpu:
    """CPU seconds of named processes and of the whole machine."""

    wall: float
    procs: dict[str, float]
    machine_busy: float

    @staticmethod
    def take(procs: dict[str, Any]) -> Cpu:
        import psutil

        values: dict[str, float] = {}
        for name, proc in procs.items():
            total = 0.0
            for p in [proc, *(proc.children(recursive=True) if name == "postgresql" else [])]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    continue
            values[name] = total
        sys_times = psutil.cpu_times()
        busy = sum(sys_times) - sys_times.idle - getattr(sys_times, "iowait", 0.0)
        return Cpu(time.time(), values, busy)


@dataclass
class Sample:
    scenario: str
    rate: float
    wall_s: float
    #: messages committed by each coordinator process (from its logs) and its CPU seconds
    per_process: list[tuple[int, float]] = field(default_factory=list)
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def per_cpu_s(self) -> float | None:
        if not self.per_process:
            return None
        return sum(m / c for m, c in self.per_process if c > 0)


def write_load(load: Load, path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for topic, wire in load.messages:
            out.write(json.dumps([topic, wire.decode("utf-8")]) + "\n")


def write_config(folder: Path, port: int, database_url: str, client_id: str, max_age_slots: int) -> Path:
    from solders.keypair import Keypair

    from agent.identity import write_keypair

    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "coordinator-key.json"
    if not key.exists():
        write_keypair(key, Keypair.from_seed(COORDINATOR_SEED))
    config = folder / f"{client_id}.toml"
    config.write_text(
        f"""# written by benchmarks/coordinator_mqtt.py: the shipped defaults except where noted
[coordinator]
key = "coordinator-key.json"
shared_group = "{GROUP}"

[storage]
database_url = {json.dumps(database_url)}
sqlite_path = "coordinator.sqlite3"

[ingest]
# the pre-signed load spans several slots of device time
beacon_max_age_slots = {max_age_slots}

[challenges]
# heartbeats only: no challenge traffic in the figure
probability_per_slot = 0.0

[http]
# no dashboard: two processes would both want the default port
listen = ""

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
""",
        encoding="utf-8",
    )
    return config


def _publisher(port: int, load_file: Path, inflight: int) -> Child:
    pub = Child(
        [
            *_python(),
            "--role",
            "publisher",
            "--port",
            str(port),
            "--load",
            str(load_file),
            "--inflight",
            str(inflight),
        ]
    )
    if pub.line(60) != "ready":
        raise RuntimeError("publisher did not get ready")
    return pub


def run_bare(workdir: Path, load_file: Path, count: int, inflight: int, timeout: float) -> Sample:
    import psutil

    broker = start_broker(workdir / "broker-bare")
    counter = pub = None
    try:
        counter = Child([*_python(), "--role", "counter", "--port", str(broker.port), "--expect", str(count)])
        if counter.line(60) != "ready":
            raise RuntimeError("counter did not get ready")
        pub = _publisher(broker.port, load_file, inflight)
        procs = {
            "counter": psutil.Process(counter.proc.pid),
            "broker": psutil.Process(broker.process.pid),
            "publisher": psutil.Process(pub.proc.pid),
        }
        before = Cpu.take(procs)
        go = time.time()
        pub.send("go")
        state = json.loads(counter.line(timeout))
        after = Cpu.take(procs)
        if state["count"] < count:
            raise RuntimeError(f"the counter got {state['count']} of {count} messages")
        wall = state["last"] - go
        return Sample("bare", count / wall, wall, [], _cores(before, after, wall))
    finally:
        for child in (pub, counter):
            if child is not None:
                child.stop()
        broker.stop()


def _cores(before: Cpu, after: Cpu, wall: float) -> dict[str, float]:
    interval = after.wall - before.wall
    cores = {name: (after.procs[name] - before.procs[name]) / interval for name in after.procs}
    cores["machine"] = (after.machine_busy - before.machine_busy) / interval
    # other helpers' work on the same machine (makes every figure pessimistic)
    cores["other_processes"] = max(0.0, cores["machine"] - sum(v for k, v in cores.items() if k != "machine"))
    return {k: round(v, 3) for k, v in cores.items()}


def _committed(log: Path) -> list[tuple[int, int]]:
    """``(ts_ms, messages)`` of every ``batch_committed`` line of a JSON coordinator log."""
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"batch_committed"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        out.append((int(doc["ts"]), int(doc["messages"])))
    return out


def run_coordinators(
    workdir: Path,
    databases: Databases,
    backend: str,
    processes: int,
    load: Load,
    load_file: Path,
    inflight: int,
    timeout: float,
) -> Sample:
    import psutil

    from agent.coordinator.store import Store

    scenario = f"{backend} x{processes}"
    folder = workdir / f"{backend}-x{processes}-{time.monotonic_ns()}"
    url, _ = databases.url(backend)
    sqlite_path = folder / "coordinator.sqlite3"
    folder.mkdir(parents=True)
    store = Store.open(database_url=url, sqlite_path=sqlite_path)
    try:
        prepare_store(store, load, enrolled_ms=load.ts[0] - 1000)
    finally:
        store.close()
    broker = start_broker(folder / "broker")
    coords: list[Child] = []
    logs: list[Path] = []
    pub = None
    try:
        for i in range(processes):
            config = write_config(folder, broker.port, url, f"bench-coord-{i}", len(load.slots) + 5)
            log = folder / f"coord-{i}.log"
            logs.append(log)
            cmd = [sys.executable, "-m", "agent", "--log-format", "json", "--log-level", "info"]
            coords.append(Child([*cmd, "coordinator", "run", "--config", str(config)], log=log))
        deadline = time.monotonic() + 90
        while not all('"mqtt_subscribed"' in p.read_text(errors="replace") for p in logs):
            for child, p in zip(coords, logs, strict=True):
                if child.proc.poll() is not None:
                    raise RuntimeError(
                        f"coordinator exited {child.proc.returncode}:\n{p.read_text()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinators did not subscribe within 90 s")
            time.sleep(0.05)
        pub = _publisher(broker.port, load_file, inflight)
        procs = {f"coordinator{i}": psutil.Process(c.proc.pid) for i, c in enumerate(coords)}
        procs["broker"] = psutil.Process(broker.process.pid)
        procs["publisher"] = psutil.Process(pub.proc.pid)
        if backend == "postgresql" and databases.postgres_pid is not None:
            procs["postgresql"] = psutil.Process(databases.postgres_pid)
        before = Cpu.take(procs)
        counts = [0] * processes
        go = time.time()
        pub.send("go")
        end_deadline = time.monotonic() + timeout
        while True:
            batches = [_committed(p) for p in logs]
            counts = [sum(m for _, m in b) for b in batches]
            if sum(counts) >= len(load.messages):
                break
            if time.monotonic() > end_deadline:
                raise RuntimeError(
                    f"{scenario}: {sum(counts)} of {len(load.messages)} committed in {timeout} s"
                )
            time.sleep(0.05)
        after = Cpu.take(procs)
        stamps = sorted(ts for b in batches for ts, _ in b)
        last = stamps[-1] / 1000
        wall = last - go
        per_process = [
            (counts[i], after.procs[f"coordinator{i}"] - before.procs[f"coordinator{i}"])
            for i in range(processes)
        ]
        sample = Sample(scenario, len(load.messages) / wall, wall, per_process, _cores(before, after, wall))
    finally:
        if pub is not None:
            pub.stop()
        for child in coords:
            child.stop()
        broker.stop()
    _check_all_accepted(url, sqlite_path, len(load.messages), scenario)
    return sample


def _check_all_accepted(url: str, sqlite_path: Path, count: int, scenario: str) -> None:
    from agent.coordinator.store import Store

    store = Store.open(database_url=url, sqlite_path=sqlite_path, migrate=False)
    try:
        row = store.one("SELECT COUNT(*), SUM(accepted) FROM messages")
        reasons = store.rows(
            "SELECT reason, COUNT(*), MIN(detail) FROM messages WHERE accepted = 0 GROUP BY reason ORDER BY reason"
        )
    finally:
        store.close()
    assert row is not None
    if int(row[0]) != count or int(row[1] or 0) != count:
        raise RuntimeError(
            f"{scenario}: {row[0]} messages stored, {row[1]} accepted, expected {count} of each; "
            f"rejected by reason: {reasons}"
        )


def bound(sample: Sample, machine_cores: int) -> str:
    cores = sample.cores
    parts = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(cores.items(), key=lambda kv: -kv[1]) if k != "machine"
    )
    parts += f" (machine {cores.get('machine', 0.0):.2f} of {machine_cores})"
    busy = cores.get("machine", 0.0)
    coordinators = [v for k, v in cores.items() if k.startswith("coordinator")]
    if busy >= 0.85 * machine_cores:
        head = f"the machine's {machine_cores} cores ({busy:.2f} busy)"
    elif coordinators and max(coordinators) >= 0.85:
        head = "one coordinator process's core (the GIL: Python runs on ~1 core per process)"
    elif sample.scenario == "bare" and cores.get("broker", 0) >= 0.85:
        head = "the broker's core"
    elif sample.scenario == "bare" and max(cores.get("publisher", 0), cores.get("counter", 0)) >= 0.85:
        head = "the publisher's or counter's core (one Python process each)"
    elif sample.scenario.startswith("sqlite x2"):
        head = "waiting, not CPU: SQLite takes one writer at a time (BEGIN IMMEDIATE)"
    else:
        head = "waiting, not CPU (latency: acks after commit, the in-flight windows)"
    return f"{head}; cores used: {parts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=4000, help="heartbeats per scenario (default 4000)")
    parser.add_argument(
        "--devices", type=int, default=1000, help="enrolled devices sending them (default 1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="samples per scenario, interleaved (default 3)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql (default both)"
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the two-process scenarios")
    parser.add_argument(
        "--inflight", type=int, default=200, help="publisher's QoS 1 in-flight window (default 200)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a scenario may take")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--role", choices=("publisher", "counter"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "publisher":
        return role_publisher(args.port, Path(args.load), args.inflight)
    if args.role == "counter":
        return role_counter(args.port, args.expect)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgresql") for b in backends):
        parser.error("--backends takes sqlite and/or postgresql")
    if args.messages < 1 or args.devices < 1 or args.rounds < 1:
        parser.error("--messages, --devices and --rounds must be at least 1")

    import psutil

    machine_cores = psutil.cpu_count() or 1
    span_ms = (args.messages // args.devices) * HEARTBEAT_MS
    now = time.time_ns() // 1_000_000
    load = make_load(args.messages, args.devices, now - span_ms - 1000)
    workdir = Path(tempfile.mkdtemp(prefix="coordinator-mqtt-", dir=args.dir))
    load_file = workdir / "load.jsonl"
    write_load(load, load_file)
    databases = Databases(workdir)
    scenarios = [(b, n) for b in backends for n in ((1,) if args.no_scale else (1, 2))]
    samples: dict[str, list[Sample]] = {}
    try:
        for _ in range(args.rounds):
            samples.setdefault("bare", []).append(
                run_bare(workdir, load_file, args.messages, args.inflight, args.timeout)
            )
            for backend, n in scenarios:
                sample = run_coordinators(
                    workdir, databases, backend, n, load, load_file, args.inflight, args.timeout
                )
                samples.setdefault(sample.scenario, []).append(sample)
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(args, samples, machine_cores, load)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print_report(report)
    return 0


def _median_sample(samples: list[Sample], key: str) -> Sample:
    ordered = sorted(samples, key=lambda s: getattr(s, key) or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def build_report(
    args: argparse.Namespace, samples: dict[str, list[Sample]], cores: int, load: Load
) -> dict[str, Any]:
    scen: dict[str, Any] = {}
    for name, got in samples.items():
        entry: dict[str, Any] = {
            "wall_per_s": median_spread([s.rate for s in got]),
            "wall_s": [round(s.wall_s, 3) for s in got],
            "bound": bound(_median_sample(got, "rate"), cores),
            "cores": _median_sample(got, "rate").cores,
        }
        if got[0].per_process:
            entry["per_cpu_s"] = median_spread([s.per_cpu_s or 0.0 for s in got])
            entry["per_process"] = [[[m, round(c, 3)] for m, c in s.per_process] for s in got]
        scen[name] = entry
    bare = statistics.median(s.rate for s in samples["bare"])
    e2e: dict[str, Any] = {}
    scale: dict[str, Any] = {}
    for backend in {name.split()[0] for name in samples if name != "bare"}:
        one = scen.get(f"{backend} x1")
        two = scen.get(f"{backend} x2")
        if one is not None:
            ratio = one["wall_per_s"]["median"] / bare
            e2e[backend] = {"ratio": round(ratio, 4), "goal_met": ratio >= GOAL_E2E}
        if one is not None and two is not None:
            ratio = two["per_cpu_s"]["median"] / one["per_cpu_s"]["median"]
            scale[backend] = {
                "ratio_per_cpu_s": round(ratio, 4),
                "goal_met": ratio >= GOAL_SCALE,
                "ratio_wall": round(two["wall_per_s"]["median"] / one["wall_per_s"]["median"], 4),
            }
    return {
        "messages": args.messages,
        "devices": args.devices,
        "rounds": args.rounds,
        "machine_cores": cores,
        "mean_wire_bytes": round(load.wire_bytes / len(load.messages), 1),
        "publisher_inflight": args.inflight,
        "postgres_fsync": "off (test server)",
        "goals": {"e2e": GOAL_E2E, "scale": GOAL_SCALE},
        "scenarios": scen,
        "e2e_coordinator_over_bare": e2e,
        "scale_two_over_one": scale,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"Coordinator over MQTT, {report['messages']} pre-signed heartbeats from {report['devices']} devices "
        f"(mean {report['mean_wire_bytes']} B), {report['machine_cores']} cores, medians of {report['rounds']} rounds"
    )
    for name, entry in report["scenarios"].items():
        wall = entry["wall_per_s"]
        line = f"  {name:<14} {wall['median']:8,.0f} msg/s wall (samples {wall['samples']})"
        if "per_cpu_s" in entry:
            line += f"; {entry['per_cpu_s']['median']:,.0f} msg per coordinator CPU-s (samples {entry['per_cpu_s']['samples']})"
        print(line)
        print(f"      bound: {entry['bound']}")
    for backend, e in sorted(report["e2e_coordinator_over_bare"].items()):
        verdict = "met" if e["goal_met"] else "MISSED"
        print(
            f"  e2e ratio, {backend:<10} coordinator x1 / bare subscriber: {e['ratio']:.3f} (goal >= {GOAL_E2E}: {verdict})"
        )
    for backend, s in sorted(report["scale_two_over_one"].items()):
        verdict = "met" if s["goal_met"] else "MISSED"
        print(
            f"  scale ratio, {backend:<10} x2 / x1 per CPU-second: {s['ratio_per_cpu_s']:.3f} "
            f"(goal >= {GOAL_SCALE}: {verdict}); wall x2 / x1: {s['ratio_wall']:.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
