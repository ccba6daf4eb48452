"""fetch_artifact against a real loopback HTTP(S) server: resume, faults, limits, deadlines, redirects."""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.device.download import fetch_artifact
from agent.errors import DeployError
from agent.protocol.messages import Artifact
from tests.support.artifact_server import ArtifactServer
from tests.support.tls_broker import make_ca, make_cert

pytestmark = pytest.mark.integration

NAME = "model.onnx"
DATA = bytes(range(256)) * 1000
SHA = hashlib.sha256(DATA).hexdigest()
L = len(DATA)
CHUNK = 16 * 1024


class Recorder(list[Any]):
    """Stands in for ``time.sleep`` and ``on_progress``: records its arguments, never waits."""

    def __call__(self, *args: Any) -> None:
        self.append(args[0] if len(args) == 1 else args)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer({NAME: DATA}) as srv:
        yield srv


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "models" / "incoming"


def artifact(server: ArtifactServer, *, name: str = NAME, sha256: str = SHA) -> Artifact:
    return Artifact(name=name, url=server.url(name), sha256=sha256, length=L)


def fetch(art: Artifact, folder: Path, sleeps: Recorder | None = None, **kw: Any) -> Path:
    kw.setdefault("chunk_bytes", CHUNK)
    kw.setdefault("timeout_s", 5.0)
    return fetch_artifact(art, folder, sleep=Recorder() if sleeps is None else sleeps, **kw)


def downloaded(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    (record,) = [r for r in caplog.records if r.getMessage() == "artifact downloaded"]
    return {k: getattr(record, k) for k in ("artifact", "bytes", "attempts", "resumed")}


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.device.download")


def test_plain_download(server: ArtifactServer, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    progress, sleeps = Recorder(), Recorder()
    path = fetch(artifact(server), folder, sleeps, on_progress=progress)
    assert path == folder / NAME
    assert path.read_bytes() == DATA
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert sorted(p.name for p in folder.iterdir()) == [NAME]
    assert server.requests == [None]
    assert sleeps == []
    expected = [(n, L) for n in range(CHUNK, L, CHUNK)] + [(L, L)]
    assert progress == expected
    assert downloaded(caplog) == {"artifact": NAME, "bytes": L, "attempts": 1, "resumed": False}


def test_second_call_makes_no_request(server: ArtifactServer, folder: Path) -> None:
    path = fetch(artifact(server), folder)
    mtime = path.stat().st_mtime_ns
    assert fetch(artifact(server), folder) == path
    assert server.requests == [None]
    assert path.stat().st_mtime_ns == mtime


def test_wrong_final_file_is_replaced(server: ArtifactServer, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(DATA[:-1] + b"\x00")
    assert fetch(artifact(server), folder).read_bytes() == DATA
    assert server.requests == [None]


def test_dropped_connection_resumes_with_range(
    server: ArtifactServer, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.drop_after = 100_000
    sleeps = Recorder()
    path = fetch(artifact(server), folder, sleeps, max_attempts=3)
    assert path.read_bytes() == DATA
    assert server.requests == [None, "bytes=100000-"]
    assert sleeps == [0.5]
    assert downloaded(caplog) == {"artifact": NAME, "bytes": L, "attempts": 2, "resumed": True}


def test_resume_across_calls(server: ArtifactServer, folder: Path) -> None:
    server.drop_after, server.drop_times = 1000, 2
    sleeps = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, sleeps, max_attempts=2)
    assert info.value.reason == "unreachable"
    assert info.value.message == (
        f"artifact {NAME}: could not download {server.url(NAME)} after 2 attempts "
        f"(2000 of {L} bytes kept in {NAME}.part): connection closed after 2000 of {L} bytes"
    )
    assert server.requests == [None, "bytes=1000-"]
    assert sleeps == [0.5]
    assert (folder / f"{NAME}.part").read_bytes() == DATA[:2000]
    assert not (folder / NAME).exists()

    assert fetch(artifact(server), folder).read_bytes() == DATA
    assert server.requests == [None, "bytes=1000-", "bytes=2000-"]
    assert not (folder / f"{NAME}.part").exists()


def test_server_ignoring_range_restarts_from_zero(
    server: ArtifactServer, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder.mkdir(parents=True)
    (folder / f"{NAME}.part").write_bytes(b"\x00" * 5000)  # wrong bytes: must not survive the restart
    server.ignore_range = True
    progress = Recorder()
    path = fetch(artifact(server), folder, on_progress=progress)
    assert path.read_bytes() == DATA
    assert server.requests == ["bytes=5000-"]
    assert progress[0] == (CHUNK, L)
    assert "server ignored range, restarting" in caplog.messages
    assert downloaded(caplog)["resumed"] is False


def test_416_with_complete_part_is_verified_and_installed(server: ArtifactServer, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / f"{NAME}.part").write_bytes(DATA)
    assert fetch(artifact(server), folder).read_bytes() == DATA
    assert server.requests == [f"bytes={L}-"]
    assert sorted(p.name for p in folder.iterdir()) == [NAME]


def test_part_longer_than_artifact_restarts_at_zero(server: ArtifactServer, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / f"{NAME}.part").write_bytes(DATA + b"tail")
    assert fetch(artifact(server), folder).read_bytes() == DATA
    assert server.requests == [None]


def test_404_fails_at_once(server: ArtifactServer, folder: Path) -> None:
    sleeps = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server, name="missing.onnx"), folder, sleeps)
    assert info.value.reason == "http_404"
    assert info.value.message == f"artifact missing.onnx: {server.url('missing.onnx')} answered HTTP 404"
    assert info.value.hint == "check the manifest's URL and the file server"
    assert server.requests == [None]
    assert sleeps == []


@pytest.mark.parametrize("status", [403, 410, 400])
def test_other_4xx_fail_at_once(server: ArtifactServer, folder: Path, status: int) -> None:
    server.status_override, server.status_times = status, 5
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder)
    assert info.value.reason == f"http_{status}"
    assert server.requests == [None]


def test_500_twice_then_ok(server: ArtifactServer, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    server.status_override, server.status_times = 500, 2
    sleeps = Recorder()
    assert fetch(artifact(server), folder, sleeps).read_bytes() == DATA
    assert sleeps == [0.5, 1.0]
    assert server.requests == [None, None, None]
    assert downloaded(caplog)["attempts"] == 3


def test_5xx_exhausts_attempts_with_capped_backoff(server: ArtifactServer, folder: Path) -> None:
    server.status_override, server.status_times = 503, 10
    sleeps = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, sleeps, max_attempts=5, backoff_s=(0.5, 1.5))
    assert info.value.reason == "unreachable"
    assert info.value.message == (
        f"artifact {NAME}: could not download {server.url(NAME)} after 5 attempts "
        f"(0 of {L} bytes kept in {NAME}.part): HTTP 503"
    )
    assert sleeps == [0.5, 1.0, 1.5, 1.5]
    assert len(server.requests) == 5


def test_connection_refused_is_unreachable(folder: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    art = Artifact(name=NAME, url=f"http://127.0.0.1:{port}/{NAME}", sha256=SHA, length=L)
    sleeps = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(art, folder, sleeps, max_attempts=2)
    assert info.value.reason == "unreachable"
    assert info.value.message == (
        f"artifact {NAME}: could not download {art.url} after 2 attempts (0 of {L} bytes kept in {NAME}.part): "
        f"ConnectionRefusedError: [Errno 111] connect to 127.0.0.1 port {port}: Connection refused"
    )
    assert sleeps == [0.5]


def test_announced_too_long_writes_nothing(server: ArtifactServer, folder: Path) -> None:
    server.extra_bytes = 10
    progress = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, on_progress=progress)
    assert info.value.reason == "too_long"
    assert info.value.message == (
        f"artifact {NAME}: {server.url(NAME)} announced {L + 10} bytes, expected exactly {L}"
    )
    assert list(folder.iterdir()) == []
    assert progress == []
    assert server.requests == [None]


def test_unannounced_extra_data_is_never_written(server: ArtifactServer, folder: Path) -> None:
    server.extra_bytes, server.omit_length = 10, True
    progress = Recorder()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, on_progress=progress)
    assert info.value.reason == "too_long"
    assert info.value.message == f"artifact {NAME}: {server.url(NAME)} sent more data, expected exactly {L}"
    assert list(folder.iterdir()) == []
    assert max(done for done, _ in progress) < L


def test_hash_mismatch_deletes_part(server: ArtifactServer, folder: Path) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server, sha256=wrong), folder)
    assert info.value.reason == "hash_mismatch"
    assert info.value.message == f"artifact {NAME}: SHA-256 mismatch: expected {wrong}, got {SHA}"
    assert list(folder.iterdir()) == []


def test_stop_cancels_and_keeps_part(server: ArtifactServer, folder: Path) -> None:
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        stop.set()

    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, on_progress=progress, stop=stop)
    assert info.value.reason == "cancelled"
    assert info.value.message == f"artifact {NAME}: download cancelled"
    assert (folder / f"{NAME}.part").read_bytes() == DATA[:CHUNK]

    stop.clear()
    assert fetch(artifact(server), folder, stop=stop).read_bytes() == DATA
    assert server.requests == [None, f"bytes={CHUNK}-"]


def test_stop_interrupts_a_real_backoff_promptly(server: ArtifactServer, folder: Path) -> None:
    server.status_override, server.status_times = 500, 10
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(DeployError) as info:
        fetch_artifact(artifact(server), folder, timeout_s=5.0, backoff_s=(30.0, 30.0), stop=stop)
    timer.join()
    assert info.value.reason == "cancelled"
    assert time.monotonic() - started < 3.0
    assert server.requests == [None]


def test_stop_already_set_makes_no_request(server: ArtifactServer, folder: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, stop=stop)
    assert info.value.reason == "cancelled"
    assert server.requests == []


def test_non_http_url_is_refused(folder: Path) -> None:
    art = Artifact.model_construct(name=NAME, url=f"ftp://127.0.0.1/{NAME}", sha256=SHA, length=L)
    with pytest.raises(DeployError) as info:
        fetch(art, folder)
    assert info.value.reason == "bad_url"
    assert info.value.message == (
        f"artifact {NAME}: refusing URL 'ftp://127.0.0.1/{NAME}': only http and https are allowed"
    )
    assert not folder.exists()


# ----------------------------------------------------------------------- deadline and stop

TRICKLE_S = 0.4  # one byte every 0.4 s: never silent long enough for a socket timeout


class Bounded:
    """Run a call on a thread; ``wait`` gives it ``limit`` seconds (a hung call fails the test)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def wait(self, limit: float, what: str) -> DeployError:
        self._thread.join(limit)
        assert not self._thread.is_alive(), f"{what}: still running after {limit} s"
        assert isinstance(self.error, DeployError), self.error
        return self.error


def part_bytes(folder: Path) -> bytes:
    part = folder / f"{NAME}.part"
    return part.read_bytes() if part.exists() else b""


@pytest.mark.parametrize(
    ("min_rate_bps", "floor_s", "deadline"),
    [
        (10**9, 2.0, 2.0),  # the floor: a big rate gives this small artifact next to no time
        (L // 2, 0.5, 2.0),  # the rate: 256000 bytes at 128000 bytes/s
    ],
)
def test_a_trickling_server_hits_the_deadline(
    server: ArtifactServer, folder: Path, min_rate_bps: int, floor_s: float, deadline: float
) -> None:
    server.trickle_s = TRICKLE_S
    call = Bounded(
        lambda: fetch(
            artifact(server), folder, min_rate_bps=min_rate_bps, deadline_floor_s=floor_s, timeout_s=5.0
        )
    )
    exc = call.wait(deadline + 10.0, "a download from a trickling server")
    assert call.ended_at is not None
    elapsed = call.ended_at - call.started_at
    assert exc.reason == "too_slow_download", exc.message
    have = part_bytes(folder)
    assert 1 <= len(have) <= deadline / TRICKLE_S + 1 and DATA.startswith(have)  # kept for a resume
    assert exc.message == (
        f"artifact {NAME}: only {len(have)} of {L} bytes from {server.url(NAME)} within the deadline of "
        f"{deadline:.1f} s ({L} bytes at {min_rate_bps} bytes/s, at least {floor_s:.1f} s)"
    )
    assert (
        exc.hint == "for a slow link lower [fleet] download_min_rate_bps or raise download_deadline_floor_s"
    )
    assert deadline <= elapsed < deadline + 1.5, elapsed
    assert server.requests == [None]


def test_trickled_headers_hit_the_deadline(server: ArtifactServer, folder: Path) -> None:
    server.trickle_s, server.trickle_headers = TRICKLE_S, True
    call = Bounded(lambda: fetch(artifact(server), folder, min_rate_bps=10**9, deadline_floor_s=1.5))
    exc = call.wait(12.0, "a download whose status line trickles")
    assert call.ended_at is not None
    assert exc.reason == "too_slow_download"
    assert exc.message.startswith(f"artifact {NAME}: only 0 of {L} bytes from {server.url(NAME)} within")
    assert 1.5 <= call.ended_at - call.started_at < 3.0
    assert part_bytes(folder) == b""


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_stop_during_a_trickle_returns_within_a_second(
    server: ArtifactServer, folder: Path, phase: str
) -> None:
    server.trickle_s, server.trickle_headers = TRICKLE_S, phase == "headers"
    stop = threading.Event()
    call = Bounded(lambda: fetch(artifact(server), folder, stop=stop, timeout_s=30.0))
    deadline = time.monotonic() + 10
    while not server.paths and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # well inside the trickle: a byte arrives every 0.4 s, no socket timeout fires
    stop.set()
    stopped_at = time.monotonic()
    exc = call.wait(10.0, "a cancelled download")
    assert call.ended_at is not None
    assert exc.reason == "cancelled"
    assert exc.message == f"artifact {NAME}: download cancelled"
    assert call.ended_at - stopped_at < 1.5, call.ended_at - stopped_at
    have = part_bytes(folder)
    assert DATA.startswith(have) and (len(have) >= 1 if phase == "body" else have == b"")


def test_a_silent_server_still_times_out_and_is_retried(server: ArtifactServer, folder: Path) -> None:
    server.trickle_s, server.trickle_headers = 60.0, True  # not a byte within the test
    sleeps = Recorder()
    started = time.monotonic()
    with pytest.raises(DeployError) as info:
        fetch(artifact(server), folder, sleeps, timeout_s=0.6, max_attempts=2)
    assert info.value.reason == "unreachable"
    assert info.value.message == (
        f"artifact {NAME}: could not download {server.url(NAME)} after 2 attempts "
        f"(0 of {L} bytes kept in {NAME}.part): TimeoutError: no data for 0.6 s"
    )
    assert sleeps == [0.5]
    assert 1.2 <= time.monotonic() - started < 4.0
    assert server.requests == [None, None]


# ----------------------------------------------------------------------------------- redirects


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) from a throw-away CA; the server certificate is for 127.0.0.1."""
    etc = tmp_path_factory.mktemp("tls")
    make_ca(etc, "ca")
    make_cert(etc, "server", "ca", "127.0.0.1", "subjectAltName=IP:127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(etc / "server.crt", etc / "server.key")
    return server, ssl.create_default_context(cafile=str(etc / "ca.crt"))


@pytest.fixture
def tls_server(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[ArtifactServer]:
    with ArtifactServer({NAME: DATA}, tls=tls[0]) as srv:
        yield srv


def moved(url: str) -> Artifact:
    return Artifact(name=NAME, url=url, sha256=SHA, length=L)


@pytest.mark.parametrize("location", ["/model.onnx", "../model.onnx", "http://127.0.0.1:{port}/model.onnx"])
def test_a_same_origin_redirect_is_followed(server: ArtifactServer, folder: Path, location: str) -> None:
    server.redirects = {"old/model.onnx": location.format(port=server.port)}
    server.redirect_status = 301
    assert fetch(moved(server.url("old/model.onnx")), folder).read_bytes() == DATA
    assert server.paths == ["http /old/model.onnx", "http /model.onnx"]


def test_a_same_origin_https_redirect_is_followed_with_range(
    tls_server: ArtifactServer, tls: tuple[ssl.SSLContext, ssl.SSLContext], folder: Path
) -> None:
    folder.mkdir(parents=True)
    (folder / f"{NAME}.part").write_bytes(DATA[:1000])
    tls_server.redirects = {"latest.onnx": "/model.onnx"}
    path = fetch(moved(tls_server.url("latest.onnx", "https")), folder, ssl_context=tls[1])
    assert path.read_bytes() == DATA
    assert tls_server.paths == ["https /latest.onnx", "https /model.onnx"]
    assert tls_server.requests == ["bytes=1000-"]


def test_a_redirect_to_another_host_is_refused(server: ArtifactServer, folder: Path) -> None:
    with ArtifactServer({NAME: DATA}) as other:  # another port on loopback: another origin
        server.redirects = {NAME: other.url(NAME)}
        with pytest.raises(DeployError) as info:
            fetch(artifact(server), folder)
        assert other.paths == []
    assert info.value.reason == "bad_url"
    assert info.value.message == (
        f"artifact {NAME}: {server.url(NAME)} redirects to {other.url(NAME)}: only redirects within "
        f"http://127.0.0.1:{server.port} (same scheme, host and port) are followed"
    )
    assert server.paths == [f"http /{NAME}"]
    assert not (folder / NAME).exists()


def test_an_https_to_http_redirect_is_refused_even_to_the_same_host_and_port(
    tls_server: ArtifactServer, tls: tuple[ssl.SSLContext, ssl.SSLContext], folder: Path
) -> None:
    # The server answers plain HTTP on the same port, so following the downgrade would succeed.
    tls_server.redirects = {"secure.onnx": tls_server.url(NAME, "http")}
    with pytest.raises(DeployError) as info:
        fetch(moved(tls_server.url("secure.onnx", "https")), folder, ssl_context=tls[1])
    assert info.value.reason == "bad_url"
    assert info.value.message == (
        f"artifact {NAME}: {tls_server.url('secure.onnx', 'https')} redirects to {tls_server.url(NAME)}: "
        "a redirect from https to http is never followed"
    )
    assert tls_server.paths == ["https /secure.onnx"]
    assert not (folder / NAME).exists()


def test_an_http_to_https_redirect_changes_the_origin_and_is_refused(
    tls_server: ArtifactServer, folder: Path
) -> None:
    tls_server.redirects = {"plain.onnx": tls_server.url(NAME, "https")}
    with pytest.raises(DeployError) as info:
        fetch(moved(tls_server.url("plain.onnx")), folder)
    assert info.value.reason == "bad_url"
    assert "(same scheme, host and port) are followed" in info.value.message
    assert tls_server.paths == ["http /plain.onnx"]


def test_a_redirect_loop_ends_after_five_hops(server: ArtifactServer, folder: Path) -> None:
    server.redirects = {"loop.onnx": "/loop.onnx"}
    with pytest.raises(DeployError) as info:
        fetch(moved(server.url("loop.onnx")), folder)
    assert info.value.reason == "bad_url"
    assert info.value.message == f"artifact {NAME}: {server.url('loop.onnx')} redirects more than 5 times"
    assert server.paths == ["http /loop.onnx"] * 6
