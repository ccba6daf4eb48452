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
Received bytes are written to the ``.part`` as they arrive, so a crash keeps them for resume.
4xx answers fail at once (``http_<code>``); 5xx and network errors (refused, reset, no data for
``timeout_s``, body cut short) are retried with resume after a capped, doubling backoff,
``max_attempts`` in all, then ``unreachable`` with the ``.part`` kept for a later call.

Time is bounded whatever the server does (agent/device/download_http.py: no blocking step
waits longer than a quarter second).  Each call has an overall deadline of
``max(deadline_floor_s, length / min_rate_bps)`` seconds from its first request, retries and
backoff included; past it the call fails with ``too_slow_download`` (``.part`` kept), so a
server trickling a byte at a time cannot hold a download forever.  ``stop`` aborts with
``cancelled`` (``.part`` kept) within a quarter second, in any phase.  Redirects are followed
only within the same origin (scheme, host and port) and never from https to http; any other
redirect, or more than five, is ``bad_url`` naming both URLs.  Local file errors are
``io_error``.  Every failure is a :class:`~agent.errors.DeployError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeAlias

from agent.device.download_http import MAX_REDIRECTS, REDIRECT_STATUSES, SCHEMES, redirect_target, request
from agent.errors import DeployError
from agent.protocol.messages import Artifact

log = logging.getLogger(__name__)

#: A download may be this slow on average (bytes/s) before it fails with ``too_slow_download`` ...
DEFAULT_MIN_RATE_BPS = 16_384
#: ... but never gets less time than this (seconds): connecting, retries, a small file.
DEFAULT_DEADLINE_FLOOR_S = 120.0

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_HASH_CHUNK = 1024 * 1024
_TRANSIENT = (OSError, http.client.HTTPException)  # refused, resets, timeouts, IncompleteRead
_USER_AGENT = "edgeproof-agent"
_Progress: TypeAlias = Callable[[int, int], None] | None
_Stop: TypeAlias = threading.Event | None


class _Retry(Exception):
    """A transient failure: back off, then try again from what the ``.part`` holds."""


def deadline_s(length: int, min_rate_bps: int, floor_s: float) -> float:
    """The overall time a download of ``length`` bytes may take."""
    return max(floor_s, length / min_rate_bps)


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
        limits: tuple[int, float],  # (min_rate_bps, deadline_floor_s)
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.art, self.fh, self.stop = art, fh, stop
        self.timeout_s, self.chunk_bytes, self.progress = timeout_s, chunk_bytes, progress
        self.limits, self.ssl_context = limits, ssl_context
        self.digest, self.have = hashlib.sha256(), 0
        self.resumed = False
        self.deadline = float("inf")  # set when the first request starts
        if fh.seek(0, os.SEEK_END) > art.length:
            self.restart()  # longer than the artifact: not a prefix of it
        else:
            fh.seek(0)
            self.have = _hash_into(self.digest.update, fh, stop, art.name)

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.digest, self.have = hashlib.sha256(), 0

    def check(self) -> None:
        """Called between every blocking step: stop, then the overall deadline."""
        _check_stop(self.stop, self.art.name)
        if time.monotonic() >= self.deadline:
            rate, floor = self.limits
            raise DeployError(
                f"artifact {self.art.name}: only {self.have} of {self.art.length} bytes from {self.art.url} "
                f"within the deadline of {deadline_s(self.art.length, rate, floor):.1f} s "
                f"({self.art.length} bytes at {rate} bytes/s, at least {floor:.1f} s)",
                reason="too_slow_download",
                hint="for a slow link lower [fleet] download_min_rate_bps or raise download_deadline_floor_s",
            )

    def run(
        self,
        max_attempts: int,
        backoff_s: tuple[float, float],
        sleep: Callable[[float], None],
    ) -> int:
        """Attempt until the ``.part`` holds ``length`` bytes; return the number of attempts."""
        self.deadline = time.monotonic() + deadline_s(self.art.length, *self.limits)
        delay, last = backoff_s[0], ""
        for attempt in range(1, max_attempts + 1):
            self.check()
            try:
                self.attempt()
                return attempt
            except _Retry as exc:
                last = str(exc)
                log.warning("artifact download failed", extra={"artifact": self.art.name, "error": last})
                if attempt < max_attempts:
                    pause = max(0.0, min(delay, self.deadline - time.monotonic()))
                    if self.stop is not None and sleep is time.sleep:
                        self.stop.wait(pause)  # wakes at once when stop is set
                    else:
                        sleep(pause)
                    delay = min(delay * 2, backoff_s[1])
        raise DeployError(
            f"artifact {self.art.name}: could not download {self.art.url} after {max_attempts} attempts "
            f"({self.have} of {self.art.length} bytes kept in {self.art.name}.part): {last}",
            reason="unreachable",
            hint="the next call resumes from the .part file",
        )

    def attempt(self) -> None:
        """One request (and its same-origin redirects); ``have == length`` or ``_Retry`` / ``DeployError``."""
        headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        url = self.art.url
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                conn, response = request(
                    url, headers, check=self.check, stall_s=self.timeout_s, context=self.ssl_context
                )
            except _TRANSIENT as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            with contextlib.closing(conn), response:
                location = response.getheader("Location")
                if response.status in REDIRECT_STATUSES and location:
                    url = redirect_target(self.art.name, url, location)
                    continue
                try:
                    self._accept(response)
                except _Complete:
                    return
                self._read_body(response)
                return
        raise DeployError(
            f"artifact {self.art.name}: {self.art.url} redirects more than {MAX_REDIRECTS} times",
            reason="bad_url",
        )

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
        elif response.status == 416:
            if self.have == self.art.length:
                raise _Complete  # nothing left to send: verify what is there
            self.restart()  # the server's file is shorter than our .part: not the same file
            raise _Retry("HTTP 416 for a range inside the artifact; restarting at 0")
        elif response.status >= 500:
            raise _Retry(f"HTTP {response.status}")
        else:
            raise self._refused(response.status)
        announced = response.headers.get("Content-Length", "").strip()
        if announced.isdigit() and self.have + int(announced) > self.art.length:
            raise self._too_long(f"announced {self.have + int(announced)} bytes")

    def _read_body(self, response: http.client.HTTPResponse) -> None:
        """Write what arrives as it arrives; progress at every multiple of ``chunk_bytes``."""
        length, chunk = self.art.length, self.chunk_bytes
        while self.have < length:
            self.check()
            want = min(chunk - self.have % chunk, length - self.have)
            try:
                data = response.read1(want)
            except _TRANSIENT as exc:
                raise _Retry(f"{type(exc).__name__} after {self.have} of {length} bytes: {exc}") from exc
            if not data:
                raise _Retry(f"connection closed after {self.have} of {length} bytes")
            self.fh.write(data)
            self.fh.flush()  # on disk (page cache) at once: a crash keeps it for the Range resume
            self.digest.update(data)
            self.have += len(data)
            if self.progress is not None and self.have < length and self.have % chunk == 0:
                self.progress(self.have, length)
        try:
            extra = response.read1(1)
        except _TRANSIENT:
            extra = b""  # the body is complete; how the connection ended does not matter
        if extra:
            raise self._too_long("sent more data")


class _Complete(Exception):
    """A 416 to a range that starts at the end: the ``.part`` is complete."""


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
    min_rate_bps: int = DEFAULT_MIN_RATE_BPS,
    deadline_floor_s: float = DEFAULT_DEADLINE_FLOOR_S,
    ssl_context: ssl.SSLContext | None = None,  # None: the system's trusted CAs
) -> Path:
    """Download ``artifact`` into ``folder`` and return its verified path (see the module doc)."""
    if max_attempts < 1 or chunk_bytes < 1 or min_rate_bps < 1:
        raise ValueError("max_attempts, chunk_bytes and min_rate_bps must be at least 1")
    if not deadline_floor_s > 0 or not timeout_s > 0:
        raise ValueError("deadline_floor_s and timeout_s must be positive")
    url = urllib.parse.urlsplit(artifact.url)
    try:
        port_ok = url.port is None or url.port > 0
    except ValueError:
        port_ok = False
    if url.scheme.lower() not in SCHEMES or not url.hostname or not port_ok:
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
            limits = (min_rate_bps, deadline_floor_s)
            job = _Download(artifact, fh, timeout_s, chunk_bytes, on_progress, stop, limits, ssl_context)
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
