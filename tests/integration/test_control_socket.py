"""The daemon's local control socket, against a real daemon process and a real Mosquitto.

Each test runs ``python -m agent run`` (the shipped EfficientNet-Lite0 model, a synthetic
source, 1 s heartbeats; see tests/support/daemon_rig.py) and talks to ``state_dir/control.sock``
with the real client, the real CLI (``edgeproof status --live``) or raw sockets:

* ``status --live`` is the daemon's own state: its pid, and a chain head that is exactly the
  hash of the envelope with that seq as the broker delivered it; ``ping`` runs on the main
  thread and names the chain head the same way;
* hostile clients (oversized, malformed, unknown op, unknown key, silent, 200 connections at
  once) are refused by reason and counted, while heartbeats and watchdog pings keep their
  schedule;
* a client with another uid is kept out by the socket's mode and, past it, by SO_PEERCRED;
* a socket left by kill -9 is replaced on restart, a second daemon on the same state dir is
  refused before it touches the broker, and a non-socket at the path stops the daemon.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.device.control_client import ControlClient
from agent.device.control_protocol import MAX_REQUEST_BYTES, SOCKET_NAME
from tests.support.daemon_rig import (
    DEV,
    ROOT,
    DaemonProcess,
    capture_of,
    clean_env,
    collector_for,
    final_chain,
    wait_until,
    write_config,
)
from tests.support.mosquitto import Collector, MosquittoBroker

# Timing: heartbeats and the watchdog must keep their schedule under hostile clients; it runs in the
# xdist group "cpu", never beside the CPU-bound modules.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

NOBODY = 65534
#: READ_TIMEOUT_S of agent/device/control.py, as a client sees it.
READ_TIMEOUT_S = 5.0
HEARTBEAT_S = 1.0
#: Heartbeats and watchdog pings must keep their period within 1 s, whatever the socket gets.
PERIOD_SLACK_S = 1.0


class Daemon(DaemonProcess):
    """The reliability tests' daemon process, optionally with extra environment (systemd's)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(config, log_path)
        self.env = env or {}

    def start(self) -> None:
        self._listening_before = self._listening()
        super().start()

    @property
    def socket(self) -> Path:
        return self.state_dir / SOCKET_NAME

    def _listening(self) -> int:
        if not self.log_path.exists():
            return 0
        return sum(r.get("msg") == "control socket listening" for r in self.logs())

    def wait_listening(self, timeout: float = 90) -> None:
        """Until this start's daemon logs that its control socket listens."""

        def ready() -> bool:
            assert self.alive(), f"daemon exited:\n{self.tail()}"
            return self._listening() > self._listening_before

        wait_until(ready, timeout, "the control socket to listen")


def edgeproof(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def status_live(config: Path) -> dict[str, Any]:
    done = edgeproof(config, "status", "--live", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@contextlib.contextmanager
def rig(tmp_path: Path, name: str, env: dict[str, str] | None = None) -> Iterator[tuple[Daemon, Collector]]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, name)
    daemon = Daemon(write_config(tmp_path / "device", broker), tmp_path / "daemon.log", env)
    try:
        daemon.start()
        daemon.wait_listening()
        yield daemon, collector
    finally:
        daemon.ensure_dead()
        collector.close()
        broker.kill()


def heartbeat_ts(collector: Collector) -> list[int]:
    return [env.ts for env in capture_of(collector).of_kind("heartbeat")]


def gaps_s(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# ---------------------------------------------------------------------------------------- live state


def test_status_live_and_ping_are_the_running_daemons_own_chain_head(tmp_path: Path) -> None:
    with rig(tmp_path, "control-live") as (daemon, collector):
        wait_until(lambda: len(heartbeat_ts(collector)) >= 3, 90, "three heartbeats")
        st = os.lstat(daemon.socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()

        before = daemon.status()  # status.json, rewritten every 2 s
        live = status_live(daemon.config)
        assert live["pid"] == daemon.pid and live["running"] is True
        for key in ("device_id", "agent_version", "profile", "started_ms", "model"):
            assert live[key] == before[key], key
        assert live["device_id"] == DEV
        seq, head = live["chain"]["seq"], live["chain"]["head"]
        assert seq >= before["chain"]["seq"]
        # The head the daemon reports is the hash of the envelope with that seq, as delivered.
        wait_until(lambda: seq in capture_of(collector).first, 30, f"envelope seq {seq} at the broker")
        assert capture_of(collector).first[seq].hash == head
        assert live["control"]["answered"].get("status", 0) == 0  # counted after the snapshot
        assert live["control"]["refused"] == {}

        ping = ControlClient(daemon.socket).call("ping")
        assert ping["thread"] == "MainThread"  # run by the daemon's main loop, not the server thread
        assert ping["seq"] >= seq
        wait_until(lambda: ping["seq"] in capture_of(collector).first, 30, f"envelope seq {ping['seq']}")
        assert capture_of(collector).first[ping["seq"]].hash == ping["head"]

        # A queued op waits for the loop's next pass; the loop wakes at least once a second.
        latencies = []
        client = ControlClient(daemon.socket)
        for _ in range(5):
            started = time.monotonic()
            assert client.call("ping")["thread"] == "MainThread"
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0 + PERIOD_SLACK_S, latencies
        print(f"ping round trips (s): {' '.join(f'{t:.3f}' for t in latencies)}")

        text = edgeproof(daemon.config, "status", "--live")
        assert text.returncode == 0, text.stderr
        assert "chain seq / last acked" in text.stdout and "running" in text.stdout
        again = status_live(daemon.config)
        assert again["control"]["answered"] == {"status": 2, "ping": 6}

        assert daemon.terminate() == 0
        assert not os.path.lexists(daemon.socket)  # removed at shutdown
        down = edgeproof(daemon.config, "status", "--live")
        assert down.returncode == 13
        assert down.stderr == (
            f"edgeproof: error: the daemon is not running (no control socket at {daemon.socket})\n"
            "  fix: start it: systemctl start edgeproof (or edgeproof run --config FILE)\n"
        )
        # The status file still answers for a stopped daemon.
        assert edgeproof(daemon.config, "status", "--json").returncode == 0


# ---------------------------------------------------------------------------------------- hostile clients


def read_line(sock: socket.socket) -> dict[str, Any] | None:
    buffer = b""
    while b"\n" not in buffer:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return None
        buffer += chunk
    answer: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return answer


def outcome(answer: dict[str, Any] | None) -> str:
    if answer is None:
        return "closed"
    if answer["ok"]:
        return "ok"
    return str(answer["error"]["reason"])


REQUESTS: list[tuple[str, bytes]] = [
    ("status", b'{"op":"status","id":1}\n'),
    ("ping", b'{"op":"ping","id":2}\n'),
    ("malformed", b'{"op": "status", "id": 3,,}\n'),
    ("unknown_op", b'{"op":"sign_anything","id":4}\n'),
    ("bad_request", b'{"op":"status","id":5,"verbose":true}\n'),
    ("oversized", b'{"op":"status","id":6,"pad":"' + b"x" * (MAX_REQUEST_BYTES + 10) + b'"}\n'),
    ("silent", b""),
]


def one_client(path: Path, index: int) -> list[str]:
    """One hostile or honest connection; returns what it got back, per line sent."""
    kind, line = REQUESTS[index % len(REQUESTS)]
    got: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        if kind == "silent":
            sock.shutdown(socket.SHUT_WR)  # says nothing and hangs up: the server just closes
            return [outcome(read_line(sock))]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(line)
        got.append(outcome(read_line(sock)))
        if got[0] not in ("too_many_connections", "oversized"):
            # The same connection stays usable after a refusal.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(REQUESTS[0][1])
            got.append(outcome(read_line(sock)))
    return got


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: records each datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def watchdog_times(self) -> list[float]:
        return [t for t, m in list(self.messages) if m == "WATCHDOG=1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_hostile_clients_are_refused_by_reason_while_heartbeats_and_watchdog_keep_time(
    tmp_path: Path,
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}  # a ping every 1 s
    try:
        with rig(tmp_path, "control-flood", env) as (daemon, collector):
            wait_until(lambda: len(heartbeat_ts(collector)) >= 3, 90, "three heartbeats")

            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.settimeout(30)
            idle.connect(str(daemon.socket))  # says nothing: must time out and free its slot
            idle_opened = time.monotonic()
            flood_start_ms = time.time_ns() // 1_000_000
            flood_start = time.monotonic()
            results: dict[int, list[str]] = {}
            errors: list[BaseException] = []

            def worker(first: int) -> None:
                # At least 200 connections, and the flood lasts until the idle one timed out.
                i = first
                while i < 200 or time.monotonic() < flood_start + READ_TIMEOUT_S:
                    try:
                        results[i] = one_client(daemon.socket, i)
                    except BaseException as exc:
                        errors.append(exc)
                    i += 25

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(25)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            burst_s = time.monotonic() - flood_start
            idle_answer = outcome(read_line(idle))
            idle_after = time.monotonic() - idle_opened
            idle.close()
            time.sleep(3 * HEARTBEAT_S)  # heartbeats after the flood, too
            flood_end_ms = time.time_ns() // 1_000_000
            flood_s = time.monotonic() - flood_start

            assert errors == [], errors[:3]
            # Every connection got an answer (or a clean close after hanging up itself).
            assert len(results) >= 200
            assert idle_answer == "idle_timeout"
            assert READ_TIMEOUT_S - 0.5 < idle_after < READ_TIMEOUT_S + 5

            seen: Counter[str] = Counter()
            for i, got in results.items():
                kind = REQUESTS[i % len(REQUESTS)][0]
                if got[0] == "too_many_connections":
                    seen["too_many_connections"] += 1
                    continue
                if kind == "silent":
                    assert got == ["closed"], (i, got)
                    continue
                expected_first = "ok" if kind in ("status", "ping") else kind
                assert got[0] == expected_first, (i, kind, got)
                if kind == "oversized":
                    assert len(got) == 1  # the connection was closed
                else:
                    assert got[1] == "ok", (i, kind, got)  # and the connection still serves
                seen[kind] += 1
            served = {
                k: seen[k] for k in ("status", "ping", "malformed", "unknown_op", "bad_request", "oversized")
            }
            assert all(n >= 1 for n in served.values()), served

            live = status_live(daemon.config)
            refused = live["control"]["refused"]
            expected = {
                "too_many_connections": seen["too_many_connections"],
                "malformed": seen["malformed"],
                "unknown_op": seen["unknown_op"],
                "bad_request": seen["bad_request"],
                "oversized": seen["oversized"],
                "idle_timeout": 1,
            }
            assert refused == {k: n for k, n in expected.items() if n}, refused
            assert live["control"]["connections"] == 1  # only the status --live call itself

            # The daemon's schedule held: heartbeats (signed on the main loop) and watchdog pings.
            beats = [
                ts / 1000 for ts in heartbeat_ts(collector) if flood_start_ms - 2000 <= ts <= flood_end_ms
            ]
            assert len(beats) >= int(flood_s) - 1, (len(beats), flood_s)
            assert max(gaps_s(beats)) <= HEARTBEAT_S + PERIOD_SLACK_S, gaps_s(beats)
            pings = [t for t in notify.watchdog_times() if flood_start - 2 <= t]
            assert len(pings) >= int(flood_s) - 1, (len(pings), flood_s)
            assert max(gaps_s(pings)) <= 1.0 + PERIOD_SLACK_S, gaps_s(pings)
            assert daemon.alive()
            # Every refusal is counted, but the journal gets at most one line per reason a second.
            logged = [r for r in daemon.logs() if r.get("msg") == "control request refused"]
            assert len(logged) <= len(expected) * (flood_s + 2), len(logged)
            assert len(logged) + sum(r["suppressed"] for r in logged) <= sum(refused.values())
            print(
                f"flood: {len(results)} connections in {burst_s:.1f} s, window {flood_s:.1f} s, outcomes {dict(seen)}, heartbeat gaps max {max(gaps_s(beats)):.2f} s, "
                f"watchdog gaps max {max(gaps_s(pings)):.2f} s"
            )
    finally:
        notify.close()


# ---------------------------------------------------------------------------------------- other users


NOBODY_CLIENT = """
import sys
from pathlib import Path
from agent.device.control_client import ControlClient, ControlError, ControlRefusedError
try:
    ControlClient(Path(sys.argv[1]), timeout_s=10).call("status")
except ControlRefusedError as exc:
    print("refused", exc.reason, exc.message)
except ControlError as exc:
    print(type(exc).__name__, exc.message)
else:
    print("answered")
"""


#: The client and what it imports (standard library only besides these), copied byte for byte
#: into a folder uid 65534 can read: the checkout may sit where it cannot (a 0700 temp folder).
CLIENT_MODULES = (
    "agent/__init__.py",
    "agent/errors.py",
    "agent/device/__init__.py",
    "agent/device/control_client.py",
    "agent/device/control_protocol.py",
)


def nobody_pythonpath() -> str:
    folder = Path(tempfile.mkdtemp(prefix="edgeproof-client-"))
    atexit.register(shutil.rmtree, folder, True)
    os.chmod(folder, 0o755)
    for name in CLIENT_MODULES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        shutil.copyfile(ROOT / name, target)
        os.chmod(target, 0o644)
    return str(folder)


_NOBODY_PATH: list[str] = []


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if not _NOBODY_PATH:
        _NOBODY_PATH.append(nobody_pythonpath())
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": _NOBODY_PATH[0]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def nobody_python() -> str:
    """A Python that uid 65534 can run and import the client with (the venv may sit under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if as_nobody([python, "-c", "import agent.device.control_client"]).returncode == 0:
            return python
    pytest.fail(
        f"uid {NOBODY} can run no Python that imports agent from {ROOT} (tried {sys.executable} "
        "and /usr/bin/python3); the other-uid test needs one",
        pytrace=False,
    )


def client_as_nobody(python: str, path: Path) -> str:
    """The real client, run as uid/gid 65534 with no supplementary groups."""
    done = as_nobody([python, "-c", NOBODY_CLIENT, str(path)])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_client_with_another_uid_is_kept_out_by_the_mode_and_by_peercred() -> None:
    assert os.geteuid() == 0, "this test runs the client as another uid, so it needs root"
    python = nobody_python()
    # A directory nobody can traverse, unlike pytest's 0700 tmp root (this test only).
    workdir = Path(tempfile.mkdtemp(prefix="edgeproof-ctl-"))
    try:
        os.chmod(workdir, 0o711)
        with rig(workdir, "control-uid") as (daemon, _collector):
            for folder in (daemon.config.parent, daemon.state_dir):
                os.chmod(folder, 0o711)
            # The socket file is 0600: the kernel refuses the connect itself.
            assert client_as_nobody(python, daemon.socket) == (
                f"ControlPermissionError permission denied on the control socket {daemon.socket}"
            )
            assert status_live(daemon.config)["control"]["refused"] == {}
            # Past the mode (loosened by hand here), SO_PEERCRED still refuses uid 65534.
            os.chmod(daemon.socket, 0o666)
            assert client_as_nobody(python, daemon.socket) == (
                "refused peer_refused the daemon refused status: peer_refused: "
                f"uid {NOBODY} may not use this socket (only uid 0)"
            )
            live = status_live(daemon.config)
            assert live["control"]["refused"] == {"peer_refused": 1}
            assert live["control"]["answered"] == {"status": 1}  # only root's own earlier call
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- the socket file


def test_a_stale_socket_after_kill9_is_replaced_and_a_second_daemon_or_a_non_socket_is_refused(
    tmp_path: Path,
) -> None:
    with rig(tmp_path, "control-stale") as (daemon, collector):
        wait_until(lambda: len(heartbeat_ts(collector)) >= 2, 90, "two heartbeats")
        daemon.kill9()
        assert stat.S_ISSOCK(os.lstat(daemon.socket).st_mode)  # left behind, nobody listening
        stale = edgeproof(daemon.config, "status", "--live")
        assert stale.returncode == 13
        assert stale.stderr == (
            "edgeproof: error: the daemon is not running "
            f"(stale control socket at {daemon.socket}: nothing listens on it)\n"
            "  fix: start it: systemctl start edgeproof (or edgeproof run --config FILE)\n"
        )
        seq_killed, _ = final_chain(daemon.state_dir / "outbox.sqlite3")

        daemon.start()
        daemon.wait_listening()
        live = status_live(daemon.config)
        assert live["pid"] == daemon.pid
        assert live["chain"]["seq"] >= seq_killed
        assert any(r.get("msg") == "stale control socket removed" for r in daemon.logs())

        # A second daemon on the same state dir would be a second signer: it stops first thing.
        second = Daemon(daemon.config, tmp_path / "second.log")
        second.start()
        assert second.proc is not None
        assert second.proc.wait(timeout=90) == 10
        assert (
            f"edgeproof: error: another daemon is serving {daemon.socket}: "
            "two daemons on one state dir would fork the chain"
        ) in second.log_path.read_text()
        after = status_live(daemon.config)
        assert after["pid"] == daemon.pid and after["chain"]["seq"] > live["chain"]["seq"]
        assert capture_of(collector).forks == []
        assert daemon.terminate() == 0

        # Something that is not a socket at the path: the daemon refuses to start (exit 12).
        daemon.socket.write_text("not a socket\n")
        seq_before = final_chain(daemon.state_dir / "outbox.sqlite3")
        daemon.start()
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=90) == 12
        assert (
            f"edgeproof: error: {daemon.socket} exists and is not a socket; the daemon will not replace it"
            in daemon.log_path.read_text()
        )
        assert daemon.socket.read_text() == "not a socket\n"
        assert final_chain(daemon.state_dir / "outbox.sqlite3") == seq_before  # it signed nothing
