"""`edgeproof bench --json` end to end on a shipped model: fields, consistency, and memory measured per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CARD = ROOT / "models" / "efficientnet-lite0-int8.toml"

# CPU-bound: runs on the one xdist worker that takes the "cpu" group, never beside another of them.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]


def test_bench_json_reports_both_loops_and_each_process_peak_rss() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "bench",
            "--model",
            str(CARD),
            "--frames",
            "250",
            "--threads",
            "1",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "efficientnet-lite0-int8"
    assert (report["backend"], report["provider"], report["threads"]) == ("onnx", "CPUExecutionProvider", 1)
    assert report["leaf_hash"] == "blake3"
    assert report["frames"] == 250 and report["blocks"] == 3  # 100-frame blocks: 100 + 100 + 50
    assert report["bare_fps"] > 0 and report["agent_fps"] > 0
    assert report["ratio_of_totals"] == pytest.approx(report["agent_fps"] / report["bare_fps"], abs=1e-3)
    assert 0 < report["ratio_p10"] <= report["ratio"]
    # Each child measures its own VmHWM: the agent imports OpenCV and pydantic on top of the
    # bare runtime, so it must come out larger (equal figures meant an inherited ru_maxrss).
    assert report["agent_peak_rss_mb"] > report["bare_peak_rss_mb"] > 20
    delta = report["agent_peak_rss_mb"] - report["bare_peak_rss_mb"]
    assert report["rss_delta_mb"] == pytest.approx(delta, abs=0.11)
    # The split at the end of the run: the agent's own (anonymous) memory and its extra mapped code
    # (OpenCV, pydantic-core) both grow; neither can be negative for a process that imports more.
    assert report["anon_delta_mb"] > 0 and report["file_delta_mb"] > 0
