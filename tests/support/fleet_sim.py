"""The fleet simulation rig, shared by the integration test and benchmarks/fleet_simulation.py.

Real parts only: a Mosquitto broker (started by the caller), ``python -m agent coordinator
run`` as a child process with compressed slots, bulk enrolment through
``coordinator enroll --from`` of the bindings ``simulate bindings`` wrote, and
``python -m agent simulate fleet`` as another child process.  After the run the rig waits
until every challenge of the simulated epochs is settled, stops the coordinator (SIGTERM:
its liveness record is closed), and reads the audit of each simulated epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.identity import write_keypair
from tests.support.coordinator import COORD, CoordinatorProcess

ROOT = Path(__file__).resolve().parents[2]


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise AssertionError(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class FleetRig:
    folder: Path
    broker_port: int
    database_url: str = ""
    slot_ms: int = 2000
    epoch_slots: int = 8
    challenge_probability: float = 0.3
    deadline_ms: int = 3000
    active_within_slots: int = 3
    batch_max: int = 500
    #: The coordinator stamps time on arrival: a broker holding back a backlog beyond Receive
    #: Maximum would have it stamped late (in a later slot), so the rig lets it all through.
    receive_maximum: int = 65535
    coordinator: CoordinatorProcess | None = None
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def epoch_ms(self) -> int:
        return self.slot_ms * self.epoch_slots

    @property
    def config(self) -> Path:
        return self.folder / "coordinator.toml"

    def write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder / "coordinator-key.json"
        if not key.exists():
            write_keypair(key, COORD)
        self.config.write_text(
            f"""[coordinator]
key = "coordinator-key.json"
shared_group = "coord"
receive_maximum = {self.receive_maximum}

[storage]
database_url = {json.dumps(self.database_url)}
sqlite_path = "coordinator.sqlite3"
sqlite_synchronous = "NORMAL"

[ingest]
batch_max = {self.batch_max}
batch_ms = 50
beacon_max_age_slots = 2
liveness_s = 1.0

[beacons]
slot_ms = {self.slot_ms}

[epochs]
epoch_ms = {self.epoch_ms}

[challenges]
probability_per_slot = {self.challenge_probability}
deadline_ms = {self.deadline_ms}
active_within_slots = {self.active_within_slots}

[http]
listen = ""   # no dashboard: the default port may be taken by another run

[mqtt]
host = "127.0.0.1"
port = {self.broker_port}
client_id = "fleet-coordinator"
keepalive_s = 30
""",
            encoding="utf-8",
        )
        return self.config

    def start_coordinator(self) -> CoordinatorProcess:
        self.write_config()
        self.coordinator = CoordinatorProcess(self.config, self.folder / "coordinator.log")
        self.coordinator.start()
        return self.coordinator

    def script_args(self, script: Path) -> list[str]:
        return ["--script", str(script)]

    def enroll(self, script: Path, profile: str = "rpi4") -> dict[str, Any]:
        bindings = self.folder / "bindings.jsonl"
        check(
            run_agent("simulate", "bindings", *self.script_args(script), "--out", str(bindings)), "bindings"
        )
        out = check(
            run_agent(
                "coordinator",
                "enroll",
                "--from",
                str(bindings),
                "--profile",
                profile,
                "--config",
                str(self.config),
                "--json",
            ),
            "enroll --from",
        )
        return dict(json.loads(out))

    def simulate(self, script: Path, truth: Path, timeout: float = 900) -> dict[str, Any]:
        """Run ``simulate fleet`` to the end; its summary (CPU seconds of the process added)."""
        log = (self.folder / "simulator.log").open("ab")
        proc = subprocess.Popen(
            agent_cmd(
                "--log-level",
                "info",
                "simulate",
                "fleet",
                *self.script_args(script),
                "--coordinator-key",
                str(COORD.pubkey()),
                "--truth",
                str(truth),
                "--port",
                str(self.broker_port),
                "--json",
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        sim = psutil.Process(proc.pid)
        coord = (
            psutil.Process(self.coordinator.proc.pid) if self.coordinator and self.coordinator.proc else None
        )
        coord_before = _cpu(coord)
        sim_cpu = 0.0
        try:
            while proc.poll() is None:
                sim_cpu = max(sim_cpu, _cpu(sim))
                time.sleep(0.2)
            stdout, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if proc.returncode != 0:
            raise AssertionError(
                f"simulate fleet exited {proc.returncode}:\n{stdout.decode()}\n"
                f"{(self.folder / 'simulator.log').read_text(errors='replace')[-4000:]}"
            )
        self.cpu = {"simulator_s": round(sim_cpu, 2), "coordinator_s": round(_cpu(coord) - coord_before, 2)}
        return dict(json.loads(stdout))

    def wait_settled(self, truth: dict[str, Any], timeout: float = 60) -> None:
        """Until no challenge issued in the simulated epochs is open or pending a reference run."""
        from agent.coordinator.store import Store

        start = truth["epochs"][0] * truth["epoch_ms"]
        end = (truth["epochs"][-1] + 1) * truth["epoch_ms"]
        store = Store.open(database_url=self.database_url, sqlite_path=self.folder / "coordinator.sqlite3")
        try:
            deadline = time.monotonic() + timeout
            while True:
                row = store.one(
                    "SELECT COUNT(*) FROM challenges WHERE issued_ms >= ? AND issued_ms < ? "
                    "AND (outcome IS NULL OR outcome = 'pending')",
                    (start, end),
                )
                if row is not None and int(row[0]) == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{row} challenges still open after {timeout} s")
                time.sleep(0.2)
        finally:
            store.close()

    def stop_coordinator(self) -> None:
        if self.coordinator is not None and self.coordinator.running():
            assert self.coordinator.terminate(timeout=300) == 0, self.coordinator.log()[-3000:]

    def kill(self) -> None:
        if self.coordinator is not None:
            self.coordinator.kill()

    def audit(self, epoch: int) -> dict[str, Any]:
        """``edgeproof audit uptime --epoch E --json``: the audit report of one epoch."""
        out = check(
            run_agent("audit", "uptime", "--epoch", str(epoch), "--json", "--config", str(self.config)),
            f"audit uptime --epoch {epoch}",
        )
        return dict(json.loads(out))


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def write_script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
