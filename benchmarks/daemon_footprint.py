"""The device daemon's footprint: idle CPU with heartbeats only, peak RSS and CPU while inferring.

    .venv/bin/python benchmarks/daemon_footprint.py [--seconds 60] [--infer-seconds 30] [--json]

Each phase starts a real Mosquitto on a free 127.0.0.1 port, writes a config into a temp
dir and runs ``python -m agent run --config ...`` as a subprocess (nothing else in the
process tree is measured: psutil reads that pid's own CPU time, plus any children it has).

* ``idle``: ``inference.source = "none"`` (heartbeats-only mode: the model is loaded for
  challenges, but no frames are read), ``proofs.heartbeat_s`` at its default.  After the
  daemon reports itself connected and has queued its first heartbeat, and a warm-up, its CPU
  time is sampled at the start and end of ``--seconds``: the figure is % of one core
  (goal: <= 1 %).
* ``infer``: the default model card (``models/efficientnet-lite0-int8.toml``), the default
  synthetic source and default ``max_fps``.  After the first inferences and a warm-up, CPU is
  sampled over ``--infer-seconds``; the peak resident set is ``VmHWM`` from
  ``/proc/PID/status`` read just before the daemon is stopped (not ``ru_maxrss`` of a child,
  which Linux carries over from the parent across fork+exec).

* ``bare`` (comparison for ``infer``): the same model through a bare onnxruntime session
  in this process, with the session options the ONNX backend uses and the profile's thread
  count, on the same synthetic frames and preprocessing, paced at the same ``max_fps``; run
  once with onnxruntime's default intra-op spinning and once with
  ``session.intra_op.allow_spinning = 0``.  CPU per inference tells the agent's own cost
  apart from the runtime's (idle worker threads spin after every run).

Readiness and inference counts come from the daemon's status file (``state_dir/status.json``,
written every 2 s); CPU is sampled right after a fresh write at both ends of the interval,
so the interval is up to 2 s longer than requested.  Only processes this script started are
signalled, by pid; the temp dirs and the brokers are removed in ``finally``.  Other load on
the same cores changes the daemon's CPU time little, but its latency a lot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solders.keypair import Keypair  # noqa: E402

from agent.config import InferenceSettings, ProofSettings  # noqa: E402
from agent.device.daemon import STATUS_EVERY_S  # noqa: E402
from agent.device.status import read_status  # noqa: E402
from agent.errors import EdgeproofError, StorageError  # noqa: E402
from agent.identity import write_keypair  # noqa: E402
from agent.localnet.mosquitto import MosquittoBroker, free_port  # noqa: E402

SEED = bytes(range(1, 33))
DEFAULT_CARD = ROOT / "models" / "efficientnet-lite0-int8.toml"


class BenchError(EdgeproofError):
    """The daemon did not start or did not reach the state to measure."""


@dataclass
class Phase:
    name: str
    seconds: float
    cpu_s: float
    core_pct: float
    vm_hwm_mb: float
    vm_rss_mb: float
    heartbeats: int
    inferences: int
    threads: int
    startup_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "cpu_s": round(self.cpu_s, 3),
            "core_pct": round(self.core_pct, 3),
            "vm_hwm_mb": round(self.vm_hwm_mb, 1),
            "vm_rss_mb": round(self.vm_rss_mb, 1),
            "heartbeats": self.heartbeats,
            "inferences": self.inferences,
            "fps": round(self.inferences / self.seconds, 2) if self.seconds > 0 else 0.0,
            "threads": self.threads,
            "startup_s": round(self.startup_s, 2),
        }


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (e.g. ``VmHWM``, the peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field} line")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def write_config(workdir: Path, port: int, inference: dict[str, str]) -> Path:
    key = workdir / "device-key.json"
    if not key.exists():
        write_keypair(key, Keypair.from_seed(SEED))
    lines = [
        "[device]",
        f'key = "{key}"',
        f'state_dir = "{workdir / "state"}"',
        "",
        "[inference]",
        *(f'{k} = "{v}"' for k, v in inference.items()),
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    path = workdir / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def daemon_env() -> dict[str, str]:
    """This environment minus EDGEPROOF_* overrides, so only the written config applies."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}


def status(state_dir: Path) -> dict[str, Any]:
    try:
        return read_status(state_dir) or {}
    except StorageError:
        return {}  # caught mid-replace on some filesystems; read again next time


def wait_until(
    proc: subprocess.Popen[bytes], state_dir: Path, ready: Any, timeout: float, what: str, log: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise BenchError(f"the daemon exited with {proc.returncode} before {what}; its log:\n{tail}")
        data = status(state_dir)
        if data and ready(data):
            return data
        time.sleep(0.2)
    raise BenchError(f"the daemon did not reach '{what}' within {timeout:g}s (log: {log})")


def fresh_status(proc: subprocess.Popen[bytes], state_dir: Path) -> dict[str, Any]:
    """Wait for the daemon's next status write (every STATUS_EVERY_S) and return it."""
    before = status(state_dir).get("updated_ms")
    deadline = time.monotonic() + 5 * STATUS_EVERY_S
    while time.monotonic() < deadline and proc.poll() is None:
        data = status(state_dir)
        if data.get("updated_ms") != before:
            return data
        time.sleep(0.01)
    raise BenchError("the daemon stopped writing its status file")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the daemon by pid (it closes its window and flushes), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def counter(data: dict[str, Any], key: str) -> int:
    return int(data.get("counters", {}).get(key, 0))


def run_phase(
    name: str, base: Path, inference: dict[str, str], seconds: float, warmup: float, start_timeout: float
) -> Phase:
    workdir = base / name
    workdir.mkdir()
    port = free_port()
    conf = "\n".join(
        [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest none"]
    )
    broker = MosquittoBroker(workdir / "broker", port=port, conf_text=conf)
    proc: subprocess.Popen[bytes] | None = None
    log_path = workdir / "daemon.log"
    try:
        broker.start()
        config = write_config(workdir, port, inference)
        state_dir = workdir / "state"
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                cwd=ROOT,
                env=daemon_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if name == "idle":

            def ready(d: dict[str, Any]) -> bool:
                return bool(d.get("transport", {}).get("connected")) and counter(d, "heartbeat_emitted") >= 1
        else:

            def ready(d: dict[str, Any]) -> bool:
                return bool(d.get("transport", {}).get("connected")) and counter(d, "inferences") >= 1

        wait_until(proc, state_dir, ready, start_timeout, "connected and working", log_path)
        startup = time.monotonic() - started
        time.sleep(warmup)
        ps = psutil.Process(proc.pid)
        # Sample CPU right after a fresh status write, so the counters match the interval.
        first = fresh_status(proc, state_dir)
        cpu0, t0 = cpu_seconds(ps), time.monotonic()
        time.sleep(seconds)
        last = fresh_status(proc, state_dir)
        cpu1, t1 = cpu_seconds(ps), time.monotonic()
        if proc.poll() is not None:
            raise BenchError(
                f"the daemon exited with {proc.returncode} during the measurement (log: {log_path})"
            )
        hwm_kb = proc_status_kb(proc.pid, "VmHWM")
        rss_kb = proc_status_kb(proc.pid, "VmRSS")
        threads = ps.num_threads()
        wall = t1 - t0
        return Phase(
            name=name,
            seconds=wall,
            cpu_s=cpu1 - cpu0,
            core_pct=100.0 * (cpu1 - cpu0) / wall,
            vm_hwm_mb=hwm_kb / 1024,
            vm_rss_mb=rss_kb / 1024,
            heartbeats=counter(last, "heartbeat_emitted") - counter(first, "heartbeat_emitted"),
            inferences=counter(last, "inferences") - counter(first, "inferences"),
            threads=threads,
            startup_s=startup,
        )
    finally:
        if proc is not None:
            stop(proc)
        broker.stop()


def bare_phase(seconds: float, spinning: bool) -> dict[str, Any]:
    """CPU of a bare onnxruntime session running the default card at the daemon's pace."""
    import onnxruntime as ort

    from agent.inference.cards import load_card
    from agent.inference.preprocess import Preprocessor
    from agent.inference.runtime import backend_settings, resolve_profile
    from agent.inference.sources import open_source

    loaded = load_card(DEFAULT_CARD)
    threads = backend_settings(resolve_profile("auto")).threads
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(
        str(loaded.model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    prep = Preprocessor(loaded.card.input)
    source = open_source(InferenceSettings().source)

    def tensor() -> Any:
        frame = source.read()
        if frame is None:
            raise BenchError(f"the synthetic source {source.description} ended")
        return prep(frame).tensor

    name = loaded.card.input.name
    for _ in range(5):
        session.run(None, {name: tensor()})
    period = 1.0 / InferenceSettings().max_fps
    me = psutil.Process()
    cpu0, t0 = cpu_seconds(me), time.monotonic()
    count, run_s, next_at = 0, 0.0, t0
    while time.monotonic() - t0 < seconds:
        x = tensor()
        start = time.perf_counter()
        session.run(None, {name: x})
        run_s += time.perf_counter() - start
        count += 1
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(me) - cpu0
    return {
        "spinning": spinning,
        "threads": threads,
        "seconds": round(wall, 2),
        "inferences": count,
        "core_pct": round(100.0 * cpu / wall, 2),
        "cpu_ms_per_inference": round(1000.0 * cpu / count, 2),
        "run_ms": round(1000.0 * run_s / count, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="idle measuring interval (default 60)")
    parser.add_argument(
        "--infer-seconds", type=float, default=30.0, help="inference measuring interval (default 30)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after readiness before sampling")
    parser.add_argument("--start-timeout", type=float, default=90.0, help="seconds allowed for startup")
    parser.add_argument(
        "--bare-seconds", type=float, default=8.0, help="each bare-runtime comparison run (default 8)"
    )
    parser.add_argument("--only", choices=("idle", "infer", "bare"), default=None, help="run one phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.seconds <= 0 or args.infer_seconds <= 0 or args.warmup < 0:
        parser.error("--seconds and --infer-seconds must be positive, --warmup not negative")
    base = Path(tempfile.mkdtemp(prefix="daemon-footprint-"))
    phases: dict[str, Phase] = {}
    bare: list[dict[str, Any]] = []
    try:
        if args.only in (None, "idle"):
            phases["idle"] = run_phase(
                "idle", base, {"source": "none"}, args.seconds, args.warmup, args.start_timeout
            )
        if args.only in (None, "infer"):
            phases["infer"] = run_phase(
                "infer",
                base,
                {"model": str(DEFAULT_CARD)},
                args.infer_seconds,
                args.warmup,
                args.start_timeout,
            )
        if args.only in (None, "infer", "bare"):
            bare = [bare_phase(args.bare_seconds, spinning) for spinning in (True, False)]
    except EdgeproofError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    finally:
        shutil.rmtree(base, ignore_errors=True)
    heartbeat_s = ProofSettings().heartbeat_s
    result: dict[str, Any] = {name: phase.as_dict() for name, phase in phases.items()}
    result["heartbeat_s"] = heartbeat_s
    result["cores"] = psutil.cpu_count()
    if bare:
        result["bare"] = bare
    if "infer" in phases and phases["infer"].inferences > 0:
        p = phases["infer"]
        result["infer"]["cpu_ms_per_inference"] = round(1000.0 * p.cpu_s / p.inferences, 2)
        if bare:
            result["infer"]["cpu_over_bare_spinning"] = round(
                result["infer"]["cpu_ms_per_inference"] / bare[0]["cpu_ms_per_inference"], 3
            )
    if "idle" in phases:
        result["idle"]["goal_core_pct"] = 1.0
        result["idle"]["meets_goal"] = phases["idle"].core_pct <= 1.0
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"Daemon footprint (python -m agent run), {result['cores']} cores")
    if "idle" in phases:
        p = phases["idle"]
        verdict = "meets" if p.core_pct <= 1.0 else "MISSES"
        print(
            f"  idle, heartbeats only (heartbeat every {heartbeat_s} s), {p.seconds:.0f} s after "
            f"{args.warmup:g} s warm-up:"
        )
        print(
            f"    CPU {p.cpu_s:.3f} s = {p.core_pct:.2f} % of one core ({verdict} the 1 % goal); "
            f"~{p.heartbeats} heartbeats"
        )
        print(f"    RSS {p.vm_rss_mb:.0f} MB now, peak (VmHWM) {p.vm_hwm_mb:.0f} MB; {p.threads} threads")
    if "infer" in phases:
        p = phases["infer"]
        print(f"  inferring, {DEFAULT_CARD.name}, synthetic source, default max_fps, {p.seconds:.0f} s:")
        print(
            f"    CPU {p.cpu_s:.2f} s = {p.core_pct:.1f} % of one core; ~{p.inferences} inferences "
            f"(~{p.inferences / p.seconds:.1f} fps)"
        )
        print(f"    peak RSS (VmHWM) {p.vm_hwm_mb:.0f} MB, RSS now {p.vm_rss_mb:.0f} MB; {p.threads} threads")
        if p.inferences:
            print(f"    {result['infer']['cpu_ms_per_inference']:.1f} ms CPU per inference")
    for b in bare:
        spin = "default intra-op spinning" if b["spinning"] else "intra-op spinning off"
        print(
            f"  bare onnxruntime, {b['threads']} threads, {spin}, same pace: {b['core_pct']:.1f} % of one core, "
            f"{b['cpu_ms_per_inference']:.1f} ms CPU and {b['run_ms']:.1f} ms wall per inference"
        )
    if "cpu_over_bare_spinning" in result.get("infer", {}):
        print(
            f"  daemon / bare (default spinning) CPU per inference: {result['infer']['cpu_over_bare_spinning']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
