"""Fetch one manifest artifact over HTTP(S): resumable, bounded, hash-verified, atomic.

:func:`fetch_artifact` returns ``folder / artifact.name`` once it holds exactly ``length`` bytes
hashing to ``sha256``.  A final file that already matches is returned without network access;
a wrong one is deleted.  Bytes go to ``<name>.part`` first: an existing ``.part`` is hashed and
resumed with ``Range: bytes=<have>-`` (one longer than the artifact is discarded).  A ``206``
must start at ``have`` (else the ``.part`` is discarded), a ``200`` to a range request means the
range was ignored (truncate, hash from 0), a ``416`` with a complete ``.part`` verifies it.

Never more than ``length`` bytes are written: a larger announced size or an extra byte deletes
the ``.part`` (``too_long``, the TUF "endless data" defence).  A wrong digest deletes it
(``hash_mismatch``).  A good file is fsynced, renamed over the final name, the folder fsynced.
4xx answers fail at once (``http_<code>``); 5xx and network errors (refused, reset, timeout,
body cut short) are retried with resume after a capped, doubling backoff, ``max_attempts`` in
all, then ``unreachable`` with the ``.part`` kept for a later call.  ``stop`` aborts with
``cancelled`` (``.part`` kept); it is checked between chunks and attempts, so a read blocked on
a silent server still takes up to ``timeout_s``.  Redirects are followed to http/https only.
Local file errors are ``io_error``.  Every failure is a :class:`~agent.errors.DeployError`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeAlias

from agent.errors import DeployError
from agent.protocol.messages import Artifact

log = logging.getLogger(__name__)

_SCHEMES = frozenset({"http", "https"})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_HASH_CHUNK = 1024 * 1024
_TRANSIENT = (OSError, http.client.HTTPException)  # URLError, timeouts, resets, IncompleteRead
_Progress: TypeAlias = Callable[[int, int], None] | None
_Stop: TypeAlias = threading.Event | None


class _Retry(Exception):
    """A transient failure: back off, then try again from what the ``.part`` holds."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _SCHEMES:
            raise DeployError(
                f"{req.full_url} redirects to {newurl!r}: only http and https are followed", reason="bad_url"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_stop(stop: _Stop, name: str) -> None:
    if stop is not None and stop.is_set():
        raise DeployError(f"artifact {name}: download cancelled", reason="cancelled")


def _hash_into(update: Callable[[bytes], None], fh: IO[bytes], stop: _Stop, name: str) -> int:
    """Feed ``fh`` from its current position to ``update`` in blocks; return the bytes read."""
    size = 0
    while block := fh.read(_HASH_CHUNK):
        _check_stop(stop, name)
        update(block)
        size += len(block)
    return size


class _Download:
    """One artifact's ``.part`` file, its running hash, and the attempts to complete it."""

    def __init__(
        self,
        art: Artifact,
        fh: IO[bytes],
        timeout_s: float,
        chunk_bytes: int,
        progress: _Progress,
        stop: _Stop,
    ) -> None:
        self.art, self.fh, self.stop = art, fh, stop
        self.timeout_s, self.chunk_bytes, self.progress = timeout_s, chunk_bytes, progress
        self.opener = urllib.request.build_opener(_HttpOnlyRedirects())
        self.digest, self.have = hashlib.sha256(), 0
        self.resumed = False
        if fh.seek(0, os.SEEK_END) > art.length:
            self.restart()  # longer than the artifact: not a prefix of it
        else:
            fh.seek(0)
            self.have = _hash_into(self.digest.update, fh, stop, art.name)

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.digest, self.have = hashlib.sha256(), 0

    def run(self, max_attempts: int, backoff_s: tuple[float, float], sleep: Callable[[float], None]) -> int:
        """Attempt until the ``.part`` holds ``length`` bytes; return the number of attempts."""
        delay, last = backoff_s[0], ""
        for attempt in range(1, max_attempts + 1):
            _check_stop(self.stop, self.art.name)
            try:
                self.attempt()
                return attempt
            except _Retry as exc:
                last = str(exc)
                log.warning("artifact download failed", extra={"artifact": self.art.name, "error": last})
                if attempt < max_attempts:
                    if self.stop is not None and sleep is time.sleep:
                        self.stop.wait(delay)  # wakes at once when stop is set
                    else:
                        sleep(delay)
                    delay = min(delay * 2, backoff_s[1])
        raise DeployError(
            f"artifact {self.art.name}: could not download {self.art.url} after {max_attempts} attempts "
            f"({self.have} of {self.art.length} bytes kept in {self.art.name}.part): {last}",
            reason="unreachable",
            hint="the next call resumes from the .part file",
        )

    def attempt(self) -> None:
        """One request; returns with ``have == length`` or raises ``_Retry`` / ``DeployError``."""
        headers = {"Accept-Encoding": "identity"}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        try:
            response = self.opener.open(
                urllib.request.Request(self.art.url, headers=headers), timeout=self.timeout_s
            )
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and self.have == self.art.length:
                return  # nothing left to send: verify what is there
            if exc.code == 416:
                self.restart()  # the server's file is shorter than our .part: not the same file
                raise _Retry("HTTP 416 for a range inside the artifact; restarting at 0") from exc
            if exc.code >= 500:
                raise _Retry(f"HTTP {exc.code}") from exc
            raise self._refused(exc.code) from exc
        except _TRANSIENT as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        with response:
            self._accept(response)
            self._read_body(response)

    def _refused(self, code: int) -> DeployError:
        return DeployError(
            f"artifact {self.art.name}: {self.art.url} answered HTTP {code}",
            reason=f"http_{code}",
            hint="check the manifest's URL and the file server",
        )

    def _too_long(self, what: str) -> DeployError:
        return DeployError(
            f"artifact {self.art.name}: {self.art.url} {what}, expected exactly {self.art.length}",
            reason="too_long",
        )

    def _accept(self, response: http.client.HTTPResponse) -> None:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = _CONTENT_RANGE.match(content_range)
            if match is None or int(match.group(1)) != self.have:
                self.restart()
                raise _Retry(
                    f"Content-Range {content_range!r} does not start at {self.have}; restarting at 0"
                )
            if match.group(3) != "*" and int(match.group(3)) > self.art.length:
                raise self._too_long(f"announced a size of {match.group(3)} bytes")
            self.resumed = self.resumed or self.have > 0
        elif response.status == 200:
            if self.have:
                log.info(
                    "server ignored range, restarting", extra={"artifact": self.art.name, "have": self.have}
                )
                self.restart()
        else:
            raise self._refused(response.status)
        announced = response.headers.get("Content-Length", "").strip()
        if announced.isdigit() and self.have + int(announced) > self.art.length:
            raise self._too_long(f"announced {self.have + int(announced)} bytes")

    def _read_body(self, response: http.client.HTTPResponse) -> None:
        length = self.art.length
        while self.have < length:
            _check_stop(self.stop, self.art.name)
            try:
                data = response.read(min(self.chunk_bytes, length - self.have))
            except _TRANSIENT as exc:
                raise _Retry(f"{type(exc).__name__} after {self.have} of {length} bytes: {exc}") from exc
            if not data:
                raise _Retry(f"connection closed after {self.have} of {length} bytes")
            self.fh.write(data)
            self.digest.update(data)
            self.have += len(data)
            if self.progress is not None and self.have < length:
                self.progress(self.have, length)
        try:
            extra = response.read(1)
        except _TRANSIENT:
            extra = b""  # the body is complete; how the connection ended does not matter
        if extra:
            raise self._too_long("sent more data")


def fetch_artifact(
    artifact: Artifact,
    folder: Path,
    *,
    timeout_s: float = 30.0,
    chunk_bytes: int = 64 * 1024,
    max_attempts: int = 5,
    backoff_s: tuple[float, float] = (0.5, 8.0),
    on_progress: Callable[[int, int], None] | None = None,  # (bytes_done, artifact.length)
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,  # set -> DeployError(reason="cancelled"), .part kept
) -> Path:
    """Download ``artifact`` into ``folder`` and return its verified path (see the module doc)."""
    if max_attempts < 1 or chunk_bytes < 1:
        raise ValueError("max_attempts and chunk_bytes must be at least 1")
    url = urllib.parse.urlsplit(artifact.url)
    if url.scheme.lower() not in _SCHEMES or not url.hostname:
        raise DeployError(
            f"artifact {artifact.name}: refusing URL {artifact.url!r}: only http and https are allowed",
            reason="bad_url",
        )
    final, part = folder / artifact.name, folder / (artifact.name + ".part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if final.exists():
            digest = hashlib.sha256()
            with final.open("rb") as fh:
                size = _hash_into(digest.update, fh, stop, artifact.name)
            if size == artifact.length and digest.hexdigest() == artifact.sha256:
                return final
            log.warning("existing artifact is wrong, replacing", extra={"artifact": artifact.name})
            final.unlink()
        with part.open("r+b" if part.exists() else "w+b") as fh:
            job = _Download(artifact, fh, timeout_s, chunk_bytes, on_progress, stop)
            attempts = job.run(max_attempts, backoff_s, sleep)
            actual = job.digest.hexdigest()
            if actual == artifact.sha256:
                fh.flush()
                os.fsync(fh.fileno())
        if actual != artifact.sha256:
            part.unlink()
            raise DeployError(
                f"artifact {artifact.name}: SHA-256 mismatch: expected {artifact.sha256}, got {actual}",
                reason="hash_mismatch",
            )
        os.replace(part, final)
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise DeployError(
            f"artifact {artifact.name}: cannot write in {folder}: {exc}", reason="io_error"
        ) from exc
    except DeployError as exc:
        if exc.reason == "too_long":
            part.unlink(missing_ok=True)
        raise
    if on_progress is not None:
        on_progress(artifact.length, artifact.length)
    info = {"artifact": artifact.name, "bytes": artifact.length, "attempts": attempts, "resumed": job.resumed}
    log.info("artifact downloaded", extra=info)
    return final
