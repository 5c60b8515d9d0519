"""The gateway's routes: one prefix trie over whole path segments (FR-013).

Backends (``/api/<name>``, and routes from ``GATEWAY_CONFIG``) and the
gateway's own endpoints (``/health``, ``/api/gateway/*``) are entries of the
same trie, so the server has no special cases. Matching works on the raw
request-target bytes and never decodes, re-encodes or normalises them: the
rest of the path and the query go upstream byte for byte. No asyncio here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import Route

# Gateway-owned endpoints: exact paths -> endpoint names that admin.py serves.
GATEWAY_ENDPOINTS: dict[str, str] = {
    "/health": "health",
    "/api/gateway/status": "status",
    "/api/gateway/services": "services",
    "/api/gateway/metrics": "metrics",
    "/api/gateway/recent": "recent",
    "/api/gateway/stats": "stats",
    "/api/gateway/openapi.json": "openapi",
    "/api/gateway/docs": "docs",
    "/api/gateway/": "dashboard",  # the trailing slash is a segment of its own: exact, like the rest
    "/api/gateway": "dashboard_redirect",  # 308 to /api/gateway/ (CONTRACT.md, Routing)
}
# Gateway-owned prefixes: these paths and everything below them (``Match.rest``).
# An exact entry on the same node wins for the path itself, so
# ``/api/gateway/docs`` is the page and ``/api/gateway/docs/<file>`` its assets.
GATEWAY_PREFIX_ENDPOINTS: dict[str, str] = {
    "/api/gateway/docs": "docs_asset",
}
# The endpoints every client may use (CONTRACT.md, Routing). Every other
# endpoint is operational: served only to clients in GATEWAY_ADMIN_ALLOW, so
# an endpoint added later is private until it is listed here. ``not_found``
# (anything else under /api/gateway) tells nobody anything.
PUBLIC_ENDPOINTS: frozenset[str] = frozenset({"health", "status", "openapi", "docs", "docs_asset", "not_found"})
# Everything else under this prefix is the gateway's too: a 404 of its own,
# never forwarded (``gateway`` is a reserved service name).
GATEWAY_PREFIX = "/api/gateway"


@dataclass(frozen=True, slots=True)
class Match:
    """A routing decision: a backend ``route`` or a gateway ``endpoint``."""

    route: Route | None = None
    endpoint: str | None = None  # "health", "status", ...; "not_found" under /api/gateway
    public: bool = False  # a gateway endpoint every client may use (PUBLIC_ENDPOINTS)
    upstream_target: bytes = b""  # for a route: what to request upstream
    rest: bytes = b""  # for a prefix endpoint: the path below its prefix ("/swagger-ui.css")


class _Node:
    __slots__ = ("children", "prefix", "exact")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.prefix: Route | str | None = None  # matches this path and below
        self.exact: str | None = None  # matches this path only


def _segments(path: str) -> list[bytes]:
    if not path.startswith("/"):
        raise ValueError(f"route path {path!r} must start with '/'")
    return [s.encode("ascii") for s in path[1:].split("/")] if path != "/" else [b""]


class Router:
    def __init__(self, routes: Iterable[Route], endpoints: dict[str, str] | None = None) -> None:
        self._root = _Node()
        for path, name in (GATEWAY_ENDPOINTS if endpoints is None else endpoints).items():
            self._node(path).exact = name
        self._node(GATEWAY_PREFIX).prefix = "not_found"
        for path, name in GATEWAY_PREFIX_ENDPOINTS.items():
            self._node(path).prefix = name
        self.routes = tuple(routes)
        for route in self.routes:
            node = self._node(route.prefix)
            if node.prefix is not None:
                raise ValueError(f"route prefix {route.prefix!r} is taken")
            node.prefix = route

    def _node(self, path: str) -> _Node:
        node = self._root
        for seg in _segments(path):
            node = node.children.setdefault(seg, _Node())
        return node

    def match(self, target: bytes) -> Match | None:
        """Longest whole-segment prefix match of an origin-form target.

        ``/api/service1`` matches ``/api/service1`` and ``/api/service1/...``
        but never ``/api/service10``; an exact endpoint matches only itself.
        """
        if target[:1] != b"/":
            return None
        q = target.find(b"?")
        if q < 0:
            path, query = target, b""
        else:
            path, query = target[:q], target[q:]
        node = self._root
        best: Route | str | None = None
        best_end = 0
        pos = 1
        end_of_path = len(path)
        while True:
            end = path.find(b"/", pos)
            if end < 0:
                end = end_of_path
            node = node.children.get(path[pos:end])  # type: ignore[assignment]
            if node is None:
                break
            if end == end_of_path and node.exact is not None:
                return Match(endpoint=node.exact, public=node.exact in PUBLIC_ENDPOINTS)
            if node.prefix is not None:
                best, best_end = node.prefix, end
            if end == end_of_path:
                break
            pos = end + 1
        if best is None:
            return None
        if isinstance(best, str):
            return Match(endpoint=best, public=best in PUBLIC_ENDPOINTS, rest=path[best_end:])
        upstream_target = best.strip_to + path[best_end:]
        if not upstream_target:
            upstream_target = b"/"
        return Match(route=best, upstream_target=upstream_target + query)
