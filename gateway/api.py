"""The gateway's routes: one prefix trie over whole path segments (docs/forwarding.md).

Backends (``/api/<name>``, and routes from ``GATEWAY_CONFIG``) and the
gateway's own endpoints (``/health``, ``/api/gateway/*``: the table in
``gateway.endpoints``) are entries of the same trie, built once at start-up,
so the server has no special cases. Matching works on the raw request-target
bytes and never decodes, re-encodes or normalises them: the
rest of the path and the query go upstream byte for byte. No asyncio here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import Route
from gateway.endpoints import ENDPOINTS, Endpoint


@dataclass(frozen=True, slots=True)
class Match:
    """A routing decision: a backend ``route`` or a gateway ``endpoint``."""

    route: Route | None = None
    endpoint: str | None = None  # "health", "status", ...; "not_found" under /api/gateway (endpoints.ENDPOINTS)
    public: bool = False  # a gateway endpoint every client may use (``Endpoint.access``)
    upstream_target: bytes = b""  # for a route: what to request upstream
    rest: bytes = b""  # for a prefix endpoint: the path below its prefix ("/swagger-ui.css")


class _Node:
    __slots__ = ("children", "exact", "prefix")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.prefix: Route | Endpoint | None = None  # matches this path and below
        self.exact: Match | None = None  # matches this path only: an endpoint's answer, made once


def _segments(path: str) -> list[bytes]:
    if not path.startswith("/"):
        raise ValueError(f"route path {path!r} must start with '/'")
    return [s.encode("ascii") for s in path[1:].split("/")] if path != "/" else [b""]


class Router:
    def __init__(self, routes: Iterable[Route], endpoints: Iterable[Endpoint] = ENDPOINTS) -> None:
        self._root = _Node()
        for endpoint in endpoints:
            node = self._node(endpoint.path)
            if endpoint.prefix:
                node.prefix = endpoint
            else:
                node.exact = Match(endpoint=endpoint.name, public=endpoint.public)
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
        best: Route | Endpoint | None = None
        best_end = 0
        pos = 1
        end_of_path = len(path)
        while True:
            end = path.find(b"/", pos)
            if end < 0:
                end = end_of_path
            node = node.children.get(path[pos:end])  # type: ignore[assignment]  # None ends the walk below
            if node is None:
                break
            if end == end_of_path and node.exact is not None:
                return node.exact
            if node.prefix is not None:
                best, best_end = node.prefix, end
            if end == end_of_path:
                break
            pos = end + 1
        if best is None:
            return None
        if isinstance(best, Endpoint):
            return Match(endpoint=best.name, public=best.public, rest=path[best_end:])
        upstream_target = best.strip_to + path[best_end:]
        if not upstream_target:
            upstream_target = b"/"
        return Match(route=best, upstream_target=upstream_target + query)
