"""Merge every backend's OpenAPI document into one: pure, no I/O.

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

from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

from gateway import __version__
from gateway.config import Route
from gateway.endpoints import ENDPOINTS

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


def _gateway_paths() -> dict[str, Any]:
    """The gateway's own endpoints that have a media type in ``endpoints.ENDPOINTS`` (not the pages)."""
    out = {}
    for endpoint in ENDPOINTS:
        ctype = endpoint.openapi
        if ctype is None:
            continue
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {ctype: {"schema": {}}}}}
        if endpoint.name == "health":
            responses["503"] = {"description": "Starting or draining", "content": {ctype: {"schema": {}}}}
        out[endpoint.path] = {"get": {"tags": ["gateway"], "summary": endpoint.summary,
                                      "operationId": "gateway." + endpoint.path.rsplit("/", 1)[1],
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
