"""One OpenAPI document for every backend: ``/api/gateway/openapi.json``.

Each backend's own document (``<origin>/openapi.json``, or
``<NAME>_OPENAPI_PATH``) is fetched with a plain HTTP/1.1 GET (h11 CLIENT over
asyncio streams, ``FETCH_TIMEOUT_S``), off the request path: a refresher task
rebuilds the merged document every ``REFRESH_S`` while it is in demand, so
what is served is never older than ``TTL_S`` (CONTRACT.md, Extras). Only the
very first request (or the first after ``IDLE_S`` without one) waits for a
refresh, bounded by the fetch timeout.

Merge rules (``merge``), per service ``<name>``:

- a path is re-prefixed the way the gateway forwards: with the route's
  ``strip_to`` (``/api`` for ``/api/<name>``) ``/api/<rest>`` appears as
  ``/api/<name>/<rest>``; a path the gateway cannot reach (outside
  ``strip_to``, or shadowed by a longer route) is left out;
- components of every kind become ``<name>.<key>``, operation ids
  ``<name>.<id>``, tags ``<name>: <tag>`` (untagged operations: ``<name>``).
  A service name never contains ``.`` or ``:``, so two services never
  collide, whatever their own names;
- every ``$ref`` (and discriminator mapping, security requirement, link
  ``operationRef``/``operationId``, OAuth URL) is rewritten to match; a
  ``$ref`` that cannot resolve (external, or dangling in the backend's own
  document) is replaced by a description saying so, so every one resolves;
- ``servers`` is the gateway (``/``); server entries of path items and
  operations are dropped, the backend's global ``security`` moves onto its
  operations;
- ``info["x-gateway-services"]`` maps each service to
  ``{"available", "error"}``: a backend that is down is listed, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import h11
import orjson

from gateway import __version__
from gateway.config import Route
from gateway.h11client import H11Client

if TYPE_CHECKING:
    from gateway.server import Gateway

FETCH_TIMEOUT_S = 2.0  # per backend document: connect, request, whole response
TTL_S = 30.0  # the served document is at most this old (CONTRACT.md)
REFRESH_S = 25.0  # refresh period while wanted: REFRESH_S + FETCH_TIMEOUT_S < TTL_S
IDLE_S = 300.0  # no request for this long: stop refreshing until the next one
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

COMPONENT_KINDS = (
    "schemas", "responses", "parameters", "examples", "requestBodies", "headers",
    "securitySchemes", "links", "callbacks", "pathItems",
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Keys whose value maps names to objects: the names are data, never keywords
# (a response named "default", a property named "$ref", an example named "value").
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                        "responses", "content", "encoding", "headers", "examples", "links", "callbacks"})
# Keys whose value is literal data (an example payload may well hold "$ref").
_LITERALS = frozenset({"example", "default", "enum", "const", "value"})
_URL_KEYS = frozenset({"tokenUrl", "authorizationUrl", "refreshUrl", "openIdConnectUrl"})


class FetchError(Exception):
    """Why a backend's document could not be had; str() goes into the document."""


# --------------------------------------------------------------------- fetching


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
    return doc  # type: ignore[no-any-return]


async def _get(host: str, port: int, target: str) -> tuple[int, bytes]:
    client = await H11Client.connect(host, port)
    try:
        headers = [("Accept", "application/json"), ("User-Agent", f"gateway/{__version__}"), ("Connection", "close")]
        response = await client.request("GET", target, headers, max_body_bytes=MAX_DOCUMENT_BYTES)
    finally:
        client.close()
    return response.status, response.body


# ---------------------------------------------------------------------- merging


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def gateway_path(route: Route, backend_path: str) -> str | None:
    """The gateway path that reaches ``backend_path`` through ``route`` (by prefix), or None."""
    strip = route.strip_to.decode("ascii")
    if strip and backend_path == strip:
        return route.prefix
    if backend_path.startswith(strip + "/"):
        return route.prefix + backend_path[len(strip):]
    return None


def _server_base(doc: dict[str, Any]) -> str:
    """The path of the backend document's first server (paths are relative to it)."""
    servers = doc.get("servers")
    if isinstance(servers, list) and servers and isinstance(servers[0], dict):
        url = servers[0].get("url")
        if isinstance(url, str) and "{" not in url:
            return urlsplit(url).path.rstrip("/")
    return ""


class _Service:
    """One backend's contribution to the merged document, every name namespaced."""

    def __init__(self, route: Route, doc: dict[str, Any], reachable: Callable[[Route, str], bool]) -> None:
        self.name = route.name
        self.route = route
        self.doc = doc
        self.base = _server_base(doc)
        components = doc.get("components")
        self.components: dict[str, Any] = components if isinstance(components, dict) else {}
        paths = doc.get("paths")
        self.paths: dict[str, Any] = paths if isinstance(paths, dict) else {}
        self.path_map: dict[str, str] = {}
        for key in self.paths:
            target = gateway_path(route, self.base + key) if isinstance(key, str) else None
            if target is not None and "?" not in target and "#" not in target and reachable(route, target):
                self.path_map[key] = target

    def ns(self, name: str) -> str:
        return f"{self.name}.{name}"

    def _has(self, kind: str, key: str) -> bool:
        table = self.components.get(kind)
        return isinstance(table, dict) and key in table

    # --- references -------------------------------------------------------
    def ref(self, ref: str) -> str | None:
        """``ref`` rewritten for the merged document, or None when it cannot resolve."""
        if not ref.startswith("#/"):
            return None  # external: another file or URL the gateway does not serve
        parts = ref[2:].split("/")
        head = parts[0]
        if head == "components" and len(parts) >= 3 and parts[1] in COMPONENT_KINDS \
                and self._has(parts[1], _unescape(parts[2])):
            parts[2] = _escape(self.ns(_unescape(parts[2])))
            return "#/" + "/".join(parts)
        if head == "paths" and len(parts) >= 2 and _unescape(parts[1]) in self.path_map:
            parts[1] = _escape(self.path_map[_unescape(parts[1])])
            return "#/" + "/".join(parts)
        if head == "webhooks" and len(parts) >= 2 and _unescape(parts[1]) in (self.doc.get("webhooks") or {}):
            parts[1] = _escape(self.ns(_unescape(parts[1])))
            return "#/" + "/".join(parts)
        return None

    def url(self, value: str) -> str:
        """A URL relative to the backend (an OAuth token URL): the gateway's path for it when reachable."""
        if urlsplit(value).scheme:
            return value
        path = urljoin(self.base + "/", value)
        target = gateway_path(self.route, path)
        return target if target is not None else value

    # --- the walk -----------------------------------------------------------
    def walk(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        unresolved = None
        for key, item in value.items():
            if key in _LITERALS:
                out[key] = item
            elif key == "$ref" and isinstance(item, str):
                new = self.ref(item)
                if new is None:
                    unresolved = item
                else:
                    out[key] = new
            elif key == "operationId" and isinstance(item, str):
                out[key] = self.ns(item)
            elif key == "operationRef" and isinstance(item, str):
                new = self.ref(item)
                if new is not None:
                    out[key] = new
            elif key == "examples" and isinstance(item, list):
                out[key] = item  # JSON Schema examples: literal values
            elif key in _NAME_MAPS and isinstance(item, dict):
                out[key] = {name: self.walk(sub) for name, sub in item.items()}
            elif key == "discriminator" and isinstance(item, dict):
                out[key] = self._discriminator(item)
            elif key == "security" and isinstance(item, list):
                out[key] = self.security(item)
            elif key in _URL_KEYS and isinstance(item, str):
                out[key] = self.url(item)
            else:
                out[key] = self.walk(item)
        if unresolved is not None:
            # Replaced, not dropped silently: a description is valid wherever a
            # Reference Object is (schema, response, parameter...), and says why.
            note = f"(the {self.name} document's reference {unresolved!r} does not resolve here)"
            text = out.get("description")
            out["description"] = f"{text} {note}" if isinstance(text, str) else note
        return out

    def _discriminator(self, disc: dict[str, Any]) -> dict[str, Any]:
        out = dict(disc)
        mapping = disc.get("mapping")
        if isinstance(mapping, dict):
            new_map = {}
            for key, target in mapping.items():
                if not isinstance(target, str):
                    continue
                if target.startswith("#"):
                    new = self.ref(target)
                elif "/" not in target and self._has("schemas", target):
                    new = self.ns(target)
                else:
                    new = None
                if new is not None:
                    new_map[key] = new
            out["mapping"] = new_map
        return out

    def security(self, requirements: list[Any]) -> list[Any]:
        out = []
        for req in requirements:
            if isinstance(req, dict):
                out.append({self.ns(k): v for k, v in req.items() if self._has("securitySchemes", k)})
        return out

    def tag(self, tag: str) -> str:
        return f"{self.name}: {tag}"

    # --- the parts --------------------------------------------------------
    def operations(self, seen_ids: set[str]) -> tuple[dict[str, Any], list[str]]:
        """Namespaced path items, and the tags their operations use (in order)."""
        global_security = self.doc.get("security")
        used: list[str] = []
        paths: dict[str, Any] = {}
        for key, target in self.path_map.items():
            item = self.paths[key]
            if not isinstance(item, dict):
                continue
            new_item: dict[str, Any] = {}
            for field, value in item.items():
                if field == "servers":
                    continue
                if field not in METHODS or not isinstance(value, dict):
                    new_item[field] = self.walk(value)
                    continue
                op = self.walk({k: v for k, v in value.items() if k not in ("servers", "tags")})
                own = value.get("tags")
                tags = [self.tag(t) for t in own if isinstance(t, str)] if isinstance(own, list) else []
                tags = tags or [self.name]
                op = {"tags": tags, **op}
                if "security" not in value and isinstance(global_security, list):
                    op["security"] = self.security(global_security)
                op_id = op.get("operationId")
                if isinstance(op_id, str):
                    unique, n = op_id, 1
                    while unique in seen_ids:  # operation ids must be unique (OpenAPI 3: Operation Object)
                        n += 1
                        unique = f"{op_id}_{n}"
                    seen_ids.add(unique)
                    op["operationId"] = unique
                used.extend(t for t in tags if t not in used)
                new_item[field] = op
            paths[target] = new_item
        return paths, used

    def component_tables(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in COMPONENT_KINDS:
            table = self.components.get(kind)
            if isinstance(table, dict) and table:
                out[kind] = {self.ns(key): self.walk(value) for key, value in table.items()}
        return out

    def tags(self, used: list[str]) -> list[dict[str, Any]]:
        declared = [t for t in self.doc.get("tags") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
        out = [{**self.walk(t), "name": self.tag(t["name"])} for t in declared]
        names = {t["name"] for t in out}
        title = (self.doc.get("info") or {}).get("title")
        for tag in used:
            if tag not in names:
                entry: dict[str, Any] = {"name": tag}
                if tag == self.name and isinstance(title, str):
                    entry["description"] = title
                out.append(entry)
        return out

    def webhooks(self) -> dict[str, Any]:
        hooks = self.doc.get("webhooks")
        if not isinstance(hooks, dict):
            return {}
        return {self.ns(name): self.walk(item) for name, item in hooks.items()}


_GATEWAY_PATHS = {
    "/health": "Gateway health: 200 when serving, 503 when starting or draining; never probes backends",
    "/api/gateway/status": "Gateway status, connections, requests per service",
    "/api/gateway/services": "Routes and passive backend state from real traffic",
    "/api/gateway/stats": "Per-service request rate, error rate and latency over the last minute",
    "/api/gateway/recent": "The last requests, newest first",
    "/api/gateway/metrics": "Prometheus metrics",
    "/api/gateway/openapi.json": "This document",
}


def _gateway_paths() -> dict[str, Any]:
    out = {}
    for path, summary in _GATEWAY_PATHS.items():
        ctype = "text/plain" if path.endswith("metrics") else "application/json"
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {ctype: {"schema": {}}}}}
        if path == "/health":
            responses["503"] = {"description": "Starting or draining", "content": {ctype: {"schema": {}}}}
        out[path] = {"get": {"tags": ["gateway"], "summary": summary,
                             "operationId": "gateway." + (path.rsplit("/", 1)[1] or "health"),
                             "responses": responses}}
    return out


def merge(
    services: list[tuple[Route, dict[str, Any] | FetchError]],
    reachable: Callable[[Route, str], bool],
) -> dict[str, Any]:
    """The merged document for ``(route, document or why not)`` in route order."""
    status: dict[str, dict[str, Any]] = {}
    paths: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    tags: list[dict[str, Any]] = []
    webhooks: dict[str, Any] = {}
    seen_ids: set[str] = set()
    version = "3.0.3"
    for route, doc in services:
        if isinstance(doc, FetchError):
            status[route.name] = {"available": False, "error": str(doc)}
            continue
        try:
            svc = _Service(route, doc, reachable)
            ids = set(seen_ids)
            svc_paths, used = svc.operations(ids)
            svc_components = svc.component_tables()
            svc_tags = svc.tags(used)
            svc_hooks = svc.webhooks()
        except Exception as exc:  # a malformed document must not cost the others theirs
            status[route.name] = {"available": False, "error": f"cannot merge its document: {exc!r}"[:300]}
            continue
        seen_ids = ids
        paths.update(svc_paths)
        for kind, table in svc_components.items():
            components.setdefault(kind, {}).update(table)
        tags.extend(svc_tags)
        webhooks.update(svc_hooks)
        if str(doc["openapi"]).startswith("3.1") or svc_hooks:
            version = "3.1.0"
        status[route.name] = {"available": True, "error": None}
    paths.update(_gateway_paths())
    tags.append({"name": "gateway", "description": "The gateway's own endpoints"})
    merged: dict[str, Any] = {
        "openapi": version,
        "info": {
            "title": "API gateway",
            "version": __version__,
            "description": "Every backend behind this gateway, in one document: a backend path "
            "`/api/<rest>` is `/api/<name>/<rest>` here; components, operation ids and tags are "
            "namespaced per service.",
            "x-gateway-services": status,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "tags": tags,
    }
    if components:
        merged["components"] = components
    if webhooks:
        merged["webhooks"] = webhooks
    return merged


# ------------------------------------------------------------------ the cache


class OpenAPICache:
    """The merged document, refreshed in the background while it is wanted."""

    def __init__(
        self,
        gw: Gateway,
        *,
        timeout_s: float = FETCH_TIMEOUT_S,
        ttl_s: float = TTL_S,
        refresh_s: float = REFRESH_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self.gw = gw
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self.body: bytes | None = None
        self.built_at = 0.0  # loop time the fetches of ``body`` started
        self.wanted_at = 0.0
        self.refreshes = 0
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
            return orjson.dumps(merge([(r, note) for r in self.gw.router.routes], self._reachable))
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
        routes = self.gw.router.routes
        results = await asyncio.gather(*(self._fetch(r) for r in routes))
        # The merge is plain CPU work: off the loop, so proxying goes on meanwhile.
        self.body = await asyncio.to_thread(self._build, list(zip(routes, results, strict=True)))
        self.built_at = started
        self.refreshes += 1
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
        match = self.gw.router.match(path.encode("utf-8", "replace"))
        return match is not None and match.route is route

    async def aclose(self) -> None:
        """Stop refreshing (at shutdown); a request still waiting gets what there is."""
        if self._refreshed is not None:
            self._refreshed.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
