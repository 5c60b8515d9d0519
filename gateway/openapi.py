"""One OpenAPI document for every backend: ``/api/gateway/openapi.json``.

Each backend's own document (``<origin>/openapi.json``, or
``<NAME>_OPENAPI_PATH``) is fetched with a plain HTTP/1.1 GET (h11 CLIENT over
asyncio streams, ``FETCH_TIMEOUT_S``), off the request path: a refresher task
rebuilds the merged document every ``REFRESH_S`` while it is in demand, so
what is served is never older than ``TTL_S`` (docs/extras.md). Only the
very first request (or the first after ``IDLE_S`` without one) waits for a
refresh, bounded by the fetch timeout.

The merge itself is pure and lives in ``openapi_merge``; this module fetches
and caches. The cache is given the router (the routes, and which route a
path reaches), nothing else of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import h11
import orjson

from gateway import __version__
from gateway.api import Router
from gateway.config import Route
from gateway.h11client import H11Client
from gateway.openapi_merge import FetchError, merge

__all__ = ["FetchError", "OpenAPICache", "fetch_document", "merge"]

FETCH_TIMEOUT_S = 2.0  # per backend document: connect, request, whole response
TTL_S = 30.0  # the served document is at most this old (docs/extras.md)
REFRESH_S = 25.0  # refresh period while wanted: REFRESH_S + FETCH_TIMEOUT_S < TTL_S
IDLE_S = 300.0  # no request for this long: stop refreshing until the next one
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


async def fetch_document(route: Route, timeout_s: float = FETCH_TIMEOUT_S) -> dict[str, Any]:
    """GET the backend's OpenAPI document: a parsed OpenAPI 3 object, or FetchError."""
    up = route.upstream
    url = up.origin + route.openapi_path
    try:
        async with asyncio.timeout(timeout_s):
            status, body = await _get(up.host, up.port, route.openapi_path)
    except TimeoutError:
        raise FetchError(f"no answer from {url} within {timeout_s:g}s") from None
    except ConnectionRefusedError:
        raise FetchError(f"connection refused by {up.origin}") from None
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {up.host}: {exc.strerror}") from None
    except (OSError, h11.ProtocolError) as exc:
        raise FetchError(f"cannot get {url}: {exc or type(exc).__name__}") from None
    if status != 200:
        raise FetchError(f"{url} answered {status}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FetchError(f"{url} is not JSON") from None
    version = doc.get("openapi") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith("3."):
        raise FetchError(f"{url} is not an OpenAPI 3 document")
    return doc  # type: ignore[no-any-return]  # orjson.loads is typed Any; checked above


async def _get(host: str, port: int, target: str) -> tuple[int, bytes]:
    client = await H11Client.connect(host, port)
    try:
        headers = [("Accept", "application/json"), ("User-Agent", f"gateway/{__version__}"), ("Connection", "close")]
        response = await client.request("GET", target, headers, max_body_bytes=MAX_DOCUMENT_BYTES)
    finally:
        client.close()
    return response.status, response.body


# ------------------------------------------------------------------ the cache


class OpenAPICache:
    """The merged document, refreshed in the background while it is wanted."""

    def __init__(
        self,
        router: Router,
        *,
        timeout_s: float = FETCH_TIMEOUT_S,
        ttl_s: float = TTL_S,
        refresh_s: float = REFRESH_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self.router = router
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self.body: bytes | None = None
        self.built_at = 0.0  # loop time the fetches of ``body`` started
        self.wanted_at = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._refreshed: asyncio.Event | None = None

    async def document(self) -> bytes:
        """The merged document as JSON; waits (bounded) only when none fresh is at hand."""
        loop = asyncio.get_running_loop()
        now = self.wanted_at = loop.time()
        if self._refreshed is None:
            self._refreshed = asyncio.Event()
        done = self._refreshed
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        if self.body is None or now - self.built_at > self.ttl_s:
            try:
                async with asyncio.timeout(self.timeout_s + 1.0):  # fetches, plus the merge
                    await done.wait()
            except TimeoutError:
                pass
        if self.body is None:  # the first refresh is late: say so rather than fail
            note = FetchError(f"document not fetched yet (over {self.timeout_s:g}s)")
            return orjson.dumps(merge([(r, note) for r in self.router.routes], self._reachable))
        return self.body

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.refresh()
            if loop.time() - self.wanted_at > self.idle_s:
                return
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        routes = self.router.routes
        results = await asyncio.gather(*(self._fetch(r) for r in routes))
        # The merge is plain CPU work: off the loop, so proxying goes on meanwhile.
        self.body = await asyncio.to_thread(self._build, list(zip(routes, results, strict=True)))
        self.built_at = started
        if self._refreshed is not None:
            self._refreshed.set()
            self._refreshed = asyncio.Event()

    async def _fetch(self, route: Route) -> dict[str, Any] | FetchError:
        try:
            return await fetch_document(route, self.timeout_s)
        except FetchError as exc:
            return exc

    def _build(self, services: list[tuple[Route, dict[str, Any] | FetchError]]) -> bytes:
        return orjson.dumps(merge(services, self._reachable))

    def _reachable(self, route: Route, path: str) -> bool:
        match = self.router.match(path.encode("utf-8", "replace"))
        return match is not None and match.route is route

    async def aclose(self) -> None:
        """Stop refreshing (at shutdown); a request still waiting gets what there is."""
        if self._refreshed is not None:
            self._refreshed.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
