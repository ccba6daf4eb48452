"""A hostile Solana JSON-RPC endpoint on loopback: it stalls, answers garbage or answers oversized.

``HostileRpc(mode)`` serves HTTP POST on a free 127.0.0.1 port on a thread of its own; ``mode``
can be changed while it runs: ``stall`` (reads the request, answers nothing for ``stall_s``),
``garbage`` (HTTP 200, bytes that are not JSON), ``oversized`` (HTTP 200, a JSON-RPC answer of
``oversized_bytes`` whose result is a huge string; ``oversized_unsized``: the same without a
Content-Length, until the connection closes).  ``hits`` counts requests per mode.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HostileRpc:
    def __init__(
        self, mode: str = "stall", *, stall_s: float = 30.0, oversized_bytes: int = 8 * 1024 * 1024
    ) -> None:
        self.mode = mode
        self.stall_s = stall_s
        self.oversized_bytes = oversized_bytes
        self.hits: Counter[str] = Counter()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(min(length, 1 << 20))
                mode = outer.mode
                outer.hits[mode] += 1
                if mode == "stall":
                    outer._stop.wait(outer.stall_s)
                    return
                if mode == "oversized_unsized":
                    # No Content-Length: the body runs until the connection closes.
                    self.close_connection = True
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        self.wfile.write(b'{"jsonrpc":"2.0","id":1,"result":"')
                        for _ in range(outer.oversized_bytes // 65536):
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        pass
                    return
                if mode == "garbage":
                    body = b"\x00\xffnot json at all{{{"
                else:
                    pad = b"x" * outer.oversized_bytes
                    body = b'{"jsonrpc":"2.0","id":1,"result":"' + pad + b'"}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> HostileRpc:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        time.sleep(0)
