"""The dashboard's starlette app: ``/`` the page, ``/api/summary``, ``/metrics``, ``/healthz``.

The app only reads.  :class:`Dashboard` holds one read-only database connection
(:mod:`agent.coordinator.read_store`, opened on first use, reopened after a failure) behind a
lock; every request that needs the database runs in starlette's thread pool, so a slow or
unreachable database never blocks the event loop (``/healthz`` then answers 503).  Inside
``coordinator run`` the same app also exports the service's own counters on ``/metrics``;
``coordinator dashboard`` serves it without ingesting (``mode: read-only``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.coordinator.config import CoordinatorConfig, is_loopback, parse_listen
from agent.coordinator.http_guard import Guard
from agent.coordinator.http_server import HttpServer
from agent.coordinator.metrics import PREFIX, DatabaseGauges
from agent.coordinator.read_store import open_read_store
from agent.coordinator.store import StorageUnavailableError, Store, now_ms
from agent.coordinator.summary import online_devices, registered_count, summary
from agent.errors import ConfigError

log = logging.getLogger("edgeproof.coordinator")
T = TypeVar("T")

#: Static parts of the page (package data next to this module), by path: (file, media type).
STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PATHS = frozenset({*STATIC, "/api/summary", "/metrics", "/healthz"})
#: Our own files only: no inline script, no external fetch, no framing.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def static_file(name: str) -> bytes:
    return resources.files("agent.coordinator").joinpath(name).read_bytes()


class Dashboard:
    """The state behind the app: a read-only connection, the summary cache, HTTP counters."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        slot_ms: int,
        epoch_ms: int,
        online_window_ms: int,
        refresh_s: int,
        mode: str,
        registry: CollectorRegistry,
        cache_s: float = 1.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._open = open_store
        self._store: Store | None = None
        self._lock = threading.Lock()
        self.slot_ms = slot_ms
        self.epoch_ms = epoch_ms
        self.online_window_ms = online_window_ms
        self.refresh_s = refresh_s
        self.mode = mode
        self.registry = registry
        self.cache_s = cache_s
        self.clock = clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self.refused = Counter(
            f"{PREFIX}_http_refused", "HTTP requests refused, by named reason", ["reason"], registry=registry
        )
        registry.register(DatabaseGauges(self.gauges))

    def read(self, query: Callable[[Store], T]) -> T:
        """Run ``query`` in one read snapshot; StorageUnavailableError when the database is not there."""
        with self._lock:
            try:
                if self._store is None:
                    self._store = self._open()
                with self._store.transaction():
                    return query(self._store)
            except StorageUnavailableError:
                if self._store is not None:
                    self._store.close()
                self._store = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def summary(self) -> dict[str, Any]:
        """The summary document, computed at most once per ``cache_s`` (several tabs, scrapers)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        doc = self.read(
            lambda store: summary(
                store,
                now_ms=self.clock(),
                slot_ms=self.slot_ms,
                epoch_ms=self.epoch_ms,
                online_window_ms=self.online_window_ms,
            )
        )
        doc = {**doc, "mode": self.mode, "refresh_s": self.refresh_s}
        self._cached = (time.monotonic(), doc)
        return doc

    def gauges(self) -> tuple[int, int] | None:
        try:
            return self.read(
                lambda store: (
                    len(online_devices(store, self.clock(), self.online_window_ms)),
                    registered_count(store),
                )
            )
        except StorageUnavailableError as exc:
            log.warning("storage_unavailable", extra={"error": exc.message, "during": "metrics"})
            return None

    def healthy(self) -> bool:
        try:
            self.read(lambda store: store.one("SELECT 1"))
        except StorageUnavailableError:
            return False
        return True

    def count_refused(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()
        log.debug("http_refused", extra={"reason": reason})


def make_app(dashboard: Dashboard, *, check_host: bool = True) -> Guard:
    """The ASGI app: starlette routes behind :class:`~agent.coordinator.http_guard.Guard`."""
    files = {path: (static_file(name), media) for path, (name, media) in STATIC.items()}

    async def page(request: Request) -> Response:
        body, media = files[request.url.path]
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    async def api_summary(request: Request) -> Response:
        try:
            doc = await run_in_threadpool(dashboard.summary)
        except StorageUnavailableError as exc:
            dashboard.count_refused("storage_unavailable")
            log.warning("storage_unavailable", extra={"error": exc.message, "during": "summary"})
            return JSONResponse({"error": "storage_unavailable"}, status_code=503, headers=SECURITY_HEADERS)
        return JSONResponse(doc, headers=SECURITY_HEADERS)

    async def metrics(request: Request) -> Response:
        text = await run_in_threadpool(generate_latest, dashboard.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(dashboard.healthy)
        doc = {"status": "ok" if ok else "storage_unavailable", "mode": dashboard.mode}
        return JSONResponse(doc, status_code=200 if ok else 503, headers={"cache-control": "no-store"})

    routes = [Route(path, page, methods=["GET", "HEAD"]) for path in STATIC]
    routes += [
        Route("/api/summary", api_summary, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes)
    return Guard(app, paths=PATHS, check_host=check_host, count=dashboard.count_refused)


def start_dashboard(
    config: CoordinatorConfig, registry: CollectorRegistry, *, mode: str, listen: str | None = None
) -> tuple[HttpServer, Dashboard] | None:
    """Bind ``[http] listen`` (or ``listen``) and serve the app there; None when it is empty.

    Raises ConfigError for an unusable address (port in use, a remote address without
    ``allow_remote``).
    """
    http = config.http
    text = http.listen if listen is None else listen
    try:
        address = parse_listen(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if address is None:
        return None
    host, port = address
    if not http.allow_remote and not is_loopback(host):
        raise ConfigError(
            f"listen {text!r} is not a loopback address",
            hint="the dashboard is for localhost; set [http] allow_remote = true to serve it elsewhere",
        )
    dashboard = Dashboard(
        lambda: open_read_store(config.storage),
        slot_ms=config.beacons.slot_ms,
        epoch_ms=config.epochs.epoch_ms,
        online_window_ms=http.online_window_s * 1000,
        refresh_s=http.refresh_s,
        mode=mode,
        registry=registry,
    )
    server = HttpServer(make_app(dashboard, check_host=not http.allow_remote), host, port)
    server.start()
    return server, dashboard
