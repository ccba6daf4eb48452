"""The daemon's local control socket: one writer per device chain.

A local command that needs the running daemon -- ``edgeproof status --live`` today, the
rewards claim later, which must emit a signed, chained message -- asks the daemon over a Unix
stream socket at ``<state_dir>/control.sock`` instead of opening the key itself: a second
signer on the same key would fork the chain.

* **Who may connect**: the socket file is 0600 (created under a umask, in a directory the
  daemon owns and nobody else can write), and every connection's peer uid is checked with
  ``SO_PEERCRED``: root or the daemon's own uid only; anyone else gets ``peer_refused``.
* **Wire**: one JSON object per line, both ways.  Request ``{"op": "...", "id": N, ...}``;
  answer ``{"id": N, "ok": true, "result": {...}}`` or ``{"id": N, "ok": false, "error":
  {"reason": "...", "message": "..."}}`` (``id`` is null when the request had none).  A line
  over :data:`MAX_REQUEST_BYTES` is refused ``oversized`` and the connection closed; bad JSON
  is ``malformed``, unknown or missing keys ``bad_request``, an unknown op ``unknown_op``.
  A request must be complete within the read timeout (``idle_timeout``, connection closed);
  at most :data:`MAX_CONNECTIONS` connections are served at once (``too_many_connections``).
* **Ops**: each :class:`Op` is either read-only (answered on the connection's thread from a
  thread-safe snapshot) or a main-loop op: queued, run by the daemon's main loop between its
  other duties (:meth:`ControlServer.run_main_loop_ops`, a bounded number per pass), answered
  when done.  That is how an op emits through the daemon's single signer.  A queued op the
  main loop has not started within :data:`MAIN_LOOP_TIMEOUT_S` is withdrawn and answered
  ``unavailable``: it will never run later behind the caller's back.

Every refusal is counted by reason (:meth:`ControlServer.stats`, in ``status --json`` as
``control``).  The line protocol itself is :mod:`agent.device.control_protocol`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.device.control_protocol import (
    MAX_REQUEST_BYTES,
    LineReader,
    Op,
    Refusal,
    Request,
    Result,
    decode_line,
    encode_refusal,
    encode_result,
    parse_request,
    request_id,
)
from agent.errors import CorruptStateError, StorageError

log = logging.getLogger(__name__)

#: A request line must be complete this long after the connection starts waiting for it.
READ_TIMEOUT_S = 5.0
#: Connections served at once; more are refused ``too_many_connections``.
MAX_CONNECTIONS = 8
#: How long a main-loop op may wait for the main loop to start it.
MAIN_LOOP_TIMEOUT_S = 5.0
#: Main-loop ops run per pass of the daemon's loop.
MAIN_LOOP_OPS_PER_PASS = 4
_ACCEPT_POLL_S = 0.25
_LOG_EVERY_S = 1.0
_REFUSAL_SEND_TIMEOUT_S = 0.5


# ------------------------------------------------------------------------ the socket file


def _check_directory(folder: Path) -> None:
    """The socket's directory must be the daemon's own and writable by nobody else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(folder)  # a symlinked state dir is fine: its target is what must be ours
    if not stat.S_ISDIR(st.st_mode):
        raise CorruptStateError(f"{folder} is not a directory; the control socket cannot be made there")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise CorruptStateError(
            f"{folder} must be owned by uid {os.geteuid()} and writable by nobody else "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); the control socket is not made there",
            hint=f"chown {os.geteuid()} {folder} && chmod go-w {folder}",
        )


def _clear_stale(path: Path) -> None:
    """Remove a socket a dead daemon left; refuse anything else at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise CorruptStateError(
            f"{path} exists and is not a socket; the daemon will not replace it",
            hint=f"look at it and move it away: mv {path} {path}.bad",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a stale socket left by a killed daemon
    except OSError as exc:
        raise StorageError(f"cannot probe the existing control socket {path}: {exc}") from exc
    else:
        raise StorageError(
            f"another daemon is serving {path}: two daemons on one state dir would fork the chain",
            hint="stop the other one first (systemctl stop edgeproof)",
        )
    finally:
        probe.close()
    try:
        path.unlink()
    except FileNotFoundError:
        return
    log.info("stale control socket removed", extra={"path": str(path)})


def bind_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening socket at ``path``, mode 0600; returns it and the socket file's inode."""
    _check_directory(path.parent)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StorageError(f"cannot create the control socket {path}: {exc}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    st = os.lstat(path)
    sock.listen(MAX_CONNECTIONS * 4)
    return sock, st.st_ino


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(uid)


# ------------------------------------------------------------------------ the server


@dataclass
class _Pending:
    """A main-loop op waiting for (or run by) the main loop."""

    request: Request
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    withdrawn: bool = False
    answer: bytes = b""


class ControlServer:
    """The control socket's server: an accept thread and one thread per connection."""

    def __init__(
        self,
        path: Path,
        ops: Mapping[str, Op],
        *,
        allowed_uids: frozenset[int] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout_s: float = READ_TIMEOUT_S,
        main_loop_timeout_s: float = MAIN_LOOP_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.ops = dict(ops)
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.main_loop_timeout_s = main_loop_timeout_s
        self._sock: socket.socket | None = None
        self._inode = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._accept_thread: threading.Thread | None = None
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._refused: Counter[str] = Counter()
        self._answered: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self._accepted = 0

    # -- lifecycle

    def start(self) -> None:
        self._sock, self._inode = bind_socket(self.path)
        self._sock.settimeout(_ACCEPT_POLL_S)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self._accept_thread.start()
        log.info(
            "control socket listening",
            extra={"path": str(self.path), "ops": sorted(self.ops), "uids": sorted(self.allowed_uids)},
        )

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, answer queued ops ``unavailable``, close connections, remove the socket."""
        with self._lock:
            self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._remove_socket_file()
        self._fail_pending("the daemon is stopping")
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            # Reading side only: a blocked read returns, an answer still being sent gets out.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _remove_socket_file(self) -> None:
        # Only our own socket: a successor daemon may already have replaced it.
        try:
            if os.lstat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    # -- counting

    def _refuse(self, reason: str, message: str, uid: int | None) -> None:
        # Counted exactly; logged at most once per second per reason, so a flood cannot fill the journal.
        now = time.monotonic()
        with self._lock:
            self._refused[reason] += 1
            quiet = now - self._logged_at.get(reason, -_LOG_EVERY_S) < _LOG_EVERY_S
            if quiet:
                self._unlogged[reason] += 1
                return
            self._logged_at[reason] = now
            suppressed = self._unlogged.pop(reason, 0)
        log.warning(
            "control request refused",
            extra={"reason": reason, "error": message[:200], "uid": uid, "suppressed": suppressed},
        )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "path": str(self.path),
                "connections": len(self._conns),
                "accepted": self._accepted,
                "answered": dict(self._answered),
                "refused": dict(self._refused),
            }

    # -- connections (server threads)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(_ACCEPT_POLL_S)  # e.g. EMFILE: never spin
                continue
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            uid = peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid not in self.allowed_uids:
            allowed = " and ".join(str(u) for u in sorted(self.allowed_uids))
            self._refuse_now(
                conn, "peer_refused", f"uid {uid} may not use this socket (only uid {allowed})", uid
            )
            return
        with self._lock:
            busy = len(self._conns) >= self.max_connections
            if not busy:
                self._conns.add(conn)
                self._accepted += 1
        if busy:
            self._refuse_now(
                conn, "too_many_connections", f"{self.max_connections} connections are already open", uid
            )
            return
        thread = threading.Thread(target=self._serve, args=(conn, uid), name="control-conn", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _refuse_now(self, conn: socket.socket, reason: str, message: str, uid: int) -> None:
        """Refuse a connection before reading from it (the accept thread never waits long)."""
        self._refuse(reason, message, uid)
        try:
            conn.settimeout(_REFUSAL_SEND_TIMEOUT_S)
            conn.sendall(encode_refusal(None, reason, message))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket, uid: int) -> None:
        reader = LineReader(conn, limit=MAX_REQUEST_BYTES, timeout_s=self.read_timeout_s)
        try:
            while not self._stopping.is_set():
                rid: int | None = None
                try:
                    line = reader.read_line()
                    if line is None:
                        return
                    doc = decode_line(line)
                    rid = request_id(doc)
                    answer = self._answer(parse_request(doc, self.ops))
                except Refusal as refusal:
                    self._refuse(refusal.reason, refusal.message, uid)
                    answer = encode_refusal(rid, refusal.reason, refusal.message)
                    if refusal.close:
                        conn.settimeout(_REFUSAL_SEND_TIMEOUT_S)
                        conn.sendall(answer)
                        return
                conn.settimeout(self.read_timeout_s)
                conn.sendall(answer)
        except OSError:
            return  # the peer went away (or stop() shut the connection down)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _answer(self, request: Request) -> bytes:
        if request.op.main_loop:
            return self._via_main_loop(request)
        return self._run(request)

    def _run(self, request: Request) -> bytes:
        """Run one op (on whichever thread calls this) and encode its answer."""
        try:
            result = request.op.run(request.params)
        except Refusal as refusal:
            self._refuse(refusal.reason, refusal.message, None)
            return encode_refusal(request.id, refusal.reason, refusal.message)
        except Exception as exc:  # an op's bug must not kill the server or the main loop
            log.exception("control op failed", extra={"op": request.op.name})
            self._refuse("op_failed", str(exc), None)
            return encode_refusal(
                request.id, "op_failed", f"{request.op.name} failed: {type(exc).__name__}: {exc}"
            )
        with self._lock:
            self._answered[request.op.name] += 1
        return encode_result(request.id, result)

    def _via_main_loop(self, request: Request) -> bytes:
        pending = _Pending(request)
        with self._lock:  # stop() sets _stopping under this lock, then drains the queue
            if self._stopping.is_set():
                raise Refusal("unavailable", "the daemon is stopping")
            self._queue.put(pending)
        if pending.done.wait(self.main_loop_timeout_s):
            return pending.answer
        with pending.lock:
            if not pending.started:
                pending.withdrawn = True
        if pending.withdrawn:
            raise Refusal(
                "unavailable",
                f"the daemon's main loop did not take {request.op.name} within {self.main_loop_timeout_s:g} s",
            )
        pending.done.wait()  # it is running: its answer is coming
        return pending.answer

    # -- the daemon's main loop

    def run_main_loop_ops(self, limit: int = MAIN_LOOP_OPS_PER_PASS) -> int:
        """Run up to ``limit`` queued main-loop ops (called by the daemon's main loop); returns how many ran."""
        ran = 0
        while ran < limit:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            with pending.lock:
                if pending.withdrawn:
                    continue
                pending.started = True
            pending.answer = self._run(pending.request)
            pending.done.set()
            ran += 1
        return ran

    def _fail_pending(self, message: str) -> None:
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            with pending.lock:
                if pending.withdrawn:
                    continue
                pending.withdrawn = True
            self._refuse("unavailable", message, None)
            pending.answer = encode_refusal(pending.request.id, "unavailable", message)
            pending.done.set()


# ------------------------------------------------------------------------ the daemon's ops


class Controlled(Protocol):
    """What the ops need from the daemon."""

    def status_snapshot(self) -> dict[str, Any]: ...

    def chain_head(self) -> tuple[int, str]: ...


def daemon_ops(daemon: Controlled) -> dict[str, Op]:
    """The daemon's op registry."""
    snapshot_lock = threading.Lock()

    def status(_params: Mapping[str, Any]) -> Result:
        with snapshot_lock:  # one snapshot at a time, however many clients ask
            return daemon.status_snapshot()

    def ping(_params: Mapping[str, Any]) -> Result:
        seq, head = daemon.chain_head()
        return {"seq": seq, "head": head, "thread": threading.current_thread().name}

    ops = (
        Op("status", status, main_loop=False, help="the daemon's live status (what status.json holds)"),
        Op("ping", ping, main_loop=True, help="the main loop's chain head: proves queued ops run"),
    )
    return {op.name: op for op in ops}
