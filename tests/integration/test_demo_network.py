"""`edgeproof demo` (what `make demo` runs), end to end: the real CLI, real processes, real figures.

One run with 24 s epochs (12 slots of 2 s; `make demo` uses 60 s): Mosquitto, the LiteSVM
localnet, `chain bootstrap`, a coordinator on SQLite, three daemons, a two-stage rollout, a
challenge round, a settlement; the JSON it prints is checked against the coordinator's own
database and the report it writes is loaded in headless Chromium.  A second run is stopped with
SIGTERM once the daemons are up: every process it started must be gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import DomReader, dump_dom

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

ROOT = Path(__file__).resolve().parents[2]
CHATTER = ("XNNPACK", "Created TensorFlow Lite", "onnxruntime", "Traceback")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone for our purposes only once reaped; the demo reaps its own children.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] == "Z"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--out", str(out), "--epoch-s", "24", "--json"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, out


def result_of(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, _ = demo_run
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_every_step_passes_in_order_claims_included(demo_run: Any) -> None:
    data = result_of(demo_run)
    steps = {s["name"]: s["status"] for s in data["steps"]}
    epoch = data["epoch"]
    expected = [
        "generate clips",
        "start mosquitto",
        "start the ledger (chain localnet)",
        "chain bootstrap",
        "start the coordinator",
        "enroll three devices",
        "fleet keys init",
        "start three agents",
        "fleet serve",
        "start the rollout controller",
        "fleet publish stage 0",
        # The rollout controller publishes stage 1 when this build has it, else the operator does.
        "fleet rollout run: stage 1",
        "challenge round",
        f"rewards settle --epoch {epoch}",
        "claim (one per device)",
        "audit uptime",
        "write the report",
    ]
    assert [s["name"] for s in data["steps"]] == expected
    assert {n: s for n, s in steps.items() if n != "claim (one per device)"} == {
        n: "passed" for n in expected if n != "claim (one per device)"
    }
    # Until `edgeproof rewards claim` exists (the claim flow, issue 10) the step says so and
    # moves no tokens; once it does, the step must pass.
    assert steps["claim (one per device)"] == "passed"
    assert data["ok"] is True


def test_settlement_matches_the_coordinator_database_and_the_ledger(demo_run: Any) -> None:
    data = result_of(demo_run)
    _, out = demo_run
    settlement = data["settlement"]
    assert settlement["epoch"] == data["epoch"]
    assert settlement["pool"] == 1_000_000
    amounts = {d["dev"]: d["amount"] for d in settlement["devices"]}
    assert len(amounts) == 3 and all(a > 0 for a in amounts.values())
    assert sum(amounts.values()) == settlement["total"] <= settlement["pool"]
    db = sqlite3.connect(f"file:{out / 'coordinator' / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        stored = dict(db.execute("SELECT dev, amount FROM allocations WHERE epoch = ?", (data["epoch"],)))
        root = db.execute("SELECT root FROM settlements WHERE epoch = ?", (data["epoch"],)).fetchone()[0]
    finally:
        db.close()
    assert stored == amounts and root == settlement["root"]
    # Each owner's balance on the ledger is its settled amount once claimed (0 without claims).
    balances = {d["dev"]: d["balance"] for d in data["devices"]}
    assert balances == amounts
    audit = {d["dev"]: d for d in data["audit"]["devices"]}
    assert set(audit) == set(amounts)
    for d in audit.values():
        assert d["counted_slots"] > 0 and d["up_slots"] * 2 >= d["counted_slots"], d
        assert d["challenges"].get("passed", 0) >= 1, d
        assert "window_overlap" not in d["rejections"], d  # consecutive windows touch, never overlap


def test_rollout_stage_committed_on_the_devices_it_reached(demo_run: Any) -> None:
    data = result_of(demo_run)
    rollout = data["rollout"]
    assert rollout["model"] == "efficientnet-lite0-int8" and rollout["version"] == "1.1.0"
    first, every = rollout["stage_devices"]
    assert len(first) == 1 and sorted(every) == ["cam-1", "cam-2"]
    assert sorted(rollout["committed"]) == ["cam-1", "cam-2"]
    versions = {d["name"]: (d["model"], d["version"], d["trial"]) for d in data["devices"]}
    assert versions == {
        "cam-1": ("efficientnet-lite0-int8", "1.1.0", False),
        "cam-2": ("efficientnet-lite0-int8", "1.1.0", False),
        "cam-3": ("blazeface-short-range", "0.6.0", False),
    }
    assert rollout["controller"] is True
    if rollout["controller"]:  # what `fleet status` said: each stage's one new device committed
        stages = rollout["status"]["rollouts"][0]["stages"]
        assert [(s["devices"], s["committed"], s["failed"]) for s in stages] == [(1, 1, 0), (1, 1, 0)]
    for d in data["devices"]:
        committed = [version for state, version in d["deploys"] if state == "committed"]
        if d["name"] in first:
            assert committed == [1], d  # stage 0's manifest; stage 1's is the same release: no second commit
        elif d["name"] in every:
            assert committed and min(committed) >= 2, d  # only a later stage's manifest reached it
        else:
            assert committed == [], d


def test_everything_started_was_stopped_and_no_chatter_reached_the_output(demo_run: Any) -> None:
    data = result_of(demo_run)
    done, out = demo_run
    pids = json.loads((out / "logs" / "pids.json").read_text())
    assert set(pids) == {
        "mosquitto",
        "localnet",
        "coordinator",
        "agent-cam-1",
        "agent-cam-2",
        "agent-cam-3",
        "fleet-serve",
        "fleet-rollout",
    }
    assert all(gone(pid) for pid in pids.values()), pids
    assert {s["name"]: s["exit_code"] for s in data["stopped"]} == dict.fromkeys(set(pids) - {"mosquitto"}, 0)
    for text in (done.stdout, done.stderr):
        assert not [c for c in CHATTER if c in text]
    # The chatter exists: it went to the BlazeFace daemon's own log file.
    assert "XNNPACK" in (out / "logs" / "agent-cam-3.log").read_text()


def test_report_loads_in_chromium_with_the_settled_figures(demo_run: Any, tmp_path: Path) -> None:
    data = result_of(demo_run)
    _, out = demo_run
    assert (out / "uptime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = DomReader(dump_dom((out / "report.html").as_uri(), tmp_path / "chromium", budget_ms=1000))
    assert dom.body["data-ok"] == "true"
    assert dom.value("epoch") == str(data["epoch"])
    assert dom.value("root") == data["settlement"]["root"]
    assert dom.value("registered") == "3"
    rows = dom.rows["dev"]
    amounts = {d["dev"]: d["amount"] for d in data["settlement"]["devices"]}
    assert {dev: row.cells["settled"].text for dev, row in rows.items()} == {
        dev: str(a) for dev, a in amounts.items()
    }
    audit = {d["dev"]: d for d in data["audit"]["devices"]}
    for dev, row in rows.items():
        assert row.cells["uptime"].text.startswith(f"{audit[dev]['up_slots']}/{audit[dev]['counted_slots']} ")
        paid = amounts[dev]
        assert row.cells["balance"].text == str(paid)


def wait_for_pids(proc: subprocess.Popen[str], out: Path, name: str) -> dict[str, int]:
    """The demo's pids.json once it lists ``name``."""
    pids_file = out / "logs" / "pids.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if pids_file.exists():
            pids: dict[str, int] = json.loads(pids_file.read_text() or "{}")
            if name in pids:
                return pids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"the demo did not start {name} within 120 s")


def start_demo(out: Path) -> subprocess.Popen[str]:
    """``edgeproof demo`` with 24 s epochs as this test's child, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--out", str(out), "--epoch-s", "24"],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_stops_every_child(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_demo(out)
    try:
        pids = wait_for_pids(proc, out, "agent-cam-3")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "edgeproof: interrupted" in stderr
    # The step it was in is named as interrupted (which one depends on how fast the machine is).
    assert re.search(r"^failed +[a-z0-9 ()-]+ \([0-9.]+ s\): interrupted$", stdout, re.MULTILINE), stdout
    assert all(gone(pid) for pid in pids.values()), pids


def test_a_dying_coordinator_fails_the_step_by_name_and_stops_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_demo(out)
    try:
        pids = wait_for_pids(proc, out, "agent-cam-1")
        os.kill(pids["coordinator"], signal.SIGKILL)  # a child of the demo this test started
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    error = [line for line in stderr.splitlines() if line.startswith("edgeproof: error:")]
    assert len(error) == 1, stderr
    assert re.fullmatch(
        rf"edgeproof: error: demo step '[a-z0-9 ()-]+' failed: coordinator \(pid {pids['coordinator']}\) "
        r"exited with -9: .*",
        error[0],
    ), error
    assert "fix: see " in stderr and "coordinator.log" in stderr
    assert re.search(r"^│ failed +│", stdout, re.MULTILINE), stdout  # the steps table, failed step last
    pids = json.loads((out / "logs" / "pids.json").read_text())
    assert all(gone(pid) for pid in pids.values()), pids
