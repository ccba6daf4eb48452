"""uvicorn in a daemon thread of the coordinator process, on a socket bound up front.

:meth:`HttpServer.start` binds the listen address in the calling thread, so a port in use
is a :class:`~agent.errors.ConfigError` before anything else starts, then runs uvicorn on
that socket in a daemon thread (uvicorn installs no signal handlers off the main thread: the
service keeps its own SIGTERM handling).  :meth:`HttpServer.stop` asks uvicorn to exit and
joins the thread.  uvicorn is told not to configure logging (only ``agent.cli`` does).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from agent.errors import ConfigError

log = logging.getLogger("edgeproof.coordinator")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); ConfigError with the cause when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: in use stays an error
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(
            f"[http] listen {where} cannot be used: {exc.strerror or exc}",
            hint='another process listens there: set [http] listen to a free port, or "" to serve no dashboard',
        ) from exc
    return sock


class HttpServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self.host = host
        self._sock = bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            server_header=False,
            limit_concurrency=32,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="edgeproof-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the dashboard's HTTP server did not start on {self.url}")
            time.sleep(0.01)
        log.info("http_listening", extra={"host": self.host, "port": self.port, "url": self.url})

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        log.info("http_stopped", extra={"port": self.port})
