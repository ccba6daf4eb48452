"""The control socket's line protocol: requests, answers, the op registry's types, line reading.

Pure functions and one small reader over a socket; :mod:`agent.device.control` serves it and
:mod:`agent.device.control_client` speaks it.  Standard library only, so the client side runs
from any Python.  See :mod:`agent.device.control` for the whole picture.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
#: Largest request line, newline included.
MAX_REQUEST_BYTES = 64 * 1024
_MAX_ID = 2**53 - 1
_ENVELOPE_KEYS = frozenset({"op", "id"})

Result = dict[str, Any]


def socket_path(state_dir: Path) -> Path:
    """Where the daemon with this state dir listens."""
    return state_dir / SOCKET_NAME


class Refusal(Exception):
    """A request the server will not answer with a result: a named reason and a message."""

    def __init__(self, reason: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: Close the connection after answering (the stream can no longer be trusted).
        self.close = close


@dataclass(frozen=True)
class Op:
    """One operation of the control socket."""

    name: str
    #: ``params -> result``; raises :class:`Refusal` for a named refusal.
    run: Callable[[Mapping[str, Any]], Result]
    #: True: queued to the daemon's main loop (may sign and emit); False: read-only, answered
    #: on the connection's thread, so ``run`` must be thread-safe.
    main_loop: bool
    #: Request keys this op accepts besides ``op`` and ``id``.
    params: frozenset[str] = frozenset()
    help: str = ""


@dataclass(frozen=True)
class Request:
    id: int
    op: Op
    params: dict[str, Any]


# ------------------------------------------------------------------------ the line protocol


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def request_id(doc: Any) -> int | None:
    """The request's id if it has a valid one (so even a refusal can name it)."""
    if isinstance(doc, dict):
        rid = doc.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= _MAX_ID:
            return rid
    return None


def decode_line(line: bytes) -> Any:
    """Strict JSON of one line (UTF-8, no NaN, no duplicate keys); :class:`Refusal` ``malformed``."""
    if len(line) > MAX_REQUEST_BYTES:
        raise Refusal("oversized", f"request is over {MAX_REQUEST_BYTES} bytes", close=True)
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refusal("malformed", f"not a JSON request line: {str(exc)[:200]}") from None


def parse_request(doc: Any, ops: Mapping[str, Op]) -> Request:
    """Check one decoded request against the op registry."""
    if not isinstance(doc, dict):
        raise Refusal("bad_request", f"a request is a JSON object, not {type(doc).__name__}")
    rid = request_id(doc)
    if rid is None:
        raise Refusal("bad_request", f"'id' must be an integer from 0 to {_MAX_ID}")
    name = doc.get("op")
    if not isinstance(name, str):
        raise Refusal("bad_request", "'op' must be a string")
    op = ops.get(name)
    if op is None:
        known = ", ".join(sorted(ops))
        raise Refusal("unknown_op", f"unknown op {name[:64]!r} (known: {known})")
    extra = sorted(set(doc) - _ENVELOPE_KEYS - op.params)
    if extra:
        raise Refusal("bad_request", f"op {name!r} takes no key {', '.join(repr(k[:64]) for k in extra)}")
    return Request(rid, op, {k: v for k, v in doc.items() if k not in _ENVELOPE_KEYS})


def encode_result(rid: int | None, result: Result) -> bytes:
    return _line({"id": rid, "ok": True, "result": result})


def encode_refusal(rid: int | None, reason: str, message: str) -> bytes:
    return _line({"id": rid, "ok": False, "error": {"reason": reason, "message": message}})


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


class LineReader:
    """Reads newline-terminated lines of at most ``limit`` bytes, each within ``timeout_s``."""

    def __init__(self, sock: socket.socket, *, limit: int, timeout_s: float) -> None:
        self.sock = sock
        self.limit = limit
        self.timeout_s = timeout_s
        self._buffer = b""

    def read_line(self) -> bytes | None:
        """The next line (without its newline), or None when the peer closed cleanly."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                if end + 1 > self.limit:
                    raise Refusal("oversized", f"request is over {self.limit} bytes", close=True)
                line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                return line
            if len(self._buffer) >= self.limit:
                raise Refusal("oversized", f"request is over {self.limit} bytes", close=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout()
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(min(65536, self.limit + 1 - len(self._buffer)))
            except TimeoutError:
                raise self._timeout() from None
            if not chunk:
                if self._buffer:
                    raise Refusal("malformed", "connection closed in the middle of a request", close=True)
                return None
            self._buffer += chunk

    def _timeout(self) -> Refusal:
        return Refusal(
            "idle_timeout", f"no complete request within {self.timeout_s:g} s; closing", close=True
        )
