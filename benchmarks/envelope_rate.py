"""Device send path vs raw ed25519 signing: envelopes per second, measured in one run.

    .venv/bin/python benchmarks/envelope_rate.py [--count N] [--sign-rounds R] [--json]

Stages, all over the same pre-generated bodies (2 heartbeats per work proof, as with the
default 30 s heartbeat and 60 s window; bodies are plain mappings, so the timed path
validates them like the daemon's ``Heartbeat(...)``/``Proof(...)`` construction does):

* ``raw_sign``: ``solders`` ``Keypair.sign_message`` alone over the exact signed bytes
  (``DOMAIN + canonical(envelope without sig)``) of those envelopes.  Median of
  ``--sign-rounds`` rounds, half run before and half after the full path (the spread is printed).
* ``build_sign_chain``: ``ChainSigner.prepare`` + ``commit`` in memory (validate, canonical
  encode, sign, hash, size check).
* ``outbox_commit``: ``Outbox.put`` of the pre-built wire bytes with their chain state, one
  SQLite WAL transaction each (``synchronous=FULL``, so one fsync per message): the disk bound.
* ``full_path``: what ``Daemon.emit`` does (prepare, ``MqttTransport.enqueue`` with the chain
  state, commit) with the transport publishing at QoS 1 to a real Mosquitto started on a free
  127.0.0.1 port; the clock stops when the broker has acknowledged every message (PUBACK) and
  the outbox is empty.  Its envelopes are byte-identical to the ones signed in ``raw_sign``
  (same seed, bodies and timestamps; checked).

CPU time comes from psutil: this process (all its threads, also split per thread) and the
broker process over the full-path interval, plus the machine as a whole (2 cores shared with
other work: CPU used by other processes is printed, as it makes the figures pessimistic).
The bound reported is, in order: the broker's CPU (>= 0.8 core), the drain after the last
envelope was queued (PUBACK latency), this process's CPU (>= 0.8 core: one Python process runs
Python code on about one core, the GIL), else what the producer thread waited for most (the
outbox lock and SQLite commits, i.e. fsync with ``synchronous=FULL``, against its own CPU).
The outbox lock wait is measured by wrapping ``Outbox._lock`` (benchmark instrumentation only)
and the SQLite write transactions by counting ``put``/``mark_attempt``/``ack_many`` calls.
The broker runs with logging off, no persistence and no subscriber: it only acknowledges.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solders.keypair import Keypair  # noqa: E402

from agent import __version__  # noqa: E402
from agent.errors import EdgeproofError  # noqa: E402
from agent.localnet.mosquitto import MosquittoBroker, free_port  # noqa: E402
from agent.protocol.chain import ChainSigner  # noqa: E402
from agent.protocol.envelope import Envelope, signed_bytes  # noqa: E402
from agent.protocol.topics import Topics  # noqa: E402
from agent.transport.mqtt import MqttTransport  # noqa: E402
from agent.transport.outbox import Outbox  # noqa: E402
from agent.transport.settings import MqttSettings, OutboxSettings  # noqa: E402

SEED = bytes(range(32))
CARD = ROOT / "models" / "efficientnet-lite0-int8.toml"
LABELS = ROOT / "models" / "imagenet_labels.txt"
START_MS = 1_700_000_000_000

Body = dict[str, Any]
Sync = Literal["FULL", "NORMAL"]


# ------------------------------------------------------------------ load generation (untimed)


def _health(rng: random.Random) -> Body:
    return {
        "cpu_bp": rng.randint(500, 9000),
        "mem_bp": rng.randint(2000, 6000),
        "temp_mc": rng.randint(40_000, 75_000),
        "throttled": False,
        "rate_limited": False,
    }


def make_messages(count: int, seed: int = 7) -> list[tuple[str, Body, int]]:
    """``(kind, body, ts)``: two heartbeats per proof, realistic field values and sizes."""
    rng = random.Random(seed)
    card = tomllib.loads(CARD.read_text(encoding="utf-8"))
    labels = [line.split(",")[0].strip() for line in LABELS.read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label][:1000]
    out: list[tuple[str, Body, int]] = []
    for i in range(count):
        ts = START_MS + i * 20_000
        if i % 3 == 2:
            p50 = rng.randint(6_000, 9_000)
            body: Body = {
                "window_start_ms": ts - 60_000,
                "window_end_ms": ts,
                "model_id": card["id"],
                "model_sha256": card["sha256"],
                "inferences": rng.randint(250, 300),
                "leaf_hash": "blake3",
                "input_root": rng.randbytes(32).hex(),
                "output_root": rng.randbytes(32).hex(),
                "summary": {label: rng.randint(1, 60) for label in rng.sample(labels, rng.randint(3, 12))},
                "latency_us": {"p50": p50, "p95": p50 + 1_500, "p99": p50 + 3_000},
                "health": _health(rng),
                "agent_version": __version__,
            }
            out.append(("proof", body, ts))
        else:
            body = {
                "beacon_slot": ts // 30_000,
                "beacon_nonce": rng.randbytes(32).hex(),
                "uptime_s": i * 20,
                "health": _health(rng),
            }
            out.append(("heartbeat", body, ts))
    return out


# ------------------------------------------------------------------ stages


@dataclass
class CpuSample:
    wall: float
    this: float
    this_sys: float
    broker: float
    machine_busy: float
    threads: dict[int, float]

    @staticmethod
    def take(broker: psutil.Process | None) -> CpuSample:
        proc = psutil.Process()
        own = proc.cpu_times()
        threads = {t.id: t.user_time + t.system_time for t in proc.threads()}
        sys_times = psutil.cpu_times()
        busy = sum(sys_times) - sys_times.idle - getattr(sys_times, "iowait", 0.0)
        b = broker.cpu_times() if broker is not None else None
        return CpuSample(
            wall=time.perf_counter(),
            this=own.user + own.system,
            this_sys=own.system,
            broker=(b.user + b.system) if b is not None else 0.0,
            machine_busy=busy,
            threads=threads,
        )


def chain_all(keypair: Keypair, messages: list[tuple[str, Body, int]]) -> tuple[list[Envelope], float]:
    signer = ChainSigner(keypair)
    envs: list[Envelope] = []
    start = time.perf_counter()
    for kind, body, ts in messages:
        env = signer.prepare(kind, body, ts)
        signer.commit(env)
        envs.append(env)
    return envs, time.perf_counter() - start


def sign_round(keypair: Keypair, to_sign: list[bytes]) -> float:
    sign = keypair.sign_message
    start = time.perf_counter()
    for data in to_sign:
        sign(data)
    return len(to_sign) / (time.perf_counter() - start)


def outbox_commit(workdir: Path, envs: list[Envelope], topics: Topics, synchronous: Sync) -> float:
    outbox = Outbox(OutboxSettings(path=str(workdir / "commit-only.sqlite3"), synchronous=synchronous))
    try:
        items = [(topics.for_kind(e.kind, e.dev), e.wire, e.kind, e.seq, e.hash) for e in envs]
        start = time.perf_counter()
        for topic, wire, kind, seq, digest in items:
            outbox.put(topic, wire, kind=kind, state={"seq": seq, "prev": digest})
        return len(items) / (time.perf_counter() - start)
    finally:
        outbox.close()


class TimedLock:
    """Wraps the outbox lock to measure how long the producer (main thread) waits for it.

    Benchmark-only instrumentation of ``Outbox._lock``: while the publisher thread holds the
    lock it runs its own SQLite transactions (read pending rows, record attempts, delete acked
    rows), so this is the producer waiting behind the publisher's commits.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.main = threading.main_thread().ident
        self.wait_s = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        start = time.perf_counter()
        got = bool(self.inner.acquire(blocking, timeout))
        if threading.get_ident() == self.main:
            self.wait_s += time.perf_counter() - start
        return got

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> TimedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def count_calls(outbox: Outbox, names: tuple[str, ...]) -> dict[str, int]:
    """Count calls of the outbox's public write methods (each one SQLite transaction)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(outbox, name)

        def wrapper(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(outbox, name, wrapper)
    return counts


@dataclass
class FullPath:
    rate: float
    wall_s: float
    #: producer (main thread): wall until the last envelope was queued, its own CPU, time in put
    enqueue_s: float
    producer_cpu_s: float
    put_wall_s: float
    #: producer time waiting for the outbox lock (None if the outbox has no ``_lock`` to wrap)
    lock_wait_s: float | None
    #: SQLite write transactions per method over the run (put, mark_attempt, ack_many)
    commits: dict[str, int]
    put_cpu_s: float
    this_cpu_s: float
    this_sys_s: float
    broker_cpu_s: float
    machine_busy_s: float
    #: CPU seconds per thread of this process (by thread name)
    threads: dict[str, float]
    identical: bool
    acked: int
    bytes: int


def _thread_names() -> dict[int, str]:
    names = {}
    for thread in threading.enumerate():
        if thread.native_id is not None:
            name = thread.name
            names[thread.native_id] = "paho-network" if name.startswith("paho-mqtt-client") else name
    return names


def full_path(
    workdir: Path,
    keypair: Keypair,
    messages: list[tuple[str, Body, int]],
    reference: list[Envelope],
    max_inflight: int,
    timeout: float,
    synchronous: Sync,
) -> FullPath:
    port = free_port()
    conf = "\n".join(
        [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest none"]
    )
    broker = MosquittoBroker(workdir / "broker", port=port, conf_text=conf)
    outbox: Outbox | None = None
    transport: MqttTransport | None = None
    try:
        broker.start()
        assert broker.process is not None
        broker_proc = psutil.Process(broker.process.pid)
        outbox = Outbox(OutboxSettings(path=str(workdir / "outbox.sqlite3"), synchronous=synchronous))
        lock = TimedLock(outbox._lock) if hasattr(outbox, "_lock") else None
        if lock is not None:
            cast(Any, outbox)._lock = lock
        commits = count_calls(outbox, ("put", "mark_attempt", "ack_many"))
        settings = MqttSettings(host=broker.host, port=broker.port, max_inflight=max_inflight)
        signer = ChainSigner(keypair)
        topics = Topics(settings.topic_prefix)
        transport = MqttTransport(settings, outbox, client_id=f"bench-{signer.dev[:12]}")
        transport.start()
        transport.wait_connected(10)
        topic_of = {kind: topics.for_kind(kind, signer.dev) for kind in ("heartbeat", "proof")}
        envs: list[Envelope] = []
        put_wall = put_cpu = 0.0
        count = len(messages)
        perf, thread_time = time.perf_counter, time.thread_time
        before = CpuSample.take(broker_proc)
        cpu0 = thread_time()
        # The clock runs from here: exactly what Daemon.emit does per message.
        for kind, body, ts in messages:
            env = signer.prepare(kind, body, ts)
            w0, c0 = perf(), thread_time()
            transport.enqueue(topic_of[kind], env.wire, kind=kind, state={"seq": env.seq, "prev": env.hash})
            put_wall += perf() - w0
            put_cpu += thread_time() - c0
            signer.commit(env)
            envs.append(env)
        enqueued_at = perf()
        producer_cpu = thread_time() - cpu0
        deadline = enqueued_at + timeout
        while transport.status().acked < count or len(outbox) > 0:
            if perf() > deadline:
                raise EdgeproofError(
                    f"broker acknowledged {transport.status().acked} of {count} messages in {timeout:g}s",
                    hint="is the machine overloaded? try a smaller --count",
                )
            time.sleep(0.001)
        after = CpuSample.take(broker_proc)
        names = _thread_names()
        threads: dict[str, float] = {}
        for tid, cpu in after.threads.items():
            name = names.get(tid, f"thread-{tid}")
            threads[name] = threads.get(name, 0.0) + cpu - before.threads.get(tid, 0.0)
        wall = after.wall - before.wall
        return FullPath(
            rate=count / wall,
            wall_s=wall,
            enqueue_s=enqueued_at - before.wall,
            producer_cpu_s=producer_cpu,
            put_wall_s=put_wall,
            put_cpu_s=put_cpu,
            lock_wait_s=lock.wait_s if lock is not None else None,
            commits=dict(commits),
            this_cpu_s=after.this - before.this,
            this_sys_s=after.this_sys - before.this_sys,
            broker_cpu_s=after.broker - before.broker,
            machine_busy_s=after.machine_busy - before.machine_busy,
            threads=threads,
            identical=[e.wire for e in envs] == [e.wire for e in reference],
            acked=transport.status().acked,
            bytes=sum(len(e.wire) for e in envs),
        )
    finally:
        if transport is not None:
            transport.stop()
        if outbox is not None:
            outbox.close()
        broker.stop()


def bound(fp: FullPath, cores: int, synchronous: str) -> tuple[str, dict[str, float]]:
    """Which resource limited the full path, with the evidence (fractions of the wall time).

    The producer (main thread, doing what the daemon's emit does) is the critical path while it
    queues.  Its wall time splits into its own CPU, waiting for the outbox lock (held by the
    publisher thread during its own SQLite transactions), waiting inside ``Outbox.put``'s
    SQLite commit beyond its own CPU (the WAL fsync with ``synchronous=FULL``, and re-taking the
    GIL), and the rest.  After the last envelope is queued, the remaining time is the drain.
    """
    wall = fp.wall_s
    lock_wait = fp.lock_wait_s or 0.0
    put_wait = max(0.0, fp.put_wall_s - fp.put_cpu_s)
    evidence = {
        "cores_this_process": fp.this_cpu_s / wall,
        "cores_broker": fp.broker_cpu_s / wall,
        "cores_machine_busy": fp.machine_busy_s / wall,
        "cores_other_processes": max(0.0, fp.machine_busy_s - fp.this_cpu_s - fp.broker_cpu_s) / wall,
        "producer_cpu": fp.producer_cpu_s / wall,
        "producer_lock_wait": lock_wait / wall,
        "producer_commit_wait": max(0.0, put_wait - lock_wait) / wall,
        "producer_other_wait": max(0.0, fp.enqueue_s - fp.producer_cpu_s - put_wait) / wall,
        "drain_tail": max(0.0, wall - fp.enqueue_s) / wall,
    }
    if evidence["cores_broker"] >= 0.8:
        name = "broker CPU"
    elif evidence["drain_tail"] > 0.5:
        publisher = fp.threads.get("mqtt-publisher", 0.0) / wall
        name = (
            "CPU of this process (publisher thread)"
            if publisher >= 0.8
            else "PUBACK latency (the in-flight window), not CPU or disk"
        )
    elif evidence["cores_this_process"] >= 0.8:
        # One Python process runs Python code on one core at a time (the GIL): ~1 core is its ceiling.
        name = (
            f"CPU of this process ({evidence['cores_this_process']:.2f} cores, the GIL ceiling is ~1; "
            f"{fp.this_sys_s / fp.this_cpu_s:.0%} of it in the kernel)"
        )
    else:
        storage = evidence["producer_lock_wait"] + evidence["producer_commit_wait"]
        if storage >= max(evidence["producer_cpu"], evidence["producer_other_wait"]):
            name = (
                "disk fsync: outbox SQLite commits (the producer's, and the publisher's behind the outbox lock)"
                if synchronous == "FULL"
                else "outbox SQLite commits and lock contention (no fsync per commit with NORMAL)"
            )
            if evidence["cores_this_process"] >= 0.7:
                name += (
                    f"; this process is also close to its ~1-core GIL ceiling "
                    f"({evidence['cores_this_process']:.2f} cores)"
                )
        elif evidence["producer_cpu"] >= evidence["producer_other_wait"]:
            name = "CPU of this process (building and signing)"
        else:
            name = "CPU of this process (GIL shared with the transport threads)"
    if evidence["cores_other_processes"] >= 0.5:
        name += f"; the machine was busy: other processes used {evidence['cores_other_processes']:.1f} cores"
    return name, evidence


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000, help="envelopes per stage (default 3000)")
    parser.add_argument(
        "--sign-rounds", type=int, default=4, help="raw-sign rounds, half before, half after the full path"
    )
    parser.add_argument(
        "--max-inflight", type=int, default=MqttSettings().max_inflight, help="transport in-flight window"
    )
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL"),
        default=OutboxSettings().synchronous,
        help="outbox durability (default FULL, as the daemon: one fsync per queued envelope)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every PUBACK")
    parser.add_argument("--dir", default=None, help="folder for the outbox files (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.count < 3:
        parser.error("--count must be at least 3")
    cores = psutil.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="envelope-rate-", dir=args.dir))
    try:
        keypair = Keypair.from_seed(SEED)
        messages = make_messages(args.count)
        topics = Topics()
        reference, chain_s = chain_all(keypair, messages)
        to_sign = [signed_bytes(e.raw) for e in reference]
        rounds = max(2, args.sign_rounds)
        sign_rates = [sign_round(keypair, to_sign) for _ in range(rounds // 2)]
        sync = cast(Sync, args.synchronous)
        commit_rate = outbox_commit(workdir, reference, topics, sync)
        fp = full_path(workdir, keypair, messages, reference, args.max_inflight, args.timeout, sync)
        sign_rates += [sign_round(keypair, to_sign) for _ in range(rounds - rounds // 2)]
    except EdgeproofError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not fp.identical:
        sys.stderr.write("error: the full path produced different envelopes than the reference chain\n")
        return 1
    raw = statistics.median(sign_rates)
    chain_rate = args.count / chain_s
    name, ev = bound(fp, cores, args.synchronous)
    kinds = {k: sum(1 for m in messages if m[0] == k) for k in ("heartbeat", "proof")}
    result: dict[str, Any] = {
        "count": args.count,
        "kinds": kinds,
        "mean_wire_bytes": round(fp.bytes / args.count, 1),
        "cores": cores,
        "synchronous": args.synchronous,
        "max_inflight": args.max_inflight,
        "raw_sign_per_s": round(raw),
        "raw_sign_rounds_per_s": [round(r) for r in sign_rates],
        "build_sign_chain_per_s": round(chain_rate),
        "outbox_commit_per_s": round(commit_rate),
        "full_path_per_s": round(fp.rate),
        "full_path_over_raw_sign": round(fp.rate / raw, 4),
        "full_path_wall_s": round(fp.wall_s, 3),
        "full_path_enqueue_s": round(fp.enqueue_s, 3),
        "msgs_per_cpu_s_this_process": round(args.count / fp.this_cpu_s) if fp.this_cpu_s > 0 else None,
        "msgs_per_cpu_s_broker": round(args.count / fp.broker_cpu_s) if fp.broker_cpu_s > 0 else None,
        "cpu_s_this_process": round(fp.this_cpu_s, 3),
        "cpu_s_this_process_system": round(fp.this_sys_s, 3),
        "cpu_s_broker": round(fp.broker_cpu_s, 3),
        "cpu_s_by_thread": {k: round(v, 3) for k, v in sorted(fp.threads.items())},
        "evidence": {k: round(v, 3) for k, v in ev.items()},
        "sqlite_commits_per_envelope": {k: round(v / args.count, 3) for k, v in fp.commits.items()},
        "acked": fp.acked,
        "bound": name,
        "identical_envelopes": fp.identical,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    spread = f"{min(sign_rates):,.0f}..{max(sign_rates):,.0f}"
    print(
        f"Envelope send path, {args.count} envelopes ({kinds['heartbeat']} heartbeats, {kinds['proof']} proofs, "
        f"mean {result['mean_wire_bytes']} B on the wire), {cores} cores"
    )
    print(f"  raw ed25519 sign (solders)        {raw:9,.0f} msg/s   (median of rounds {spread})")
    print(f"  build + sign + chain (memory)     {chain_rate:9,.0f} msg/s")
    label = f"outbox commit only (WAL, {args.synchronous})"
    print(f"  {label:<33} {commit_rate:9,.0f} msg/s")
    print(
        f"  full path to PUBACK, outbox empty {fp.rate:9,.0f} msg/s   ({fp.wall_s:.2f} s; last one queued at "
        f"{fp.enqueue_s:.2f} s; in-flight window {args.max_inflight})"
    )
    print(f"  ratio full path / raw sign        {fp.rate / raw:9.3f}")
    per_cpu = result["msgs_per_cpu_s_this_process"]
    per_broker = result["msgs_per_cpu_s_broker"]
    threads = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(fp.threads.items(), key=lambda kv: -kv[1]) if v >= 0.005
    )
    print(
        f"  per CPU-second: this process {per_cpu:,} msg ({ev['cores_this_process']:.2f} cores; "
        f"{fp.this_sys_s:.2f} of {fp.this_cpu_s:.2f} CPU-s in the kernel), "
        f"broker {per_broker:,} msg ({ev['cores_broker']:.2f} cores)"
    )
    print(f"  CPU-s by thread: {threads}")
    commits = ", ".join(f"{k} {v / args.count:.2f}" for k, v in fp.commits.items())
    print(f"  SQLite write transactions per envelope: {commits}")
    print(
        f"  producer wall: own CPU {ev['producer_cpu']:.0%}, waiting for the outbox lock "
        f"{ev['producer_lock_wait']:.0%}, waiting in its commit {ev['producer_commit_wait']:.0%}, "
        f"other {ev['producer_other_wait']:.0%}; drain after the last enqueue {ev['drain_tail']:.0%}"
    )
    print(
        f"  machine busy {ev['cores_machine_busy']:.2f} of {cores} cores "
        f"(other processes {ev['cores_other_processes']:.2f})"
    )
    print(f"  bound: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
