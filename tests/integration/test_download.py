"""fetch_artifact against a real loopback HTTP server: resume, faults, limits, verification."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.device.download import fetch_artifact
from agent.errors import DeployError
from agent.protocol.messages import Artifact
from tests.support.artifact_server import ArtifactServer

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
    assert "after 2 attempts" in info.value.message
    assert "URLError" in info.value.message
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
