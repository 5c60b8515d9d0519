"""The gateway's own endpoints: ``/health`` and ``/api/gateway/*``.

Routed by the same trie as the backends; which function answers which path
is the table in ``gateway.endpoints``. GET and HEAD only, anything else is
405. ``/health`` never touches a backend. Handlers are plain functions of
(gateway, path below a prefix endpoint) returning (status, content type,
body, extra headers); one that must wait (the merged OpenAPI document) is a
coroutine function, awaited here.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway import __version__, shared, webui
from gateway.accesslog import rfc3339
from gateway.endpoints import ENDPOINTS
from gateway.errors import MethodNotAllowed, NotFound
from gateway.metrics import prometheus

if TYPE_CHECKING:
    from gateway.state import Gateway

JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


Extra = tuple[tuple[bytes, bytes], ...]  # headers beyond the content type (the docs' Cache-Control)
Response = tuple[int, bytes, bytes, Extra]


async def serve(gw: Gateway, endpoint: str, method: bytes, rest: bytes = b"") -> Response:
    """(status, content type, body, extra headers) for a gateway endpoint; ``rest``
    is the path below a prefix endpoint."""
    handler = _HANDLERS[endpoint]
    if handler is not not_found and method not in (b"GET", b"HEAD"):
        raise MethodNotAllowed(f"{method.decode('ascii', 'replace')} is not allowed here; use GET or HEAD")
    result = handler(gw, rest)
    return await result if inspect.isawaitable(result) else result


def _json(status: int, payload: Any) -> Response:
    return status, JSON, orjson.dumps(payload), ()


def not_found(gw: Gateway, rest: bytes) -> Response:
    """Anything else under ``/api/gateway``, whatever the method."""
    raise NotFound("no such gateway endpoint")


def health(gw: Gateway, rest: bytes) -> Response:
    state = gw.state
    return _json(
        200 if state == "ok" else 503,
        {
            "status": state,
            "version": __version__,
            "uptime_s": round(time.time() - gw.metrics.started, 3),
            "worker": gw.worker_id,
        },
    )


def _pool_state(view: shared.View, name: str) -> dict[str, int]:
    idle, busy, _ = view.gauges.pools.get(name, (0, 0, 0))
    return {"idle": idle, "busy": busy}


def _waiting(view: shared.View, name: str) -> int:
    return view.gauges.pools.get(name, (0, 0, 0))[2]


def services(gw: Gateway, rest: bytes) -> Response:
    view = gw.view()
    out = []
    for route in gw.router.routes:
        state = view.total.services[route.name]
        last_error = state.last_error
        out.append(
            {
                "name": route.name,
                "prefix": route.prefix,
                "upstream": route.upstream.display,
                "state": {
                    "last_success": rfc3339(state.last_success) if state.last_success else None,
                    "last_error": {**last_error, "ts": rfc3339(last_error["ts"])} if last_error else None,
                    "consecutive_failures": state.consecutive_failures,
                    "pool": _pool_state(view, route.name),
                },
            }
        )
    return _json(200, {"services": out})


def status(gw: Gateway, rest: bytes) -> Response:
    """This gateway, all workers together; ``worker`` is the one answering."""
    view = gw.view()
    m = view.total
    return _json(
        200,
        {
            "status": gw.state,
            "version": __version__,
            "worker": gw.worker_id,
            "workers": view.live_workers,
            "uptime_s": round(time.time() - view.started, 3),
            "connections": view.gauges.connections,
            "requests_in_flight": view.gauges.in_flight,
            "requests_served": m.served,
            "services": {
                name: {
                    "requests": s.requests,
                    "errors": s.errors,
                    "pool": {**_pool_state(view, name), "waiting": _waiting(view, name)},
                }
                for name, s in m.services.items()
            },
        },
    )


def metrics(gw: Gateway, rest: bytes) -> Response:
    return 200, PROMETHEUS, prometheus(gw.view(process=True).workers, __version__), ()


def recent(gw: Gateway, rest: bytes) -> Response:
    return _json(200, {"requests": gw.view(recent=True).recent})


def stats(gw: Gateway, rest: bytes) -> Response:
    """Per service over about the last minute: request rate, error rate (backend
    failures: 5xx, and the gateway's 502/503/504), upstream and gateway-added latency."""
    view = gw.view()
    window_s, per_service = gw.metrics.window(time.monotonic(), services=view.total.services)
    for name, entry in per_service.items():
        state = view.total.services[name]
        entry["total"] = {"requests": state.requests, "errors": state.errors}
        entry["pool"] = {**_pool_state(view, name), "waiting": _waiting(view, name)}
    return _json(200, {"window_s": window_s, "services": per_service})


async def openapi(gw: Gateway, rest: bytes) -> Response:
    return 200, JSON, await gw.openapi.document(), ()


def dashboard(gw: Gateway, rest: bytes) -> Response:
    return 200, webui.HTML, webui.dashboard_page(), ()


def docs(gw: Gateway, rest: bytes) -> Response:
    """``/api/gateway/docs``: Swagger UI's page."""
    return docs_asset(gw, b"/")


def docs_asset(gw: Gateway, rest: bytes) -> Response:
    """Below ``/api/gateway/docs``: Swagger UI's page (``/``) and its files."""
    asset = webui.docs_page() if rest == b"/" else webui.docs_asset(rest[1:])
    if asset is None:
        raise NotFound("no such file under /api/gateway/docs")
    return 200, *asset


Handler = Callable[["Gateway", bytes], Response | Awaitable[Response]]
# Endpoint name -> handler, from the table: every "admin.<function>" there.
_HANDLERS: dict[str, Handler] = {
    e.name: globals()[e.handler.removeprefix("admin.")] for e in ENDPOINTS if e.handler.startswith("admin.")
}
