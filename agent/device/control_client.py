"""The client side of the daemon's control socket (see :mod:`agent.device.control`).

``socket_path(state_dir)`` is re-exported here for callers.

One connection per call, one request line, one answer line, all within ``timeout_s``.  Every
failure is an :class:`~agent.errors.EdgeproofError` subclass with a message that says what to
do, so the CLI prints it without a traceback.  Standard library only.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from agent.device.control_protocol import socket_path
from agent.errors import EdgeproofError

__all__ = [
    "ControlClient",
    "ControlError",
    "ControlPermissionError",
    "ControlRefusedError",
    "ControlTimeoutError",
    "DaemonNotRunningError",
    "socket_path",
]

DEFAULT_TIMEOUT_S = 10.0
#: Largest answer line the client reads (a status snapshot is a few KiB).
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class ControlError(EdgeproofError):
    """The running daemon could not be asked, or it refused the request."""

    exit_code = 14


class DaemonNotRunningError(ControlError):
    """No daemon listens on the control socket (none, or a stale one left by a killed daemon)."""

    exit_code = 13


class ControlPermissionError(ControlError):
    """The socket file's mode keeps this user out (it is 0600, the daemon's user only)."""


class ControlTimeoutError(ControlError):
    """The daemon did not answer in time."""


class ControlRefusedError(ControlError):
    """The daemon answered with a named refusal."""

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class ControlClient:
    def __init__(self, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._next_id = 1

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Send one request and return its result; raises a :class:`ControlError` otherwise."""
        rid = self._next_id
        self._next_id += 1
        line = json.dumps({"op": op, "id": rid, **params}, separators=(",", ":")).encode() + b"\n"
        deadline = time.monotonic() + self.timeout_s
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            self._connect(sock)
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused on connect: the refusal line is waiting to be read
            except TimeoutError:
                raise self._timeout(op) from None
            answer = self._read_answer(sock, op, deadline)
        return self._result(answer, op, rid)

    def _connect(self, sock: socket.socket) -> None:
        path = self.path
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunningError(
                f"the daemon is not running (no control socket at {path})",
                hint="start it: systemctl start edgeproof (or edgeproof run --config FILE)",
            ) from None
        except ConnectionRefusedError:
            raise DaemonNotRunningError(
                f"the daemon is not running (stale control socket at {path}: nothing listens on it)",
                hint="start it: systemctl start edgeproof (or edgeproof run --config FILE)",
            ) from None
        except PermissionError:
            raise ControlPermissionError(
                f"permission denied on the control socket {path}",
                hint="run as the daemon's user (sudo -u edgeproof edgeproof ...) or as root",
            ) from None
        except TimeoutError:
            raise self._timeout("connect") from None
        except OSError as exc:
            raise ControlError(
                f"cannot connect to the control socket {path}: {exc.strerror or exc}"
            ) from None

    def _read_answer(self, sock: socket.socket, op: str, deadline: float) -> bytes:
        buffer = b""
        while b"\n" not in buffer:
            if len(buffer) > MAX_ANSWER_BYTES:
                raise ControlError(f"the daemon's answer to {op} is over {MAX_ANSWER_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(op)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise self._timeout(op) from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ControlError(f"the daemon closed the control connection without answering {op}")
            buffer += chunk
        return buffer.split(b"\n", 1)[0]

    def _timeout(self, op: str) -> ControlTimeoutError:
        return ControlTimeoutError(
            f"the daemon did not answer {op} within {self.timeout_s:g} s on {self.path}",
            hint="is its main loop stuck? see journalctl -u edgeproof",
        )

    def _result(self, line: bytes, op: str, rid: int) -> dict[str, Any]:
        try:
            answer = json.loads(line)
            if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
                raise ValueError("not an answer object")
        except ValueError as exc:
            raise ControlError(f"the daemon's answer to {op} is not a control answer: {exc}") from None
        if not answer["ok"]:
            error = answer.get("error")
            reason = str(error.get("reason")) if isinstance(error, dict) else "unknown"
            message = str(error.get("message")) if isinstance(error, dict) else ""
            raise ControlRefusedError(f"the daemon refused {op}: {reason}: {message}", reason=reason)
        result = answer.get("result")
        if answer.get("id") != rid or not isinstance(result, dict):
            raise ControlError(
                f"the daemon's answer to {op} does not match the request (id {answer.get('id')})"
            )
        return result
