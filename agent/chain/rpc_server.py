"""``edgeproof chain localnet``: the ledger behind JSON-RPC over HTTP on loopback.

A stdlib ``ThreadingHTTPServer``; one lock (the ledger's) serialises every call into LiteSVM.
A background tick moves the clock every ``slot_ms`` and writes the snapshot (when anything
changed) every ``snapshot_every_s``; :meth:`LocalnetServer.stop` writes it a last time.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.chain import snapshot
from agent.chain.jsonrpc import MAX_BODY_BYTES, handle_body
from agent.chain.ledger import Ledger
from agent.chain.rpc_errors import INVALID_REQUEST, METHOD_NOT_FOUND, RpcError
from agent.chain.rpc_methods import METHODS
from agent.errors import ConfigError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    #: Headers and body go out in two writes; with Nagle on, a keep-alive client waits out the
    #: peer's delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    #: Seconds a client may take to send its request (a slow body does not hold a thread forever).
    timeout = 10

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._send(
                411, _error_doc(INVALID_REQUEST, "Invalid request: Content-Length required"), close=True
            )
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.server.owner.count(INVALID_REQUEST)
            detail = f"Invalid request: body of {length} bytes exceeds {MAX_BODY_BYTES}"
            self._send(413, _error_doc(INVALID_REQUEST, detail), close=True)
            return
        body = self.rfile.read(length)
        answer = handle_body(body, self.server.owner.call, self.server.owner.count)
        if answer is None:
            self._send(200, None)
        else:
            self._send(200, answer)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_text(200, "ok")
        else:
            self._send_text(405, "Used HTTP Method is not allowed. POST or OPTIONS is required")

    def _send(self, status: int, doc: Any, *, close: bool = False) -> None:
        data = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", extra={"line": format % args})


def _error_doc(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": RpcError(code, message).as_json(), "id": None}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalnetServer


class LocalnetServer:
    def __init__(
        self,
        ledger: Ledger,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        snapshot_path: Path | None = None,
        snapshot_every_s: float = 5.0,
        allow_non_loopback: bool = False,
    ) -> None:
        if not is_loopback(host) and not allow_non_loopback:
            raise ConfigError(
                f"refusing to serve the local ledger on {host}: not a loopback address",
                hint="pass --host explicitly to bind another address",
            )
        self.ledger = ledger
        self.snapshot_path = snapshot_path
        self.snapshot_every_s = snapshot_every_s
        self.errors: Counter[int] = Counter()
        self.requests = 0
        self._count_lock = threading.Lock()
        try:
            self._http = _HTTPServer((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._http.owner = self
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def call(self, method: str, params: list[Any]) -> Any:
        with self._count_lock:
            self.requests += 1
        handler = METHODS.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found")
        with self.ledger.lock:
            self.ledger.sync()
            return handler(self.ledger, params)

    def count(self, code: int) -> None:
        with self._count_lock:
            self.errors[code] += 1

    def start(self) -> None:
        for target, name in ((self._http.serve_forever, "localnet-http"), (self._tick, "localnet-tick")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("localnet_started", extra={"url": self.url, "slot": self.ledger.clock.slot})

    def _tick(self) -> None:
        interval = self.ledger.clock.slot_ms / 1000
        since_save = 0.0
        while not self._stop.wait(interval):
            with self.ledger.lock:
                self.ledger.sync()
            since_save += interval
            if since_save >= self.snapshot_every_s:
                since_save = 0.0
                self.save_snapshot(only_if_dirty=True)

    def save_snapshot(self, *, only_if_dirty: bool = False) -> bool:
        if self.snapshot_path is None:
            return False
        with self.ledger.lock:
            if only_if_dirty and not self.ledger.dirty:
                return False
            doc = self.ledger.export_state()
            self.ledger.dirty = False
        snapshot.save(self.snapshot_path, doc)
        log.info("localnet_snapshot_saved", extra={"path": str(self.snapshot_path), "slot": doc["slot"]})
        return True

    def stop(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.save_snapshot()
        log.info(
            "localnet_stopped",
            extra={"requests": self.requests, "errors": {str(k): v for k, v in sorted(self.errors.items())}},
        )


def open_ledger(snapshot_path: Path | None, *, slot_ms: int, validity_slots: int) -> Ledger:
    """A ledger from the snapshot when the file exists, else a fresh one."""
    state = snapshot.load(snapshot_path) if snapshot_path is not None else None
    if state is None:
        return Ledger(slot_ms=slot_ms, validity_slots=validity_slots)
    return Ledger.from_state(state, slot_ms=slot_ms, validity_slots=validity_slots, source=str(snapshot_path))
