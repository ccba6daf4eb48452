"""A loopback HTTP file server with ``Range`` support and fault injection, for download tests.

``with ArtifactServer({"model.onnx": data}) as server:`` serves ``GET server.url("model.onnx")``
from a daemon thread on ``127.0.0.1`` and a free port.  ``Range: bytes=N-`` is answered with
``206`` and ``Content-Range`` (``416`` when ``N`` is at or past the end); an unknown path is
``404``.  Every response closes its connection.  Faults, settable per test (thread-safe):

- ``drop_after`` / ``drop_times``: send that many body bytes, then close the connection, for the
  next ``drop_times`` responses with a body;
- ``status_override`` / ``status_times``: answer that status (empty body) to the next
  ``status_times`` requests;
- ``ignore_range``: always answer ``200`` with the whole body;
- ``extra_bytes``: append that many ``0xff`` bytes to every file (Content-Length includes them);
- ``omit_length``: send no ``Content-Length`` (the body ends when the connection closes);
- ``trickle_s``: send one byte every ``trickle_s`` seconds (the body, or with ``trickle_headers``
  the whole response from the status line on), until the client hangs up or the server closes;
- ``redirects``: path -> ``Location``: answer ``redirect_status`` (302) with that location.

``ArtifactServer(files, tls=context)`` also speaks TLS on the same port: a connection that opens
with a TLS handshake is wrapped with the server-side ``context``, any other is plain HTTP, so
``server.url(name, "https")`` and ``server.url(name)`` share one origin's host and port.

``server.requests`` records the ``Range`` header (``None`` when absent) of each request that is
not redirected, in order; ``server.paths`` every request's scheme and path (``"https /model.onnx"``).
Nothing is written to stderr: request logging and handler errors are swallowed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ArtifactServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's reverse DNS lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The client hung up (a test aborting a download on purpose): nothing to report."""

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: wrap it in TLS when it opens with a TLS handshake."""
        context, conn = self.owner.tls, request
        if context is not None:
            request.settimeout(5.0)
            try:
                if request.recv(1, socket.MSG_PEEK) == b"\x16":  # TLS record type "handshake"
                    conn = context.wrap_socket(request, server_side=True)
            except OSError:  # includes ssl.SSLError: a client that gave up on the handshake
                return
            conn.settimeout(None)
        try:
            super().finish_request(conn, client_address)
        finally:
            if conn is not request:
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        self.server.owner._serve(self)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.server.owner.trickle_headers:
            self.wfile = _Trickle(self.wfile, self.server.owner)  # type: ignore[assignment]
        super().send_response(code, message)


class _Trickle:
    """A writer that sends one byte every ``trickle_s`` (stops when the server closes)."""

    def __init__(self, wfile: Any, owner: ArtifactServer) -> None:
        self._wfile, self._owner = wfile, owner

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            if self._owner.closing.wait(self._owner.trickle_s or 0.0):
                raise ConnectionAbortedError("server closing")
            self._wfile.write(data[i : i + 1])
            self._wfile.flush()
        return len(data)

    def flush(self) -> None:
        self._wfile.flush()


class ArtifactServer:
    """Serve ``files`` (name -> bytes) at ``http://127.0.0.1:<port>/<name>``."""

    def __init__(self, files: dict[str, bytes], *, tls: ssl.SSLContext | None = None) -> None:
        self.files = dict(files)
        self.tls = tls
        self.requests: list[str | None] = []
        self.paths: list[str] = []
        self.trickle_s: float | None = None
        self.trickle_headers = False
        self.redirects: dict[str, str] = {}
        self.redirect_status = 302
        self.closing = threading.Event()
        self.drop_after: int | None = None
        self.drop_times = 1
        self.status_override: int | None = None
        self.status_times = 1
        self.ignore_range = False
        self.extra_bytes = 0
        self.omit_length = False
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="artifact-server",
            daemon=True,
        )

    def url(self, name: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _take_faults(self, range_header: str | None) -> tuple[int | None, int | None]:
        """Record the request; consume and return (status override, drop limit) for it."""
        with self._lock:
            self.requests.append(range_header)
            status, drop = self.status_override, None
            if status is not None:
                self.status_times -= 1
                if self.status_times <= 0:
                    self.status_override = None
            elif self.drop_after is not None:
                drop = self.drop_after
                self.drop_times -= 1
                if self.drop_times <= 0:
                    self.drop_after = None
            return status, drop

    def _serve(self, handler: _Handler) -> None:
        range_header = handler.headers.get("Range")
        scheme = "https" if isinstance(handler.connection, ssl.SSLSocket) else "http"
        with self._lock:
            self.paths.append(f"{scheme} {handler.path}")
        location = self.redirects.get(handler.path.lstrip("/"))
        if location is not None:
            self._head(handler, self.redirect_status, {"Location": location, "Content-Length": "0"})
            return
        status, drop = self._take_faults(range_header)
        body = self.files.get(handler.path.lstrip("/"))
        if status is not None or body is None:
            self._head(handler, 404 if status is None else status, {"Content-Length": "0"})
            return
        body += b"\xff" * self.extra_bytes
        start, headers = 0, {}
        match = _RANGE.match(range_header or "")
        if match is not None and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self._head(handler, 416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
                return
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        if not self.omit_length:
            headers["Content-Length"] = str(len(body) - start)
        self._head(handler, 206 if "Content-Range" in headers else 200, headers)
        payload = body[start:] if drop is None else body[start : start + drop]
        with contextlib.suppress(OSError):  # the client gave up (too_long, cancelled): expected
            if self.trickle_s is not None and not self.trickle_headers:
                _Trickle(handler.wfile, self).write(payload)
            else:
                handler.wfile.write(payload)

    @staticmethod
    def _head(handler: _Handler, status: int, headers: dict[str, str]) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Connection", "close")
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
