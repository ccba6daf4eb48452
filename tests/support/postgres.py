"""A real PostgreSQL server for the tests, on a free 127.0.0.1 port.

    server = PostgresServer()      # initdb into a fresh private folder
    server.start()                 # pg_ctl start -w; server.pid is the postmaster's pid
    url = server.create_schema("t1")   # or create_database("t1")
    server.stop(); server.start()  # an outage on the same port and data
    server.cleanup()               # stop (if running) and remove the folder

The binaries are found on PATH or in Debian's /usr/lib/postgresql/<version>/bin (``make
test`` installs the ``postgresql`` package when they are missing).  PostgreSQL refuses to run
as root, so when the tests run as root the server runs as the ``postgres`` user (``nobody``
when there is none) through ``runuser``; its folder is then made under the system temp dir,
since pytest's own tmp folders are private to root.  Only the server this helper started is
ever stopped: ``pg_ctl stop`` of its own data folder, or a signal to its own pid.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from agent.localnet.mosquitto import free_port, port_accepts

USER = "edgeproof"


class PostgresMissingError(RuntimeError):
    pass


def pg_binary(name: str) -> str:
    """Path of a PostgreSQL server binary (initdb, pg_ctl), or a failure saying how to install it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise PostgresMissingError(
        f"PostgreSQL's {name} is not installed, but the coordinator tests need a real server: "
        "run `apt-get install postgresql` (Debian/Ubuntu) or `make test`, then re-run the tests"
    )


def _server_user() -> str | None:
    """The unprivileged user to run the server as (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresMissingError(
        "running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL"
    )


class PostgresServer:
    def __init__(self) -> None:
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="edgeproof-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.pid: int | None = None
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self._run(
            [pg_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]
        )

    def _run(self, cmd: list[str], timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", self.user, "--", *cmd] if self.user is not None else cmd
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self.log_text()}"
            )
        return proc

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                pg_binary("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        deadline = time.monotonic() + 30
        while not port_accepts("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not open port {self.port}:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.pid is None:
            return
        self._run([pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        self.pid = None

    def kill(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.pid = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_schema(self, name: str) -> str:
        """A fresh, empty schema; the URL makes it the connection's search_path (cheaper than a database)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
