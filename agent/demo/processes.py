"""The demo's child processes: started with their output in log files, stopped by their pid.

Every child is ``python -m agent ...`` of this very package (``PYTHONPATH`` points at it), or
Mosquitto.  A long-running child's stdout and stderr go to ``logs/NAME.log`` in the output
folder, so runtime chatter (LiteRT's XNNPACK line, paho, onnxruntime) never reaches the demo's
own output.  A one-shot command's stdout is returned to the caller (its ``--json`` document)
and its stderr goes to the log.  :meth:`Supervisor.stop_all` signals only the processes this
supervisor started, newest first: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent
from agent.errors import EdgeproofError
from agent.localnet.mosquitto import MosquittoBroker

PACKAGE_ROOT = Path(agent.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment of every child: no EDGEPROOF_* overrides, this package first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def agent_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Supervisor:
    """Starts children, remembers them, and stops every one of them (by pid) exactly once."""

    def __init__(self, logs: Path, *, cwd: Path) -> None:
        self.logs = logs
        self.cwd = cwd
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.broker: MosquittoBroker | None = None

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start_broker(self, workdir: Path) -> MosquittoBroker:
        broker = MosquittoBroker(workdir, name="mosquitto")
        broker.start()
        self.broker = broker
        self._write_pids()
        return broker

    def spawn(self, name: str, argv: list[str], *, stdout_pipe: bool = False) -> Child:
        """Start a long-running child; stdout (unless piped for a ready line) and stderr to its log."""
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the demo only; it stops them
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        self._write_pids()
        return child

    def _write_pids(self) -> None:
        """``pids.json`` in the log folder: what was started (for the operator, and the tests)."""
        pids = {c.name: c.pid for c in self.children}
        if self.broker is not None and self.broker.process is not None:
            pids["mosquitto"] = self.broker.process.pid
        tmp = self.logs / ".pids.json.tmp"
        tmp.write_text(json.dumps(pids, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.logs / "pids.json")

    def ready_line(self, child: Child, timeout_s: float) -> dict[str, Any]:
        """The first stdout line of ``child`` as JSON (the ready line of localnet / fleet serve)."""
        stream = child.process.stdout
        assert stream is not None
        selector = selectors.DefaultSelector()
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=0.2):
                    line = stream.readline()
                    if line:
                        try:
                            data = json.loads(line)
                        except ValueError:
                            data = None
                        if not isinstance(data, dict):
                            raise EdgeproofError(
                                f"{child.name} printed {line[:200].decode(errors='replace').strip()!r} "
                                "instead of a JSON ready line",
                                hint=f"see {child.log_path}",
                            )
                        return data
                if not child.alive():
                    break
        finally:
            selector.close()
        raise EdgeproofError(
            f"{child.name} printed no ready line within {timeout_s:g} s (exit code {child.process.poll()})",
            hint=f"see {child.log_path}",
        )

    def wait_for_log(self, child: Child, mark: str, timeout_s: float) -> str:
        """Wait until ``mark`` appears in the child's log; the log text."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = child.log_text()
            if mark in text:
                return text
            if not child.alive():
                raise EdgeproofError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.tail()}",
                    hint=f"see {child.log_path}",
                )
            time.sleep(0.1)
        raise EdgeproofError(
            f"{child.name} did not log {mark!r} within {timeout_s:g} s", hint=f"see {child.log_path}"
        )

    def run(self, name: str, args: list[str], *, timeout_s: float = 120.0) -> dict[str, Any]:
        """Run ``edgeproof ARGS --json`` to completion; its JSON output (stderr to the log)."""
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            log.write(f"$ edgeproof {' '.join(args)}\n".encode())
            log.flush()
            done = subprocess.run(
                agent_argv(*args),
                cwd=self.cwd,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout_s,
                check=False,
            )
            log.write(done.stdout)
        if done.returncode != 0:
            last = [line for line in self._text(log_path).splitlines() if line.startswith("edgeproof: error")]
            detail = last[-1] if last else f"see {log_path}"
            raise EdgeproofError(f"`edgeproof {args[0]} {args[1]}` exited with {done.returncode}: {detail}")
        try:
            data = json.loads(done.stdout)
        except ValueError as exc:
            raise EdgeproofError(f"`edgeproof {' '.join(args[:2])}` printed no JSON: {exc}") from exc
        return data if isinstance(data, dict) else {"items": data}

    @staticmethod
    def _text(path: Path) -> str:
        return path.read_text(encoding="utf-8", errors="replace")

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def stop_all(
        self, grace_s: float = 20.0, on_stop: Callable[[Child, int | None], None] | None = None
    ) -> None:
        """SIGTERM every live child (newest first), wait, SIGKILL the ones still running; then the broker."""
        for child in reversed(self.children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.process.wait(timeout=10)
            if child.process.stdout is not None:
                child.process.stdout.close()
            if on_stop is not None:
                on_stop(child, child.process.returncode)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
