"""How fast a model download honours stop and its deadline against a server that trickles.

A real HTTP server on loopback (the test suite's fault-injecting ArtifactServer) sends one byte
every 0.4 s, in the body and in the headers.  Five times each, the download is stopped 1.3 s in
and the time from ``stop.set()`` to the downloader's return is measured; then one download with
a 3 s deadline shows when the deadline fires.  Issue 6 asks for stop within 1 s and an overall
deadline derived from the declared length and a minimum rate.

    .venv/bin/python benchmarks/download_stop.py
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.device.download import fetch_artifact  # noqa: E402
from agent.errors import DeployError  # noqa: E402
from agent.protocol.messages import Artifact  # noqa: E402
from tests.support.artifact_server import ArtifactServer  # noqa: E402

DATA = bytes(range(256)) * 1000
RUNS = 5


def artifact(server: ArtifactServer) -> Artifact:
    digest = hashlib.sha256(DATA).hexdigest()
    return Artifact(name="m.onnx", url=server.url("m.onnx"), sha256=digest, length=len(DATA))


def stop_latency(server: ArtifactServer) -> tuple[float, str]:
    stop = threading.Event()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            fetch_artifact(artifact(server), Path(tempfile.mkdtemp()), stop=stop, timeout_s=30)
        except DeployError as exc:
            out["reason"] = exc.reason
        out["end"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.3)
    started = time.monotonic()
    stop.set()
    thread.join(10)
    return out["end"] - started, str(out.get("reason"))


def main() -> None:
    with ArtifactServer({"m.onnx": DATA}) as server:
        server.trickle_s = 0.4
        for phase in ("body", "headers"):
            server.trickle_headers = phase == "headers"
            runs = [stop_latency(server) for _ in range(RUNS)]
            latencies = [latency for latency, _ in runs]
            print(
                f"stop during a trickled {phase}: reason {runs[-1][1]}, median {statistics.median(latencies):.3f} s, "
                f"max {max(latencies):.3f} s over {RUNS} runs (bound: 1 s)"
            )
        server.trickle_headers = False
        started = time.monotonic()
        try:
            fetch_artifact(
                artifact(server), Path(tempfile.mkdtemp()), min_rate_bps=10**9, deadline_floor_s=3.0
            )
        except DeployError as exc:
            print(f"deadline 3.0 s: {exc.reason} after {time.monotonic() - started:.3f} s")


if __name__ == "__main__":
    main()
