"""The control socket's line protocol, server and client, on real Unix sockets in a temp dir.

The ops here are small stand-ins (the daemon's own ops are exercised against a real daemon in
tests/integration/test_control_socket.py); the socket, the threads, the limits and the client
are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.device.control import ControlServer, bind_socket, daemon_ops
from agent.device.control_client import (
    ControlClient,
    ControlRefusedError,
    ControlTimeoutError,
    DaemonNotRunningError,
)
from agent.device.control_protocol import (
    MAX_REQUEST_BYTES,
    SOCKET_NAME,
    Op,
    Refusal,
    decode_line,
    parse_request,
)
from agent.errors import CorruptStateError, StorageError
from agent.protocol.reasons import REASONS

# ---------------------------------------------------------------------------------- fixtures


class Ops:
    """A read-only op, a main-loop op, and two that fail; each records the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.ran: list[str] = []

    def _record(self, name: str) -> str:
        thread = threading.current_thread().name
        self.threads.append(thread)
        self.ran.append(name)
        return thread

    def registry(self) -> dict[str, Op]:
        def echo(params: Mapping[str, Any]) -> dict[str, Any]:
            return {"thread": self._record("echo"), "text": params.get("text")}

        def bump(_params: Mapping[str, Any]) -> dict[str, Any]:
            return {"thread": self._record("bump")}

        def broken(_params: Mapping[str, Any]) -> dict[str, Any]:
            raise RuntimeError("boom")

        def picky(_params: Mapping[str, Any]) -> dict[str, Any]:
            raise Refusal("unavailable", "not now")

        ops = (
            Op("echo", echo, main_loop=False, params=frozenset({"text"})),
            Op("bump", bump, main_loop=True),
            Op("broken", broken, main_loop=False),
            Op("picky", picky, main_loop=False),
        )
        return {op.name: op for op in ops}


@pytest.fixture
def ops() -> Ops:
    return Ops()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def server(folder: Path, ops: Ops) -> Iterator[ControlServer]:
    srv = ControlServer(
        folder / SOCKET_NAME, ops.registry(), max_connections=3, read_timeout_s=0.6, main_loop_timeout_s=0.8
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(str(path))
    return sock


def read_answer(sock: socket.socket) -> dict[str, Any]:
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer line (got {buffer!r})"
        buffer += chunk
    answer: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return answer


def exchange(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    return read_answer(sock)


def closed(sock: socket.socket) -> bool:
    """True when the server closed its side (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def refusal(answer: dict[str, Any]) -> tuple[Any, str]:
    assert answer["ok"] is False, answer
    return answer["id"], answer["error"]["reason"]


# ---------------------------------------------------------------------------------- pure protocol


def test_every_reason_the_control_socket_uses_is_catalogued_as_local_or_shared() -> None:
    for name in ("peer_refused", "too_many_connections", "idle_timeout", "bad_request", "unknown_op"):
        assert REASONS[name].scope == "local"
    for name in ("unavailable", "op_failed"):
        assert REASONS[name].scope == "local"
    assert "oversized" in REASONS and "malformed" in REASONS


def test_a_valid_request_names_its_op_and_keeps_declared_params(ops: Ops) -> None:
    request = parse_request(decode_line(b'{"op":"echo","id":7,"text":"hi"}'), ops.registry())
    assert (request.id, request.op.name, request.params) == (7, "echo", {"text": "hi"})


@pytest.mark.parametrize(
    ("line", "reason", "message"),
    [
        (b"not json", "malformed", "not a JSON request line: Expecting value: line 1 column 1 (char 0)"),
        (b"\xff\xfe", "malformed", None),
        (b'{"op":"echo","id":1,"id":2}', "malformed", "not a JSON request line: duplicate key 'id'"),
        (b'{"op":"echo","id":NaN}', "malformed", "not a JSON request line: NaN is not JSON"),
        (b'{"op":"echo","id":' + b"9" * 5000 + b"}", "malformed", None),
        (b"[" * 100_000, "oversized", f"request is over {MAX_REQUEST_BYTES} bytes"),
    ],
)
def test_undecodable_lines_are_refused_by_name(line: bytes, reason: str, message: str | None) -> None:
    with pytest.raises(Refusal) as caught:
        decode_line(line)
    assert caught.value.reason == reason
    if message is not None:
        assert caught.value.message == message


@pytest.mark.parametrize(
    ("doc", "reason", "message"),
    [
        ([1, 2], "bad_request", "a request is a JSON object, not list"),
        ({"op": "echo"}, "bad_request", "'id' must be an integer from 0 to 9007199254740991"),
        ({"op": "echo", "id": True}, "bad_request", "'id' must be an integer from 0 to 9007199254740991"),
        ({"op": "echo", "id": -1}, "bad_request", "'id' must be an integer from 0 to 9007199254740991"),
        ({"op": 5, "id": 1}, "bad_request", "'op' must be a string"),
        ({"op": "nope", "id": 1}, "unknown_op", "unknown op 'nope' (known: broken, bump, echo, picky)"),
        ({"op": "bump", "id": 1, "text": "x"}, "bad_request", "op 'bump' takes no key 'text'"),
        ({"op": "echo", "id": 1, "b": 1, "a": 2}, "bad_request", "op 'echo' takes no key 'a', 'b'"),
    ],
)
def test_requests_outside_the_schema_are_refused_by_name(
    ops: Ops, doc: Any, reason: str, message: str
) -> None:
    with pytest.raises(Refusal) as caught:
        parse_request(doc, ops.registry())
    assert (caught.value.reason, caught.value.message) == (reason, message)


# ---------------------------------------------------------------------------------- the socket file


def test_the_socket_file_is_0600_and_removed_at_stop(server: ControlServer) -> None:
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    server.stop()
    assert not server.path.exists()


def test_a_stale_socket_is_replaced(folder: Path, ops: Ops) -> None:
    path = folder / SOCKET_NAME
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # what a SIGKILLed daemon leaves behind: the file, nobody listening
    os.link(path, folder / "stale.keep")  # keeps the old inode alive, so it cannot be reused
    stale_inode = os.lstat(path).st_ino
    srv = ControlServer(path, ops.registry())
    srv.start()
    try:
        assert os.lstat(path).st_ino != stale_inode
        assert ControlClient(path).call("echo", text="x")["text"] == "x"
    finally:
        srv.stop()


def test_a_live_socket_means_another_daemon_and_is_refused(server: ControlServer, ops: Ops) -> None:
    with pytest.raises(StorageError) as caught:
        bind_socket(server.path)
    assert caught.value.message == (
        f"another daemon is serving {server.path}: two daemons on one state dir would fork the chain"
    )
    assert ControlClient(server.path).call("echo")["text"] is None  # the first one is untouched


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_anything_but_a_socket_at_the_path_is_refused(folder: Path, kind: str) -> None:
    path = folder / SOCKET_NAME
    if kind == "file":
        path.write_text("not a socket")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(folder / "elsewhere.sock")
    with pytest.raises(CorruptStateError) as caught:
        bind_socket(path)
    assert caught.value.message == f"{path} exists and is not a socket; the daemon will not replace it"
    assert caught.value.exit_code == 12
    assert os.path.lexists(path)  # left for a human to look at


def test_a_directory_others_can_write_is_refused(folder: Path) -> None:
    os.chmod(folder, 0o777)
    with pytest.raises(CorruptStateError) as caught:
        bind_socket(folder / SOCKET_NAME)
    assert caught.value.message == (
        f"{folder} must be owned by uid {os.geteuid()} and writable by nobody else "
        f"(owner uid {os.geteuid()}, mode 0777); the control socket is not made there"
    )
    assert not (folder / SOCKET_NAME).exists()


def test_a_symlinked_state_dir_is_accepted_when_its_target_is_ours(tmp_path: Path, ops: Ops) -> None:
    target = tmp_path / "data"
    target.mkdir(mode=0o750)
    link = tmp_path / "state"
    link.symlink_to(target)
    srv = ControlServer(link / SOCKET_NAME, ops.registry())
    srv.start()
    try:
        assert stat.S_ISSOCK(os.lstat(target / SOCKET_NAME).st_mode)
        assert ControlClient(link / SOCKET_NAME).call("echo", text="via link")["text"] == "via link"
    finally:
        srv.stop()


def test_stop_leaves_a_successors_socket_alone(server: ControlServer) -> None:
    server.path.unlink()
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    successor.bind(str(server.path))
    try:
        server.stop()
        assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
    finally:
        successor.close()


# ---------------------------------------------------------------------------------- serving


def test_a_read_only_op_is_answered_on_the_servers_thread(server: ControlServer, ops: Ops) -> None:
    with connect(server.path) as sock:
        answer = exchange(sock, b'{"op":"echo","id":3,"text":"hello"}\n')
    assert answer == {"id": 3, "ok": True, "result": {"thread": "control-conn", "text": "hello"}}
    assert server.stats()["answered"] == {"echo": 1}


def test_a_main_loop_op_runs_only_when_the_main_loop_drains_the_queue(
    server: ControlServer, ops: Ops
) -> None:
    answers: list[dict[str, Any]] = []
    with connect(server.path) as sock:
        client = threading.Thread(target=lambda: answers.append(exchange(sock, b'{"op":"bump","id":9}\n')))
        client.start()
        time.sleep(0.3)
        assert ops.ran == [] and answers == []  # queued, not run by the server thread
        ran = 0
        deadline = time.monotonic() + 5
        while ran == 0 and time.monotonic() < deadline:
            ran = server.run_main_loop_ops()  # this test's thread plays the main loop
            time.sleep(0.01)
        client.join(5)
    assert ran == 1
    assert answers == [{"id": 9, "ok": True, "result": {"thread": threading.current_thread().name}}]


def test_main_loop_ops_run_a_bounded_number_per_pass(server: ControlServer, ops: Ops) -> None:
    socks = [connect(server.path) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(json.dumps({"op": "bump", "id": i}).encode() + b"\n")
        deadline = time.monotonic() + 5
        while server._queue.qsize() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.run_main_loop_ops(limit=2) == 2
        assert server.run_main_loop_ops(limit=2) == 1
        assert sorted(read_answer(s)["id"] for s in socks) == [0, 1, 2]
    finally:
        for sock in socks:
            sock.close()


def test_a_main_loop_op_not_taken_in_time_is_withdrawn_and_never_runs(
    server: ControlServer, ops: Ops
) -> None:
    with connect(server.path) as sock:
        answer = exchange(sock, b'{"op":"bump","id":4}\n')
    assert answer == {
        "id": 4,
        "ok": False,
        "error": {
            "reason": "unavailable",
            "message": "the daemon's main loop did not take bump within 0.8 s",
        },
    }
    assert server.run_main_loop_ops() == 0
    assert ops.ran == []  # the caller was told it failed, so it must not happen behind its back
    assert server.stats()["refused"] == {"unavailable": 1}


def test_stop_answers_queued_main_loop_ops_unavailable(server: ControlServer) -> None:
    with connect(server.path) as sock:
        sock.sendall(b'{"op":"bump","id":5}\n')
        deadline = time.monotonic() + 5
        while server._queue.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        assert refusal(read_answer(sock)) == (5, "unavailable")


def test_bad_lines_are_answered_and_the_connection_stays_usable(server: ControlServer) -> None:
    with connect(server.path) as sock:
        assert refusal(exchange(sock, b"{nope\n")) == (None, "malformed")
        assert refusal(exchange(sock, b'{"op":"launch","id":1}\n')) == (1, "unknown_op")
        assert refusal(exchange(sock, b'{"op":"echo","id":2,"extra":1}\n')) == (2, "bad_request")
        assert refusal(exchange(sock, b'{"op":"broken","id":3}\n')) == (3, "op_failed")
        assert refusal(exchange(sock, b'{"op":"picky","id":4}\n')) == (4, "unavailable")
        assert exchange(sock, b'{"op":"echo","id":5}\n')["ok"] is True
    assert server.stats()["refused"] == {
        "malformed": 1,
        "unknown_op": 1,
        "bad_request": 1,
        "op_failed": 1,
        "unavailable": 1,
    }


@pytest.mark.parametrize("newline", [False, True])
def test_an_oversized_line_is_refused_and_the_connection_closed(server: ControlServer, newline: bool) -> None:
    line = b'{"op":"echo","id":1,"text":"' + b"x" * MAX_REQUEST_BYTES + b'"}' + (b"\n" if newline else b"")
    with connect(server.path) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(line)  # the server may close before all of it is written
        assert refusal(read_answer(sock)) == (None, "oversized")
        assert closed(sock)
    assert server.stats()["refused"] == {"oversized": 1}


def test_a_silent_or_trickling_connection_times_out_and_frees_its_slot(server: ControlServer) -> None:
    trickle = connect(server.path)
    opened = time.monotonic()
    cut_after: list[float] = []

    def dribble() -> None:
        # One byte every 0.1 s: every recv is quick, the request line never completes.
        for _ in range(50):
            try:
                trickle.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                cut_after.append(time.monotonic() - opened)
                return
            time.sleep(0.1)

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    idle = [connect(server.path) for _ in range(2)]
    try:
        time.sleep(0.1)
        with connect(server.path) as extra:  # the 4th of max 3
            assert refusal(read_answer(extra)) == (None, "too_many_connections")
        dribbler.join(10)
        assert cut_after and 0.5 < cut_after[0] < 3.0, cut_after  # read timeout 0.6 s
        for sock in [*idle, trickle]:
            assert refusal(read_answer(sock)) == (None, "idle_timeout")
            assert closed(sock)
        deadline = time.monotonic() + 2
        while server.stats()["connections"] and time.monotonic() < deadline:
            time.sleep(0.01)
        with connect(server.path) as sock:
            assert exchange(sock, b'{"op":"echo","id":1}\n')["ok"] is True
    finally:
        for sock in [*idle, trickle]:
            sock.close()
    assert server.stats()["refused"] == {"too_many_connections": 1, "idle_timeout": 3}


def test_a_peer_with_another_uid_is_refused_and_counted(folder: Path, ops: Ops) -> None:
    srv = ControlServer(folder / SOCKET_NAME, ops.registry(), allowed_uids=frozenset({424242}))
    srv.start()
    try:
        with pytest.raises(ControlRefusedError) as caught:
            ControlClient(srv.path).call("echo")
        assert caught.value.reason == "peer_refused"
        assert caught.value.message == (
            f"the daemon refused echo: peer_refused: uid {os.geteuid()} may not use this socket (only uid 424242)"
        )
        assert srv.stats()["refused"] == {"peer_refused": 1}
        assert ops.ran == []
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------- the daemon's ops


class FakeDaemon:
    def status_snapshot(self) -> dict[str, Any]:
        return {"chain": {"seq": 4}}

    def chain_head(self) -> tuple[int, str]:
        return 4, "ab" * 32


def test_the_daemons_ops_status_read_only_and_ping_on_the_main_loop() -> None:
    ops = daemon_ops(FakeDaemon())
    assert {name: op.main_loop for name, op in ops.items()} == {"status": False, "ping": True}
    assert ops["status"].run({}) == {"chain": {"seq": 4}}
    assert ops["ping"].run({}) == {"seq": 4, "head": "ab" * 32, "thread": threading.current_thread().name}


# ---------------------------------------------------------------------------------- the client


def test_client_with_no_socket_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    with pytest.raises(DaemonNotRunningError) as caught:
        ControlClient(path).call("status")
    assert caught.value.message == f"the daemon is not running (no control socket at {path})"
    assert caught.value.exit_code == 13


def test_client_with_a_stale_socket_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(DaemonNotRunningError) as caught:
        ControlClient(path).call("status")
    assert caught.value.message == (
        f"the daemon is not running (stale control socket at {path}: nothing listens on it)"
    )


def test_client_times_out_on_a_daemon_that_never_answers(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)  # accepts connections into its backlog, never reads or answers
    try:
        start = time.monotonic()
        with pytest.raises(ControlTimeoutError) as caught:
            ControlClient(path, timeout_s=0.5).call("status")
        assert 0.4 < time.monotonic() - start < 3.0
        assert caught.value.message == f"the daemon did not answer status within 0.5 s on {path}"
        assert caught.value.exit_code == 14
    finally:
        mute.close()


def test_status_live_without_a_daemon_exits_13_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nstate_dir = "{state}"\n', encoding="utf-8")
    assert main(["status", "--live", "--config", str(config)]) == 13
    assert capsys.readouterr().err == (
        f"edgeproof: error: the daemon is not running (no control socket at {state / SOCKET_NAME})\n"
        "  fix: start it: systemctl start edgeproof (or edgeproof run --config FILE)\n"
    )
