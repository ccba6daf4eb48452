"""1,000 simulated devices take a 5 MB model through a staged rollout on loopback.

    .venv/bin/python benchmarks/fleet_rollout.py [--devices 1000] [--model-mb 5] [--stages 10,50,100]
        [--connections 20] [--workers 16] [--runs 3] [--json]

Real parts: Mosquitto on a free 127.0.0.1 port, the coordinator's SQLite database with the
devices enrolled (signed bindings), ``fleet serve``'s artifact server (in process: it counts
downloads and bytes), ``edgeproof fleet publish`` and ``edgeproof fleet rollout run`` as child
processes, and the simulated devices of tests/support/rollout_fleet.py: each judges every
manifest with the daemon's ``check_manifest`` and downloads with its ``fetch_artifact`` (sha256
and length checked); the smoke test is a stand-in (no failing device here).

Printed: time from publish to all committed (and to each of the controller's decisions), bytes served against
devices x release size (no device downloads a committed artifact twice: every file is fetched
exactly once per device), the controller's CPU seconds (its own process), and the bound: the
artifact server's and downloaders' CPU (this process, >= 0.8 core) or the machine's CPU, else
the stage ticks (the controller's --tick between a stage's last commit and the next manifest).
Times, CPU figures and the bound's inputs are medians over ``--runs`` whole rollouts (samples shown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.coordinator.store import DeviceRecord, Store  # noqa: E402
from agent.fleet.serve import make_server  # noqa: E402
from agent.localnet.mosquitto import MosquittoBroker  # noqa: E402
from agent.protocol.binding import sign_binding  # noqa: E402
from tests.support.daemon_rig import OPERATOR, OPERATOR_SEED, clean_env, write_key  # noqa: E402
from tests.support.onnx_models import tiny_classifier, write_model_and_card  # noqa: E402
from tests.support.rollout_fleet import PROFILE, RolloutFleet, device_keys  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--model-mb", type=float, default=5.0)
    parser.add_argument("--stages", default="10,50,100")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3, help="whole rollouts; medians are printed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="edgeproof-rollout-") as tmp:
            runs.append(run(Path(tmp), args))
    result = dict(runs[-1])
    for key in ("seconds_publish_to_all_committed", "controller_cpu_s", "machine_cpu", "bench_process_cores"):
        samples = [float(r[key]) for r in runs]  # type: ignore[arg-type]
        result[key] = {"median": round(statistics.median(samples), 3), "samples": samples}
    result["runs"] = args.runs
    result["every_run_served_each_file_once_per_device"] = all(
        r["served_ratio"] == 1.0 and set(r["downloads_per_file"].values()) == {args.devices}  # type: ignore[union-attr]
        for r in runs
    )
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def run(tmp: Path, args: argparse.Namespace) -> dict[str, object]:
    release = tmp / "release"
    release.mkdir()
    model = tiny_classifier(seed=9)
    pad = np.zeros(int(args.model_mb * 1_000_000) // 4, dtype=np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "pad"))
    card = write_model_and_card(release, model, name="big", input_shape="[1, 3, 32, 32]")
    release_bytes = sum(p.stat().st_size for p in release.iterdir())
    key, state = tmp / "operator.json", tmp / "operator-state.json"
    write_key(key, OPERATOR_SEED)
    keys = device_keys(args.devices, base=20_000)
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    mqtt = f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    (tmp / "agent.toml").write_text(mqtt, encoding="utf-8")
    coord = tmp / "coordinator.toml"
    coord.write_text(f'[storage]\nsqlite_path = "c.sqlite3"\n{mqtt}', encoding="utf-8")
    store = Store.open(sqlite_path=tmp / "c.sqlite3")
    owner = str(OPERATOR.pubkey())
    with store.transaction():
        for k in keys:
            b = sign_binding(k, owner, 1_800_000_000_000)
            store.enroll(DeviceRecord(b.device, owner, PROFILE, ("lobby",), b.ts, b.sig, b.ts))
    store.close()
    server = make_server(release)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    fleet = RolloutFleet(
        broker.host, broker.port, keys, set(), operator=owner, folder=tmp / "devices",
        connections=args.connections, workers=args.workers,
    )  # fmt: skip
    fleet.start()
    cmd = [sys.executable, "-m", "agent"]
    controller = subprocess.Popen(
        [*cmd, "fleet", "rollout", "run", "--coordinator-config", str(coord), "--channel", "stable",
         "--key", str(key), "--state", str(state), "--tick", "0.5", "--stage-timeout", "10m",
         "--exit-when-settled", "--json"],
        cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert controller.stdout is not None
    controller.stdout.readline()
    me = psutil.Process()
    cpu0, machine0 = me.cpu_times(), psutil.cpu_times()
    t0 = time.monotonic()
    t0_ms = time.time_ns() // 1_000_000
    published = subprocess.run(
        [*cmd, "fleet", "publish", "--card", str(card), "--file", str(release / "big.onnx"), "--url", url,
         "--channel", "stable", "--stages", args.stages, "--abort-failure-rate", "0.05", "--expires", "1h",
         "--key", str(key), "--state", str(state), "--config", str(tmp / "agent.toml")],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if published.returncode != 0:
        raise SystemExit(published.stderr)
    with fleet.done:
        fleet.done.wait_for(lambda: fleet.counters["committed"] >= args.devices, 1800)
    all_committed = time.monotonic() - t0
    out, _ = controller.communicate(timeout=120)
    wall = time.monotonic() - t0
    cpu1, machine1 = me.cpu_times(), psutil.cpu_times()
    report = json.loads(out)
    fleet.stop()
    server.shutdown()
    broker.kill()
    here = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    busy = sum(getattr(machine1, f) - getattr(machine0, f) for f in ("user", "system"))
    cores = psutil.cpu_count() or 1
    machine = busy / (wall * cores)
    downloads = dict(server.downloads)
    if machine >= 0.8:
        bound = (
            f"the machine's CPU ({machine:.0%} of {cores} cores busy; this process, the artifact server "
            f"and every device's download and sha256 under one GIL, {here:.2f} cores)"
        )
    elif here >= 0.8:
        bound = f"this process: artifact server + device downloaders + MQTT under one GIL ({here:.2f} cores)"
    else:
        bound = (
            "none of the CPUs: the stage ticks (--tick) and the simulated devices' worker pool (--workers)"
        )
    return {
        "devices": args.devices,
        "release_bytes": release_bytes,
        "stages": args.stages,
        "seconds_publish_to_all_committed": round(all_committed, 2),
        "committed": fleet.counters["committed"],
        "bytes_served": server.bytes_sent,
        "bytes_expected": release_bytes * args.devices,
        "served_ratio": round(server.bytes_sent / (release_bytes * args.devices), 4),
        "downloads_per_file": downloads,
        "controller_cpu_s": report["cpu_s"],
        "controller_decisions": [
            f"{d['action']} after {(d['at_ms'] - t0_ms) / 1000:.1f} s: {d['why']}"
            for d in report["decisions"]
        ],
        "controller_refusals": report["refusals"],
        "bench_process_cores": round(here, 2),
        "machine_cpu": round(machine, 2),
        "bound": bound,
    }


if __name__ == "__main__":
    raise SystemExit(main())
