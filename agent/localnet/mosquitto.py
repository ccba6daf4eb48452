"""A real Mosquitto broker on a free 127.0.0.1 port, for `make demo` and the tests.

    broker = MosquittoBroker(workdir)           # writes mosquitto.conf into workdir
    broker.start()                              # waits until the port accepts connections
    broker.stop(); broker.start()               # outage on the *same* port
    broker.kill()                               # SIGKILL
    broker.log_text()                           # the broker's own log (log_type all)

``persistence=True`` keeps sessions (subscriptions, queued messages) across stop()/start().
``extra_conf`` is appended after the ``listener`` line, so it can hold listener options
(``cafile``, ``certfile``, ``keyfile``, ``require_certificate``) as well as global ones
(``password_file``, ``acl_file``, ``allow_anonymous``).  ``conf_text`` replaces the whole
configuration (it must then hold ``listener <port> 127.0.0.1`` itself).  Only processes this
module started are signalled, by their pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import EdgeproofError


class BrokerError(EdgeproofError):
    """The local broker cannot be found or started."""


CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


def mosquitto_binary() -> str:
    """Path of the mosquitto executable, or a failure telling how to install it (never a skip)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto is not installed, but the demo and the integration tests need a real broker: "
        "run `apt-get install mosquitto mosquitto-clients` (Debian/Ubuntu) and re-run the tests"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MosquittoBroker:
    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        anonymous: bool = True,
        persistence: bool = False,
        conf_text: str | None = None,
        name: str = "mosquitto",
    ) -> None:
        self.binary = mosquitto_binary()
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / f"{name}.conf"
        self.log_path = self.workdir / f"{name}.log"
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.persistence = persistence
        self.conf_text = conf_text
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.write_conf()

    def write_conf(self) -> None:
        if self.conf_text is not None:
            # A complete configuration (e.g. the production one rendered for tests); it must
            # contain `listener {self.port} 127.0.0.1`.
            extra = ["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
            self.conf_path.write_text("\n".join([*extra, self.conf_text.strip()]) + "\n", encoding="utf-8")
            return
        lines = [
            "# written by tests/support/mosquitto.py",
            "per_listener_settings false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.persistence:
            # Sessions and queued QoS 1 messages survive stop()/start() (saved at SIGTERM).
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # do not drop to the 'mosquitto' user: it cannot read tmp_path
        lines.append(f"allow_anonymous {'true' if self.anonymous else 'false'}")
        lines.append(f"listener {self.port} {self.host}")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BrokerError(
                    f"mosquitto exited with {self.process.returncode} at start; stderr: {err.strip()}; "
                    f"log: {self.log_text()[-2000:]}"
                )
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within {timeout}s"
        )

    def _signal(self, sig: signal.Signals, wait: float) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker (by its pid) and wait until it has exited and freed the port."""
        self._signal(signal.SIGTERM, timeout)
        deadline = time.monotonic() + timeout
        while port_accepts(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
