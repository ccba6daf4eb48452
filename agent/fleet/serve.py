"""``edgeproof fleet serve DIR``: release artifacts over HTTP for development and small fleets.

GET and HEAD only; ``Range`` (one range: 206 with ``Content-Range``, 416 when unsatisfiable),
a strong ``ETag`` (the file's sha256, so it is the manifest's hash), ``If-None-Match`` (304),
``Content-Length`` on every answer.  A path that leaves DIR (``..``, a symlink out, an encoded
slash) is refused with 404 and counted as ``path_traversal``; hidden files are not served.
It listens on 127.0.0.1 unless told otherwise.  Production may use any HTTP server or object store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socketserver
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.fleet.http_range import RangeNotSatisfiable, byte_range

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


def resolve_request_path(root: Path, raw_path: str) -> Path | None:
    """The file under ``root`` a request path names, or None if it leaves ``root`` or is hidden."""
    path = unquote(urlsplit(raw_path).path)
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in {".", ".."} or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    candidate = (root / Path(*parts)).resolve()
    if not candidate.is_relative_to(root):
        return None
    return candidate


class ArtifactHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root.resolve()
        self.refusals: Counter[str] = Counter()
        #: GET requests answered with a body, per file name, and the body bytes sent.
        self.downloads: Counter[str] = Counter()
        self.bytes_sent = 0
        self._etags: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no reverse DNS lookup of the listen address
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def etag(self, path: Path, stat: os.stat_result) -> str:
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._etags.get(key)
        if cached is None:
            with path.open("rb") as handle:
                cached = '"' + hashlib.file_digest(handle, "sha256").hexdigest() + '"'
            with self._lock:
                self._etags[key] = cached
        return cached

    def served(self, name: str, count: int) -> None:
        with self._lock:
            self.downloads[name] += 1
            self.bytes_sent += count

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1


class _Handler(BaseHTTPRequestHandler):
    server: ArtifactHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "edgeproof-fleet-serve"

    def log_message(self, format: str, *args: Any) -> None:
        """No request lines on stderr: refusals are logged as structured records instead."""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse_method(self) -> None:
        self.server.refuse("method_not_allowed")
        self._empty(405, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    def _empty(self, status: int, *, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, *, body: bool) -> None:
        path = resolve_request_path(self.server.root, self.path)
        if path is None:
            self.server.refuse("path_traversal")
            log.info("fleet_serve_refused", extra={"path": self.path, "reason": "path_traversal"})
            self._empty(404)
            return
        try:
            stat = path.stat()
        except OSError:
            stat = None
        if stat is None or not path.is_file():
            self.server.refuse("unknown_path")
            self._empty(404)
            return
        etag = self.server.etag(path, stat)
        length = stat.st_size
        common = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self.headers.get("If-None-Match") == etag:
            self._empty(304, extra={"ETag": etag})
            return
        header = self.headers.get("Range")
        if header is not None and self.headers.get("If-Range") not in (None, etag):
            header = None  # the file changed since the client's partial copy: send it whole
        try:
            span = byte_range(header, length)
        except RangeNotSatisfiable:
            self.server.refuse("bad_range")
            self._empty(416, extra={**common, "Content-Range": f"bytes */{length}"})
            return
        first, last = span if span is not None else (0, length - 1)
        self.send_response(206 if span is not None else 200)
        for name, value in common.items():
            self.send_header(name, value)
        if span is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{length}")
        self.send_header("Content-Length", str(max(0, last - first + 1)))
        self.end_headers()
        if body and length:
            self.server.served(path.name, self._copy(path, first, last - first + 1))

    def _copy(self, path: Path, offset: int, count: int) -> int:
        sent = 0
        with path.open("rb") as handle:
            handle.seek(offset)
            while count > 0:
                chunk = handle.read(min(_CHUNK, count))
                if not chunk:
                    break
                self.wfile.write(chunk)
                count -= len(chunk)
                sent += len(chunk)
        return sent


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> ArtifactHTTPServer:
    """Bind (``port`` 0: a free one) and return the server; call ``serve_forever`` to run it."""
    return ArtifactHTTPServer(root, (host, port))
