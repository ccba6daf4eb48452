"""What the dashboard's HTTP server refuses before any route runs, and why (a named reason).

:func:`refusal` is a pure function of the request line and headers; :class:`Guard` is the
ASGI middleware that applies it, answers the refusal (a small JSON body with the reason)
and counts it.  The server only reads: GET and HEAD on a fixed set of paths, no request body,
a bounded request target and header size, and (unless the listen address is explicitly remote) a Host
header naming a loopback address, so a web page cannot read the dashboard through DNS
rebinding.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

#: The longest request target (path and query) served, and the most header bytes taken.
MAX_TARGET = 2048
MAX_HEADERS = 8192
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The host part of a Host header: ``[::1]:8480`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    return value.rpartition(":")[0] if ":" in value else value


def refusal(
    method: str,
    path: str,
    query: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    paths: frozenset[str],
    check_host: bool,
) -> tuple[int, str] | None:
    """(HTTP status, reason) when the request is refused, None when it may be served."""
    if len(path) + len(query) > MAX_TARGET:
        return 414, "oversized"
    if method not in ("GET", "HEAD"):
        return 405, "method_not_allowed"
    headers = list(headers)
    if sum(len(name) + len(value) for name, value in headers) > MAX_HEADERS:
        return 431, "oversized"
    host: str | None = None
    for name, value in headers:
        name = name.lower()
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return 413, "oversized"
    if check_host and (host is None or not (host_name(host) in LOOPBACK_NAMES or _loopback_ip(host))):
        return 400, "untrusted_host"
    if path not in paths:
        return 404, "unknown_path"
    return None


def _loopback_ip(header: str) -> bool:
    name = host_name(header)
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


class Guard:
    """ASGI middleware: refuse with :func:`refusal`, count with ``count(reason)``."""

    def __init__(
        self, app: ASGIApp, *, paths: frozenset[str], check_host: bool, count: Callable[[str], None]
    ) -> None:
        self.app = app
        self.paths = paths
        self.check_host = check_host
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = refusal(
            str(scope["method"]),
            str(scope["path"]),
            bytes(scope.get("query_string", b"")),
            scope.get("headers", ()),
            paths=self.paths,
            check_host=self.check_host,
        )
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, reason = refused
        self.count(reason)
        await send_json(
            send, status, {"error": reason}, extra=[(b"allow", b"GET, HEAD")] if status == 405 else []
        )


async def send_json(
    send: Send, status: int, doc: Any, *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(doc).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
