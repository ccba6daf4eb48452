"""The coordinator benchmarks run to completion in a tiny mode and print valid JSON with their ratios.

Not timed assertions: the figures themselves are whatever this machine gives.  What is checked
is that each script runs its whole path (real Mosquitto, real PostgreSQL, real coordinator
processes), accounts for every message, and reports ratios that follow from its own samples.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _run(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_coordinator_benchmarks_help_names_json() -> None:
    for script in ("coordinator_core.py", "coordinator_mqtt.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "--json" in done.stdout and "--messages" in done.stdout and "goal" in done.stdout.lower()


def test_coordinator_core_tiny_run_reports_ratio_and_phases_on_both_backends() -> None:
    report = _run("coordinator_core.py", "--messages", "200", "--devices", "20", "--rounds", "1")
    assert (report["messages"], report["devices"], report["rounds"]) == (200, 20, 1)
    raw = report["raw_verify_per_s"]
    assert len(raw["samples"]) == 3  # one before the first round, one after each round per backend
    assert raw["median"] == pytest.approx(statistics.median(raw["samples"]), abs=0.1)
    assert set(report["backends"]) == {"sqlite", "postgresql"}
    for backend, entry in report["backends"].items():
        core = entry["core_per_s"]
        assert len(core["samples"]) == 1 and core["median"] > 0, backend
        assert entry["ratio_core_over_raw_verify"] == pytest.approx(
            core["median"] / raw["median"], rel=1e-3, abs=1e-4
        )
        assert entry["goal_met"] is (entry["ratio_core_over_raw_verify"] >= report["goal"])
        profile = entry["profile"]
        calls = profile["calls_per_message"]
        # every heartbeat was parsed, verified, followed on its chain and got one signed verdict
        assert calls["parse"] == calls["verify"] == calls["chain"] == calls["policy"] == 1.0, calls
        assert calls["verdict_sign"] == 2.0  # the verdict body and ChainSigner.next
        shares = profile["share"]
        assert 0.9 <= sum(shares.values()) <= 1.01, shares  # exclusive sections cover the path
        assert all(v >= 0 for v in shares.values())
        assert entry["bound"].split()[0] in shares
        spent = sum(profile["us_per_message"].values()) * 200 / 1e6
        assert spent == pytest.approx(profile["wall_s"], rel=0.1)


def test_coordinator_mqtt_tiny_run_accounts_for_every_message_and_reports_both_ratios() -> None:
    report = _run("coordinator_mqtt.py", "--messages", "200", "--devices", "20", "--rounds", "1")
    scenarios = report["scenarios"]
    assert set(scenarios) == {"bare", "sqlite x1", "sqlite x2", "postgresql x1", "postgresql x2"}
    bare = scenarios["bare"]["wall_per_s"]["median"]
    assert bare > 0
    for name, entry in scenarios.items():
        assert entry["bound"] and entry["cores"]["machine"] > 0, name
        if name == "bare":
            assert "per_process" not in entry
            continue
        processes = int(name.split("x")[1])
        (per_process,) = entry["per_process"]  # one round
        assert len(per_process) == processes
        # the processes' batch_committed logs add up to every message, each committed once
        assert sum(m for m, _ in per_process) == 200, per_process
        assert all(cpu > 0 for m, cpu in per_process if m), per_process
        expected = sum(m / cpu for m, cpu in per_process if m)
        assert entry["per_cpu_s"]["median"] == pytest.approx(expected, rel=0.01)
    for backend in ("sqlite", "postgresql"):
        e2e = report["e2e_coordinator_over_bare"][backend]
        one = scenarios[f"{backend} x1"]
        two = scenarios[f"{backend} x2"]
        assert e2e["ratio"] == pytest.approx(one["wall_per_s"]["median"] / bare, rel=1e-3, abs=1e-4)
        assert e2e["goal_met"] is (e2e["ratio"] >= report["goals"]["e2e"])
        scale = report["scale_two_over_one"][backend]
        ratio = two["per_cpu_s"]["median"] / one["per_cpu_s"]["median"]
        assert scale["ratio_per_cpu_s"] == pytest.approx(ratio, rel=1e-3, abs=1e-4)
        assert scale["goal_met"] is (scale["ratio_per_cpu_s"] >= report["goals"]["scale"])
        assert scale["ratio_wall"] == pytest.approx(
            two["wall_per_s"]["median"] / one["wall_per_s"]["median"], rel=1e-3
        )


def test_rewards_claims_tiny_run_pays_every_device_its_allocation() -> None:
    report = _run("rewards_claims.py", "--devices", "12", timeout=300)
    settled, claims = report["settlement"], report["claims"]
    assert report["devices"] == 12 and settled["leaves"] == 12
    assert claims["paid"] == 12 and claims["tokens_arrived"] == settled["allocated"] > 0
    assert set(claims["rates_per_s"]) == {"issue", "verify_sign", "send", "confirm", "receipts"}
    for phase, seconds in claims["phase_s"].items():
        assert claims["rates_per_s"][phase] == pytest.approx(12 / seconds, rel=0.1), phase
    slowest = max(claims["phase_s"], key=lambda k: claims["phase_s"][k])
    assert claims["bound"].startswith(f"{slowest}: ")


def test_fleet_rollout_tiny_run_commits_every_device_and_serves_each_file_once_per_device() -> None:
    report = _run(
        "fleet_rollout.py", "--devices", "20", "--model-mb", "0.2", "--runs", "1", "--stages", "50,100"
    )
    assert report["committed"] == 20 and report["every_run_served_each_file_once_per_device"] is True
    assert report["bytes_served"] == report["bytes_expected"] == 20 * report["release_bytes"]
    assert [d.split(" after ")[0] for d in report["controller_decisions"]] == ["advance", "done"]
    seconds = report["seconds_publish_to_all_committed"]
    assert seconds["median"] == statistics.median(seconds["samples"]) and len(seconds["samples"]) == 1
    assert report["bound"]
