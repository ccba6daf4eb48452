"""One HTTP(S) request for agent/device/download.py, in which no step blocks longer than TICK_S.

A plain ``http.client`` connection blocks in ``connect``, the TLS handshake and every read for
as long as its socket timeout, so a server that trickles one byte every 0.4 s keeps it busy
forever and a stop request waits for it.  Here every blocking step wakes at least every
:data:`TICK_S` and calls ``check`` first (the download's stop event and overall deadline: it
raises to abort), and ``stall_s`` bounds how long one step may wait without progress (then
``TimeoutError``, a transient failure the download retries):

* name resolution runs on a helper thread the caller waits for in ticks (an IP literal is
  resolved at once);
* ``connect`` is non-blocking and polled;
* the TLS handshake is retried after each socket timeout of one tick;
* the response is read through :class:`_TickingReader`, which retries ``recv`` after each
  timeout of one tick, so ``http.client`` parses headers and body from it as usual.

:func:`redirect_target` is the redirect policy: only the same origin (scheme, host and port),
never https to http.  Environment proxies are not used.
"""

from __future__ import annotations

import errno
import http.client
import io
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from agent.errors import DeployError

#: Longest wait of any single blocking call; stop and the deadline are checked in between.
TICK_S = 0.25
SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}

Check = Callable[[], None]


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, with the default port filled in; ValueError if bad."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


def redirect_target(name: str, current: str, location: str) -> str:
    """The absolute URL a redirect leads to, if the policy allows it; else DeployError bad_url."""
    target = urllib.parse.urljoin(current, location.strip())
    prefix = f"artifact {name}: {current} redirects to {target}"
    try:
        here, there = origin(current), origin(target)
    except ValueError as exc:
        raise DeployError(f"{prefix}: {exc}", reason="bad_url") from None
    if here[0] == "https" and there[0] == "http":
        raise DeployError(f"{prefix}: a redirect from https to http is never followed", reason="bad_url")
    if here != there:
        raise DeployError(
            f"{prefix}: only redirects within {here[0]}://{here[1]}:{here[2]} (same scheme, host and port) "
            "are followed",
            reason="bad_url",
        )
    return target


def _resolve(host: str, port: int, check: Check) -> list[Any]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="artifact-dns", daemon=True).start()
    while not done.wait(TICK_S):
        check()  # an abandoned lookup ends by itself
    if "error" in box:
        raise box["error"]
    infos: list[Any] = box["infos"]
    return infos


def _connect_one(info: Any, check: Check, stall_s: float) -> socket.socket:
    family, kind, proto, _name, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            raise OSError(err, f"connect to {address[0]} port {address[1]}: {os.strerror(err)}")
        give_up = time.monotonic() + stall_s
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            while err != 0:
                check()
                if selector.select(TICK_S):
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        # OSError picks the subclass by errno, e.g. ConnectionRefusedError
                        raise OSError(err, f"connect to {address[0]} port {address[1]}: {os.strerror(err)}")
                    break
                if time.monotonic() >= give_up:
                    raise TimeoutError(
                        f"connect to {address[0]} port {address[1]} timed out after {stall_s} s"
                    )
        sock.settimeout(min(TICK_S, stall_s))
        return sock
    except BaseException:
        sock.close()
        raise


def _connect(host: str, port: int, check: Check, stall_s: float) -> socket.socket:
    last: OSError = OSError(f"no address for {host}")
    for info in _resolve(host, port, check):
        try:
            return _connect_one(info, check, stall_s)
        except OSError as exc:
            last = exc
    raise last


def _handshake(
    sock: socket.socket, host: str, context: ssl.SSLContext, check: Check, stall_s: float
) -> ssl.SSLSocket:
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    give_up = time.monotonic() + stall_s
    while True:
        check()
        try:
            tls.do_handshake()
            return tls
        except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if time.monotonic() >= give_up:
                tls.close()
                raise TimeoutError(f"TLS handshake with {host} timed out after {stall_s} s") from None
        except BaseException:
            tls.close()
            raise


class _TickingSocket:
    """The socket methods ``http.client`` uses; reads go through :class:`_TickingReader`.

    Like ``socket.makefile``, the socket is closed once the connection and every reader made
    from it are closed (``http.client`` closes the connection before the body is read).
    """

    def __init__(self, sock: socket.socket, check: Check, stall_s: float) -> None:
        self.sock, self.check, self.stall_s = sock, check, stall_s
        self._refs = 1

    def sendall(self, data: bytes) -> None:
        self.check()
        self.sock.sendall(data)  # a request is small: it fits in the socket buffer at once

    def makefile(self, mode: str = "rb", *_args: Any, **_kwargs: Any) -> io.BufferedReader:
        self._refs += 1
        return io.BufferedReader(_TickingReader(self))

    def close(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            self.sock.close()


class _TickingReader(io.RawIOBase):
    """``recv`` that retries after each one-tick timeout: checks in between, gives up after ``stall_s``."""

    def __init__(self, owner: _TickingSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        owner = self._owner
        give_up = time.monotonic() + owner.stall_s
        while True:
            owner.check()
            try:
                return owner.sock.recv_into(buffer)
            except (TimeoutError, ssl.SSLWantReadError):
                if time.monotonic() >= give_up:
                    raise TimeoutError(f"no data for {owner.stall_s} s") from None

    def close(self) -> None:
        if not self.closed:
            self._owner.close()
        super().close()


class TickingConnection(http.client.HTTPConnection):
    """An HTTP or HTTPS connection (by ``url``'s scheme) whose every blocking step ticks."""

    def __init__(self, url: str, check: Check, stall_s: float, context: ssl.SSLContext | None) -> None:
        scheme, host, port = origin(url)
        super().__init__(host, port, timeout=stall_s)
        self._scheme, self._check, self._stall_s = scheme, check, stall_s
        self._context = context

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self._check, self._stall_s)
        if self._scheme == "https":
            context = self._context or ssl.create_default_context()
            sock = _handshake(sock, self.host, context, self._check, self._stall_s)
        self.sock = _TickingSocket(sock, self._check, self._stall_s)


def request(
    url: str, headers: dict[str, str], *, check: Check, stall_s: float, context: ssl.SSLContext | None
) -> tuple[TickingConnection, http.client.HTTPResponse]:
    """``GET url``; the caller reads the response and closes the connection."""
    conn = TickingConnection(url, check, stall_s, context)
    try:
        parts = urllib.parse.urlsplit(url)
        conn.request(
            "GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")), headers=headers
        )
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise
