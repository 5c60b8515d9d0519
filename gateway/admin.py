"""The gateway's own endpoints: ``/health`` and ``/api/gateway/*``.

Routed by the same trie as the backends (``api.GATEWAY_ENDPOINTS``); GET and
HEAD only, anything else is 405. ``/health`` never touches a backend.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway import __version__
from gateway.accesslog import rfc3339
from gateway.errors import MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from gateway.server import Gateway

JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


def serve(gw: Gateway, endpoint: str, method: bytes) -> tuple[int, bytes, bytes]:
    """(status, content type, body) for a gateway endpoint."""
    if endpoint == "not_found":
        raise NotFound("no such gateway endpoint")
    if method not in (b"GET", b"HEAD"):
        raise MethodNotAllowed(f"{method.decode('ascii', 'replace')} is not allowed here; use GET or HEAD")
    handler = _HANDLERS[endpoint]
    return handler(gw)


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, JSON, orjson.dumps(payload)


def health(gw: Gateway) -> tuple[int, bytes, bytes]:
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


def _pool_state(gw: Gateway, name: str) -> dict[str, int]:
    pool = gw.pools[name]
    return {"idle": pool.idle, "busy": pool.busy}


def services(gw: Gateway) -> tuple[int, bytes, bytes]:
    out = []
    for route in gw.router.routes:
        state = gw.metrics.services[route.name]
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
                    "pool": _pool_state(gw, route.name),
                },
            }
        )
    return _json(200, {"services": out})


def status(gw: Gateway) -> tuple[int, bytes, bytes]:
    m = gw.metrics
    return _json(
        200,
        {
            "status": gw.state,
            "version": __version__,
            "worker": gw.worker_id,
            "uptime_s": round(time.time() - m.started, 3),
            "connections": len(gw.connections),
            "requests_in_flight": m.in_flight,
            "requests_served": m.served,
            "services": {
                name: {
                    "requests": s.requests,
                    "errors": s.errors,
                    "pool": {**_pool_state(gw, name), "waiting": gw.pools[name].waiting},
                }
                for name, s in m.services.items()
            },
        },
    )


def metrics(gw: Gateway) -> tuple[int, bytes, bytes]:
    return 200, PROMETHEUS, gw.metrics.prometheus(gw.pools, len(gw.connections), gw.worker_id)


def recent(gw: Gateway) -> tuple[int, bytes, bytes]:
    return _json(200, {"requests": list(gw.log.recent)})


_HANDLERS = {
    "health": health,
    "services": services,
    "status": status,
    "metrics": metrics,
    "recent": recent,
}
