"""A real `edgeproof chain localnet` subprocess on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Localnet:
    """``start()`` waits for the ready line and sets :attr:`url`; ``stop()`` sends SIGTERM (snapshot saved)."""

    def __init__(
        self,
        *,
        slot_ms: int = 50,
        validity_slots: int = 150,
        snapshot: Path | None = None,
        snapshot_every: float = 5.0,
        log_path: Path | None = None,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.args = [
            *command_prefix,  # e.g. unit_sandbox.command(): under a unit's filters
            sys.executable,
            "-m",
            "agent",
            "--log-level",
            "info",
            "chain",
            "localnet",
            "--port",
            "0",
            "--slot-ms",
            str(slot_ms),
            "--validity-slots",
            str(validity_slots),
            "--snapshot-every",
            str(snapshot_every),
        ]
        if snapshot is not None:
            self.args += ["--snapshot", str(snapshot)]
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.ready: dict[str, Any] = {}

    def start(self, timeout_s: float = 30.0) -> Localnet:
        stderr = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ}
        )
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = self.process.stdout.readline()
                if line:
                    self.ready = json.loads(line)
                    self.url = str(self.ready["rpc"])
                    return self
            if self.process.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"localnet did not start (exit code {self.process.returncode})")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait; the exit code (0 after a clean shutdown and snapshot)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
