"""fleet serve: Range (206/416), ETag (the sha256), HEAD, Content-Length, traversal refused.

A real server on a loopback port in a thread, real HTTP requests (http.client).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fleet.http_range import RangeNotSatisfiable, byte_range
from agent.fleet.serve import ArtifactHTTPServer, make_server, resolve_request_path

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactHTTPServer]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "model.onnx").write_bytes(DATA)
    (root / ".hidden").write_bytes(b"secret")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    srv = make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def request(
    srv: ArtifactHTTPServer, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=5)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name.replace("_", "-"), value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_get_and_head_carry_length_and_the_sha256_etag(server: ArtifactHTTPServer) -> None:
    status, headers, body = request(server, "/model.onnx")
    assert (status, body) == (200, DATA)
    assert headers["content-length"] == "10240" and headers["etag"] == f'"{SHA}"'
    assert headers["accept-ranges"] == "bytes"
    status, headers, body = request(server, "/model.onnx", "HEAD")
    assert (status, body, headers["content-length"], headers["etag"]) == (200, b"", "10240", f'"{SHA}"')
    status, headers, body = request(server, "/model.onnx", If_None_Match=f'"{SHA}"')
    assert (status, body) == (304, b"")


def test_ranges_are_answered_206_and_unsatisfiable_ones_416(server: ArtifactHTTPServer) -> None:
    status, headers, body = request(server, "/model.onnx", Range="bytes=100-199")
    assert (status, body) == (206, DATA[100:200])
    assert headers["content-range"] == "bytes 100-199/10240" and headers["content-length"] == "100"
    status, headers, body = request(server, "/model.onnx", Range="bytes=10000-")
    assert (status, body, headers["content-range"]) == (206, DATA[10000:], "bytes 10000-10239/10240")
    status, headers, body = request(server, "/model.onnx", Range="bytes=-16")
    assert (status, body) == (206, DATA[-16:])
    for bad in ("bytes=10240-", "bytes=5-2", "bytes=0-1,4-5", "items=0-1"):
        status, headers, body = request(server, "/model.onnx", Range=bad)
        assert (status, headers["content-range"], body) == (416, "bytes */10240", b""), bad
    # If-Range with another ETag: the file changed, so the whole file comes back.
    status, _, body = request(server, "/model.onnx", Range="bytes=0-9", If_Range='"other"')
    assert (status, body) == (200, DATA)
    assert server.refusals["bad_range"] == 4


def test_paths_that_leave_the_folder_are_refused_and_counted(server: ArtifactHTTPServer) -> None:
    for path in (
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/escape.txt",
        "/.hidden",
        "/a/..%2f..%2foutside.txt",
    ):
        status, _, body = request(server, path)
        assert (status, body) == (404, b""), path
    assert server.refusals["path_traversal"] == 5
    assert request(server, "/missing.onnx")[0] == 404 and server.refusals["unknown_path"] == 1
    assert request(server, "/model.onnx", "POST")[0] == 405 and server.refusals["method_not_allowed"] == 1


def test_byte_range_and_path_resolution_are_pure(tmp_path: Path) -> None:
    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-", 10) == (2, 9) and byte_range("bytes=2-99", 10) == (2, 9)
    assert byte_range("bytes=-99", 10) == (0, 9)
    with pytest.raises(RangeNotSatisfiable, match="outside a 10-byte file"):
        byte_range("bytes=10-", 10)
    with pytest.raises(RangeNotSatisfiable, match="selects no bytes"):
        byte_range("bytes=-0", 10)
    root = tmp_path.resolve()
    assert resolve_request_path(root, "/a/b.bin?x=1") == root / "a" / "b.bin"
    assert resolve_request_path(root, "/") is None and resolve_request_path(root, "/a/../b") is None
