"""A JSON-RPC forwarder on loopback that can refuse one method: ``RpcGate(upstream)``.

Every POST is forwarded to ``upstream`` (the real localnet) and its answer returned as it is,
except while ``blocked`` names the request's method: then it answers HTTP 503 (a node behind a
failing gateway), so a client's send fails after its retries and nothing reaches the ledger.
``refused`` counts the refusals per method.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RpcGate:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.blocked: set[str] = set()
        self.refused: Counter[str] = Counter()
        #: Calls passed on to the upstream node, by method.
        self.calls: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(body)
                    method = doc.get("method") if isinstance(doc, dict) else None
                except ValueError:
                    method = None
                if method in outer.blocked:
                    outer.refused[str(method)] += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.calls[str(method)] += 1
                request = urllib.request.Request(
                    outer.upstream, data=body, headers={"Content-Type": "application/json"}, method="POST"
                )
                with urllib.request.urlopen(request, timeout=30) as answer:
                    data = answer.read()
                    status = answer.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> RpcGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
